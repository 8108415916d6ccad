//! Time spent in softirqs per CPU and type, timed in the kernel between
//! irq:softirq_entry and irq:softirq_exit (`lsvmi-ebpf/src/softirq.rs`). /proc/softirqs
//! counts how often each type ran; this says how long, which is what steals time from a
//! latency-critical thread on the same core (NET_RX on a busy NIC queue, for instance).

use std::path::Path;

use aya::maps::{MapData, PerCpuArray};
use lsvmi_common::softirq::{CPU_MAP, CpuSoftirq, PROG_ENTRY, PROG_EXIT, VECTORS};

use super::{Collector, Source, SourceError};
use crate::{
    bpf::{Bpf, BpfError, Hook, Plain, tracefs::Format},
    model::{MetricDesc, SeriesId, now_ms},
};

const SOURCE: &str = "BPF tracepoint irq:softirq_entry/exit";

metric!(
    TIME,
    "softirq_time_seconds_total",
    Counter,
    "seconds",
    ["cpu", "type"],
    SOURCE,
    "Time each CPU spent running each softirq type (type names as in /proc/softirqs)."
);
metric!(
    RUNS,
    "softirq_runs_total",
    Counter,
    "",
    ["cpu", "type"],
    SOURCE,
    "Completed softirq runs timed by softirq_time_seconds_total."
);

pub static METRICS: &[&MetricDesc] = &[&TIME, &RUNS];
pub const PROGRAMS: &[&str] = &[PROG_ENTRY, PROG_EXIT];

/// Where `vec` is in the record, and the vectors' names.
pub struct Layout {
    pub vec_offset: u32,
    pub names: Vec<String>,
}

impl Layout {
    /// None when the tracepoint's format is not readable (the programs then stay off).
    pub fn discover(tracefs: &Path) -> Option<Layout> {
        let format = Format::read(tracefs, "irq", "softirq_entry").ok()?;
        let vec_offset = u32::from(format.offset("vec")?);
        let symbols = format.symbols("vec");
        let names = (0..VECTORS as u64)
            .map(|v| symbols.iter().find(|(n, _)| *n == v).map_or_else(|| v.to_string(), |(_, s)| s.clone()))
            .collect();
        Some(Layout { vec_offset, names })
    }
}

pub struct SoftirqTimeSource {
    map: PerCpuArray<MapData, Plain<CpuSoftirq>>,
    names: Vec<String>,
    /// Per CPU, per vector: (time, runs).
    series: Vec<Vec<(SeriesId, SeriesId)>>,
}

impl SoftirqTimeSource {
    pub fn attach(bpf: &mut Bpf, disabled: &[String]) -> Result<Self, BpfError> {
        let Some(layout) = bpf.softirq.take() else {
            let cause = match &bpf.tracefs {
                Err(e) => e.clone(),
                Ok(root) => format!("{}/events/irq/softirq_entry/format unreadable or without `vec`", root.display()),
            };
            return Err(BpfError::Kernel { what: "softirq tracepoints".into(), cause });
        };
        let hooks = [(PROG_ENTRY, Hook::Tracepoint("irq")), (PROG_EXIT, Hook::Tracepoint("irq"))];
        let on = bpf.attach_each("softirq_time", &hooks, disabled);
        if !on.iter().all(|&o| o) {
            return Err(BpfError::Kernel { what: "softirq time".into(), cause: "needs both softirq programs".into() });
        }
        let map = PerCpuArray::try_from(bpf.take_map(CPU_MAP)?).map_err(|e| BpfError::kernel(CPU_MAP, &e))?;
        Ok(SoftirqTimeSource { map, names: layout.names, series: Vec::new() })
    }
}

impl Source for SoftirqTimeSource {
    fn name(&self) -> &'static str {
        "softirq_time"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let values = self.map.get(&0, 0).map_err(|source| SourceError::Map { map: CPU_MAP, source })?;
        let ts = now_ms();
        while self.series.len() < values.len() {
            let cpu = self.series.len().to_string();
            let per = self
                .names
                .iter()
                .map(|name| {
                    let labels = [("cpu", cpu.as_str()), ("type", name.as_str())];
                    (out.series(&TIME, &labels), out.series(&RUNS, &labels))
                })
                .collect();
            self.series.push(per);
        }
        for (Plain(v), series) in values.iter().zip(&self.series) {
            for (vec, (time, runs)) in series.iter().enumerate() {
                out.push(*time, ts, v.time_ns[vec] as f64 / 1e9);
                out.push(*runs, ts, v.count[vec] as f64);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_names_from_a_captured_tracefs() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tracefs/debian12-6.18");
        let l = Layout::discover(&root).expect("layout");
        assert_eq!(l.vec_offset, 8);
        assert_eq!(
            l.names,
            ["HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU"]
        );
        assert!(Layout::discover(Path::new("/nonexistent")).is_none());
    }
}
