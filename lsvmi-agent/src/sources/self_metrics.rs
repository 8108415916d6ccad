//! `lsvmi_*`: the agent's own health, pushed with everything else (once a second).

use std::sync::{Arc, atomic::Ordering::Relaxed};

use super::{Collector, Source, SourceError};
use crate::{
    model::{MetricDesc, SeriesId, now_ms},
    stats::{DropReason, Stats},
};

const SOURCE: &str = "lsvmi agent";

metric!(COLLECTED, "lsvmi_samples_collected_total", Counter, "", [], SOURCE, "Samples produced by all sources.");
metric!(SENT, "lsvmi_samples_sent_total", Counter, "", [], SOURCE, "Samples accepted by the sink (2xx).");
metric!(
    DROPPED,
    "lsvmi_samples_dropped_total",
    Counter,
    "",
    ["reason"],
    SOURCE,
    "Samples given up, by reason: queue_full (the sink is down or slow and the queue is at its bound), \
     rejected (the sink answered 4xx), shutdown (still queued at the shutdown deadline), spool_full (the spool \
     reached max_bytes or max_age and dropped its oldest), spool_corrupt (a spooled record could not be read back: \
     the rest of its segment)."
);
metric!(BATCHES, "lsvmi_batches_sent_total", Counter, "", [], SOURCE, "Remote-write requests accepted by the sink.");
metric!(
    FAILURES,
    "lsvmi_send_failures_total",
    Counter,
    "",
    [],
    SOURCE,
    "Remote-write attempts that failed (5xx, 429, timeout, connection error) and were retried."
);
metric!(
    BYTES,
    "lsvmi_sent_bytes_total",
    Counter,
    "bytes",
    ["encoding"],
    SOURCE,
    "Bytes of accepted requests: protobuf before compression (encoding=protobuf) and on the wire (encoding=snappy)."
);
metric!(QUEUED, "lsvmi_queued_bytes", Gauge, "bytes", [], SOURCE, "Compressed bytes waiting to be sent.");
metric!(SERIES, "lsvmi_series", Gauge, "", [], SOURCE, "Series live now (registered and not ended).");
metric!(CYCLES, "lsvmi_source_cycles_total", Counter, "", ["source"], SOURCE, "Collection cycles run, per source.");
metric!(
    SOURCE_ERRORS,
    "lsvmi_source_errors_total",
    Counter,
    "",
    ["source", "reason"],
    SOURCE,
    "Source failures: reason=unreadable for cycles in which it could not be read at all (file missing, map \
     unreadable); reason=timeout for what did not answer in time and was skipped (a mount whose statfs hangs, a netlink dump that \
     did not finish)."
);
metric!(
    PARSE_ERRORS,
    "lsvmi_source_parse_errors_total",
    Counter,
    "",
    ["source"],
    SOURCE,
    "Malformed lines skipped by a source's parser; the rest of the input was used."
);

metric!(
    OVERRUNS,
    "lsvmi_source_overruns_total",
    Counter,
    "",
    ["source"],
    SOURCE,
    "Cycles in which a source took longer than its interval."
);
metric!(
    BUSY,
    "lsvmi_source_busy_seconds_total",
    Counter,
    "seconds",
    ["source"],
    SOURCE,
    "Time spent collecting, per source (its rate is the share of one CPU the source costs)."
);
metric!(
    UNCHANGED,
    "lsvmi_samples_unchanged_total",
    Counter,
    "",
    ["source"],
    SOURCE,
    "Samples not sent because their value had not changed since the last one sent (change-only output)."
);
metric!(
    MISSED_TICKS,
    "lsvmi_sampler_missed_ticks_total",
    Counter,
    "",
    [],
    SOURCE,
    "Base ticks the sampler could not run on time because the previous one ran long."
);
metric!(
    CPU,
    "lsvmi_cpu_seconds_total",
    Counter,
    "seconds",
    ["mode"],
    SOURCE,
    "CPU time of the agent, mode=user or system."
);
metric!(RSS, "lsvmi_resident_memory_bytes", Gauge, "bytes", [], SOURCE, "Resident memory of the agent.");
metric!(
    SPOOLED,
    "lsvmi_samples_spooled_total",
    Counter,
    "",
    [],
    SOURCE,
    "Samples written to the disk spool because no endpoint took them (or memory was full)."
);
metric!(
    REPLAYED,
    "lsvmi_samples_replayed_total",
    Counter,
    "",
    [],
    SOURCE,
    "Spooled samples delivered from the spool (including those a previous run left there)."
);
metric!(SPOOL_BYTES, "lsvmi_spool_bytes", Gauge, "bytes", [], SOURCE, "Size of the disk spool.");
metric!(SPOOL_SAMPLES, "lsvmi_spool_samples", Gauge, "", [], SOURCE, "Samples waiting in the disk spool.");
metric!(
    SPOOL_AGE,
    "lsvmi_spool_oldest_age_seconds",
    Gauge,
    "seconds",
    [],
    SOURCE,
    "Age of the oldest batch waiting in the spool (0 when empty): how far behind delivery is."
);
metric!(
    SPOOL_CORRUPT,
    "lsvmi_spool_corrupt_records_total",
    Counter,
    "",
    [],
    SOURCE,
    "Spool records found torn or corrupt at start (a kill mid-write): skipped, the rest delivered."
);
metric!(
    ENDPOINT_UP,
    "lsvmi_endpoint_up",
    Gauge,
    "",
    ["endpoint"],
    SOURCE,
    "1 when the endpoint took the last batch sent to it (or none was sent yet), 0 after a failure."
);
metric!(
    ENDPOINT_FAILURES,
    "lsvmi_endpoint_failures_total",
    Counter,
    "",
    ["endpoint"],
    SOURCE,
    "Failed attempts (5xx, 429, timeout, connection error) per endpoint."
);

histogram!(
    SEND_LATENCY,
    "lsvmi_send_duration_seconds",
    [],
    SOURCE,
    "Duration of remote-write requests, whatever their outcome (a rate-limit wait included)."
);

/// The source's name (config key and `source` label).
pub const NAME: &str = "lsvmi";

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
    &OVERRUNS,
    &BUSY,
    &UNCHANGED,
    &MISSED_TICKS,
    &CPU,
    &RSS,
    &SPOOLED,
    &REPLAYED,
    &SPOOL_BYTES,
    &SPOOL_SAMPLES,
    &SPOOL_AGE,
    &SPOOL_CORRUPT,
    &ENDPOINT_UP,
    &ENDPOINT_FAILURES,
    &SEND_LATENCY.bucket,
    &SEND_LATENCY.sum,
    &SEND_LATENCY.count,
];

pub struct SelfMetrics {
    stats: Arc<Stats>,
    ids: Option<Ids>,
    send_latency: super::histogram::HistogramFamily,
}

struct Ids {
    scalars: [SeriesId; 13],
    dropped: [SeriesId; DropReason::ALL.len()],
    /// Per endpoint: (up, failures).
    endpoints: Vec<(SeriesId, SeriesId)>,
    bytes: [SeriesId; 2],
    cpu: [SeriesId; 2],
    rss: SeriesId,
    per_source: Vec<[SeriesId; 7]>,
}

impl SelfMetrics {
    pub fn new(stats: Arc<Stats>) -> Self {
        SelfMetrics { stats, ids: None, send_latency: super::histogram::HistogramFamily::new(&SEND_LATENCY) }
    }
}

/// (user, system) CPU seconds and resident bytes of this process.
fn own_usage() -> ([f64; 2], Option<f64>) {
    // SAFETY: getrusage writes one plain-data struct we own; zeroed is a valid value.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = [secs(usage.ru_utime), secs(usage.ru_stime)];
    // statm: size resident shared … in pages.
    let rss = std::fs::read_to_string("/proc/self/statm").ok().and_then(|t| {
        let pages: f64 = t.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * rustix::param::page_size() as f64)
    });
    (cpu, rss)
}

impl Source for SelfMetrics {
    fn name(&self) -> &'static str {
        NAME
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let s = &*self.stats;
        let ids = self.ids.get_or_insert_with(|| Ids {
            scalars: [
                &COLLECTED,
                &SENT,
                &BATCHES,
                &FAILURES,
                &QUEUED,
                &SERIES,
                &MISSED_TICKS,
                &SPOOLED,
                &REPLAYED,
                &SPOOL_BYTES,
                &SPOOL_SAMPLES,
                &SPOOL_AGE,
                &SPOOL_CORRUPT,
            ]
            .map(|d| out.series(d, &[])),
            endpoints: s
                .endpoints
                .get()
                .map(|eps| {
                    eps.iter()
                        .map(|e| {
                            let l = [("endpoint", e.url.as_str())];
                            (out.series(&ENDPOINT_UP, &l), out.series(&ENDPOINT_FAILURES, &l))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            dropped: DropReason::ALL.map(|r| out.series(&DROPPED, &[("reason", r.as_str())])),
            bytes: ["protobuf", "snappy"].map(|e| out.series(&BYTES, &[("encoding", e)])),
            cpu: ["user", "system"].map(|m| out.series(&CPU, &[("mode", m)])),
            rss: out.series(&RSS, &[]),
            per_source: s
                .sources
                .iter()
                .map(|src| {
                    let by_source = |out: &mut Collector<'_>, d| out.series(d, &[("source", src.name)]);
                    let error = |out: &mut Collector<'_>, reason| {
                        out.series(&SOURCE_ERRORS, &[("source", src.name), ("reason", reason)])
                    };
                    [
                        by_source(out, &CYCLES),
                        error(out, "unreadable"),
                        error(out, "timeout"),
                        by_source(out, &PARSE_ERRORS),
                        by_source(out, &OVERRUNS),
                        by_source(out, &BUSY),
                        by_source(out, &UNCHANGED),
                    ]
                })
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
            s.missed_ticks.load(Relaxed),
            s.samples_spooled.load(Relaxed),
            s.samples_replayed.load(Relaxed),
            s.spool_bytes.load(Relaxed),
            s.spool_samples.load(Relaxed),
            s.spool_age_ms.load(Relaxed) / 1000,
            s.spool_corrupt_records.load(Relaxed),
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
            let values = [
                src.cycles.load(Relaxed) as f64,
                src.errors.load(Relaxed) as f64,
                src.timeouts.load(Relaxed) as f64,
                src.parse_errors.load(Relaxed) as f64,
                src.overruns.load(Relaxed) as f64,
                src.busy_ns.load(Relaxed) as f64 / 1e9,
                src.unchanged.load(Relaxed) as f64,
            ];
            for (id, v) in ids.iter().zip(values) {
                out.push(*id, ts, v);
            }
        }
        if let Some(eps) = s.endpoints.get() {
            for ((up, failures), e) in ids.endpoints.iter().zip(eps) {
                out.push(*up, ts, e.up.load(Relaxed) as f64);
                out.push(*failures, ts, e.failures.load(Relaxed) as f64);
            }
        }
        let latency = s.send_latency.snapshot();
        if latency.count > 0 {
            self.send_latency.observe_range(&latency);
            self.send_latency.push(out, 0, Vec::new, ts, &latency);
        }
        let (cpu, rss) = own_usage();
        for (id, v) in ids.cpu.iter().zip(cpu) {
            out.push(*id, ts, v);
        }
        if let Some(rss) = rss {
            out.push(ids.rss, ts, rss);
        }
        Ok(())
    }
}
