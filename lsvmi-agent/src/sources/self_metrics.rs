//! `lsvmi_*`: the agent's own health, pushed with everything else (once a second).

use std::sync::{Arc, atomic::Ordering::Relaxed};

use super::{Collector, Source, SourceError};
use crate::{
    model::{MetricDesc, MetricKind, SeriesId, now_ms},
    stats::{DropReason, Stats},
};

const SOURCE: &str = "lsvmi agent";

macro_rules! self_metric {
    ($ident:ident, $name:literal, $kind:ident, $unit:literal, $labels:expr, $help:literal) => {
        pub static $ident: MetricDesc = MetricDesc {
            name: $name,
            kind: MetricKind::$kind,
            unit: $unit,
            help: $help,
            labels: $labels,
            source: SOURCE,
        };
    };
}

self_metric!(COLLECTED, "lsvmi_samples_collected_total", Counter, "", &[], "Samples produced by all sources.");
self_metric!(SENT, "lsvmi_samples_sent_total", Counter, "", &[], "Samples accepted by the sink (2xx).");
self_metric!(
    DROPPED,
    "lsvmi_samples_dropped_total",
    Counter,
    "",
    &["reason"],
    "Samples given up, by reason: queue_full (the sink is down or slow and the queue is at its bound), \
     rejected (the sink answered 4xx), shutdown (still queued at the shutdown deadline)."
);
self_metric!(BATCHES, "lsvmi_batches_sent_total", Counter, "", &[], "Remote-write requests accepted by the sink.");
self_metric!(
    FAILURES,
    "lsvmi_send_failures_total",
    Counter,
    "",
    &[],
    "Remote-write attempts that failed (5xx, 429, timeout, connection error) and were retried."
);
self_metric!(
    BYTES,
    "lsvmi_sent_bytes_total",
    Counter,
    "bytes",
    &["encoding"],
    "Bytes of accepted requests: protobuf before compression (encoding=protobuf) and on the wire (encoding=snappy)."
);
self_metric!(QUEUED, "lsvmi_queued_bytes", Gauge, "bytes", &[], "Compressed bytes waiting to be sent.");
self_metric!(SERIES, "lsvmi_series", Gauge, "", &[], "Series registered since start.");
self_metric!(CYCLES, "lsvmi_source_cycles_total", Counter, "", &["source"], "Collection cycles run, per source.");
self_metric!(
    SOURCE_ERRORS,
    "lsvmi_source_errors_total",
    Counter,
    "",
    &["source"],
    "Cycles in which a source could not be read at all (file missing or unreadable, map unreadable)."
);
self_metric!(
    PARSE_ERRORS,
    "lsvmi_source_parse_errors_total",
    Counter,
    "",
    &["source"],
    "Malformed lines skipped by a source's parser; the rest of the input was used."
);

pub static METRICS: &[&MetricDesc] = &[
    &COLLECTED,
    &SENT,
    &DROPPED,
    &BATCHES,
    &FAILURES,
    &BYTES,
    &QUEUED,
    &SERIES,
    &CYCLES,
    &SOURCE_ERRORS,
    &PARSE_ERRORS,
];

pub struct SelfMetrics {
    stats: Arc<Stats>,
    every_ticks: u32,
    ids: Option<Ids>,
}

struct Ids {
    scalars: [SeriesId; 6],
    dropped: [SeriesId; 3],
    bytes: [SeriesId; 2],
    per_source: Vec<[SeriesId; 3]>,
}

impl SelfMetrics {
    pub fn new(stats: Arc<Stats>, every_ticks: u32) -> Self {
        SelfMetrics { stats, every_ticks: every_ticks.max(1), ids: None }
    }
}

impl Source for SelfMetrics {
    fn name(&self) -> &'static str {
        "lsvmi"
    }

    fn every_ticks(&self) -> u32 {
        self.every_ticks
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let s = &*self.stats;
        let ids = self.ids.get_or_insert_with(|| Ids {
            scalars: [&COLLECTED, &SENT, &BATCHES, &FAILURES, &QUEUED, &SERIES].map(|d| out.series(d, &[])),
            dropped: DropReason::ALL.map(|r| out.series(&DROPPED, &[("reason", r.as_str())])),
            bytes: ["protobuf", "snappy"].map(|e| out.series(&BYTES, &[("encoding", e)])),
            per_source: s
                .sources
                .iter()
                .map(|src| [&CYCLES, &SOURCE_ERRORS, &PARSE_ERRORS].map(|d| out.series(d, &[("source", src.name)])))
                .collect(),
        });
        let ts = now_ms();
        let series_count = out.series_count();
        let scalars = [
            s.samples_collected.load(Relaxed),
            s.samples_sent.load(Relaxed),
            s.batches_sent.load(Relaxed),
            s.send_failures.load(Relaxed),
            s.queued_bytes.load(Relaxed),
            series_count as u64,
        ];
        for (id, v) in ids.scalars.iter().zip(scalars) {
            out.push(*id, ts, v as f64);
        }
        for (id, r) in ids.dropped.iter().zip(DropReason::ALL) {
            out.push(*id, ts, s.dropped_total(r) as f64);
        }
        for (id, v) in ids.bytes.iter().zip([s.bytes_uncompressed.load(Relaxed), s.bytes_compressed.load(Relaxed)]) {
            out.push(*id, ts, v as f64);
        }
        for (ids, src) in ids.per_source.iter().zip(&s.sources) {
            for (id, v) in
                ids.iter().zip([src.cycles.load(Relaxed), src.errors.load(Relaxed), src.parse_errors.load(Relaxed)])
            {
                out.push(*id, ts, v as f64);
            }
        }
        Ok(())
    }
}
