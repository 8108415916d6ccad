//! `/proc/loadavg`: load averages, runnable and total threads, last pid.

use std::path::Path;

use super::{
    Collector, Source, SourceError,
    procfs_file::ProcFile,
    text::{ParseReport, fields, parse_decimal, parse_u64},
};
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
    let mut report = ParseReport::default();
    let mut f = fields(buf);
    let mut out = [0.0; 6];
    for slot in out.iter_mut().take(3) {
        match f.next().and_then(parse_decimal) {
            Some(v) => *slot = v,
            None => {
                report.bad(1, buf, "expected three load averages");
                return Err(report);
            }
        }
    }
    let threads = f.next().and_then(|t| {
        let slash = t.iter().position(|&c| c == b'/')?;
        Some((parse_u64(&t[..slash])?, parse_u64(&t[slash + 1..])?))
    });
    let last = f.next().and_then(parse_u64);
    match (threads, last) {
        (Some((r, t)), Some(l)) => {
            out[3] = r as f64;
            out[4] = t as f64;
            out[5] = l as f64;
            Ok(out)
        }
        _ => {
            report.bad(1, buf, "expected runnable/total and last pid");
            Err(report)
        }
    }
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
