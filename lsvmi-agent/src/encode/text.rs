//! Prometheus text exposition with timestamps, for `--dry-run`: what would be sent,
//! readable by a person and by promtool-style tools. `# HELP`/`# TYPE` are written the
//! first time a metric family appears in the run.

use std::{
    collections::HashSet,
    io::{self, Write},
};

use crate::model::{Registry, Sample};

#[derive(Default)]
pub struct TextWriter {
    described: HashSet<&'static str>,
}

impl TextWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// One line per sample, in collection order.
    pub fn write(&mut self, registry: &Registry, samples: &[Sample], out: &mut impl Write) -> io::Result<()> {
        for s in samples {
            let Some(series) = registry.get(s.series) else { continue };
            let desc = series.desc;
            if self.described.insert(desc.name) {
                writeln!(out, "# HELP {} {}", desc.name, escape_help(desc.help))?;
                writeln!(out, "# TYPE {} {}", desc.name, desc.kind.as_str())?;
            }
            out.write_all(desc.name.as_bytes())?;
            let mut first = true;
            for (name, value) in registry.labels(series).filter(|(name, _)| *name != "__name__") {
                out.write_all(if first { b"{" } else { b"," })?;
                first = false;
                write!(out, "{name}=\"{}\"", escape_value(value))?;
            }
            if !first {
                out.write_all(b"}")?;
            }
            writeln!(out, " {} {}", format_value(s.value), s.ts_ms)?;
        }
        Ok(())
    }
}

/// Go-style float text as Prometheus writes it: `NaN`, `+Inf`, `-Inf`, else shortest.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn escape_value(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MetricDesc, MetricKind};

    static DESC: MetricDesc = MetricDesc {
        name: "m_total",
        kind: MetricKind::Counter,
        unit: "",
        help: "A help.",
        labels: &["dev"],
        source: "t",
    };
    static BARE: MetricDesc =
        MetricDesc { name: "g", kind: MetricKind::Gauge, unit: "", help: "G.", labels: &[], source: "t" };

    #[test]
    fn writes_exposition_with_timestamps_and_escapes() {
        let mut reg = Registry::new([("instance".to_string(), "h".to_string())]);
        let a = reg.register(&DESC, &[("dev", "a\"b\\c\nd")]);
        let mut bare = Registry::new([]);
        let g = bare.register(&BARE, &[]);
        let mut out = Vec::new();
        let mut w = TextWriter::new();
        w.write(
            &reg,
            &[Sample { series: a, ts_ms: 5, value: 1.5 }, Sample { series: a, ts_ms: 6, value: f64::INFINITY }],
            &mut out,
        )
        .unwrap();
        w.write(&bare, &[Sample { series: g, ts_ms: 7, value: f64::NAN }], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "# HELP m_total A help.\n# TYPE m_total counter\n\
             m_total{dev=\"a\\\"b\\\\c\\nd\",instance=\"h\"} 1.5 5\n\
             m_total{dev=\"a\\\"b\\\\c\\nd\",instance=\"h\"} +Inf 6\n\
             # HELP g G.\n# TYPE g gauge\ng NaN 7\n"
        );
    }
}
