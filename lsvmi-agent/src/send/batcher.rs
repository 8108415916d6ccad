//! Turns the sampler's per-cycle sample vectors into requests: every `batch_interval`
//! (or sooner when `max_batch_samples` is reached) the pending samples are encoded and
//! queued, or, with `--dry-run`, written to stdout as text.

use std::{io::Write, sync::Arc, sync::atomic::Ordering::Relaxed, time::Duration};

use tokio::sync::mpsc;
use tracing::error;

use super::queue::SendQueue;
use crate::{
    encode::{remote_write::Encoder, text::TextWriter},
    model::{Sample, SharedRegistry},
    stats::Stats,
};

/// Where batches go.
pub enum Output {
    Remote { encoder: Box<Encoder>, queue: Arc<SendQueue> },
    Text(TextWriter),
}

pub struct Batcher {
    pub registry: SharedRegistry,
    pub stats: Arc<Stats>,
    pub output: Output,
    pub interval: Duration,
    pub max_samples: usize,
}

impl Batcher {
    /// Runs until the sampler side of the channel closes; then flushes and closes the queue.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Vec<Sample>>) {
        let mut pending: Vec<Sample> = Vec::new();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(mut samples) => {
                        pending.append(&mut samples);
                        if pending.len() >= self.max_samples {
                            self.flush(&mut pending);
                        }
                    }
                    None => break,
                },
                _ = ticker.tick() => self.flush(&mut pending),
            }
        }
        self.flush(&mut pending);
        if let Output::Remote { queue, .. } = &self.output {
            queue.close();
        }
    }

    fn flush(&mut self, pending: &mut Vec<Sample>) {
        if pending.is_empty() {
            return;
        }
        // The registry is only written when a new series appears; poisoning would mean a
        // source panicked mid-registration, and the table is still consistent then.
        let registry = self.registry.read().unwrap_or_else(|p| p.into_inner());
        match &mut self.output {
            Output::Remote { encoder, queue } => match encoder.encode(&registry, pending) {
                Ok(batch) => queue.push(batch),
                Err(e) => error!(samples = pending.len(), "snappy compression failed, batch dropped: {e}"),
            },
            Output::Text(writer) => {
                let mut out = std::io::stdout().lock();
                let res = writer.write(&registry, pending, &mut out).and_then(|()| out.flush());
                match res {
                    Ok(()) => {
                        self.stats.samples_sent.fetch_add(pending.len() as u64, Relaxed);
                    }
                    Err(e) => error!("writing to stdout: {e}"),
                }
            }
        }
        pending.clear();
    }
}
