//! `/proc/softirqs`: softirqs run per type per CPU. NET_RX per CPU shows which cores do
//! the receive work; a jump on an isolated core is a latency event.

use std::path::Path;

use super::{
    Collector, Source, SourceError,
    cpu_table::{self, CpuTable},
    procfs_file::ProcFile,
    text::{Tracked, label},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

metric!(
    SOFTIRQS,
    "proc_softirqs_total",
    Counter,
    "",
    ["cpu", "type"],
    "/proc/softirqs",
    "Softirqs run since boot, per online CPU and type (HI, TIMER, NET_TX, NET_RX, BLOCK, IRQ_POLL, TASKLET, SCHED, \
     HRTIMER, RCU)."
);

pub static METRICS: &[&MetricDesc] = &[&SOFTIRQS];

pub struct SoftirqsSource {
    file: ProcFile,
    table: CpuTable,
    /// Per type: series indexed by CPU number.
    rows: Tracked<Vec<Option<SeriesId>>>,
    /// The file has a column per *possible* CPU (/proc/stat and /proc/interrupts only
    /// the online ones): the others' columns are skipped.
    online: crate::sources::host::OnlineCpus,
}

impl SoftirqsSource {
    pub fn new(procfs_root: &Path, sysfs_root: &Path) -> Self {
        SoftirqsSource {
            file: ProcFile::new(procfs_root.join("softirqs")),
            table: CpuTable::default(),
            rows: Tracked::default(),
            online: crate::sources::host::OnlineCpus::at(sysfs_root),
        }
    }
}

impl Source for SoftirqsSource {
    fn name(&self) -> &'static str {
        "proc_softirqs"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let buf = self.file.contents()?;
        let ts = now_ms();
        let rows = &mut self.rows;
        let online = self.online.refresh();
        let mut short: Option<(usize, String)> = None;
        let mut report = cpu_table::parse(buf, &mut self.table, |row| {
            if row.values.len() < row.cpus.len() || !row.description.is_empty() {
                // Softirq rows have a count per CPU and nothing else: keep what parsed.
                short.get_or_insert((0, label(row.name))).0 += 1;
            }
            let series = rows.entry(row.name, Vec::new);
            for (cpu, value) in row.per_cpu() {
                let idx = cpu as usize;
                if !online.is_online(idx) {
                    continue;
                }
                if series.len() <= idx {
                    series.resize(idx + 1, None);
                }
                let id = *series[idx].get_or_insert_with(|| {
                    out.series(&SOFTIRQS, &[("cpu", &cpu.to_string()), ("type", &label(row.name))])
                });
                out.push(id, ts, value as f64);
            }
        });
        if let Some((n, name)) = short {
            for _ in 0..n {
                report.bad(0, name.as_bytes(), "fewer counts than CPUs (the counts that parsed are used)");
            }
        }
        report.report_to(out);
        self.rows.sweep(out, ts);
        Ok(())
    }
}
