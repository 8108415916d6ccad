//! The hindsight ring, the agent's side: the always-on programs keep the events worth a
//! look in a per-CPU overwrite ring (`lsvmi-ebpf/src/hindsight.rs`); nothing here reads
//! it until a trigger fires or `lsvmi trace dump` asks. Then the ring is frozen (the
//! writers skip, and count it), copied, and thawed, on the blocking pool.
//!
//! The `hindsight` source only reads the rings' write counters each second
//! (`trace_hindsight_records_total`): how busy the ring is, so an operator can tell how
//! far back it reaches.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use aya::maps::{Array, MapData, PerCpuArray};
use lsvmi_common::{
    hindsight::{
        DROP, FROZEN_MAP, GLOBAL_THRESHOLDS, HEAD_MAP, HEAD_SKIPPED, HEAD_WRITTEN, RECEIVE_RESET, RETRANSMIT, RING_MAP,
        RUNQ, Record, SEND_RESET, SLOTS, SOFTIRQ, Thresholds,
    },
    softirq::NAMES,
};
use serde_json::json;

use super::timeline::{Doc, Files};
use crate::{
    bpf::{Bpf, BpfError, BpfSource, Global},
    model::{MetricDesc, SeriesId, now_ms},
    sources::{Collector, Source, SourceError, text::comm},
};

const SOURCE: &str = "BPF hindsight ring (written by sched_switch, softirq_exit and the network programs)";

metric!(
    RECORDS,
    "trace_hindsight_records_total",
    Counter,
    "",
    [],
    SOURCE,
    "Events written to the hindsight ring (long run-queue waits, long softirq runs, retransmits, resets, \
     drops), over all CPUs. Each CPU keeps its last 4096."
);
metric!(
    SKIPPED,
    "trace_hindsight_skipped_total",
    Counter,
    "",
    [],
    SOURCE,
    "Events not kept because the ring was being read (a trigger's or `lsvmi trace dump`'s copy)."
);

metric!(
    DUMPS_TOTAL,
    "trace_hindsight_dumps_total",
    Counter,
    "",
    [],
    SOURCE,
    "Times the agent read the hindsight ring: a trigger fired, or `lsvmi trace dump`. Between them nothing reads it."
);

metric!(
    TRIGGERS,
    "lsvmi_trace_triggers_total",
    Counter,
    "",
    ["trigger", "outcome"],
    "lsvmi agent (trace triggers)",
    "Firings of each configured trigger, by outcome: started (a session), cooldown or hourly_cap (suppressed \
     by the limits), busy (a session already ran), failed (it could not start), dropped (the trigger task was \
     behind)."
);
metric!(
    TRIGGERED,
    "trace_session_trigger_timestamp_seconds",
    Gauge,
    "seconds",
    ["session", "trigger"],
    "lsvmi agent (trace triggers)",
    "When the trigger that started this session fired (Unix time), while the session runs."
);

pub static METRICS: &[&MetricDesc] = &[&RECORDS, &SKIPPED, &DUMPS_TOTAL, &TRIGGERS, &TRIGGERED];

/// The sessions, for the series of the triggered ones.
static SESSIONS: OnceLock<super::Sessions> = OnceLock::new();

/// Report the triggered sessions of `sessions`.
pub fn watch(sessions: &super::Sessions) {
    let _ = SESSIONS.set(sessions.clone());
}

/// `trace.hindsight:` resolved: what the always-on programs keep (0 / false: nothing).
#[derive(Debug, Clone, Copy)]
pub struct HindsightSettings {
    pub runq_wait: Duration,
    pub softirq_run: Duration,
    pub net: bool,
}

impl Default for HindsightSettings {
    fn default() -> Self {
        HindsightSettings { runq_wait: Duration::from_millis(1), softirq_run: Duration::from_micros(500), net: true }
    }
}

/// Set once from the config before the BPF object is loaded (its thresholds are
/// load-time constants).
static SETTINGS: OnceLock<HindsightSettings> = OnceLock::new();

pub fn configure(settings: HindsightSettings) {
    let _ = SETTINGS.set(settings);
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Declared like any BPF source: no program of its own, the thresholds as a global.
pub static BPF: BpfSource = BpfSource {
    programs: &[],
    needs: &[],
    globals: |_| {
        let s = SETTINGS.get().copied().unwrap_or_default();
        let t = Thresholds { runq_ns: ns(s.runq_wait), softirq_ns: ns(s.softirq_run), net: u32::from(s.net), _pad: 0 };
        vec![Global::new(GLOBAL_THRESHOLDS, t)]
    },
    attach: |bpf, _| Ok(Box::new(HindsightSource::attach(bpf)?)),
};

struct Maps {
    ring: PerCpuArray<MapData, Record>,
    head: PerCpuArray<MapData, u64>,
    frozen: Array<MapData, u32>,
}

/// Times the ring was read (a trigger, or `lsvmi trace dump`).
static DUMPS: AtomicU64 = AtomicU64::new(0);

/// Set when the source started: dumps read through it.
static RING: OnceLock<Arc<Mutex<Maps>>> = OnceLock::new();

/// One kept event and the CPU whose ring held it.
#[derive(Clone, Copy)]
pub struct Kept {
    pub cpu: u32,
    pub record: Record,
}

/// Copy every CPU's ring, oldest first, with the ring frozen meanwhile. Blocking (one
/// map read per slot): call it off the tick.
pub fn dump() -> Result<Vec<Kept>, String> {
    let maps = RING.get().ok_or("the hindsight ring is not loaded (no BPF, or the hindsight source is off)")?;
    let mut maps = maps.lock().unwrap_or_else(|p| p.into_inner());
    let set =
        |maps: &mut Maps, on: u32| maps.frozen.set(0, on, 0).map_err(|e| format!("freezing the hindsight ring: {e}"));
    set(&mut maps, 1)?;
    let mut kept = Vec::new();
    for slot in 0..SLOTS {
        let Ok(values) = maps.ring.get(&slot, 0) else { continue };
        for (cpu, r) in values.iter().enumerate() {
            if r.ts_ns != 0 {
                kept.push(Kept { cpu: cpu as u32, record: *r });
            }
        }
    }
    let thawed = set(&mut maps, 0);
    DUMPS.fetch_add(1, Relaxed);
    thawed?;
    kept.sort_by_key(|k| k.record.ts_ns);
    Ok(kept)
}

/// What a record is, in words.
fn kind_name(kind: u16) -> &'static str {
    match kind {
        RUNQ => "runqueue wait",
        SOFTIRQ => "softirq run",
        RETRANSMIT => "retransmit",
        SEND_RESET => "send_reset",
        RECEIVE_RESET => "receive_reset",
        DROP => "drop",
        _ => "?",
    }
}

/// One record as a JSON line (`before_trigger`: it happened before the trigger fired).
fn line(k: &Kept, offset: i128, fired_ns: Option<u64>) -> serde_json::Value {
    let r = &k.record;
    let mut v = json!({
        "ts_ns": (i128::from(r.ts_ns) + offset) as u64, "cpu": k.cpu, "what": kind_name(r.kind),
        "tid": r.tid, "comm": comm(&r.comm), "hindsight": true,
    });
    match r.kind {
        RUNQ => {
            v["wait_ns"] = json!(r.value);
            v["held_by_tid"] = json!(r.other_tid);
            v["held_by_comm"] = json!(comm(&r.other_comm));
        }
        SOFTIRQ => {
            v["run_ns"] = json!(r.value);
            v["vector"] = json!(NAMES.get(usize::from(r.detail)).copied().unwrap_or("?"));
        }
        _ => {
            v["sport"] = json!(r.value >> 16);
            v["dport"] = json!(r.value & 0xffff);
            v["daddr"] = json!(std::net::Ipv4Addr::from(r.addr.to_ne_bytes()).to_string());
            v["detail"] = json!(r.detail);
        }
    }
    if let Some(f) = fired_ns {
        v["before_trigger"] = json!(r.ts_ns <= f);
    }
    v
}

/// Add `kept` to a session document: a track per CPU under "hindsight", waits and
/// softirq runs as slices, network events as instants.
pub fn add_to(doc: &mut Doc, kept: &[Kept]) {
    const HINDSIGHT_TRACKS: i64 = -5;
    doc.process(HINDSIGHT_TRACKS, "hindsight (kept before the session)");
    for k in kept {
        let r = &k.record;
        let track = (HINDSIGHT_TRACKS, i64::from(k.cpu));
        doc.thread(track, format!("CPU {}", k.cpu));
        let who = comm(&r.comm);
        match r.kind {
            RUNQ => {
                let held =
                    if r.other_tid == 0 { "idle".into() } else { format!("{} ({})", comm(&r.other_comm), r.other_tid) };
                let args = json!({ "tid": r.tid, "held_by": held });
                doc.slice(track, format!("{who} waited"), "hindsight", r.ts_ns.saturating_sub(r.value), r.value, args);
            }
            SOFTIRQ => {
                let vector = NAMES.get(usize::from(r.detail)).copied().unwrap_or("?");
                let args = json!({ "interrupted": format!("{who} ({})", r.tid) });
                doc.slice(track, vector.to_string(), "hindsight", r.ts_ns.saturating_sub(r.value), r.value, args);
            }
            _ => {
                let args = json!({ "dport": r.value & 0xffff, "sport": r.value >> 16, "detail": r.detail });
                doc.instant(track, kind_name(r.kind).to_string(), "hindsight", r.ts_ns, args);
            }
        }
    }
}

/// The JSON lines of `kept`.
pub fn lines(kept: &[Kept], fired_ns: Option<u64>) -> Vec<serde_json::Value> {
    let offset = super::timeline::realtime_offset_ns();
    kept.iter().map(|k| line(k, offset, fired_ns)).collect()
}

/// `lsvmi trace dump`'s file: the ring alone.
pub fn files(id: &str, kept: &[Kept]) -> Files {
    let mut doc = Doc::default();
    add_to(&mut doc, kept);
    Files { doc: doc.finish(id, kept.len(), 0), lines: lines(kept, None), records: kept.len(), dropped: 0 }
}

/// The rings' write counters as series.
pub struct HindsightSource {
    maps: Arc<Mutex<Maps>>,
    series: Option<[SeriesId; 3]>,
    triggered: super::programs::SessionSeries,
}

impl HindsightSource {
    fn attach(bpf: &mut Bpf) -> Result<Self, BpfError> {
        let maps =
            Maps { ring: bpf.take_map(RING_MAP)?, head: bpf.take_map(HEAD_MAP)?, frozen: bpf.take_map(FROZEN_MAP)? };
        let maps = Arc::new(Mutex::new(maps));
        let _ = RING.set(maps.clone());
        Ok(HindsightSource { maps, series: None, triggered: Default::default() })
    }
}

impl Source for HindsightSource {
    fn name(&self) -> &'static str {
        "hindsight"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        // A dump holds the lock for a few ms: this tick skips rather than wait.
        let Ok(maps) = self.maps.try_lock() else { return Ok(()) };
        let sum = |slot| maps.head.get(&slot, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        let (written, skipped) = (sum(HEAD_WRITTEN), sum(HEAD_SKIPPED));
        drop(maps);
        let ts = now_ms();
        let ids = *self.series.get_or_insert_with(|| {
            [out.series(&RECORDS, &[]), out.series(&SKIPPED, &[]), out.series(&DUMPS_TOTAL, &[])]
        });
        for (id, v) in ids.iter().zip([written, skipped, DUMPS.load(Relaxed)]) {
            out.push(*id, ts, v as f64);
        }
        for ((trigger, outcome), n) in super::triggers::outcomes() {
            let labels = [("trigger", trigger.as_str()), ("outcome", outcome)];
            let make = |out: &mut Collector<'_>| vec![out.series(&TRIGGERS, &labels)];
            self.triggered.set(out, &format!("o\0{trigger}\0{outcome}"), make, &[n as f64], ts);
        }
        if let Some(s) = SESSIONS.get().and_then(super::Sessions::current)
            && let Some(t) = &s.trigger
        {
            let labels = [("session", s.id.as_str()), ("trigger", t.name.as_str())];
            let make = |out: &mut Collector<'_>| vec![out.series(&TRIGGERED, &labels)];
            self.triggered.set(out, &format!("t\0{}", s.id), make, &[t.fired_ms as f64 / 1e3], ts);
        }
        self.triggered.sweep(out, ts);
        Ok(())
    }
}
