//! Scheduler events from BPF, counted in the kernel per CPU by `tp_btf/sched_switch`
//! and `tp_btf/sched_migrate_task` (`lsvmi-ebpf/src/sched.rs`) into a per-CPU array that
//! this source reads on the sampling tick. No ring buffer, no wake-up per event.

use aya::{
    maps::{MapData, PerCpuArray},
    programs::BtfTracePoint,
};
use lsvmi_common::sched::{
    COUNTERS_MAP, PROG_SCHED_MIGRATE, PROG_SCHED_SWITCH, SLOT_CONTEXT_SWITCHES, SLOT_INVOLUNTARY, SLOT_MIGRATIONS,
    SLOT_VOLUNTARY,
};
use tracing::warn;

use super::{Collector, Source, SourceError};
use crate::{
    bpf::{Bpf, BpfError},
    model::{MetricDesc, SeriesId, now_ms},
};

metric!(
    CONTEXT_SWITCHES,
    "sched_context_switches_total",
    Counter,
    "",
    ["cpu"],
    "BPF tp_btf/sched_switch",
    "Context switches on each CPU since the agent started, counted in the kernel at every sched_switch. \
     Exact per CPU, unlike /proc/stat's ctxt which is host-wide."
);
metric!(
    SWITCHES_BY_KIND,
    "sched_task_switches_total",
    Counter,
    "",
    ["cpu", "kind"],
    "BPF tp_btf/sched_switch",
    "Switches away from a task (the idle task excluded), kind=voluntary (it blocked) or involuntary \
     (preempted or still runnable) — the kernel's nvcsw/nivcsw, per CPU. Involuntary switches on a core \
     that runs one busy-polling thread mean something else was scheduled there."
);
metric!(
    MIGRATIONS,
    "sched_migrations_total",
    Counter,
    "",
    ["cpu"],
    "BPF tp_btf/sched_migrate_task",
    "Task migrations started on each CPU (the CPU that moved the task)."
);

pub static METRICS: &[&MetricDesc] = &[&CONTEXT_SWITCHES, &SWITCHES_BY_KIND, &MIGRATIONS];

/// The programs this source attaches (config `bpf_disable` takes these names).
pub const PROGRAMS: &[&str] = &[PROG_SCHED_SWITCH, PROG_SCHED_MIGRATE];

/// (slot, metric, kind label) read each tick.
const SLOTS: [(u32, &MetricDesc, &str); 4] = [
    (SLOT_CONTEXT_SWITCHES, &CONTEXT_SWITCHES, ""),
    (SLOT_VOLUNTARY, &SWITCHES_BY_KIND, "voluntary"),
    (SLOT_INVOLUNTARY, &SWITCHES_BY_KIND, "involuntary"),
    (SLOT_MIGRATIONS, &MIGRATIONS, ""),
];

pub struct SchedSource {
    counters: PerCpuArray<MapData, u64>,
    /// Which of SLOTS have an attached program behind them.
    live: [bool; 4],
    /// Per slot, indexed by CPU number.
    series: [Vec<SeriesId>; 4],
}

/// Load and attach one `tp_btf` program.
fn attach_one(bpf: &mut Bpf, name: &str) -> Result<(), BpfError> {
    let what = format!("tp_btf/{name}");
    let prog: &mut BtfTracePoint = bpf
        .ebpf
        .program_mut(name)
        .ok_or_else(|| BpfError::Kernel { what: what.clone(), cause: "program missing from the object".into() })?
        .try_into()
        .map_err(|e| BpfError::kernel(&what, &e))?;
    prog.load(name, &bpf.btf).map_err(|e| BpfError::kernel(format!("loading {what}"), &e))?;
    prog.attach().map_err(|e| BpfError::kernel(format!("attaching {what}"), &e))?;
    Ok(())
}

impl SchedSource {
    /// Load and attach the scheduler programs not in `disabled`, and take their map. A
    /// program that fails is one warning and its series are left out; `Err` only when
    /// nothing could be attached.
    pub fn attach(bpf: &mut Bpf, disabled: &[String]) -> Result<Self, BpfError> {
        let mut attached = |name: &str| -> Result<bool, BpfError> {
            if disabled.iter().any(|d| d == name) {
                return Ok(false);
            }
            match attach_one(bpf, name) {
                Ok(()) => Ok(true),
                // Without sched_switch there is little left: report it as the source's failure.
                Err(e) if name == PROG_SCHED_SWITCH => Err(e),
                Err(e) => {
                    warn!("eBPF program {name} disabled: {e}; the other scheduler counters continue");
                    Ok(false)
                }
            }
        };
        let switch = attached(PROG_SCHED_SWITCH)?;
        let migrate = attached(PROG_SCHED_MIGRATE)?;
        if !switch && !migrate {
            return Err(BpfError::Kernel { what: "scheduler programs".into(), cause: "all disabled in config".into() });
        }
        let map = bpf.ebpf.take_map(COUNTERS_MAP).ok_or_else(|| BpfError::Kernel {
            what: COUNTERS_MAP.into(),
            cause: "map missing from the object".into(),
        })?;
        let counters = PerCpuArray::try_from(map).map_err(|e| BpfError::kernel(COUNTERS_MAP, &e))?;
        Ok(SchedSource { counters, live: [switch, switch, switch, migrate], series: Default::default() })
    }
}

impl Source for SchedSource {
    fn name(&self) -> &'static str {
        "sched"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        for (i, (slot, desc, kind)) in SLOTS.iter().enumerate() {
            if !self.live[i] {
                continue;
            }
            let values = self.counters.get(slot, 0).map_err(|source| SourceError::Map { map: COUNTERS_MAP, source })?;
            let ts = now_ms();
            let series = &mut self.series[i];
            for (cpu, value) in values.iter().enumerate() {
                if series.len() <= cpu {
                    let label = cpu.to_string();
                    series.push(out.series(desc, &[("cpu", &label), ("kind", kind)]));
                }
                out.push(series[cpu], ts, *value as f64);
            }
        }
        Ok(())
    }
}
