//! `/proc/softirqs`: softirqs run per type per CPU. NET_RX per CPU shows which cores do
//! the receive work; a jump on an isolated core is a latency event.

use std::path::Path;

use super::{
    Collector, Source, SourceError,
    cpu_table::{self, CpuTable},
    procfs_file::ProcFile,
    text::{Memo, Tracked, label},
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
    rows: Tracked<Memo<Vec<Option<SeriesId>>>>,
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
        let online = self.online.refresh();
        let mut short: Option<(usize, String)> = None;
        // A row reads the same when its softirq did not run on any CPU; what its columns
        // mean changes with the online CPUs, so rows are all parsed when those changed.
        let skip_unchanged = !online.changed();
        let mut state = (&mut self.rows, &mut *out, &mut short);
        let skip = |(rows, out, _): &mut (&mut Tracked<Memo<_>>, &mut Collector<'_>, _), name: &[u8], line: &[u8]| {
            skip_unchanged && rows.unchanged(name, line, out, ts)
        };
        let mut report =
            cpu_table::parse_skipping(buf, &mut self.table, &mut state, skip, |(rows, out, short), row| {
                let complete = row.values.len() >= row.cpus.len() && row.description.is_empty();
                if !complete {
                    // Softirq rows have a count per CPU and nothing else: keep what parsed.
                    short.get_or_insert((0, label(row.name))).0 += 1;
                }
                let Memo { ids: series, last } = rows.entry(row.name, || Memo::new(Vec::new()));
                last.start();
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
                    last.push(out, id, ts, value as f64);
                }
                // A short row is parsed (and reported) every cycle.
                if complete {
                    last.parsed(row.line);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_unchanged_rows_sends_what_parsing_them_sends() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(sys.join("devices/system/cpu")).unwrap();
        std::fs::write(sys.join("devices/system/cpu/online"), "0-1\n").unwrap();
        let header = "                    CPU0       CPU1\n";
        let table = |timer: u32| {
            format!("{header}          HI:          1          0\n       TIMER:        {timer}        200\n")
        };
        let contents = [
            table(100),
            table(100),
            table(101),
            format!("{header}          HI:          1\n       TIMER:        101        200\n"),
            table(101),
            "                    CPU0       CPU2\n          HI:          1          0\n       TIMER:        101        200\n"
                .to_owned(),
            table(101),
            table(101),
        ];
        crate::sources::assert_skipping_sends_what_parsing_sends(
            SoftirqsSource::new(dir.path(), &sys),
            SoftirqsSource::new(dir.path(), &sys),
            |text| std::fs::write(dir.path().join("softirqs"), text).unwrap(),
            &contents,
        );
    }
}
