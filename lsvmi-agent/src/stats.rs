//! The agent's own counters, updated by the pipeline and read by the `lsvmi` source
//! (`sources/self_metrics.rs`), which pushes them like any other metric.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Per-source health.
#[derive(Debug)]
pub struct SourceStats {
    pub name: &'static str,
    pub cycles: AtomicU64,
    /// Cycles in which the source could not be read at all.
    pub errors: AtomicU64,
    /// Parts of the source that did not answer in time and were skipped (a mount whose
    /// statfs hangs, a netlink dump cut short).
    pub timeouts: AtomicU64,
    /// Malformed lines skipped (the rest of the input was used).
    pub parse_errors: AtomicU64,
    /// Cycles that took longer than the source's interval.
    pub overruns: AtomicU64,
    /// Time spent collecting, in ns.
    pub busy_ns: AtomicU64,
    /// Samples left out because their value had not changed.
    pub unchanged: AtomicU64,
}

/// Why samples were dropped (the `reason` label of `lsvmi_samples_dropped_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The bounded queue towards the sender was full (the sink is down or too slow).
    QueueFull = 0,
    /// The sink answered 4xx (other than 429): retrying would not help.
    Rejected = 1,
    /// Still queued when the shutdown deadline passed and no spool could keep it.
    Shutdown = 2,
    /// The spool reached its size or age bound: its oldest batches went.
    SpoolFull = 3,
    /// A spooled record written by this run could not be read back: the rest of its
    /// segment was given up.
    SpoolCorrupt = 4,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::Shutdown,
        DropReason::SpoolFull,
        DropReason::SpoolCorrupt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
            DropReason::SpoolFull => "spool_full",
            DropReason::SpoolCorrupt => "spool_corrupt",
        }
    }
}

/// One remote-write endpoint's health, for `lsvmi_endpoint_up` and failures.
#[derive(Debug)]
pub struct EndpointStats {
    pub url: String,
    /// 1 when the last attempt succeeded (or none was made yet), 0 after a failure.
    pub up: AtomicU64,
    pub failures: AtomicU64,
}

impl EndpointStats {
    pub fn new(url: String) -> Self {
        EndpointStats { url, up: AtomicU64::new(1), failures: zero() }
    }
}

#[derive(Debug)]
pub struct Stats {
    pub sources: Vec<SourceStats>,
    pub samples_collected: AtomicU64,
    pub samples_sent: AtomicU64,
    samples_dropped: [AtomicU64; 5],
    pub batches_sent: AtomicU64,
    /// Send attempts that failed and will be retried.
    pub send_failures: AtomicU64,
    pub bytes_uncompressed: AtomicU64,
    pub bytes_compressed: AtomicU64,
    /// Compressed bytes waiting to be sent right now.
    pub queued_bytes: AtomicU64,
    /// Base ticks the sampler could not run on time (the previous tick ran long).
    pub missed_ticks: AtomicU64,
    /// Samples written to the disk spool.
    pub samples_spooled: AtomicU64,
    /// Spooled samples delivered (or rejected) from the spool.
    pub samples_replayed: AtomicU64,
    /// Spool size on disk, samples waiting in it, age of its oldest record (ms).
    pub spool_bytes: AtomicU64,
    pub spool_samples: AtomicU64,
    pub spool_age_ms: AtomicU64,
    /// Records found torn or corrupt in the spool at start.
    pub spool_corrupt_records: AtomicU64,
    /// Every endpoint (of every replica), set once at start.
    pub endpoints: std::sync::OnceLock<Vec<std::sync::Arc<EndpointStats>>>,
    /// Duration of remote-write requests (any outcome), log-linear buckets like the BPF
    /// histograms.
    pub send_latency: LatencyHistogram,
}

/// A histogram written by the sender and read by the self-metrics source.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    fn new() -> Self {
        LatencyHistogram {
            buckets: (0..lsvmi_common::hist::BUCKETS).map(|_| zero()).collect(),
            sum_ns: zero(),
            count: zero(),
        }
    }

    pub fn record(&self, d: std::time::Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(b) = self.buckets.get(lsvmi_common::hist::index(ns)) {
            b.fetch_add(1, Relaxed);
        }
        self.sum_ns.fetch_add(ns, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> lsvmi_common::hist::Histogram {
        let mut h = lsvmi_common::hist::Histogram {
            buckets: [0; lsvmi_common::hist::BUCKETS],
            sum_ns: self.sum_ns.load(Relaxed),
            count: self.count.load(Relaxed),
        };
        for (dst, src) in h.buckets.iter_mut().zip(&self.buckets) {
            *dst = src.load(Relaxed);
        }
        h
    }
}

impl Stats {
    pub fn new(source_names: impl IntoIterator<Item = &'static str>) -> Self {
        Stats {
            sources: source_names
                .into_iter()
                .map(|name| SourceStats {
                    name,
                    cycles: zero(),
                    errors: zero(),
                    timeouts: zero(),
                    parse_errors: zero(),
                    overruns: zero(),
                    busy_ns: zero(),
                    unchanged: zero(),
                })
                .collect(),
            samples_collected: zero(),
            samples_sent: zero(),
            samples_dropped: [zero(), zero(), zero(), zero(), zero()],
            batches_sent: zero(),
            send_failures: zero(),
            bytes_uncompressed: zero(),
            bytes_compressed: zero(),
            queued_bytes: zero(),
            missed_ticks: zero(),
            samples_spooled: zero(),
            samples_replayed: zero(),
            spool_bytes: zero(),
            spool_samples: zero(),
            spool_age_ms: zero(),
            spool_corrupt_records: zero(),
            endpoints: std::sync::OnceLock::new(),
            send_latency: LatencyHistogram::new(),
        }
    }

    pub fn dropped(&self, reason: DropReason, samples: u64) {
        self.samples_dropped[reason as usize].fetch_add(samples, Relaxed);
    }

    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.samples_dropped[reason as usize].load(Relaxed)
    }
}

fn zero() -> AtomicU64 {
    AtomicU64::new(0)
}
