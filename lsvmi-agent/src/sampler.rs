//! The collection loop, on a thread of its own: on every base tick (100 ms by default)
//! each due source is read and its samples are added to the batch, which goes to the
//! batcher (on the runtime) when [`Cut`] says it is complete — once a second by default.
//! Each source has its own interval (a multiple of the tick) and change-only filter. A
//! source that fails is reported once when it starts failing and once when it recovers;
//! the others carry on. A source that takes longer than its interval, and a tick that
//! could not run on time, are counted and logged, never silently lost.
//!
//! Why a thread: the tick shares nothing with encoding, compression and HTTP (a slow
//! request or a large batch cannot make a tick late), and it costs one sleep and one
//! wake-up on the kernel's timer — no runtime timer, task poll or channel per tick.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Acquire, Ordering::Relaxed, Ordering::Release},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    model::{Sample, SharedRegistry},
    send::batcher::Cut,
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
    /// It panicked: a bug, and its state may be half-updated, so it is not run again.
    off: bool,
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
                off: false,
                malformed: false,
                overrunning: false,
            })
            .collect();
        Sampler { slots, registry, stats, filter: ChangeFilter::default(), base, queue_full: false, triggers: None }
    }

    /// Watch each tick's samples with `engine` (trace triggers).
    pub fn with_triggers(mut self, engine: crate::trace::triggers::Engine) -> Self {
        self.triggers = Some(engine);
        self
    }

    /// Start sampling on a thread of its own. Batches go to `tx`; emptied ones come
    /// back through `recycled` to be filled again.
    pub fn spawn(
        self,
        tx: mpsc::Sender<Vec<Sample>>,
        cut: Arc<Cut>,
        recycled: std::sync::mpsc::Receiver<Vec<Sample>>,
    ) -> std::io::Result<Running> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // Sources hand slow work to the runtime (a trace session's timeline is written
        // on its blocking pool): from this thread too.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let thread = std::thread::Builder::new().name("lsvmi-sampler".into()).spawn(move || {
            let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
            self.run(&Handoff { tx, cut, recycled }, &flag);
        })?;
        Ok(Running { stop, thread })
    }

    fn run(mut self, out: &Handoff, stop: &AtomicBool) {
        // A late tick is taken at once and the schedule continues on the original grid,
        // so timestamps stay ~interval apart; the ticks that could not run are counted.
        let period = u64::try_from(self.base.as_nanos()).unwrap_or(u64::MAX).max(1);
        let every = u64::try_from(out.cut.interval.as_nanos() / u128::from(period)).unwrap_or(u64::MAX).max(1);
        let start = Instant::now();
        let mut batch = Vec::new();
        let mut tick: u64 = 0;
        // The batch goes once this many ticks have run (on the grid of `every`).
        let mut handoff_at = every;
        let mut late = false;
        // systemd: READY after the first tick, WATCHDOG from every tick after.
        let mut watchdog = crate::systemd::Watchdog::from_env();
        let mut runtime = Progress::default();
        let mut ready = false;
        while sleep_until(start, period.saturating_mul(tick), stop) {
            // The grid position of this tick; a jump means ticks were skipped.
            let due = u64::try_from(start.elapsed().as_nanos() / u128::from(period)).unwrap_or(u64::MAX);
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
            let before = batch.len();
            self.cycle(tick, &mut batch);
            tick += 1;
            if !ready {
                crate::systemd::ready(self.slots.len());
                ready = true;
            }
            // The runtime must be taking batches too: when batches wait for it and it
            // took none since the last look (a wedged runtime), the pings stop and the
            // service manager restarts the agent. A slow one (a spool on a slow disk)
            // still takes some.
            if let Some(w) = &mut watchdog {
                w.tick(|| runtime.alive(out.cut.taken(), out.tx.capacity() < out.tx.max_capacity()));
            }
            self.stats.samples_collected.fetch_add((batch.len() - before) as u64, Relaxed);
            if tick < handoff_at && !out.cut.full(batch.len()) {
                continue;
            }
            handoff_at = (tick / every + 1).saturating_mul(every);
            if !batch.is_empty() && !self.hand_over(out, &mut batch) {
                return;
            }
        }
        // Stopping: the last batch waits for room rather than being dropped (the batcher
        // is draining, and nothing ticks any more).
        if !batch.is_empty() && out.tx.blocking_send(batch).is_err() {
            warn!("the batcher ended before the sampler: its last batch was not sent");
        }
    }

    /// Hand the batch over and start the next one; false when the batcher is gone.
    fn hand_over(&mut self, out: &Handoff, batch: &mut Vec<Sample>) -> bool {
        let next = out.recycled.try_recv().unwrap_or_else(|_| Vec::with_capacity(batch.len()));
        let full = std::mem::replace(batch, next);
        let n = full.len() as u64;
        match out.tx.try_send(full) {
            Ok(()) => self.queue_full = false,
            Err(mpsc::error::TrySendError::Full(mut full)) => {
                self.stats.dropped(DropReason::QueueFull, n);
                if !self.queue_full {
                    warn!("batcher is behind: dropping samples until it catches up");
                }
                self.queue_full = true;
                full.clear();
                *batch = full;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
        true
    }

    /// Collect every source due at `tick`, adding their samples to `samples`.
    pub fn cycle(&mut self, tick: u64, samples: &mut Vec<Sample>) {
        let this_tick = samples.len();
        // Not locked for the cycle: the collector locks the registry only to register or
        // retire a series, so an encode on the runtime rarely makes a tick wait.
        let registry: &std::sync::RwLock<_> = &self.registry;
        for slot in &mut self.slots {
            let name = slot.name;
            if slot.off || !tick.is_multiple_of(u64::from(slot.schedule.every_ticks.max(1))) {
                continue;
            }
            let stats = slot.stats.and_then(|i| self.stats.sources.get(i));
            let started = Instant::now();
            let mut out = Collector::change_only(
                registry,
                samples,
                &mut self.filter,
                slot.cycles,
                slot.schedule.full_refresh_every,
            );
            // A panic is caught here so that one source's bug costs that source only
            // (one during a registration poisons the registry's lock, which every user
            // of it shrugs off: the table is consistent between registrations).
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| slot.source.collect(&mut out)))
                .unwrap_or_else(|panic| {
                    slot.off = true;
                    let text = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(SourceError::Panicked(text))
                });
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
                    if slot.off {
                        tracing::error!(
                            source = name,
                            "source turned off until the agent restarts, others continue: {e}"
                        );
                    } else if !slot.failing {
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
            t.observe(&registry.read().unwrap_or_else(|p| p.into_inner()), &samples[this_tick..]);
        }
    }
}

/// Where the sampler's batches go.
struct Handoff {
    tx: mpsc::Sender<Vec<Sample>>,
    cut: Arc<Cut>,
    /// Emptied batches from the batcher: the sampler fills the same vectors again.
    recycled: std::sync::mpsc::Receiver<Vec<Sample>>,
}

/// Whether the runtime takes the batches handed to it, from the count it has taken.
#[derive(Default)]
struct Progress {
    seen: u64,
}

impl Progress {
    /// Alive when nothing waits for it, or it took a batch since the last call.
    fn alive(&mut self, taken: u64, waiting: bool) -> bool {
        let moved = taken != self.seen;
        self.seen = taken;
        moved || !waiting
    }
}

/// The sampler's thread.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Ask the sampler to stop: it hands over its last batch and its thread ends, which
    /// closes the batcher's channel. Returns at once.
    pub fn stop(&self) {
        self.stop.store(true, Release);
        self.thread.thread().unpark();
    }

    /// Wait for the thread to end (after [`Running::stop`]); an error if it panicked.
    pub fn join(self) -> anyhow::Result<()> {
        self.thread.join().map_err(|_| anyhow::anyhow!("the sampler thread panicked"))
    }
}

/// Sleep until `at_ns` after `start`; false when asked to stop (at once, or meanwhile).
/// One `futex` wait on the kernel's timer per tick; an early wake-up sleeps again.
fn sleep_until(start: Instant, at_ns: u64, stop: &AtomicBool) -> bool {
    let Some(at) = start.checked_add(Duration::from_nanos(at_ns)) else {
        return false;
    };
    loop {
        if stop.load(Acquire) {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        std::thread::park_timeout(at - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MetricDesc, MetricKind, Registry};

    static DESC: MetricDesc =
        MetricDesc { name: "n", kind: MetricKind::Gauge, unit: "", help: "", labels: &[], source: "t" };

    /// Blocks its thread for 250 ms on its first run.
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

    /// One sample a cycle, a new value each time (so the change filter passes it); its
    /// series registered once, as real sources do.
    #[derive(Default)]
    struct Count(u32, Option<crate::model::SeriesId>);

    impl Source for Count {
        fn name(&self) -> &'static str {
            "count"
        }

        fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
            let id = *self.1.get_or_insert_with(|| out.series(&DESC, &[]));
            self.0 += 1;
            out.push(id, 0, f64::from(self.0));
            Ok(())
        }
    }

    /// Room for this many batches: more than the tests' runs make.
    const ROOMY: usize = 1024;

    /// Run `source` at `base` for `run`, batches cut by `cut`, with room for `room`
    /// batches and nothing taking them until the sampler stopped; the batches received
    /// and the stats.
    fn sample(
        source: Box<dyn Source>,
        base: Duration,
        cut: Cut,
        run: Duration,
        room: usize,
    ) -> (Vec<Vec<Sample>>, Arc<Stats>) {
        let stats = Arc::new(Stats::new([source.name()]));
        let registry = Registry::new([]).shared();
        let sampler = Sampler::new(vec![(source, Schedule::default())], base, registry, stats.clone());
        let (tx, mut rx) = mpsc::channel(room);
        let (_recycle, recycled) = crate::send::batcher::Batcher::recycling();
        let running = sampler.spawn(tx, Arc::new(cut), recycled).unwrap();
        std::thread::sleep(run);
        running.stop();
        running.join().unwrap();
        let mut batches = Vec::new();
        while let Some(b) = rx.blocking_recv() {
            batches.push(b);
        }
        (batches, stats)
    }

    #[test]
    fn ticks_that_could_not_run_are_counted() {
        let cut = Cut::new(Duration::from_millis(50), 1000, 1 << 20, Vec::new());
        let (_, stats) = sample(Box::new(Stall(0)), Duration::from_millis(50), cut, Duration::from_millis(400), ROOMY);
        // 250 ms blocked at a 50 ms tick: of the four or five ticks due meanwhile, one runs
        // late and the others are skipped.
        assert!(stats.missed_ticks.load(Relaxed) >= 3, "{}", stats.missed_ticks.load(Relaxed));
    }

    #[test]
    fn a_batch_holds_the_cycles_of_a_batch_interval_and_the_last_one_is_not_lost() {
        // Ten 10 ms ticks a batch.
        let cut = Cut::new(Duration::from_millis(100), 1000, 1 << 20, Vec::new());
        let (batches, stats) =
            sample(Box::new(Count::default()), Duration::from_millis(10), cut, Duration::from_millis(500), ROOMY);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        let collected = stats.samples_collected.load(Relaxed);
        // Every sample collected was handed over, the partial batch at the stop too.
        assert_eq!(sizes.iter().sum::<usize>() as u64, collected, "{sizes:?}");
        // Never more than a batch interval's cycles (ticks skipped make a batch smaller),
        // and cycles were batched, not handed over one by one.
        assert!(sizes.iter().all(|n| (1..=10).contains(n)), "{sizes:?}");
        assert!((batches.len() as u64) < collected, "{sizes:?}");
        // In the order collected.
        let values: Vec<f64> = batches.iter().flatten().map(|s| s.value).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    }

    #[test]
    fn a_cycle_without_new_series_does_not_wait_for_an_encode() {
        let stats = Arc::new(Stats::new(["count"]));
        let registry = Registry::new([]).shared();
        let sources: Vec<(Box<dyn Source>, Schedule)> = vec![(Box::new(Count::default()), Schedule::default())];
        let mut sampler = Sampler::new(sources, Duration::from_millis(100), registry.clone(), stats);
        sampler.cycle(0, &mut Vec::new());
        // The batcher encoding a batch holds the registry's read lock meanwhile.
        let encoding = registry.read().unwrap();
        let (done, cycled) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            sampler.cycle(1, &mut samples);
            let _ = done.send(samples.len());
        });
        // The bound only turns a regression (the cycle waiting for the lock) into a
        // failure instead of a hang; the cycle takes microseconds.
        let sent = cycled.recv_timeout(Duration::from_secs(30)).expect("the cycle waited for the encode");
        drop(encoding);
        assert_eq!(sent, 1);
    }

    struct Panics;

    impl Source for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }

        fn collect(&mut self, _: &mut Collector<'_>) -> Result<(), SourceError> {
            panic!("a bug")
        }
    }

    #[test]
    fn a_source_that_panics_is_turned_off_and_the_others_go_on() {
        let stats = Arc::new(Stats::new(["panics", "count"]));
        let registry = Registry::new([]).shared();
        let sources: Vec<(Box<dyn Source>, Schedule)> =
            vec![(Box::new(Panics), Schedule::default()), (Box::new(Count::default()), Schedule::default())];
        let mut sampler = Sampler::new(sources, Duration::from_millis(100), registry, stats.clone());
        let mut samples = Vec::new();
        for tick in 0..3 {
            sampler.cycle(tick, &mut samples);
        }
        assert_eq!(samples.len(), 3, "the other source, every cycle");
        let panics = &stats.sources[0];
        assert_eq!((panics.errors.load(Relaxed), panics.cycles.load(Relaxed)), (1, 1), "run once, then off");
    }

    #[test]
    fn batches_the_batcher_has_no_room_for_are_dropped_and_counted() {
        // Room for one batch, and nobody taking it (a wedged runtime); every cycle a batch,
        // so no last batch waits at the stop.
        let cut = Cut::new(Duration::from_secs(10), 1, 1 << 20, Vec::new());
        let (batches, stats) =
            sample(Box::new(Count::default()), Duration::from_millis(10), cut, Duration::from_millis(200), 1);
        let received: u64 = batches.iter().map(|b| b.len() as u64).sum();
        let dropped = stats.dropped_total(DropReason::QueueFull);
        assert!(dropped > 0);
        assert_eq!(received + dropped, stats.samples_collected.load(Relaxed), "every sample sent or counted");
    }

    #[test]
    fn the_runtime_is_alive_while_it_takes_batches_or_none_wait() {
        let mut p = Progress::default();
        assert!(p.alive(0, false), "nothing handed over yet");
        assert!(p.alive(3, true), "took some since the last look");
        assert!(!p.alive(3, true), "batches wait and it took none: wedged");
        assert!(p.alive(3, false), "idle, nothing waits");
        assert!(p.alive(4, true));
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        // One sample is a full batch (as during an outage, when every cycle is).
        let cut = Cut::new(Duration::from_secs(10), 1, 1 << 20, Vec::new());
        let (batches, stats) =
            sample(Box::new(Count::default()), Duration::from_millis(10), cut, Duration::from_millis(200), ROOMY);
        assert!(batches.len() > 1);
        assert!(batches.iter().all(|b| b.len() == 1));
        assert_eq!(batches.len() as u64, stats.samples_collected.load(Relaxed));
    }
}
