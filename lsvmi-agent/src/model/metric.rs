//! Metric metadata, declared once per metric next to the source that produces it.
//! docs/metrics.md is generated from these declarations (see `crate::catalog`).

/// Prometheus metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (resets on reboot or restart); name ends in `_total`.
    Counter,
    /// Any value at the instant of collection.
    Gauge,
    /// One of a histogram's series families: `_bucket{le}`, `_sum`, `_count`
    /// (cumulative, like counters).
    Histogram,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// Everything a reader of the data needs to know about one metric.
#[derive(Debug)]
pub struct MetricDesc {
    /// Full metric name (`proc_stat_cpu_seconds_total`), prefixed by its source.
    pub name: &'static str,
    pub kind: MetricKind,
    /// Base unit (`seconds`, `bytes`) or `""` for plain counts.
    pub unit: &'static str,
    pub help: &'static str,
    /// Label names the source sets (host labels such as `instance` come on top).
    pub labels: &'static [&'static str],
    /// Where the value comes from: a file, or a BPF program and its hook.
    pub source: &'static str,
}
