//! Every metric the agent can emit, grouped by source, and the generator of
//! docs/metrics.md (a test fails when the committed file is stale).

use std::fmt::Write as _;

use crate::{
    model::MetricDesc,
    sources::{SourceSpec, specs},
};

/// (section title, config name and default interval, its metrics)
pub fn sources() -> Vec<(&'static str, String, &'static [&'static MetricDesc])> {
    specs()
        .into_iter()
        .map(|SourceSpec { name, title, default_interval, default_enabled, metrics, .. }| {
            let every = humantime::format_duration(default_interval);
            let when = if default_enabled {
                format!("Source `{name}` (config `sources.{name}`), every {every} by default.")
            } else {
                format!(
                    "Source `{name}`, off by default: turn it on with `sources: {{{name}: {{enabled: true}}}}`; \
                     then every {every}."
                )
            };
            (title, when, metrics)
        })
        .collect()
}

/// docs/metrics.md, generated.
pub fn markdown() -> String {
    let mut s = String::from(
        "# Metrics\n\n\
         Generated from the declarations in `lsvmi-agent/src/sources/` by\n\
         `UPDATE_DOCS=1 cargo test -p lsvmi-agent catalog` — do not edit by hand.\n\n\
         Every series also carries `instance` (default: the hostname) and the `labels` of the\n\
         config file. Timestamps are the instant each value was read, in milliseconds.\n",
    );
    for (title, when, metrics) in sources() {
        let when = when.as_str();
        let _ = write!(
            s,
            "\n## {title}\n\n{when}\n\n| metric | type | unit | labels | source | meaning |\n|---|---|---|---|---|---|\n"
        );
        for m in metrics {
            let labels = m.labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ");
            let help = m.help.split_whitespace().collect::<Vec<_>>().join(" ");
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} | {} | {} |",
                m.name,
                m.kind.as_str(),
                m.unit,
                labels,
                m.source,
                help
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::model::MetricKind;

    #[test]
    fn names_follow_prometheus_conventions_and_are_unique() {
        let mut seen = HashSet::new();
        for (_, _, metrics) in sources() {
            for m in metrics {
                assert!(seen.insert(m.name), "duplicate {}", m.name);
                let valid = m.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    && !m.name.starts_with(|c: char| c.is_ascii_digit());
                assert!(valid, "{}", m.name);
                assert_eq!(m.kind == MetricKind::Counter, m.name.ends_with("_total"), "{}", m.name);
                let histogram_part = ["_bucket", "_sum", "_count"].iter().any(|s| m.name.ends_with(s));
                assert_eq!(m.kind == MetricKind::Histogram, histogram_part, "{}", m.name);
                if !m.unit.is_empty() {
                    assert!(m.name.contains(&format!("_{}", m.unit)), "{} lacks its unit {}", m.name, m.unit);
                }
            }
        }
    }

    #[test]
    fn docs_metrics_md_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let want = markdown();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(have == want, "docs/metrics.md is stale: run `UPDATE_DOCS=1 cargo test -p lsvmi-agent catalog`");
    }
}
