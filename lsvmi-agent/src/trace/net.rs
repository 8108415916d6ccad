//! The `net` profile: every retransmit, reset and drop during the session, per
//! connection (4-tuple), with the TCP state or the kernel's drop reason. The records
//! come from the always-on network programs' ring buffer, which `net_events` drains on
//! its tick and hands over here while a session runs — nothing is sampled, so a session
//! adds no program and no kernel cost; a full ring is counted there
//! (`net_events_lost_total`). The top connections become series labelled with the
//! session; the rest are folded into one `_other` series.

use std::{
    collections::HashMap,
    sync::{
        Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
};

use super::{SessionInfo, Sessions, Tracer, programs::SessionSeries, sched::TOP_K};
use crate::{
    bpf::BpfSource,
    model::{MetricDesc, now_ms},
    sources::{Collector, Source, SourceError, net_events::Described},
};

metric!(
    EVENTS,
    "trace_net_events_total",
    Counter,
    "",
    ["session", "event", "src", "dst", "detail"],
    "BPF tracepoints tcp:*, sock:inet_sock_set_state, skb:kfree_skb (records of net_events, trace sessions)",
    "Retransmits, resets sent and received, and drops during a net trace session, per connection \
     (src, dst) and TCP state or drop reason (detail). The top connections; the rest in src=\"_other\" per event \
     (event=\"any\" for connections beyond the 10 000 a session follows)."
);

pub static METRICS: &[&MetricDesc] = &[&EVENTS];

/// Connections followed per session; beyond, their events count in `_other`.
const MAX_CONNECTIONS: usize = 10_000;

/// (event, src, dst, detail)
type Conn = (&'static str, String, String, String);

/// Records kept per session for its timeline; beyond, they are counted.
const TIMELINE_MAX_RECORDS: usize = 50_000;

#[derive(Default)]
struct State {
    session: Option<SessionInfo>,
    conns: HashMap<Conn, u64>,
    overflow: u64,
    /// Every record for the timeline (bounded), and those it had no room for.
    timeline: Vec<Described>,
    timeline_dropped: u64,
}

/// Where the session files go, once a tracer exists.
static SESSIONS: OnceLock<Sessions> = OnceLock::new();

static ACTIVE: AtomicBool = AtomicBool::new(false);
static STATE: Mutex<Option<State>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a net session wants the records (one atomic load per record otherwise).
pub fn tracing() -> bool {
    ACTIVE.load(Relaxed)
}

/// One record, from `net_events`' drain.
pub fn observe(d: Described) {
    let mut st = state();
    let Some(st) = st.as_mut() else { return };
    let key = (d.event, d.src.clone(), d.dst.clone(), d.detail.clone());
    if let Some(n) = st.conns.get_mut(&key) {
        *n += 1;
    } else if st.conns.len() < MAX_CONNECTIONS {
        st.conns.insert(key, 1);
    } else {
        st.overflow += 1;
    }
    if st.timeline.len() < TIMELINE_MAX_RECORDS {
        st.timeline.push(d);
    } else {
        st.timeline_dropped += 1;
    }
}

/// The session's files: a track per connection with an instant per event (named by
/// the event, its TCP state or drop reason in the arguments).
fn files(session_id: &str, records: &[Described], dropped: u64) -> super::timeline::Files {
    const CONNECTION_TRACKS: i64 = -4;
    let mut doc = super::timeline::Doc::default();
    let offset = super::timeline::realtime_offset_ns();
    doc.process(CONNECTION_TRACKS, "connections");
    let mut tracks: HashMap<(&str, &str), i64> = HashMap::new();
    let mut lines = Vec::with_capacity(records.len());
    for d in records {
        let next = tracks.len() as i64;
        let tid = *tracks.entry((d.src.as_str(), d.dst.as_str())).or_insert(next);
        doc.thread((CONNECTION_TRACKS, tid), format!("{} → {}", d.src, d.dst));
        let args = serde_json::json!({ "detail": d.detail, "cpu": d.cpu, "comm": d.comm });
        doc.instant((CONNECTION_TRACKS, tid), d.event.to_string(), d.event, d.ts_ns, args);
        lines.push(serde_json::json!({
            "ts_ns": (i128::from(d.ts_ns) + offset) as u64, "event": d.event, "src": d.src, "dst": d.dst,
            "detail": d.detail, "cpu": d.cpu, "comm": d.comm,
        }));
    }
    super::timeline::Files {
        doc: doc.finish(session_id, records.len(), dropped),
        lines,
        records: records.len(),
        dropped,
    }
}

/// Needs `net_events` running (its ring buffer is where the records come from).
pub static BPF: BpfSource = BpfSource {
    programs: &[],
    needs: &["net_events"],
    globals: |_| Vec::new(),
    attach: |_, _| {
        let _ = SOURCE_UP.set(());
        Ok(Box::new(TraceNetSource { series: SessionSeries::default() }))
    },
};

/// Set when the source started: the tracer exists only then.
static SOURCE_UP: OnceLock<()> = OnceLock::new();

/// Starts and ends net sessions (there is nothing to load).
pub struct NetTracer;

pub fn tracer(sessions: &Sessions) -> Result<NetTracer, String> {
    let _ = SESSIONS.set(sessions.clone());
    SOURCE_UP
        .get()
        .map(|()| NetTracer)
        .ok_or_else(|| "the trace_net source is not running (it needs net_events)".into())
}

impl Tracer for NetTracer {
    fn start(&self, session: &SessionInfo) -> Result<(), String> {
        if session.pid.is_some() || session.comm.is_some() || session.cpus.is_some() {
            return Err("the net profile traces the whole host: --pid, --comm and --cpu do not apply".into());
        }
        *state() = Some(State { session: Some(session.clone()), ..State::default() });
        ACTIVE.store(true, Relaxed);
        Ok(())
    }

    fn stop(&self, session: &SessionInfo) {
        ACTIVE.store(false, Relaxed);
        if let Some(st) = state().as_mut()
            && let Some(s) = st.session.as_mut()
            && s.id == session.id
        {
            s.ended = session.ended.clone();
        }
    }
}

/// The session's per-connection series.
pub struct TraceNetSource {
    series: SessionSeries,
}

impl Source for TraceNetSource {
    fn name(&self) -> &'static str {
        "trace_net"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let ts = now_ms();
        let (session, mut rows, overflow) = {
            let mut guard = state();
            let Some(st) = guard.as_mut() else {
                self.series.sweep(out, ts);
                return Ok(());
            };
            let Some(session) = st.session.clone() else {
                self.series.sweep(out, ts);
                return Ok(());
            };
            let rows: Vec<(Conn, u64)> = st.conns.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let overflow = st.overflow;
            if session.ended.is_some() {
                // Its last values go out now; its series end on the next cycle.
                let records = std::mem::take(&mut st.timeline);
                let dropped = st.timeline_dropped;
                let id = session.id.clone();
                super::timeline::write_later(SESSIONS.get(), &session.id, move || files(&id, &records, dropped));
                *guard = None;
            }
            (session, rows, overflow)
        };
        rows.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        // The rest folded per kind of event, so each event's total stays whole.
        let mut rest: Vec<(&'static str, u64)> = Vec::new();
        for ((event, ..), n) in rows.iter().skip(TOP_K) {
            match rest.iter_mut().find(|(e, _)| e == event) {
                Some((_, total)) => *total += n,
                None => rest.push((event, *n)),
            }
        }
        if overflow > 0 {
            rest.push(("any", overflow));
        }
        rows.truncate(TOP_K);
        for (event, n) in rest {
            rows.push(((event, "_other".into(), String::new(), String::new()), n));
        }
        for ((event, src, dst, detail), n) in &rows {
            let labels =
                [("session", session.id.as_str()), ("event", *event), ("src", src), ("dst", dst), ("detail", detail)];
            let make = |out: &mut Collector<'_>| vec![out.series(&EVENTS, &labels)];
            self.series.set(out, &format!("{event}\0{src}\0{dst}\0{detail}"), make, &[*n as f64], ts);
        }
        self.series.sweep(out, ts);
        Ok(())
    }
}

/// For tests: the shared state is process-wide.
#[cfg(test)]
pub(crate) fn reset() {
    ACTIVE.store(false, Relaxed);
    *state() = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(event: &'static str, dst: &str) -> Described {
        Described {
            ts_ns: 1,
            cpu: 0,
            event,
            src: "a".into(),
            dst: dst.into(),
            detail: "ESTABLISHED".into(),
            comm: String::new(),
        }
    }

    #[test]
    fn records_count_per_connection_only_while_a_session_runs() {
        reset();
        observe(d("retransmit", "b"));
        assert!(state().is_none(), "kept without a session");
        let s = SessionInfo {
            id: "net-1".into(),
            profile: super::super::Profile::Net,
            started_ms: 0,
            until_ms: 1,
            ended: None,
            pid: None,
            comm: None,
            cpus: None,
            budget_percent: 1.0,
            events_per_s: None,
            cost_percent: None,
            timeline: None,
            threshold_ns: None,
            steps: Vec::new(),
            cost_from: None,
            dropped: Default::default(),
            trigger: None,
        };
        NetTracer.start(&s).unwrap();
        assert!(tracing());
        for _ in 0..3 {
            observe(d("retransmit", "b"));
        }
        observe(d("send_reset", "c"));
        let st = state();
        let conns = &st.as_ref().unwrap().conns;
        assert_eq!(conns.len(), 2);
        assert_eq!(conns[&("retransmit", "a".to_string(), "b".to_string(), "ESTABLISHED".to_string())], 3);
        drop(st);
        NetTracer.stop(&s);
        assert!(!tracing());
        reset();
    }
}
