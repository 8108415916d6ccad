//! Time spent in softirqs per CPU and type, timed in the kernel between
//! tp_btf/softirq_entry and softirq_exit (`lsvmi-ebpf/src/softirq.rs`). /proc/softirqs
//! counts how often each type ran; this says how long, which is what steals time from a
//! latency-critical thread on the same core (NET_RX on a busy NIC queue, for instance).

use lsvmi_common::softirq::{CPU_MAP, CpuSoftirq, NAMES, PROG_ENTRY, PROG_EXIT};

use super::{Collector, Source, SourceError};
use crate::{
    bpf::{Bpf, BpfError, BpfSource, Hook},
    model::{MetricDesc, SeriesId, now_ms},
};

const SOURCE: &str = "BPF tp_btf/softirq_entry, softirq_exit";

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
pub static BPF: BpfSource = BpfSource {
    programs: &[(PROG_ENTRY, Hook::TpBtf), (PROG_EXIT, Hook::TpBtf)],
    needs: &[],
    globals: |_| Vec::new(),
    attach: |bpf, disabled| Ok(Box::new(SoftirqTimeSource::attach(bpf, disabled)?)),
};

pub struct SoftirqTimeSource {
    map: crate::bpf::percpu::PerCpuEntry<CpuSoftirq>,
    /// Per CPU, per vector: (time, runs); empty for a CPU not (yet) online.
    series: Vec<Vec<(SeriesId, SeriesId)>>,
    online: crate::sources::host::OnlineCpus,
}

impl SoftirqTimeSource {
    pub fn attach(bpf: &mut Bpf, disabled: &[String]) -> Result<Self, BpfError> {
        let on = bpf.attach_each("softirq_time", BPF.programs, disabled);
        if !on.iter().all(|&o| o) {
            return Err(BpfError::Kernel { what: "softirq time".into(), cause: "needs both softirq programs".into() });
        }
        let map = bpf.take_per_cpu(CPU_MAP)?;
        Ok(SoftirqTimeSource { map, series: Vec::new(), online: crate::sources::host::OnlineCpus::new() })
    }
}

impl Source for SoftirqTimeSource {
    fn name(&self) -> &'static str {
        "softirq_time"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        self.map.read(0).map_err(|source| SourceError::Map { map: CPU_MAP, source })?;
        let values = self.map.values();
        let ts = now_ms();
        let online = self.online.refresh();
        self.series.resize_with(values.len(), Vec::new);
        for (cpu, per) in self.series.iter_mut().enumerate() {
            if per.is_empty() && online.is_online(cpu) {
                let cpu = cpu.to_string();
                *per = NAMES
                    .iter()
                    .map(|name| {
                        let labels = [("cpu", cpu.as_str()), ("type", *name)];
                        (out.series(&TIME, &labels), out.series(&RUNS, &labels))
                    })
                    .collect();
            }
        }
        for (_, (v, series)) in values.zip(&self.series).enumerate().filter(|(cpu, _)| online.is_online(*cpu)) {
            for (vec, (time, runs)) in series.iter().enumerate() {
                out.push(*time, ts, v.time_ns[vec] as f64 / 1e9);
                out.push(*runs, ts, v.count[vec] as f64);
            }
        }
        Ok(())
    }
}
