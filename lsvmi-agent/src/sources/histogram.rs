//! Kernel histograms (log-linear buckets, `lsvmi_common::hist`) as Prometheus
//! histograms: cumulative `_bucket{le}` counters, `_sum` in seconds and `_count`.
//!
//! Why classic `le` buckets rather than VictoriaMetrics' `vmrange`: `histogram_quantile`
//! works on them in VictoriaMetrics, Prometheus and Grafana alike, and `sum by (le)`
//! merges CPUs. To keep the series count down, a family only exports the buckets
//! between the lowest and highest that ever held a value (plus `+Inf`), and that range
//! is shared by every label set of the family so `sum by (le)` stays consistent.

use lsvmi_common::hist::{BUCKETS, Histogram, upper_bound};

use super::Collector;
use crate::model::{MetricDesc, SeriesId};

/// The three series families of one histogram.
pub struct HistogramDesc {
    pub bucket: MetricDesc,
    pub sum: MetricDesc,
    pub count: MetricDesc,
}

impl HistogramDesc {
    pub const fn metrics(&'static self) -> [&'static MetricDesc; 3] {
        [&self.bucket, &self.sum, &self.count]
    }
}

/// Declare a histogram of seconds:
/// `histogram!(IDENT, "base_seconds", [labels], SOURCE, "help")`.
macro_rules! histogram {
    ($ident:ident, $base:literal, [$($label:literal),*], $source:expr, $help:literal) => {
        pub static $ident: $crate::sources::histogram::HistogramDesc = $crate::sources::histogram::HistogramDesc {
            bucket: $crate::model::MetricDesc {
                name: concat!($base, "_bucket"),
                kind: $crate::model::MetricKind::Histogram,
                unit: "seconds",
                help: concat!($help, " Cumulative count of observations below `le` seconds."),
                labels: &[$($label,)* "le"],
                source: $source,
            },
            sum: $crate::model::MetricDesc {
                name: concat!($base, "_sum"),
                kind: $crate::model::MetricKind::Histogram,
                unit: "seconds",
                help: concat!($help, " Sum of observations."),
                labels: &[$($label),*],
                source: $source,
            },
            count: $crate::model::MetricDesc {
                name: concat!($base, "_count"),
                kind: $crate::model::MetricKind::Histogram,
                unit: "",
                help: concat!($help, " Number of observations."),
                labels: &[$($label),*],
                source: $source,
            },
        };
    };
}

/// `le` of bucket `i`, in seconds.
fn le_label(i: usize) -> String {
    if i >= BUCKETS - 1 { "+Inf".to_string() } else { format!("{}", upper_bound(i) as f64 / 1e9) }
}

struct Member {
    labels: Vec<(&'static str, String)>,
    buckets: Vec<Option<SeriesId>>,
    sum: Option<SeriesId>,
    count: Option<SeriesId>,
}

/// One histogram family: its label sets (e.g. one per CPU) and the shared bucket range.
pub struct HistogramFamily {
    desc: &'static HistogramDesc,
    members: Vec<Member>,
    /// Exported bucket range (inclusive); `lo > hi` until a value arrives.
    lo: usize,
    hi: usize,
}

impl HistogramFamily {
    pub fn new(desc: &'static HistogramDesc) -> Self {
        HistogramFamily { desc, members: Vec::new(), lo: BUCKETS, hi: 0 }
    }

    /// Widen the exported range to the buckets `h` fills; call for every member before
    /// [`push`](Self::push) so all members of a cycle export the same buckets.
    pub fn observe_range(&mut self, h: &Histogram) {
        // +Inf is always exported; the range covers the finite buckets.
        if let Some(first) = h.buckets[..BUCKETS - 1].iter().position(|&c| c > 0) {
            self.lo = self.lo.min(first);
        }
        if let Some(last) = h.buckets[..BUCKETS - 1].iter().rposition(|&c| c > 0) {
            self.hi = self.hi.max(last);
        }
    }

    /// Push member `index` (created with `labels()` on first use).
    pub fn push(
        &mut self,
        out: &mut Collector<'_>,
        index: usize,
        labels: impl FnOnce() -> Vec<(&'static str, String)>,
        ts: i64,
        h: &Histogram,
    ) {
        while self.members.len() <= index {
            self.members.push(Member { labels: Vec::new(), buckets: vec![None; BUCKETS], sum: None, count: None });
        }
        let desc = self.desc;
        let member = &mut self.members[index];
        if member.sum.is_none() {
            member.labels = labels();
        }
        let Member { labels: base, buckets, sum, count } = member;
        let register = |out: &mut Collector<'_>, desc: &'static MetricDesc, le: Option<&str>| {
            let mut l: Vec<(&'static str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
            l.extend(le.map(|le| ("le", le)));
            out.series(desc, &l)
        };
        let mut cumulative = 0u64;
        for (i, &count) in h.buckets.iter().enumerate() {
            cumulative += count;
            if (i < self.lo || i > self.hi) && i != BUCKETS - 1 {
                continue;
            }
            let id = match buckets[i] {
                Some(id) => id,
                None => *buckets[i].insert(register(out, &desc.bucket, Some(&le_label(i)))),
            };
            out.push(id, ts, cumulative as f64);
        }
        let sum = *sum.get_or_insert_with(|| register(out, &desc.sum, None));
        let count = *count.get_or_insert_with(|| register(out, &desc.count, None));
        out.push(sum, ts, h.sum_ns as f64 / 1e9);
        out.push(count, ts, h.count as f64);
    }
}

/// Add `b` into `a`, bucket by bucket (to merge per-CPU histograms).
pub fn merge(a: &mut Histogram, b: &Histogram) {
    for (x, y) in a.buckets.iter_mut().zip(b.buckets.iter()) {
        *x += y;
    }
    a.sum_ns += b.sum_ns;
    a.count += b.count;
}

pub const EMPTY: Histogram = Histogram { buckets: [0; BUCKETS], sum_ns: 0, count: 0 };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Registry, Sample};

    histogram!(TEST, "test_latency_seconds", ["cpu"], "test", "Test.");

    #[test]
    fn exports_the_shared_range_cumulatively() {
        let mut registry = Registry::new(Vec::new());
        let mut samples: Vec<Sample> = Vec::new();
        let mut fam = HistogramFamily::new(&TEST);
        let mut a = EMPTY;
        a.record(1500); // bucket 2 (1280..1536 ns)
        a.record(1_000_000);
        let mut b = EMPTY;
        b.record(100); // bucket 0
        fam.observe_range(&a);
        fam.observe_range(&b);
        let mut out = Collector::new(&mut registry, &mut samples);
        fam.push(&mut out, 0, || vec![("cpu", "0".into())], 1, &a);
        fam.push(&mut out, 1, || vec![("cpu", "1".into())], 1, &b);
        drop(out);
        // Both CPUs export the same buckets: 0..=index(1e6) plus +Inf, plus sum and count.
        let per_cpu = lsvmi_common::hist::index(1_000_000) + 1 + 1 + 2;
        assert_eq!(samples.len(), 2 * per_cpu);
        let values: Vec<f64> = samples[..per_cpu - 2].iter().map(|s| s.value).collect();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "cumulative: {values:?}");
        assert_eq!(values.last(), Some(&2.0));
        assert_eq!(samples[per_cpu - 2].value, 1_001_500.0 / 1e9);
        assert_eq!(samples[per_cpu - 1].value, 2.0);
        assert_eq!(le_label(BUCKETS - 1), "+Inf");
        assert_eq!(le_label(0), "0.000001024");
    }
}
