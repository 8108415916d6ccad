//! The `sched` profile: who waited for a CPU during the session, how long and why
//! (woken vs preempted), and who held the CPU when each wait ended. The kernel side is
//! `lsvmi-ebpf/src/trace_sched.rs`; its programs are loaded at session start and
//! unloaded at its end, its maps live for the agent's life (empty between sessions).
//!
//! Two halves meet in [`Shared`]: the [`Tracer`] that loads and unloads the programs
//! (on the blocking pool), and the `trace_sched` source that turns the maps into series
//! on its tick, labelled with the session id: the top K threads by wait and by wait
//! ended, the rest folded into one `comm="_other"` series, so cardinality is bounded.

use std::sync::{Arc, Mutex, OnceLock};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
};
use lsvmi_common::{
    hist::LOG2_BUCKETS,
    trace_sched::{
        CULPRITS_MAP, Culprit, DROP_NAMES, DROP_REASONS, DROPS_MAP, FILTER_MAP, Filter, GLOBAL_OFFSETS, PROG_MIGRATE,
        PROG_SWITCH, PROG_WAKEUP_NEW, PROG_WAKING, PROGRAMS as RUN_SLOTS, QUEUED_MAP, Queued, RUN_SWITCH, RUN_WAKING,
        RUNS_MAP, THREADS_MAP, ThreadWait, TraceOffsets, WAITS_RING, WaitRecord,
    },
};

use super::{
    SessionInfo, Sessions, Tracer,
    programs::{self, ProgramTracer, SessionMaps, Shared},
};

/// ns per run of each program (slots of `TRACE_RUNS`), measured by `cargo xtask
/// bench-bpf` under `perf bench sched pipe` (docs/performance.md, "Deep tracing"). Runs ×
/// these project a session's cost before it starts, and estimate it where the kernel's
/// own timing is refused.
const COST_NS: [f64; RUN_SLOTS] = [231.0, 756.0, 305.0, 287.0];
use crate::{
    bpf::{Bpf, BpfError, BpfSource, Global, Kernel},
    model::{MetricDesc, now_ms},
    sources::{Collector, Source, SourceError},
};

/// Threads per series family; the rest go into one `_other` series.
pub const TOP_K: usize = 10;

/// Waits at least this long go on the session's timeline (shorter ones are only summed).
const TIMELINE_MIN_WAIT_NS: u64 = 100_000;

/// What the budget's first step raises the thresholds to: waits counted, and written
/// to the timeline.
const STEP_MIN_COUNT_NS: u64 = 10_000;
const STEP_MIN_TIMELINE_NS: u64 = 1_000_000;

const SOURCE: &str = "BPF tp_btf sched_waking, sched_wakeup_new, sched_switch (trace sessions)";

metric!(
    WAIT,
    "trace_sched_wait_seconds_total",
    Counter,
    "seconds",
    ["session", "pid", "tid", "comm", "cause"],
    SOURCE,
    "Time each thread waited on a runqueue during a sched trace session, cause=woken (from wake-up or \
     creation to running) or preempted (from preemption while runnable to running again). The top threads \
     by total wait; the rest in comm=\"_other\"."
);
metric!(
    WAITS,
    "trace_sched_waits_total",
    Counter,
    "",
    ["session", "pid", "tid", "comm", "cause"],
    SOURCE,
    "Waits counted in trace_sched_wait_seconds_total."
);
metric!(
    MAX_WAIT,
    "trace_sched_max_wait_seconds",
    Gauge,
    "seconds",
    ["session", "pid", "tid", "comm"],
    SOURCE,
    "The longest single wait of each thread during the session."
);
metric!(
    CULPRIT,
    "trace_sched_culprit_seconds_total",
    Counter,
    "seconds",
    ["session", "pid", "tid", "comm"],
    SOURCE,
    "Waits ended by each thread leaving the CPU: the thread that held the CPU a waiter then got. The top \
     threads; the rest in comm=\"_other\"."
);
metric!(
    DROPPED,
    "trace_dropped_events_total",
    Counter,
    "",
    ["session", "reason"],
    SOURCE,
    "Events a trace session could not record, by reason (a map full)."
);

metric!(
    SLEEP,
    "trace_sched_sleep_seconds_total",
    Counter,
    "seconds",
    ["session", "pid", "tid", "comm"],
    SOURCE,
    "Time each thread slept during the session: switched out while not runnable, to its wake-up. With \
     trace_sched_wait_seconds_total (cause=woken after a sleep, cause=preempted) it is the thread's time off the \
     CPU, split into slept and preempted."
);
metric!(
    MIGRATIONS,
    "trace_sched_migrations_total",
    Counter,
    "",
    ["session", "pid", "tid", "comm"],
    SOURCE,
    "Moves of each thread to another CPU during the session (tp_btf/sched_migrate_task)."
);
histogram!(
    WAIT_LATENCY,
    "trace_sched_wait_latency_seconds",
    ["session", "pid", "tid", "comm"],
    SOURCE,
    "Each thread's runqueue waits during a sched trace session (both causes), in buckets of powers of two. \
     The top threads by total wait; the rest in comm=\"_other\"."
);

pub static METRICS: &[&MetricDesc] = &[
    &WAIT,
    &WAITS,
    &MAX_WAIT,
    &SLEEP,
    &MIGRATIONS,
    &WAIT_LATENCY.bucket,
    &WAIT_LATENCY.sum,
    &WAIT_LATENCY.count,
    &CULPRIT,
    &DROPPED,
];

/// Where the programs attach: (program, tp_btf tracepoint).
const PROGRAMS: [(&str, &str); 4] = [
    (PROG_WAKING, "sched_waking"),
    (PROG_WAKEUP_NEW, "sched_wakeup_new"),
    (PROG_SWITCH, "sched_switch"),
    (PROG_MIGRATE, "sched_migrate_task"),
];

/// The source's declaration: no program at start-up (sessions load them), the
/// `task_struct` offsets and the agent's pid as the programs' globals.
pub static BPF: BpfSource = BpfSource {
    programs: &[],
    needs: &[],
    globals: |kernel| offsets(kernel).map(|o| vec![Global::new(GLOBAL_OFFSETS, o)]).unwrap_or_default(),
    attach: |bpf, _| Ok(Box::new(TraceSchedSource::attach(bpf)?)),
};

fn offsets(kernel: &Kernel) -> Result<TraceOffsets, String> {
    let at = |m: &str| kernel.member_offset("task_struct", m);
    Ok(TraceOffsets { pid: at("pid")?, tgid: at("tgid")?, comm: at("comm")?, agent_tgid: std::process::id() })
}

struct Maps {
    queued: BpfHashMap<MapData, u32, Queued>,
    threads: BpfHashMap<MapData, u32, ThreadWait>,
    culprits: BpfHashMap<MapData, u32, Culprit>,
    filter: Array<MapData, Filter>,
    drops: PerCpuArray<MapData, u64>,
    runs: PerCpuArray<MapData, u64>,
    /// The session's timeline so far.
    timeline: super::timeline::Records<WaitRecord>,
    /// The session being traced, or the one that just ended (for its last values).
    session: Option<SessionInfo>,
}

/// Set when the `trace_sched` source started: the tracer is built from it.
static SHARED: OnceLock<Arc<Shared<Maps>>> = OnceLock::new();

impl Maps {
    fn set_filter(&mut self, f: Filter) -> Result<(), String> {
        self.filter.set(0, f, 0).map_err(|e| format!("setting the session filter: {e}"))
    }
}

impl SessionMaps for Maps {
    fn clear(&mut self) {
        self.timeline.clear();
        programs::clear_hash(&mut self.queued);
        programs::clear_hash(&mut self.threads);
        programs::clear_hash(&mut self.culprits);
        programs::zero(&mut self.drops, DROP_REASONS);
        programs::zero(&mut self.runs, RUN_SLOTS);
    }

    fn switch(&mut self, session: Option<&SessionInfo>) -> Result<(), String> {
        let f = match session {
            None => Filter::default(),
            Some(s) => Filter {
                active: 1,
                tgid: s.pid.unwrap_or(0),
                min_wait_ns: s.threshold_ns.unwrap_or(TIMELINE_MIN_WAIT_NS),
                cpus: cpu_mask(s.cpus.as_deref())?,
                ..Filter::default()
            },
        };
        self.set_filter(f)
    }

    fn estimate(&self) -> (u64, f64) {
        programs::estimate(programs::sums::<RUN_SLOTS>(&self.runs), COST_NS)
    }

    /// 1: count only waits of 10 µs or more (no map update for the rest), timeline
    /// from 1 ms; 2: only the thread that waited most. Then nothing is left but to stop.
    fn step_down(&mut self, n: u32) -> Option<String> {
        let mut f = self.filter.get(&0, 0).ok()?;
        let what = match n {
            1 => {
                f.min_count_ns = STEP_MIN_COUNT_NS;
                f.min_wait_ns = f.min_wait_ns.max(STEP_MIN_TIMELINE_NS);
                "counting only waits of 10 µs or more, timeline from 1 ms".to_string()
            }
            2 => {
                let (tid, t) =
                    self.threads.iter().filter_map(Result::ok).max_by_key(|(_, t)| t.woken_ns + t.preempted_ns)?;
                f.tid = tid;
                format!(
                    "narrowed to thread {tid} ({}, pid {}), the one that waited most",
                    crate::sources::text::comm(&t.comm),
                    t.tgid
                )
            }
            _ => return None,
        };
        self.set_filter(f).ok()?;
        Some(what)
    }

    fn session(&mut self) -> &mut Option<SessionInfo> {
        &mut self.session
    }

    fn events(&self, since: usize) -> (Vec<serde_json::Value>, usize) {
        let records = &self.timeline.records;
        let start = since.min(records.len());
        let offset = super::timeline::realtime_offset_ns();
        let events: Vec<serde_json::Value> =
            records[start..].iter().take(500).map(|r| super::timeline::record_json(r, offset)).collect();
        let next = start + events.len();
        (events, next)
    }
}

/// The tracer, when the `trace_sched` source is running.
pub fn tracer(ebpf: Arc<Mutex<Ebpf>>, sessions: &Sessions) -> Result<Arc<dyn Tracer>, String> {
    Ok(Arc::new(ProgramTracer::new(ebpf, SHARED.get(), sessions, &PROGRAMS, check, "trace_sched")?))
}

/// `--cpu` as the programs' mask: bit n for CPU n (0 for every CPU).
fn cpu_mask(list: Option<&str>) -> Result<u64, String> {
    let Some(list) = list else { return Ok(0) };
    let cpus = crate::sources::host::parse_cpu_list(list).unwrap_or_default();
    if cpus.is_empty() || cpus.iter().any(|&c| c >= 64) {
        return Err(format!("--cpu {list}: the sched profile narrows to CPUs 0-63 only"));
    }
    Ok(cpus.iter().fold(0u64, |m, &c| m | 1 << c))
}

/// Before anything is loaded: the CPU list is one the programs can take, and the cost
/// projected at today's switch rate fits the budget (the programs run at every switch
/// whatever the filter).
fn check(session: &SessionInfo) -> Result<(), String> {
    cpu_mask(session.cpus.as_deref())?;
    if let Some((switches, cost)) = projected_cost_percent()
        && cost > session.budget_percent
    {
        return Err(format!(
            "at {switches:.0} context switches/s it would cost about {cost:.2}% of a CPU, over the budget of {}% \
             (--budget raises it)",
            session.budget_percent
        ));
    }
    Ok(())
}

/// What tracing would cost now, in percent of one CPU: every context switch runs
/// sched_switch, and about two in three follow a wake-up (sched_waking; bench-bpf saw
/// 149 000 wake-ups beside 217 000 switches a second). Measured
/// from /proc/stat's switch count over a quarter second.
fn projected_cost_percent() -> Option<(f64, f64)> {
    let ctxt = || -> Option<u64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        text.lines().find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
    };
    let (a, t) = (ctxt()?, std::time::Instant::now());
    std::thread::sleep(std::time::Duration::from_millis(250));
    let per_s = ctxt()?.saturating_sub(a) as f64 / t.elapsed().as_secs_f64();
    let ns = per_s * (COST_NS[RUN_SWITCH as usize] + 0.7 * COST_NS[RUN_WAKING as usize]);
    Some((per_s, ns / 1e9 * 100.0))
}

/// One thread's figures as exported.
struct Row {
    pid: String,
    tid: String,
    comm: String,
    woken: (u64, u64),
    preempted: (u64, u64),
    max_ns: u64,
    slept_ns: u64,
    migrations: u64,
    hist: [u64; LOG2_BUCKETS],
}

/// The session's series: waits and culprits of the top threads, drops.
pub struct TraceSchedSource {
    shared: Arc<Shared<Maps>>,
    series: programs::SessionSeries,
}

impl TraceSchedSource {
    fn attach(bpf: &mut Bpf) -> Result<Self, BpfError> {
        let maps = Maps {
            queued: bpf.take_map(QUEUED_MAP)?,
            threads: bpf.take_map(THREADS_MAP)?,
            culprits: bpf.take_map(CULPRITS_MAP)?,
            filter: bpf.take_map(FILTER_MAP)?,
            drops: bpf.take_map(DROPS_MAP)?,
            runs: bpf.take_map(RUNS_MAP)?,
            timeline: super::timeline::Records::new(WAITS_RING, bpf.take_raw_map(WAITS_RING)?)?,
            session: None,
        };
        let shared = Shared::new(maps, &SHARED);
        Ok(TraceSchedSource { shared, series: programs::SessionSeries::default() })
    }
}

impl Source for TraceSchedSource {
    fn name(&self) -> &'static str {
        "trace_sched"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let ts = now_ms();
        let Some((mut maps, session)) = self.shared.tick(&mut self.series, out, ts) else { return Ok(()) };
        let mut rows: Vec<Row> = maps
            .threads
            .iter()
            .filter_map(Result::ok)
            .map(|(tid, t)| Row {
                pid: t.tgid.to_string(),
                tid: tid.to_string(),
                comm: crate::sources::text::comm(&t.comm),
                woken: (t.woken_ns, t.woken),
                preempted: (t.preempted_ns, t.preempted),
                max_ns: t.max_ns,
                slept_ns: t.slept_ns,
                migrations: t.migrations,
                hist: {
                    let mut h = [0; LOG2_BUCKETS];
                    programs::add_hist(&mut h, &t.hist);
                    h
                },
            })
            .filter(|r| session.comm.as_ref().is_none_or(|c| *c == r.comm))
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.woken.0 + r.preempted.0));
        let mut culprits: Vec<(String, String, String, u64)> = maps
            .culprits
            .iter()
            .filter_map(Result::ok)
            .map(|(tid, c)| (c.tgid.to_string(), tid.to_string(), crate::sources::text::comm(&c.comm), c.ended_wait_ns))
            .collect();
        culprits.sort_by_key(|c| std::cmp::Reverse(c.3));
        let drops: [u64; DROP_REASONS] = programs::sums(&maps.drops);
        maps.timeline.drain();
        let ended = session.ended.is_some();
        if ended {
            // The last values of a session that ended are sent once; then its series end.
            maps.session = None;
            self.shared.write_timeline(&session.id, maps.timeline.take(), super::timeline::sched_files);
        }
        drop(maps);

        let id = session.id.as_str();
        let mut other = Row {
            pid: String::new(),
            tid: String::new(),
            comm: "_other".into(),
            woken: (0, 0),
            preempted: (0, 0),
            max_ns: 0,
            slept_ns: 0,
            migrations: 0,
            hist: [0; LOG2_BUCKETS],
        };
        for r in rows.iter().skip(TOP_K) {
            other.woken = (other.woken.0 + r.woken.0, other.woken.1 + r.woken.1);
            other.preempted = (other.preempted.0 + r.preempted.0, other.preempted.1 + r.preempted.1);
            other.max_ns = other.max_ns.max(r.max_ns);
            other.slept_ns += r.slept_ns;
            other.migrations += r.migrations;
            other.hist.iter_mut().zip(r.hist).for_each(|(a, b)| *a += b);
        }
        let fold = rows.len() > TOP_K;
        for r in rows.iter().take(TOP_K).chain(fold.then_some(&other)) {
            let make = |out: &mut Collector<'_>| {
                let one = |out: &mut Collector<'_>, d, cause: Option<&str>| {
                    let mut l = vec![
                        ("session", id),
                        ("pid", r.pid.as_str()),
                        ("tid", r.tid.as_str()),
                        ("comm", r.comm.as_str()),
                    ];
                    if let Some(c) = cause {
                        l.push(("cause", c));
                    }
                    out.series(d, &l)
                };
                vec![
                    one(out, &WAIT, Some("woken")),
                    one(out, &WAIT, Some("preempted")),
                    one(out, &WAITS, Some("woken")),
                    one(out, &WAITS, Some("preempted")),
                    one(out, &MAX_WAIT, None),
                    one(out, &SLEEP, None),
                    one(out, &MIGRATIONS, None),
                ]
            };
            let values = [
                r.woken.0 as f64 / 1e9,
                r.preempted.0 as f64 / 1e9,
                r.woken.1 as f64,
                r.preempted.1 as f64,
                r.max_ns as f64 / 1e9,
                r.slept_ns as f64 / 1e9,
                r.migrations as f64,
            ];
            let key = format!("w\0{}\0{}\0{}", r.pid, r.tid, r.comm);
            self.series.set(out, &key, make, &values, ts);
            let labels = [("session", id), ("pid", r.pid.as_str()), ("tid", r.tid.as_str()), ("comm", r.comm.as_str())];
            self.series.histogram(out, &key, &WAIT_LATENCY, &labels, &r.hist, r.woken.0 + r.preempted.0, ts);
        }
        let rest: u64 = culprits.iter().skip(TOP_K).map(|c| c.3).sum();
        let other_culprit = (String::new(), String::new(), "_other".to_string(), rest);
        let fold = culprits.len() > TOP_K;
        for (pid, tid, comm, ns) in culprits.iter().take(TOP_K).chain(fold.then_some(&other_culprit)) {
            let make = |out: &mut Collector<'_>| {
                vec![out.series(&CULPRIT, &[("session", id), ("pid", pid), ("tid", tid), ("comm", comm)])]
            };
            self.series.set(out, &format!("c\0{pid}\0{tid}\0{comm}"), make, &[*ns as f64 / 1e9], ts);
        }
        for (reason, n) in DROP_NAMES.iter().zip(drops) {
            self.series.dropped(out, self.shared.sessions.get(), id, reason, n, ts);
        }
        self.series.sweep(out, ts);
        Ok(())
    }
}
