//! The collection loop: on every base tick (100 ms by default) each due source is read
//! and its samples are handed to the batcher. A source that fails is reported once
//! when it starts failing and once when it recovers; the others carry on.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    model::{Sample, SharedRegistry},
    sources::{Collector, Source},
    stats::{DropReason, Stats},
};

struct Slot {
    source: Box<dyn Source>,
    failing: bool,
    malformed: bool,
}

pub struct Sampler {
    slots: Vec<Slot>,
    registry: SharedRegistry,
    stats: Arc<Stats>,
    queue_full: bool,
}

impl Sampler {
    pub fn new(sources: Vec<Box<dyn Source>>, registry: SharedRegistry, stats: Arc<Stats>) -> Self {
        let slots = sources.into_iter().map(|source| Slot { source, failing: false, malformed: false }).collect();
        Sampler { slots, registry, stats, queue_full: false }
    }

    pub async fn run(mut self, interval: Duration, tx: mpsc::Sender<Vec<Sample>>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        // A late tick is taken at once and the schedule continues from the original
        // grid, so timestamps stay ~interval apart.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut tick: u64 = 0;
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                _ = ticker.tick() => {}
            }
            let samples = self.cycle(tick);
            tick += 1;
            if samples.is_empty() {
                continue;
            }
            let n = samples.len() as u64;
            self.stats.samples_collected.fetch_add(n, Relaxed);
            match tx.try_send(samples) {
                Ok(()) => self.queue_full = false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.stats.dropped(DropReason::QueueFull, n);
                    if !self.queue_full {
                        warn!("batcher is behind: dropping samples until it catches up");
                    }
                    self.queue_full = true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    }

    /// Collect every source due at `tick`.
    pub fn cycle(&mut self, tick: u64) -> Vec<Sample> {
        let mut samples = Vec::new();
        let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
        for slot in &mut self.slots {
            let name = slot.source.name();
            if !tick.is_multiple_of(u64::from(slot.source.every_ticks().max(1))) {
                continue;
            }
            let stats = self.stats.source(name);
            if let Some(s) = stats {
                s.cycles.fetch_add(1, Relaxed);
            }
            let mut out = Collector::new(&mut registry, &mut samples);
            let result = slot.source.collect(&mut out);
            let (bad, first) = out.take_parse_errors();
            match result {
                Ok(()) if slot.failing => {
                    slot.failing = false;
                    info!(source = name, "source recovered");
                }
                Ok(()) => {}
                Err(e) => {
                    if let Some(s) = stats {
                        s.errors.fetch_add(1, Relaxed);
                    }
                    if !slot.failing {
                        warn!(source = name, "source failed, others continue (retried every cycle): {e}");
                    }
                    slot.failing = true;
                }
            }
            if bad > 0 {
                if let Some(s) = stats {
                    s.parse_errors.fetch_add(bad, Relaxed);
                }
                if !slot.malformed {
                    let first = first.map(|f| f.to_string()).unwrap_or_default();
                    warn!(
                        source = name,
                        lines = bad,
                        "malformed lines skipped, the rest used (counted in lsvmi_source_parse_errors_total): first at {first}"
                    );
                }
            }
            slot.malformed = bad > 0;
        }
        samples
    }
}
