//! `/proc/pressure/{cpu,memory,io,irq}` (PSI): time tasks were stalled for want of a
//! resource. The `total` counter (µs) read every 100 ms gives stall time at 100 ms
//! resolution; the kernel's 10 s/60 s/300 s averages are exported too, for dashboards.
//! A resource the kernel does not offer (irq needs CONFIG_IRQ_TIME_ACCOUNTING) is
//! skipped with one log line.

use std::path::Path;

use tracing::info;

use super::{
    Collector, Source, SourceError,
    procfs_file::ProcFile,
    text::{LastParse, ParseReport, fields, numbered_lines, parse_decimal, parse_u64},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

const SOURCE: &str = "/proc/pressure/*";

metric!(
    STALLED,
    "proc_pressure_stalled_seconds_total",
    Counter,
    "seconds",
    ["resource", "kind"],
    SOURCE,
    "Time some (at least one) or all (full) non-idle tasks were stalled on the resource (cpu, memory, io, irq)."
);
metric!(
    AVG,
    "proc_pressure_stalled_ratio",
    Gauge,
    "ratio",
    ["resource", "kind", "window"],
    SOURCE,
    "The kernel's running average of the stalled share of time, 0–1, over window=10s, 60s or 300s."
);

pub static METRICS: &[&MetricDesc] = &[&STALLED, &AVG];

const RESOURCES: [&str; 4] = ["cpu", "memory", "io", "irq"];
const WINDOWS: [&str; 3] = ["10s", "60s", "300s"];

/// One `some …` or `full …` line: averages (percent) and total (µs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Line {
    pub avg: [f64; 3],
    pub total_us: u64,
}

/// Parse a pressure file into its `some` and `full` lines (either may be absent).
pub fn parse(buf: &[u8]) -> (Option<Line>, Option<Line>, ParseReport) {
    let mut report = ParseReport::default();
    let (mut some, mut full) = (None, None);
    for (lineno, line) in numbered_lines(buf) {
        let mut f = fields(line);
        let Some(kind) = f.next() else { continue };
        let slot = match kind {
            b"some" => &mut some,
            b"full" => &mut full,
            _ => {
                report.bad(lineno, kind, "expected some or full");
                continue;
            }
        };
        let mut parsed = Line::default();
        // One bit per known key that parsed: unknown keys (a newer kernel may add some)
        // and repeats must not stand in for a missing one.
        let mut seen = 0u8;
        for kv in f {
            let Some(eq) = kv.iter().position(|&c| c == b'=') else { continue };
            let (k, v) = (&kv[..eq], &kv[eq + 1..]);
            let bit = match k {
                b"avg10" => parse_decimal(v).map(|x| parsed.avg[0] = x).map(|()| 1),
                b"avg60" => parse_decimal(v).map(|x| parsed.avg[1] = x).map(|()| 2),
                b"avg300" => parse_decimal(v).map(|x| parsed.avg[2] = x).map(|()| 4),
                b"total" => parse_u64(v).map(|x| parsed.total_us = x).map(|()| 8),
                _ => None,
            };
            seen |= bit.unwrap_or(0);
        }
        if seen != 0b1111 {
            report.bad(lineno, kind, "expected avg10, avg60, avg300 and total");
            continue;
        }
        *slot = Some(parsed);
    }
    (some, full, report)
}

struct Resource {
    name: &'static str,
    file: ProcFile,
    /// [some, full] × [total, avg10, avg60, avg300]
    series: [Option<[SeriesId; 4]>; 2],
    /// The file as last parsed (it often reads the same: see `text::Memo`).
    last: LastParse,
}

pub struct PressureSource {
    resources: Vec<Resource>,
}

impl PressureSource {
    /// Resources whose file does not exist are left out, once, with a log line.
    pub fn new(procfs_root: &Path) -> Self {
        let mut resources = Vec::new();
        for name in RESOURCES {
            let path = procfs_root.join("pressure").join(name);
            if path.exists() {
                resources.push(Resource {
                    name,
                    file: ProcFile::new(path),
                    series: [None, None],
                    last: LastParse::default(),
                });
            } else {
                info!(source = "proc_pressure", "{} absent: {name} pressure not collected", path.display());
            }
        }
        PressureSource { resources }
    }
}

impl Source for PressureSource {
    fn name(&self) -> &'static str {
        "proc_pressure"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let mut first_error = None;
        let mut read_any = self.resources.is_empty();
        for r in &mut self.resources {
            let buf = match r.file.read() {
                Ok(b) => b,
                Err(e) => {
                    first_error.get_or_insert(SourceError::read(r.file.path(), e));
                    continue;
                }
            };
            read_any = true;
            let ts = now_ms();
            // No stall since the last read, and the averages not yet recomputed (every 2 s).
            if r.last.repeat_if_same(buf, out, ts) {
                continue;
            }
            let (some, full, report) = parse(buf);
            let complete = report.bad_lines == 0;
            report.report_to(out);
            r.last.start();
            for (k, (kind, line)) in [("some", some), ("full", full)].into_iter().enumerate() {
                let Some(line) = line else { continue };
                let name = r.name;
                let ids = *r.series[k].get_or_insert_with(|| {
                    let total = out.series(&STALLED, &[("resource", name), ("kind", kind)]);
                    let avg = WINDOWS.map(|w| out.series(&AVG, &[("resource", name), ("kind", kind), ("window", w)]));
                    [total, avg[0], avg[1], avg[2]]
                });
                r.last.push(out, ids[0], ts, line.total_us as f64 / 1e6);
                for (id, v) in ids[1..].iter().zip(line.avg) {
                    r.last.push(out, *id, ts, v / 100.0);
                }
            }
            if complete {
                r.last.parsed(buf);
            }
        }
        // One unreadable file is reported when nothing could be read; otherwise the
        // readable resources carry on.
        match first_error {
            Some(e) if !read_any => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_an_unchanged_file_sends_what_parsing_it_sends() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pressure")).unwrap();
        for r in RESOURCES {
            std::fs::write(dir.path().join("pressure").join(r), "").unwrap();
        }
        let text = |total: u32| {
            format!(
                "some avg10=0.00 avg60=0.00 avg300=0.00 total={total}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            )
        };
        let contents = [text(5), text(5), text(6), "some avg10=x total=1\n".to_owned(), text(6), text(6), text(6)];
        crate::sources::assert_skipping_sends_what_parsing_sends(
            PressureSource::new(dir.path()),
            PressureSource::new(dir.path()),
            |t| std::fs::write(dir.path().join("pressure/io"), t).unwrap(),
            &contents,
        );
    }

    #[test]
    fn some_and_full() {
        let (some, full, r) = parse(
            b"some avg10=1.50 avg60=0.01 avg300=0.87 total=96575195\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        assert_eq!(r.bad_lines, 0);
        assert_eq!(some.unwrap(), Line { avg: [1.5, 0.01, 0.87], total_us: 96_575_195 });
        assert_eq!(full.unwrap().total_us, 0);
        let (some, _, r) = parse(b"some avg10=x total=1\nweird\n");
        assert!(some.is_none());
        assert_eq!(r.bad_lines, 2);
    }

    #[test]
    fn unknown_or_repeated_keys_do_not_stand_in_for_missing_ones() {
        for line in [
            "some avg10=1 avg60=1 avg300=1 new=5",
            "some avg10=1 avg60=1 total=1 total=1",
            "some avg10=1 avg60=1 avg300=1 total=1 extra=2",
        ] {
            let (some, _, r) = parse(line.as_bytes());
            let complete = line.contains("avg300") && line.contains("total");
            assert_eq!(some.is_some(), complete, "{line}");
            assert_eq!(r.bad_lines, u64::from(!complete), "{line}");
        }
    }
}
