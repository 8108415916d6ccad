//! The shape shared by `/proc/meminfo`, `/proc/vmstat` and `/proc/net/snmp6`: one
//! `key value [unit]` per line, keys that differ between kernels. Each source module
//! supplies how a key maps to a metric and labels; this reads, parses and tracks.

use std::path::Path;

use super::{
    Collector, Source, SourceError,
    procfs_file::ProcFile,
    text::{ParseReport, Tracked, fields, numbered_lines, parse_int},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

/// Where one key goes: its metric, its labels and the factor to base units.
pub struct Mapping {
    pub desc: &'static MetricDesc,
    pub labels: Vec<(&'static str, String)>,
    pub scale: f64,
}

/// Decides, once per key, where the key goes (`None`: not exported).
pub type Classify = fn(key: &[u8], unit: &[u8]) -> Option<Mapping>;

pub struct KeyedSource {
    name: &'static str,
    file: ProcFile,
    classify: Classify,
    /// Per key: its series and scale, or `None` for keys not exported.
    keys: Tracked<Option<(SeriesId, f64)>>,
}

impl KeyedSource {
    pub fn new(name: &'static str, path: impl AsRef<Path>, classify: Classify) -> Self {
        KeyedSource { name, file: ProcFile::new(path.as_ref()), classify, keys: Tracked::default() }
    }
}

impl super::text::SeriesIds for Option<(SeriesId, f64)> {
    fn for_each_id(&self, f: &mut dyn FnMut(SeriesId)) {
        if let Some((id, _)) = self {
            f(*id);
        }
    }
}

/// Split a line into key (trailing `:` dropped), value and unit.
pub fn split_line(line: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let mut f = fields(line);
    let key = f.next()?;
    let key = key.strip_suffix(b":").unwrap_or(key);
    let value = f.next()?;
    let unit = f.next().unwrap_or(b"");
    Some((key, value, unit))
}

impl Source for KeyedSource {
    fn name(&self) -> &'static str {
        self.name
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let buf = self.file.contents()?;
        let ts = now_ms();
        let mut report = ParseReport::default();
        for (lineno, line) in numbered_lines(buf) {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Some((key, value, unit)) = split_line(line) else {
                report.bad(lineno, line, "expected `key value`");
                continue;
            };
            let Some(value) = parse_int(value) else {
                report.bad(lineno, key, "value is not a 64-bit integer");
                continue;
            };
            let classify = self.classify;
            let slot = self.keys.entry(key, || {
                classify(key, unit).map(|m| {
                    let labels: Vec<(&str, &str)> = m.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    (out.series(m.desc, &labels), m.scale)
                })
            });
            if let Some((id, scale)) = slot {
                out.push(*id, ts, value * *scale);
            }
        }
        report.report_to(out);
        self.keys.sweep(out, ts);
        Ok(())
    }
}
