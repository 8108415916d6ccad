//! `/proc/stat`: per-CPU time by mode, context switches, interrupts, forks, run queue.

pub mod parse;

use std::path::Path;

use self::parse::{CPU_COLUMNS, ProcStat};
use super::{Collector, Source, SourceError, procfs_file::ProcFile};
use crate::model::{MetricDesc, MetricKind, SeriesId, now_ms};

const SOURCE: &str = "/proc/stat";

pub static CPU_SECONDS: MetricDesc = MetricDesc {
    name: "proc_stat_cpu_seconds_total",
    kind: MetricKind::Counter,
    unit: "seconds",
    help: "Time each CPU spent in each mode (user, nice, system, idle, iowait, irq, softirq, steal). \
           Resolution is one USER_HZ tick (10 ms); the modes of one CPU add up to wall time.",
    labels: &["cpu", "mode"],
    source: SOURCE,
};

pub static CPU_GUEST_SECONDS: MetricDesc = MetricDesc {
    name: "proc_stat_cpu_guest_seconds_total",
    kind: MetricKind::Counter,
    unit: "seconds",
    help: "Time each CPU spent running a virtual CPU of a guest (mode=user) or a niced guest \
           (mode=nice). Already included in proc_stat_cpu_seconds_total user and nice.",
    labels: &["cpu", "mode"],
    source: SOURCE,
};

pub static CONTEXT_SWITCHES: MetricDesc = MetricDesc {
    name: "proc_stat_context_switches_total",
    kind: MetricKind::Counter,
    unit: "",
    help: "Context switches on all CPUs since boot (ctxt).",
    labels: &[],
    source: SOURCE,
};

pub static INTERRUPTS: MetricDesc = MetricDesc {
    name: "proc_stat_interrupts_total",
    kind: MetricKind::Counter,
    unit: "",
    help: "Interrupts serviced since boot, all kinds and CPUs (first number of intr).",
    labels: &[],
    source: SOURCE,
};

pub static FORKS: MetricDesc = MetricDesc {
    name: "proc_stat_forks_total",
    kind: MetricKind::Counter,
    unit: "",
    help: "Processes and threads created since boot (processes).",
    labels: &[],
    source: SOURCE,
};

pub static PROCS_RUNNING: MetricDesc = MetricDesc {
    name: "proc_stat_procs_running",
    kind: MetricKind::Gauge,
    unit: "",
    help: "Runnable threads (running or waiting for a CPU) at the instant of collection.",
    labels: &[],
    source: SOURCE,
};

pub static PROCS_BLOCKED: MetricDesc = MetricDesc {
    name: "proc_stat_procs_blocked",
    kind: MetricKind::Gauge,
    unit: "",
    help: "Threads blocked waiting for I/O at the instant of collection.",
    labels: &[],
    source: SOURCE,
};

pub static BOOT_TIME: MetricDesc = MetricDesc {
    name: "proc_stat_boot_time_seconds",
    kind: MetricKind::Gauge,
    unit: "seconds",
    help: "Boot time of the host, in seconds since the Unix epoch (btime).",
    labels: &[],
    source: SOURCE,
};

/// Every metric this source can emit, for the catalogue in docs/metrics.md.
pub static METRICS: &[&MetricDesc] = &[
    &CPU_SECONDS,
    &CPU_GUEST_SECONDS,
    &CONTEXT_SWITCHES,
    &INTERRUPTS,
    &FORKS,
    &PROCS_RUNNING,
    &PROCS_BLOCKED,
    &BOOT_TIME,
];

/// Column order of a `cpuN` line and the series each column goes to.
const COLUMNS: [(&MetricDesc, &str); CPU_COLUMNS] = [
    (&CPU_SECONDS, "user"),
    (&CPU_SECONDS, "nice"),
    (&CPU_SECONDS, "system"),
    (&CPU_SECONDS, "idle"),
    (&CPU_SECONDS, "iowait"),
    (&CPU_SECONDS, "irq"),
    (&CPU_SECONDS, "softirq"),
    (&CPU_SECONDS, "steal"),
    (&CPU_GUEST_SECONDS, "user"),
    (&CPU_GUEST_SECONDS, "nice"),
];

/// The modes of `proc_stat_cpu_seconds_total`, in column order.
pub fn cpu_modes() -> impl Iterator<Item = &'static str> {
    COLUMNS.iter().filter(|(d, _)| std::ptr::eq(*d, &CPU_SECONDS)).map(|(_, m)| *m)
}

pub struct ProcStatSource {
    file: ProcFile,
    parsed: ProcStat,
    user_hz: f64,
    /// Indexed by CPU number; registered when a CPU first appears.
    cpu_series: Vec<Option<[SeriesId; CPU_COLUMNS]>>,
    /// ctxt, intr, processes, procs_running, procs_blocked, btime.
    scalar_series: Option<[SeriesId; 6]>,
}

impl ProcStatSource {
    /// `user_hz` is the kernel's USER_HZ (sysconf(_SC_CLK_TCK)), passed in so that
    /// fixture trees from other hosts parse the same everywhere.
    pub fn new(procfs_root: &Path, user_hz: u64) -> Self {
        ProcStatSource {
            file: ProcFile::new(procfs_root.join("stat")),
            parsed: ProcStat::default(),
            user_hz: user_hz.max(1) as f64,
            cpu_series: Vec::new(),
            scalar_series: None,
        }
    }
}

impl Source for ProcStatSource {
    fn name(&self) -> &'static str {
        "proc_stat"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let buf = self.file.contents()?;
        // The instant the kernel produced these numbers, as near as we can tell.
        let ts = now_ms();
        let report = parse::parse(buf, &mut self.parsed);
        out.parse_errors(report.bad_lines, report.first_error);

        for cpu in &self.parsed.cpus {
            let idx = cpu.cpu as usize;
            if self.cpu_series.len() <= idx {
                self.cpu_series.resize(idx + 1, None);
            }
            let series = *self.cpu_series[idx].get_or_insert_with(|| {
                let label = cpu.cpu.to_string();
                COLUMNS.map(|(desc, mode)| out.series(desc, &[("cpu", &label), ("mode", mode)]))
            });
            for (col, id) in series.iter().enumerate().take(cpu.columns as usize) {
                out.push(*id, ts, cpu.ticks[col] as f64 / self.user_hz);
            }
        }

        let scalars = *self.scalar_series.get_or_insert_with(|| {
            [&CONTEXT_SWITCHES, &INTERRUPTS, &FORKS, &PROCS_RUNNING, &PROCS_BLOCKED, &BOOT_TIME]
                .map(|d| out.series(d, &[]))
        });
        let p = &self.parsed;
        let values = [p.ctxt, p.intr_total, p.processes, p.procs_running, p.procs_blocked, p.btime];
        for (id, v) in scalars.iter().zip(values) {
            if let Some(v) = v {
                out.push(*id, ts, v as f64);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Registry, Sample};

    fn collect_once(content: &str) -> (Registry, Vec<Sample>, u64) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stat"), content).unwrap();
        let mut src = ProcStatSource::new(dir.path(), 100);
        let mut reg = Registry::new([]);
        let mut samples = Vec::new();
        let mut out = Collector::new(&mut reg, &mut samples);
        src.collect(&mut out).unwrap();
        let (errs, _) = out.take_parse_errors();
        (reg, samples, errs)
    }

    #[test]
    fn converts_ticks_to_seconds_per_cpu_and_mode() {
        let (reg, samples, errs) = collect_once("cpu  0 0 0 0\ncpu1 150 0 0 0 0 0 0 0 0 0\nctxt 7\n");
        assert_eq!(errs, 0);
        let user = samples
            .iter()
            .find(|s| {
                let series = reg.get(s.series).unwrap();
                let l = |name| reg.label(series, name);
                l("cpu") == Some("1")
                    && l("mode") == Some("user")
                    && l("__name__") == Some("proc_stat_cpu_seconds_total")
            })
            .unwrap();
        assert_eq!(user.value, 1.5);
        // 10 columns for cpu1, plus ctxt.
        assert_eq!(samples.len(), 11);
    }

    #[test]
    fn missing_file_is_a_source_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = ProcStatSource::new(dir.path(), 100);
        let mut reg = Registry::new([]);
        let mut samples = Vec::new();
        let err = src.collect(&mut Collector::new(&mut reg, &mut samples)).unwrap_err();
        assert!(err.to_string().contains("stat"), "{err}");
    }
}
