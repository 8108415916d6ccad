//! `/proc/loadavg`: load averages, runnable and total threads, last pid. Parsed by the
//! `procfs` crate's core: read once a second, one line, every field covered by its
//! `LoadAverage` (docs/performance.md compares it with the hand parsers kept elsewhere).

use std::path::Path;

use super::{Collector, Source, SourceError, procfs_file::ProcFile, text::ParseReport};
use crate::model::{MetricDesc, SeriesId, now_ms};

const SOURCE: &str = "/proc/loadavg";

metric!(LOAD1, "proc_loadavg_load1", Gauge, "", [], SOURCE, "Load average over 1 minute.");
metric!(LOAD5, "proc_loadavg_load5", Gauge, "", [], SOURCE, "Load average over 5 minutes.");
metric!(LOAD15, "proc_loadavg_load15", Gauge, "", [], SOURCE, "Load average over 15 minutes.");
metric!(
    RUNNABLE,
    "proc_loadavg_runnable_threads",
    Gauge,
    "",
    [],
    SOURCE,
    "Threads runnable at the instant of reading."
);
metric!(THREADS, "proc_loadavg_threads", Gauge, "", [], SOURCE, "Threads that exist at the instant of reading.");
metric!(
    LAST_PID,
    "proc_loadavg_last_pid",
    Gauge,
    "",
    [],
    SOURCE,
    "Most recently assigned pid (its rate is the fork rate)."
);

pub static METRICS: &[&MetricDesc] = &[&LOAD1, &LOAD5, &LOAD15, &RUNNABLE, &THREADS, &LAST_PID];

/// `0.00 0.27 0.33 1/76 4082` → the six values in METRICS order.
pub fn parse(buf: &[u8]) -> Result<[f64; 6], ParseReport> {
    use procfs_core::FromRead as _;
    match procfs_core::LoadAverage::from_read(buf) {
        Ok(l) => Ok([
            two_decimals(l.one),
            two_decimals(l.five),
            two_decimals(l.fifteen),
            f64::from(l.cur),
            f64::from(l.max),
            f64::from(l.latest_pid),
        ]),
        Err(_) => {
            let mut report = ParseReport::default();
            report.bad(1, buf, "expected `load1 load5 load15 runnable/total last_pid`");
            Err(report)
        }
    }
}

/// The crate reads load averages as f32 (0.27 becomes 0.27000001…); the kernel prints
/// them with two decimals (`%lu.%02lu`), which f32's seven digits hold for any real load,
/// so rounding there gives back exactly what the file says.
fn two_decimals(v: f32) -> f64 {
    (f64::from(v) * 100.0).round() / 100.0
}

pub struct LoadavgSource {
    file: ProcFile,
    series: Option<[SeriesId; 6]>,
}

impl LoadavgSource {
    pub fn new(procfs_root: &Path) -> Self {
        LoadavgSource { file: ProcFile::new(procfs_root.join("loadavg")), series: None }
    }
}

impl Source for LoadavgSource {
    fn name(&self) -> &'static str {
        "proc_loadavg"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let buf = self.file.contents()?;
        let ts = now_ms();
        match parse(buf) {
            Ok(values) => {
                let ids = *self.series.get_or_insert_with(|| {
                    [&LOAD1, &LOAD5, &LOAD15, &RUNNABLE, &THREADS, &LAST_PID].map(|d| out.series(d, &[]))
                });
                for (id, v) in ids.iter().zip(values) {
                    out.push(*id, ts, v);
                }
            }
            Err(report) => report.report_to(out),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_rejects() {
        assert_eq!(super::parse(b"0.00 0.27 10.33 1/76 4082\n").unwrap(), [0.0, 0.27, 10.33, 1.0, 76.0, 4082.0]);
        assert!(super::parse(b"0.00 0.27\n").is_err());
        assert!(super::parse(b"0.00 0.27 0.1 1-76 4082\n").is_err());
    }
}
