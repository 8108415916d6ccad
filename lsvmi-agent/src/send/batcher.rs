//! Turns the sampler's batches into requests: each batch the sampler hands over is
//! encoded and given to each destination's outbox, or, with `--dry-run`, written to
//! stdout as text.
//!
//! Where a batch ends is decided on the sampler's thread, by [`Cut`]: every
//! `batch_interval`, or sooner when its samples would compress to about
//! `max_batch_bytes` (or reach `max_batch_samples`), and at every cycle while no
//! endpoint takes data (straight to the spool). The runtime thread so wakes once a
//! batch, not once a tick, and never shares a thread with the tick.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::error;

use super::outbox::Outbox;
use crate::{
    encode::{remote_write::Encoder, text::TextWriter},
    model::{Sample, SharedRegistry},
    stats::Stats,
};

/// Samples' room kept between batches at least (24 bytes each).
const KEEP_SAMPLES: usize = 4096;

/// Emptied batches kept for the sampler to fill again.
const RECYCLED: usize = 2;

/// Where batches go.
pub enum Output {
    /// One outbox per destination (several in `replicate` mode).
    Remote {
        encoder: Box<Encoder>,
        outboxes: Vec<Arc<Outbox>>,
    },
    Text(TextWriter),
}

/// Where the sampler ends a batch. Shared by the sampler (which asks after every cycle)
/// and the batcher (which tells it how well the last batch compressed).
pub struct Cut {
    /// A batch at least this often.
    pub interval: Duration,
    max_samples: usize,
    max_bytes: usize,
    /// Compressed bytes per sample of the last batch (f64 bits): turns `max_bytes`
    /// into a count.
    bytes_per_sample: AtomicU64,
    /// While one of them spools through an outage, every cycle is a batch.
    outboxes: Vec<Arc<Outbox>>,
    /// Batches the batcher has taken: the sampler's watchdog checks that it goes up.
    taken: AtomicU64,
}

impl Cut {
    pub fn new(interval: Duration, max_samples: usize, max_bytes: usize, outboxes: Vec<Arc<Outbox>>) -> Cut {
        Cut {
            interval,
            max_samples,
            max_bytes,
            bytes_per_sample: AtomicU64::new(2.0_f64.to_bits()),
            outboxes,
            taken: AtomicU64::new(0),
        }
    }

    /// Batches the batcher has taken so far.
    pub fn taken(&self) -> u64 {
        self.taken.load(Relaxed)
    }

    /// Whether a batch of `samples` must go now rather than at the interval. During an
    /// outage every cycle goes to disk at once: what waits for the batch interval would
    /// die with the process.
    pub fn full(&self, samples: usize) -> bool {
        let per_sample = f64::from_bits(self.bytes_per_sample.load(Relaxed));
        samples >= self.max_samples
            || samples as f64 * per_sample >= self.max_bytes as f64
            || self.outboxes.iter().any(|o| o.spooling_through_outage())
    }

    fn learn(&self, bytes_per_sample: f64) {
        self.bytes_per_sample.store(bytes_per_sample.max(0.1).to_bits(), Relaxed);
    }
}

pub struct Batcher {
    pub registry: SharedRegistry,
    pub stats: Arc<Stats>,
    pub output: Output,
    pub cut: Arc<Cut>,
}

impl Batcher {
    /// Runs until the sampler side of the channel closes; then closes the queues.
    /// Each batch's vector, emptied, goes back to the sampler through `recycle`.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Vec<Sample>>, recycle: std::sync::mpsc::SyncSender<Vec<Sample>>) {
        // The sizes of the last two batches: the smaller is the usual size (a burst is
        // one batch), so a burst's vector is not kept for long.
        let mut recent = [0usize; 2];
        while let Some(mut batch) = rx.recv().await {
            self.cut.taken.fetch_add(1, Relaxed);
            let len = batch.len();
            if let Some(b) = self.flush(&mut batch).await {
                self.cut.learn(b);
            }
            recent = [recent[1], len];
            // A burst (every series' first value at start-up, 80 000 on a host of 10 000
            // threads) must not keep its buffer for the agent's life: room for twice the
            // usual batch stays.
            let keep = 2 * recent[0].min(recent[1]).max(KEEP_SAMPLES);
            if batch.capacity() > keep {
                batch.shrink_to(keep);
            }
            // Full (the sampler took none lately) or gone: the vector is freed here.
            let _ = recycle.try_send(batch);
        }
        if let Output::Remote { outboxes, .. } = &self.output {
            outboxes.iter().for_each(|o| o.close());
        }
    }

    /// A channel for emptied batches, sized for the batcher and the sampler.
    pub fn recycling() -> (std::sync::mpsc::SyncSender<Vec<Sample>>, std::sync::mpsc::Receiver<Vec<Sample>>) {
        std::sync::mpsc::sync_channel(RECYCLED)
    }

    /// Encode and hand over a batch, and empty it; returns the compressed bytes per sample.
    async fn flush(&mut self, batch: &mut Vec<Sample>) -> Option<f64> {
        if batch.is_empty() {
            return None;
        }
        let encoded = {
            match &mut self.output {
                // Locks the registry block by block (see `RegistryRead`).
                Output::Remote { encoder, .. } => Some(encoder.encode(&*self.registry, batch)),
                Output::Text(writer) => {
                    // --dry-run: a debugging aid, locked for the whole batch.
                    // The registry is only written when a new series appears; poisoning
                    // would mean a source panicked mid-registration, and the table is
                    // still consistent then.
                    let registry = self.registry.read().unwrap_or_else(|p| p.into_inner());
                    let mut out = std::io::stdout().lock();
                    let res = writer.write(&registry, batch, &mut out).and_then(|()| out.flush());
                    match res {
                        Ok(()) => {
                            self.stats.samples_sent.fetch_add(batch.len() as u64, Relaxed);
                        }
                        Err(e) => error!("writing to stdout: {e}"),
                    }
                    None
                }
            }
        };
        let mut ratio = None;
        if let (Some(result), Output::Remote { outboxes, .. }) = (encoded, &self.output) {
            match result {
                Ok(request) => {
                    ratio = Some(request.body.len() as f64 / request.samples.max(1) as f64);
                    for outbox in outboxes {
                        // The outbox may write to the spool: file I/O off the runtime thread.
                        let (o, b) = (outbox.clone(), request.clone());
                        if !o.on_disk() {
                            o.push(b);
                        } else if let Err(e) = tokio::task::spawn_blocking(move || o.push(b)).await {
                            error!("outbox task failed: {e}");
                        }
                    }
                }
                Err(e) => error!(samples = batch.len(), "snappy compression failed, batch dropped: {e}"),
            }
        }
        batch.clear();
        ratio
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_full_at_its_sample_count_or_its_compressed_size() {
        let cut = Cut::new(Duration::from_secs(1), 1000, 1024, Vec::new());
        // Before any batch: 2 bytes a sample guessed, so 512 samples make 1 KiB.
        assert!(!cut.full(511));
        assert!(cut.full(512));
        // Batches compress to 0.5 bytes a sample: the count rules.
        cut.learn(0.5);
        assert!(!cut.full(999));
        assert!(cut.full(1000));
        // A nonsense ratio cannot make every sample a batch of its own.
        cut.learn(0.0);
        assert!(!cut.full(999));
    }
}
