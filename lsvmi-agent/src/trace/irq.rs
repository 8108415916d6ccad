//! The `irq` profile: per hard IRQ, the time its handlers ran; per softirq vector, the
//! delay from being raised to running, and the run time. The kernel side is
//! `lsvmi-ebpf/src/trace_irq.rs`, loaded at session start, unloaded at its end; its
//! state is per CPU, summed here on the `trace_irq` source's tick. IRQs beyond the top
//! 10 by handler time are folded into one `irq="_other"` series. Runs of 50 µs or more
//! also go to a ring buffer for the session's timeline (a track per CPU).

use std::sync::{Arc, Mutex, OnceLock};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
};
use lsvmi_common::{
    hist::LOG2_BUCKETS,
    softirq::{NAMES, VECTORS},
    trace_irq::{
        ANY_CPU, CPU_MAP, CpuIrq, FILTER_MAP, HARD, IRQS_MAP, IrqFilter, IrqRecord, IrqTime, PROG_IRQ_ENTRY,
        PROG_IRQ_EXIT, PROG_SOFTIRQ_ENTRY, PROG_SOFTIRQ_EXIT, PROG_SOFTIRQ_RAISE, PROGRAMS as RUN_SLOTS, RING,
        RUNS_MAP,
    },
};
use serde_json::json;

use super::{
    SessionInfo, Sessions, Tracer,
    programs::{self, ProgramTracer, SessionMaps, Shared},
    sched::TOP_K,
};
use crate::{
    bpf::{Bpf, BpfError, BpfSource},
    model::{MetricDesc, now_ms},
    sources::{Collector, Source, SourceError},
};

const SOURCE: &str = "BPF tp_btf irq_handler_entry/exit, softirq_raise/entry/exit (trace sessions)";

metric!(
    HANDLER,
    "trace_irq_handler_seconds_total",
    Counter,
    "seconds",
    ["session", "irq", "name"],
    SOURCE,
    "Time the handlers of each hard IRQ ran during an irq trace session; name from /proc/interrupts. The top \
     IRQs; the rest in irq=\"_other\"."
);
metric!(HANDLERS, "trace_irq_handlers_total", Counter, "", ["session", "irq", "name"], SOURCE, "Handler runs.");
metric!(
    HANDLER_MAX,
    "trace_irq_handler_max_seconds",
    Gauge,
    "seconds",
    ["session", "irq", "name"],
    SOURCE,
    "The longest handler run of each IRQ."
);
metric!(
    DELAY,
    "trace_softirq_delay_seconds_total",
    Counter,
    "seconds",
    ["session", "vector"],
    SOURCE,
    "Per softirq vector, time from being raised to starting to run (the wait of NET_RX behind other work, say)."
);
metric!(DELAYS, "trace_softirq_delays_total", Counter, "", ["session", "vector"], SOURCE, "Delays measured.");
metric!(
    RUN,
    "trace_softirq_run_seconds_total",
    Counter,
    "seconds",
    ["session", "vector"],
    SOURCE,
    "Per softirq vector, time it ran during the session."
);
metric!(RUNS, "trace_softirq_runs_total", Counter, "", ["session", "vector"], SOURCE, "Softirq runs.");
metric!(
    MAX_DELAY,
    "trace_softirq_max_delay_seconds",
    Gauge,
    "seconds",
    ["session", "vector"],
    SOURCE,
    "The longest raise-to-run delay per vector."
);
metric!(
    MAX_RUN,
    "trace_softirq_max_run_seconds",
    Gauge,
    "seconds",
    ["session", "vector"],
    SOURCE,
    "The longest run per vector."
);

histogram!(
    HANDLER_DURATION,
    "trace_irq_handler_duration_seconds",
    ["session", "irq", "name"],
    SOURCE,
    "Each hard IRQ's handler runs during an irq trace session, in buckets of powers of two."
);
histogram!(
    DELAY_LATENCY,
    "trace_softirq_delay_latency_seconds",
    ["session", "vector"],
    SOURCE,
    "Per softirq vector, its raise-to-run delays during the session, in buckets of powers of two."
);
histogram!(
    RUN_DURATION,
    "trace_softirq_run_duration_seconds",
    ["session", "vector"],
    SOURCE,
    "Per softirq vector, its runs during the session, in buckets of powers of two."
);

pub static METRICS: &[&MetricDesc] = &[
    &HANDLER,
    &HANDLERS,
    &HANDLER_MAX,
    &HANDLER_DURATION.bucket,
    &HANDLER_DURATION.sum,
    &HANDLER_DURATION.count,
    &DELAY,
    &DELAYS,
    &RUN,
    &RUNS,
    &MAX_DELAY,
    &MAX_RUN,
    &DELAY_LATENCY.bucket,
    &DELAY_LATENCY.sum,
    &DELAY_LATENCY.count,
    &RUN_DURATION.bucket,
    &RUN_DURATION.sum,
    &RUN_DURATION.count,
];

const PROGRAMS: [(&str, &str); 5] = [
    (PROG_IRQ_ENTRY, "irq_handler_entry"),
    (PROG_IRQ_EXIT, "irq_handler_exit"),
    (PROG_SOFTIRQ_RAISE, "softirq_raise"),
    (PROG_SOFTIRQ_ENTRY, "softirq_entry"),
    (PROG_SOFTIRQ_EXIT, "softirq_exit"),
];

/// ns per run of each program (slots of `TRACE_IRQ_RUNS`), measured by `cargo xtask
/// bench-bpf` (docs/performance.md, "Deep tracing"): the cost estimate where the
/// kernel's own timing is refused.
const COST_NS: [f64; RUN_SLOTS] = [211.0, 637.0, 97.0, 100.0, 105.0];

/// Handler and softirq runs at least this long go on the timeline; the budget's first
/// step raises it to [`STEP_TIMELINE_NS`].
const TIMELINE_MIN_NS: u64 = 50_000;
const STEP_TIMELINE_NS: u64 = 500_000;

/// No program at start-up: sessions load them.
pub static BPF: BpfSource = BpfSource {
    programs: &[],
    needs: &[],
    globals: |_| Vec::new(),
    attach: |bpf, _| Ok(Box::new(TraceIrqSource::attach(bpf)?)),
};

struct Maps {
    filter: Array<MapData, IrqFilter>,
    irqs: PerCpuHashMap<MapData, u32, IrqTime>,
    cpu: PerCpuArray<MapData, CpuIrq>,
    runs: PerCpuArray<MapData, u64>,
    timeline: super::timeline::Records<IrqRecord>,
    session: Option<SessionInfo>,
}

static SHARED: OnceLock<Arc<Shared<Maps>>> = OnceLock::new();

impl Maps {
    fn set_filter(&mut self, f: IrqFilter) -> Result<(), String> {
        self.filter.set(0, f, 0).map_err(|e| format!("setting the irq session's filter: {e}"))
    }

    /// Each CPU's state.
    fn cpus(&self) -> Vec<CpuIrq> {
        self.cpu.get(&0, 0).map(|v| v.iter().copied().collect()).unwrap_or_default()
    }
}

impl SessionMaps for Maps {
    fn clear(&mut self) {
        self.timeline.clear();
        let keys: Vec<u32> = self.irqs.keys().filter_map(Result::ok).collect();
        keys.iter().for_each(|k| drop(self.irqs.remove(k)));
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        // SAFETY: CpuIrq is plain integers; all zeros is a valid, empty state.
        let empty: CpuIrq = unsafe { std::mem::zeroed() };
        if let Ok(z) = PerCpuValues::try_from(vec![empty; cpus]) {
            let _ = self.cpu.set(0, z, 0);
        }
        programs::zero(&mut self.runs, RUN_SLOTS);
    }

    fn switch(&mut self, session: Option<&SessionInfo>) -> Result<(), String> {
        let f = match session {
            None => IrqFilter { active: 0, cpu: ANY_CPU, min_ns: 0 },
            Some(s) => IrqFilter { active: 1, cpu: one_cpu(s)?, min_ns: s.threshold_ns.unwrap_or(TIMELINE_MIN_NS) },
        };
        self.set_filter(f)
    }

    fn session(&mut self) -> &mut Option<SessionInfo> {
        &mut self.session
    }

    fn estimate(&self) -> (u64, f64) {
        programs::estimate(programs::sums::<RUN_SLOTS>(&self.runs), COST_NS)
    }

    /// 1: the timeline takes runs of 500 µs or more; 2: only the CPU that spent the
    /// most time in softirqs (raised and running). Then nothing is left but to stop.
    fn step_down(&mut self, n: u32) -> Option<String> {
        let mut f = self.filter.get(&0, 0).ok()?;
        let what = match n {
            1 => {
                f.min_ns = f.min_ns.max(STEP_TIMELINE_NS);
                "timeline from 500 µs runs".to_string()
            }
            2 => {
                let busiest = self
                    .cpus()
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, c)| c.delay_ns.iter().chain(&c.run_ns).sum::<u64>())
                    .map(|(cpu, _)| cpu as u32)?;
                f.cpu = busiest;
                format!("narrowed to CPU {busiest}, the one with the most softirq time")
            }
            _ => return None,
        };
        self.set_filter(f).ok()?;
        Some(what)
    }
}

/// The tracer, when the `trace_irq` source is running.
pub fn tracer(ebpf: Arc<Mutex<Ebpf>>, sessions: &Sessions) -> Result<Arc<dyn Tracer>, String> {
    Ok(Arc::new(ProgramTracer::new(ebpf, SHARED.get(), sessions, &PROGRAMS, check, "trace_irq")?))
}

fn check(session: &SessionInfo) -> Result<(), String> {
    if session.pid.is_some() || session.comm.is_some() {
        return Err("the irq profile traces CPUs, not processes: --pid and --comm do not apply".into());
    }
    one_cpu(session).map(|_| ())
}

/// `--cpu`: one CPU or none (every CPU).
fn one_cpu(session: &SessionInfo) -> Result<u32, String> {
    let Some(list) = &session.cpus else { return Ok(ANY_CPU) };
    match crate::sources::host::parse_cpu_list(list).as_deref() {
        Some([cpu]) => Ok(*cpu),
        _ => Err(format!("--cpu {list}: the irq profile narrows to one CPU")),
    }
}

/// IRQ number → its description in /proc/interrupts (`virtio0-input.0`, …).
fn irq_names() -> std::collections::HashMap<u32, String> {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let (n, rest) = l.trim_start().split_once(':')?;
            let irq: u32 = n.parse().ok()?;
            let name = rest.split_whitespace().rfind(|f| f.parse::<u64>().is_err())?.to_string();
            Some((irq, name))
        })
        .collect()
}

/// The session's files: a track per CPU with its handler and softirq runs, and one per
/// CPU with the softirqs' raise-to-run delays (they overlap other runs, so apart).
fn files(
    session_id: &str,
    records: &[IrqRecord],
    dropped: u64,
    names: &std::collections::HashMap<u32, String>,
) -> super::timeline::Files {
    const DELAY_TRACKS: i64 = -2;
    let mut doc = super::timeline::Doc::default();
    let offset = super::timeline::realtime_offset_ns();
    let mut lines = Vec::with_capacity(records.len());
    for r in records {
        let (name, kind) = if r.kind == HARD {
            (format!("irq {} {}", r.num, names.get(&r.num).map_or("", String::as_str)), "hard")
        } else {
            (NAMES.get(r.num as usize).copied().unwrap_or("?").to_string(), "soft")
        };
        let args = json!({ "cpu": r.cpu, "run_ns": r.run_ns, "delay_ns": r.delay_ns });
        let cpu = doc.cpu(r.cpu);
        doc.slice(cpu, name.clone(), kind, r.start_ns, r.run_ns, args);
        if r.delay_ns > 0 {
            let track = (DELAY_TRACKS, i64::from(r.cpu));
            doc.process(DELAY_TRACKS, "softirq raised, waiting");
            doc.thread(track, format!("CPU {}", r.cpu));
            doc.slice(
                track,
                format!("{name} waiting"),
                "delay",
                r.start_ns.saturating_sub(r.delay_ns),
                r.delay_ns,
                json!({}),
            );
        }
        lines.push(json!({
            "start_ns": (i128::from(r.start_ns) + offset) as u64, "run_ns": r.run_ns, "delay_ns": r.delay_ns,
            "cpu": r.cpu, "kind": kind, "num": r.num, "name": name.trim(),
        }));
    }
    super::timeline::Files {
        doc: doc.finish(session_id, records.len(), dropped),
        lines,
        records: records.len(),
        dropped,
    }
}

pub struct TraceIrqSource {
    shared: Arc<Shared<Maps>>,
    series: programs::SessionSeries,
    names: Option<(String, std::collections::HashMap<u32, String>)>,
}

impl TraceIrqSource {
    fn attach(bpf: &mut Bpf) -> Result<Self, BpfError> {
        let maps = Maps {
            filter: bpf.take_map(FILTER_MAP)?,
            irqs: bpf.take_map(IRQS_MAP)?,
            cpu: bpf.take_map(CPU_MAP)?,
            runs: bpf.take_map(RUNS_MAP)?,
            timeline: super::timeline::Records::new(RING, bpf.take_raw_map(RING)?)?,
            session: None,
        };
        let shared = Shared::new(maps, &SHARED);
        Ok(TraceIrqSource { shared, series: programs::SessionSeries::default(), names: None })
    }
}

/// One IRQ's figures summed over CPUs.
#[derive(Clone, Copy)]
struct Irq {
    time_ns: u64,
    count: u64,
    max_ns: u64,
    hist: [u64; LOG2_BUCKETS],
}

impl Irq {
    const ZERO: Irq = Irq { time_ns: 0, count: 0, max_ns: 0, hist: [0; LOG2_BUCKETS] };

    fn add(&mut self, t: &IrqTime) {
        self.time_ns += t.time_ns;
        self.count += t.count;
        self.max_ns = self.max_ns.max(t.max_ns);
        programs::add_hist(&mut self.hist, &t.hist);
    }

    fn merge(&mut self, o: &Irq) {
        self.time_ns += o.time_ns;
        self.count += o.count;
        self.max_ns = self.max_ns.max(o.max_ns);
        self.hist.iter_mut().zip(o.hist).for_each(|(a, b)| *a += b);
    }
}

impl Source for TraceIrqSource {
    fn name(&self) -> &'static str {
        "trace_irq"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let ts = now_ms();
        let Some((mut maps, session)) = self.shared.tick(&mut self.series, out, ts) else { return Ok(()) };
        let mut irqs: Vec<(u32, Irq)> = maps
            .irqs
            .iter()
            .filter_map(Result::ok)
            .map(|(irq, per_cpu)| {
                let mut sum = Irq::ZERO;
                per_cpu.iter().for_each(|t| sum.add(t));
                (irq, sum)
            })
            .collect();
        let cpus = maps.cpus();
        maps.timeline.drain();
        if self.names.as_ref().is_none_or(|(id, _)| *id != session.id) {
            self.names = Some((session.id.clone(), irq_names()));
        }
        let names = self.names.as_ref().map(|(_, n)| n.clone()).unwrap_or_default();
        let ended = session.ended.is_some();
        if ended {
            maps.session = None;
            let names = names.clone();
            self.shared.write_timeline(&session.id, maps.timeline.take(), move |id, records, dropped| {
                files(id, records, dropped, &names)
            });
        }
        drop(maps);
        let id = session.id.clone();

        irqs.sort_by_key(|(_, t)| std::cmp::Reverse(t.time_ns));
        let mut rest = Irq::ZERO;
        irqs.iter().skip(TOP_K).for_each(|(_, t)| rest.merge(t));
        let mut rows: Vec<(String, String, Irq)> = irqs
            .iter()
            .take(TOP_K)
            .map(|(irq, t)| (irq.to_string(), names.get(irq).cloned().unwrap_or_default(), *t))
            .collect();
        if irqs.len() > TOP_K {
            rows.push(("_other".into(), String::new(), rest));
        }
        for (irq, name, t) in rows {
            let values = [t.time_ns as f64 / 1e9, t.count as f64, t.max_ns as f64 / 1e9];
            let labels = [("session", id.as_str()), ("irq", irq.as_str()), ("name", name.as_str())];
            let key = format!("i\0{irq}\0{name}");
            let make = |out: &mut Collector<'_>| {
                [&HANDLER, &HANDLERS, &HANDLER_MAX].iter().map(|d| out.series(d, &labels)).collect()
            };
            self.series.set(out, &key, make, &values, ts);
            self.series.histogram(out, &key, &HANDLER_DURATION, &labels, &t.hist, t.time_ns, ts);
        }
        for (v, name) in NAMES.iter().enumerate().take(VECTORS) {
            let delay = cpus.iter().map(|c| c.delay_ns[v]).sum::<u64>();
            let delays = cpus.iter().map(|c| c.delays[v]).sum::<u64>();
            let run = cpus.iter().map(|c| c.run_ns[v]).sum::<u64>();
            let runs = cpus.iter().map(|c| c.runs[v]).sum::<u64>();
            let max_delay = cpus.iter().map(|c| c.max_delay_ns[v]).max().unwrap_or(0);
            let max_run = cpus.iter().map(|c| c.max_run_ns[v]).max().unwrap_or(0);
            if delays == 0 && runs == 0 {
                continue;
            }
            let values = [
                delay as f64 / 1e9,
                delays as f64,
                run as f64 / 1e9,
                runs as f64,
                max_delay as f64 / 1e9,
                max_run as f64 / 1e9,
            ];
            let labels = [("session", id.as_str()), ("vector", *name)];
            let key = format!("s\0{name}");
            let make = |out: &mut Collector<'_>| {
                [&DELAY, &DELAYS, &RUN, &RUNS, &MAX_DELAY, &MAX_RUN].iter().map(|d| out.series(d, &labels)).collect()
            };
            self.series.set(out, &key, make, &values, ts);
            let (mut delay_hist, mut run_hist) = ([0u64; LOG2_BUCKETS], [0u64; LOG2_BUCKETS]);
            for c in &cpus {
                programs::add_hist(&mut delay_hist, &c.delay_hist[v]);
                programs::add_hist(&mut run_hist, &c.run_hist[v]);
            }
            self.series.histogram(out, &key, &DELAY_LATENCY, &labels, &delay_hist, delay, ts);
            self.series.histogram(out, &key, &RUN_DURATION, &labels, &run_hist, run, ts);
        }
        let dropped: u64 = cpus.iter().map(|c| c.dropped).sum();
        self.series.dropped(out, self.shared.sessions.get(), &id, "irq_map_full", dropped, ts);
        let ring_full: u64 = cpus.iter().map(|c| c.ring_full).sum();
        self.series.dropped(out, self.shared.sessions.get(), &id, "ring_full", ring_full, ts);
        self.series.sweep(out, ts);
        Ok(())
    }
}
