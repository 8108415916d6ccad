//! Turns the sampler's per-cycle sample vectors into requests: every `batch_interval`,
//! or sooner when the pending samples would compress to about `max_batch_bytes` (or
//! reach `max_batch_samples`), the pending samples are encoded and handed to each
//! destination's outbox, or, with `--dry-run`, written to stdout as text. While no
//! endpoint takes data, every cycle is handed over as it comes, straight to the spool.

use std::{io::Write, sync::Arc, sync::atomic::Ordering::Relaxed, time::Duration};

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

/// Where batches go.
pub enum Output {
    /// One outbox per destination (several in `replicate` mode).
    Remote {
        encoder: Box<Encoder>,
        outboxes: Vec<Arc<Outbox>>,
    },
    Text(TextWriter),
}

pub struct Batcher {
    pub registry: SharedRegistry,
    pub stats: Arc<Stats>,
    pub output: Output,
    pub interval: Duration,
    pub max_samples: usize,
    pub max_bytes: usize,
}

impl Batcher {
    /// Runs until the sampler side of the channel closes; then flushes and closes the queue.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Vec<Sample>>) {
        let mut pending: Vec<Sample> = Vec::new();
        // Compressed bytes per sample of the last batch: turns max_bytes into a count.
        let mut bytes_per_sample = 2.0_f64;
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(mut samples) => {
                        if pending.is_empty() && samples.len() > pending.capacity() {
                            // A burst (every thread of a large process on its refresh
                            // cycle): take its vector rather than grow ours to copy it.
                            pending = samples;
                        } else {
                            pending.append(&mut samples);
                        }
                        let by_size = pending.len() as f64 * bytes_per_sample >= self.max_bytes as f64;
                        // During an outage every cycle goes to disk at once: what waits
                        // here for the batch interval would die with the process.
                        let outage = matches!(&self.output, Output::Remote { outboxes, .. }
                            if outboxes.iter().any(|o| o.spooling_through_outage()));
                        if (pending.len() >= self.max_samples || by_size || outage)
                            && let Some(b) = self.flush(&mut pending).await {
                                bytes_per_sample = b.max(0.1);
                            }
                    }
                    None => break,
                },
                _ = ticker.tick() => {
                    if let Some(b) = self.flush(&mut pending).await {
                        bytes_per_sample = b.max(0.1);
                    }
                }
            }
        }
        self.flush(&mut pending).await;
        if let Output::Remote { outboxes, .. } = &self.output {
            outboxes.iter().for_each(|o| o.close());
        }
    }

    /// Encode and hand over the pending samples; returns the compressed bytes per sample.
    async fn flush(&mut self, pending: &mut Vec<Sample>) -> Option<f64> {
        if pending.is_empty() {
            return None;
        }
        let encoded = {
            // The registry is only written when a new series appears; poisoning would mean
            // a source panicked mid-registration, and the table is still consistent then.
            let registry = self.registry.read().unwrap_or_else(|p| p.into_inner());
            match &mut self.output {
                Output::Remote { encoder, .. } => Some(encoder.encode(&registry, pending)),
                Output::Text(writer) => {
                    let mut out = std::io::stdout().lock();
                    let res = writer.write(&registry, pending, &mut out).and_then(|()| out.flush());
                    match res {
                        Ok(()) => {
                            self.stats.samples_sent.fetch_add(pending.len() as u64, Relaxed);
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
                Ok(batch) => {
                    ratio = Some(batch.body.len() as f64 / batch.samples.max(1) as f64);
                    for outbox in outboxes {
                        // The outbox may write to the spool: file I/O off the runtime thread.
                        let (o, b) = (outbox.clone(), batch.clone());
                        if !o.on_disk() {
                            o.push(b);
                        } else if let Err(e) = tokio::task::spawn_blocking(move || o.push(b)).await {
                            error!("outbox task failed: {e}");
                        }
                    }
                }
                Err(e) => error!(samples = pending.len(), "snappy compression failed, batch dropped: {e}"),
            }
        }
        let flushed = pending.len();
        pending.clear();
        // A burst (every series' first value at start-up, 80 000 on a host of 10 000
        // threads) must not keep its buffer for the agent's life: room for twice this
        // batch stays.
        let keep = 2 * flushed.max(KEEP_SAMPLES);
        if pending.capacity() > keep {
            pending.shrink_to(keep);
        }
        ratio
    }
}
