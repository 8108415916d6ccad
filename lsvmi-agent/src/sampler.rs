//! The collection loop: on every base tick (100 ms by default) each due source is read
//! and its samples are handed to the batcher. Each source has its own interval (a
//! multiple of the tick) and change-only filter. A source that fails is reported once
//! when it starts failing and once when it recovers; the others carry on. A source
//! that takes longer than its interval, and a tick that could not run on time, are
//! counted and logged, never silently lost.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    model::{Sample, SharedRegistry},
    sources::{ChangeFilter, Collector, Source, SourceError},
    stats::{DropReason, Stats},
};

/// How often a source runs and how its output is filtered.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Run every this many base ticks.
    pub every_ticks: u32,
    /// Send unchanged values every this many cycles only (0: send all).
    pub full_refresh_every: u32,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule { every_ticks: 1, full_refresh_every: 0 }
    }
}

struct Slot {
    source: Box<dyn Source>,
    name: &'static str,
    /// Its entry in `Stats::sources`, found once (the lookup compares names).
    stats: Option<usize>,
    schedule: Schedule,
    interval: Duration,
    cycles: u64,
    failing: bool,
    malformed: bool,
    overrunning: bool,
}

pub struct Sampler {
    slots: Vec<Slot>,
    registry: SharedRegistry,
    stats: Arc<Stats>,
    filter: ChangeFilter,
    base: Duration,
    queue_full: bool,
    /// Samples of the last cycle: the next cycle's vector starts at that size, instead
    /// of growing to it by doubling (a realloc and copy per doubling, every tick).
    last_len: usize,
    /// Trace triggers watching each tick's samples (none configured: nothing done).
    triggers: Option<crate::trace::triggers::Engine>,
}

impl Sampler {
    pub fn new(
        sources: Vec<(Box<dyn Source>, Schedule)>,
        base: Duration,
        registry: SharedRegistry,
        stats: Arc<Stats>,
    ) -> Self {
        let slots = sources
            .into_iter()
            .map(|(source, schedule)| Slot {
                name: source.name(),
                stats: stats.sources.iter().position(|s| s.name == source.name()),
                source,
                schedule,
                interval: base * schedule.every_ticks.max(1),
                cycles: 0,
                failing: false,
                malformed: false,
                overrunning: false,
            })
            .collect();
        Sampler {
            slots,
            registry,
            stats,
            filter: ChangeFilter::default(),
            base,
            queue_full: false,
            triggers: None,
            last_len: 0,
        }
    }

    /// Watch each tick's samples with `engine` (trace triggers).
    pub fn with_triggers(mut self, engine: crate::trace::triggers::Engine) -> Self {
        self.triggers = Some(engine);
        self
    }

    pub async fn run(mut self, tx: mpsc::Sender<Vec<Sample>>, mut stop: watch::Receiver<bool>) {
        // A late tick is taken at once and the schedule continues on the original grid,
        // so timestamps stay ~interval apart; the ticks that could not run are counted.
        let mut ticker = crate::ticker::Ticker::new(self.base);
        let mut tick: u64 = 0;
        let mut late = false;
        // systemd: READY after the first tick, WATCHDOG from every tick after.
        let mut watchdog = crate::systemd::Watchdog::from_env();
        let mut ready = false;
        loop {
            let periods = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                periods = ticker.tick() => periods,
            };
            // The grid position of this tick; a jump means ticks were skipped.
            let due = tick + periods - 1;
            if due > tick {
                self.stats.missed_ticks.fetch_add(due - tick, Relaxed);
                if !late {
                    warn!(missed = due - tick, "sampler fell behind: ticks skipped (lsvmi_sampler_missed_ticks_total)");
                }
                late = true;
                tick = due;
            } else {
                late = false;
            }
            let samples = self.cycle(tick);
            tick += 1;
            if !ready {
                crate::systemd::ready(self.slots.len());
                ready = true;
            }
            if let Some(w) = &mut watchdog {
                w.tick();
            }
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
        let mut samples = Vec::with_capacity(self.last_len);
        let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
        for slot in &mut self.slots {
            let name = slot.name;
            if !tick.is_multiple_of(u64::from(slot.schedule.every_ticks.max(1))) {
                continue;
            }
            let stats = slot.stats.and_then(|i| self.stats.sources.get(i));
            let started = Instant::now();
            let mut out = Collector::change_only(
                &mut registry,
                &mut samples,
                &mut self.filter,
                slot.cycles,
                slot.schedule.full_refresh_every,
            );
            let result = slot.source.collect(&mut out);
            let (bad, first) = out.take_parse_errors();
            let unchanged = out.unchanged();
            let timeouts = out.timeouts();
            slot.cycles += 1;
            let took = started.elapsed();
            if let Some(s) = stats {
                s.cycles.fetch_add(1, Relaxed);
                s.unchanged.fetch_add(unchanged, Relaxed);
                s.timeouts.fetch_add(timeouts, Relaxed);
                s.busy_ns.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
            }
            if took > slot.interval {
                if let Some(s) = stats {
                    s.overruns.fetch_add(1, Relaxed);
                }
                if !slot.overrunning {
                    warn!(
                        source = name,
                        took_ms = took.as_millis() as u64,
                        interval_ms = slot.interval.as_millis() as u64,
                        "source took longer than its interval (lsvmi_source_overruns_total)"
                    );
                }
            }
            slot.overrunning = took > slot.interval;
            match result {
                Ok(()) if slot.failing => {
                    slot.failing = false;
                    info!(source = name, "source recovered");
                }
                Ok(()) => {}
                Err(e) => {
                    if let Some(s) = stats {
                        let counter = if matches!(e, SourceError::Timeout { .. }) { &s.timeouts } else { &s.errors };
                        counter.fetch_add(1, Relaxed);
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
        if let Some(t) = &mut self.triggers {
            t.observe(&registry, &samples);
        }
        // Cycles differ (sources on longer intervals): the last one's size, not the max.
        self.last_len = samples.len();
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::Registry, sources::Collector};

    /// Blocks the runtime thread for 250 ms on its first run.
    struct Stall(u32);

    impl Source for Stall {
        fn name(&self) -> &'static str {
            "stall"
        }

        fn collect(&mut self, _: &mut Collector<'_>) -> Result<(), SourceError> {
            if self.0 == 0 {
                std::thread::sleep(Duration::from_millis(250));
            }
            self.0 += 1;
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ticks_that_could_not_run_are_counted() {
        let stats = Arc::new(Stats::new(["stall"]));
        let registry = Registry::new([]).shared();
        let sources: Vec<(Box<dyn Source>, Schedule)> = vec![(Box::new(Stall(0)), Schedule::default())];
        let sampler = Sampler::new(sources, Duration::from_millis(50), registry, stats.clone());
        let (tx, _rx) = mpsc::channel(8);
        let (stop_tx, stop_rx) = watch::channel(false);
        let run = tokio::spawn(sampler.run(tx, stop_rx));
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop_tx.send(true).unwrap();
        run.await.unwrap();
        // 250 ms blocked at a 50 ms tick: of the four or five ticks due meanwhile, one runs
        // late and the others are skipped.
        assert!(stats.missed_ticks.load(Relaxed) >= 3, "{}", stats.missed_ticks.load(Relaxed));
    }
}
