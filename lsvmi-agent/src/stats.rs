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
    /// Still queued when the shutdown deadline passed.
    Shutdown = 2,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [DropReason::QueueFull, DropReason::Rejected, DropReason::Shutdown];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug)]
pub struct Stats {
    pub sources: Vec<SourceStats>,
    pub samples_collected: AtomicU64,
    pub samples_sent: AtomicU64,
    samples_dropped: [AtomicU64; 3],
    pub batches_sent: AtomicU64,
    /// Send attempts that failed and will be retried.
    pub send_failures: AtomicU64,
    pub bytes_uncompressed: AtomicU64,
    pub bytes_compressed: AtomicU64,
    /// Compressed bytes waiting to be sent right now.
    pub queued_bytes: AtomicU64,
    /// Base ticks the sampler could not run on time (the previous tick ran long).
    pub missed_ticks: AtomicU64,
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
                    parse_errors: zero(),
                    overruns: zero(),
                    busy_ns: zero(),
                    unchanged: zero(),
                })
                .collect(),
            samples_collected: zero(),
            samples_sent: zero(),
            samples_dropped: [zero(), zero(), zero()],
            batches_sent: zero(),
            send_failures: zero(),
            bytes_uncompressed: zero(),
            bytes_compressed: zero(),
            queued_bytes: zero(),
            missed_ticks: zero(),
        }
    }

    pub fn source(&self, name: &str) -> Option<&SourceStats> {
        self.sources.iter().find(|s| s.name == name)
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
