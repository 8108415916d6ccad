//! The `irq` profile: per hard IRQ, the time its handlers ran; per softirq vector, the
//! delay from being raised to running, and the run time. The kernel side is
//! `lsvmi-ebpf/src/trace_irq.rs`, loaded at session start, unloaded at its end; its
//! state is per CPU, summed here on the `trace_irq` source's tick. IRQs beyond the top
//! 10 by handler time are folded into one `irq="_other"` series.

use std::sync::{Arc, Mutex, OnceLock};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
};
use lsvmi_common::{
    softirq::{NAMES, VECTORS},
    trace_irq::{
        ACTIVE_MAP, CPU_MAP, CpuIrq, IRQS_MAP, IrqTime, PROG_IRQ_ENTRY, PROG_IRQ_EXIT, PROG_SOFTIRQ_ENTRY,
        PROG_SOFTIRQ_EXIT, PROG_SOFTIRQ_RAISE, PROGRAMS as RUN_SLOTS, RUNS_MAP,
    },
};

use super::{
    SessionInfo, Sessions, Tracer,
    programs::{self, ProgramTracer, SessionMaps, Shared},
    sched::TOP_K,
};
use crate::{
    bpf::{Bpf, BpfError, BpfSource, Plain},
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

pub static METRICS: &[&MetricDesc] =
    &[&HANDLER, &HANDLERS, &HANDLER_MAX, &DELAY, &DELAYS, &RUN, &RUNS, &MAX_DELAY, &MAX_RUN];

const PROGRAMS: [(&str, &str); 5] = [
    (PROG_IRQ_ENTRY, "irq_handler_entry"),
    (PROG_IRQ_EXIT, "irq_handler_exit"),
    (PROG_SOFTIRQ_RAISE, "softirq_raise"),
    (PROG_SOFTIRQ_ENTRY, "softirq_entry"),
    (PROG_SOFTIRQ_EXIT, "softirq_exit"),
];

/// ns per run of each program (slots of `TRACE_IRQ_RUNS`), measured with the kernel's
/// BPF stats (docs/performance.md, "Deep tracing").
const COST_NS: [f64; RUN_SLOTS] = [295.0, 1000.0, 104.0, 92.0, 103.0];

/// No program at start-up: sessions load them.
pub static BPF: BpfSource = BpfSource {
    programs: &[],
    needs: &[],
    globals: |_| Vec::new(),
    attach: |bpf, _| Ok(Box::new(TraceIrqSource::attach(bpf)?)),
};

struct Maps {
    active: Array<MapData, Plain<u32>>,
    irqs: PerCpuHashMap<MapData, u32, Plain<IrqTime>>,
    cpu: PerCpuArray<MapData, Plain<CpuIrq>>,
    runs: PerCpuArray<MapData, u64>,
    session: Option<SessionInfo>,
}

static SHARED: OnceLock<Arc<Shared<Maps>>> = OnceLock::new();

impl SessionMaps for Maps {
    fn clear(&mut self) {
        let keys: Vec<u32> = self.irqs.keys().filter_map(Result::ok).collect();
        keys.iter().for_each(|k| drop(self.irqs.remove(k)));
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        // SAFETY: CpuIrq is plain integers; all zeros is a valid, empty state.
        let empty: CpuIrq = unsafe { std::mem::zeroed() };
        if let Ok(z) = PerCpuValues::try_from(vec![Plain(empty); cpus]) {
            let _ = self.cpu.set(0, z, 0);
        }
        programs::zero(&mut self.runs, RUN_SLOTS);
    }

    fn switch(&mut self, session: Option<&SessionInfo>) -> Result<(), String> {
        let on = u32::from(session.is_some());
        self.active.set(0, Plain(on), 0).map_err(|e| format!("switching the irq session: {e}"))
    }

    fn session(&mut self) -> &mut Option<SessionInfo> {
        &mut self.session
    }
}

/// The tracer, when the `trace_irq` source is running.
pub fn tracer(ebpf: Arc<Mutex<Ebpf>>, sessions: &Sessions) -> Result<Arc<dyn Tracer>, String> {
    Ok(Arc::new(ProgramTracer::new(ebpf, SHARED.get(), sessions, &PROGRAMS, check, "trace_irq")?))
}

fn check(session: &SessionInfo) -> Result<(), String> {
    if session.pid.is_some() || session.comm.is_some() || session.cpus.is_some() {
        return Err("the irq profile traces the whole host: --pid, --comm and --cpu do not apply".into());
    }
    Ok(())
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

pub struct TraceIrqSource {
    shared: Arc<Shared<Maps>>,
    series: programs::SessionSeries,
    names: Option<(String, std::collections::HashMap<u32, String>)>,
    cost: programs::CostMeter<RUN_SLOTS>,
}

impl TraceIrqSource {
    fn attach(bpf: &mut Bpf) -> Result<Self, BpfError> {
        let maps = Maps {
            active: bpf.take_map(ACTIVE_MAP)?,
            irqs: bpf.take_map(IRQS_MAP)?,
            cpu: bpf.take_map(CPU_MAP)?,
            runs: bpf.take_map(RUNS_MAP)?,
            session: None,
        };
        let shared = Shared::new(maps);
        let _ = SHARED.set(shared.clone());
        Ok(TraceIrqSource {
            shared,
            series: programs::SessionSeries::default(),
            names: None,
            cost: programs::CostMeter::new(COST_NS),
        })
    }
}

impl Source for TraceIrqSource {
    fn name(&self) -> &'static str {
        "trace_irq"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let ts = now_ms();
        let Some(mut maps) = self.shared.try_lock() else { return Ok(()) };
        let Some(session) = maps.session.clone() else {
            self.series.sweep(out, ts);
            return Ok(());
        };
        let mut irqs: Vec<(u32, IrqTime)> = maps
            .irqs
            .iter()
            .filter_map(Result::ok)
            .map(|(irq, per_cpu)| {
                let sum = per_cpu.iter().fold(IrqTime::default(), |a, Plain(t)| IrqTime {
                    time_ns: a.time_ns + t.time_ns,
                    count: a.count + t.count,
                    max_ns: a.max_ns.max(t.max_ns),
                });
                (irq, sum)
            })
            .collect();
        let cpus: Vec<CpuIrq> = maps.cpu.get(&0, 0).map(|v| v.iter().map(|Plain(c)| *c).collect()).unwrap_or_default();
        let runs: [u64; RUN_SLOTS] = programs::sums(&maps.runs);
        let ended = session.ended.is_some();
        if ended {
            maps.session = None;
        }
        drop(maps);
        if !ended && let Some(sessions) = self.shared.sessions.get() {
            self.cost.observe(&session, runs, sessions);
        }
        if self.names.as_ref().is_none_or(|(id, _)| *id != session.id) {
            self.names = Some((session.id.clone(), irq_names()));
        }
        let names = self.names.as_ref().map(|(_, n)| n.clone()).unwrap_or_default();
        let id = session.id.clone();

        irqs.sort_by_key(|(_, t)| std::cmp::Reverse(t.time_ns));
        let rest = irqs.iter().skip(TOP_K).fold(IrqTime::default(), |a, (_, t)| IrqTime {
            time_ns: a.time_ns + t.time_ns,
            count: a.count + t.count,
            max_ns: a.max_ns.max(t.max_ns),
        });
        let mut rows: Vec<(String, String, IrqTime)> = irqs
            .iter()
            .take(TOP_K)
            .map(|(irq, t)| (irq.to_string(), names.get(irq).cloned().unwrap_or_default(), *t))
            .collect();
        if irqs.len() > TOP_K {
            rows.push(("_other".into(), String::new(), rest));
        }
        for (irq, name, t) in rows {
            let values = [t.time_ns as f64 / 1e9, t.count as f64, t.max_ns as f64 / 1e9];
            let labels = [("session", id.clone()), ("irq", irq.clone()), ("name", name.clone())];
            self.series.set(
                out,
                &format!("i\0{irq}\0{name}"),
                |out| {
                    let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    [&HANDLER, &HANDLERS, &HANDLER_MAX].iter().map(|d| out.series(d, &l)).collect()
                },
                &values,
                ts,
            );
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
            let sid = id.clone();
            self.series.set(
                out,
                &format!("s\0{name}"),
                |out| {
                    let l = [("session", sid.as_str()), ("vector", *name)];
                    [&DELAY, &DELAYS, &RUN, &RUNS, &MAX_DELAY, &MAX_RUN].iter().map(|d| out.series(d, &l)).collect()
                },
                &values,
                ts,
            );
        }
        let dropped: u64 = cpus.iter().map(|c| c.dropped).sum();
        self.series.dropped(out, &id, "irq_map_full", dropped, ts);
        self.series.sweep(out, ts);
        Ok(())
    }
}
