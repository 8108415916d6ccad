//! Scheduler events from BPF: context switches per CPU, counted in the kernel by
//! `tp_btf/sched_switch` (`lsvmi-ebpf/src/sched.rs`) into a per-CPU array that this
//! source reads on the sampling tick. No ring buffer, no wake-up per event.

use aya::{
    maps::{MapData, PerCpuArray},
    programs::BtfTracePoint,
};
use lsvmi_common::sched::{COUNTERS_MAP, PROG_SCHED_SWITCH, SLOT_CONTEXT_SWITCHES};

use super::{Collector, Source, SourceError};
use crate::{
    bpf::{Bpf, BpfError},
    model::{MetricDesc, MetricKind, SeriesId, now_ms},
};

pub static CONTEXT_SWITCHES: MetricDesc = MetricDesc {
    name: "sched_context_switches_total",
    kind: MetricKind::Counter,
    unit: "",
    help: "Context switches on each CPU since the agent started, counted in the kernel at every \
           sched_switch. Exact per CPU, unlike /proc/stat's ctxt which is host-wide.",
    labels: &["cpu"],
    source: "BPF tp_btf/sched_switch",
};

pub static METRICS: &[&MetricDesc] = &[&CONTEXT_SWITCHES];

pub struct SchedSource {
    counters: PerCpuArray<MapData, u64>,
    /// Indexed by CPU number.
    series: Vec<SeriesId>,
}

impl SchedSource {
    /// Load and attach the scheduler programs and take their maps.
    pub fn attach(bpf: &mut Bpf) -> Result<Self, BpfError> {
        let what = format!("tp_btf/{PROG_SCHED_SWITCH}");
        let prog: &mut BtfTracePoint = bpf
            .ebpf
            .program_mut(PROG_SCHED_SWITCH)
            .ok_or_else(|| BpfError::Kernel { what: what.clone(), cause: "program missing from the object".into() })?
            .try_into()
            .map_err(|e| BpfError::kernel(&what, &e))?;
        prog.load(PROG_SCHED_SWITCH, &bpf.btf).map_err(|e| BpfError::kernel(format!("loading {what}"), &e))?;
        prog.attach().map_err(|e| BpfError::kernel(format!("attaching {what}"), &e))?;
        let map = bpf.ebpf.take_map(COUNTERS_MAP).ok_or_else(|| BpfError::Kernel {
            what: COUNTERS_MAP.into(),
            cause: "map missing from the object".into(),
        })?;
        let counters = PerCpuArray::try_from(map).map_err(|e| BpfError::kernel(COUNTERS_MAP, &e))?;
        Ok(SchedSource { counters, series: Vec::new() })
    }
}

impl Source for SchedSource {
    fn name(&self) -> &'static str {
        "sched"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let values = self
            .counters
            .get(&SLOT_CONTEXT_SWITCHES, 0)
            .map_err(|source| SourceError::Map { map: COUNTERS_MAP, source })?;
        let ts = now_ms();
        for (cpu, value) in values.iter().enumerate() {
            if self.series.len() <= cpu {
                let label = cpu.to_string();
                self.series.push(out.series(&CONTEXT_SWITCHES, &[("cpu", &label)]));
            }
            out.push(self.series[cpu], ts, *value as f64);
        }
        Ok(())
    }
}
