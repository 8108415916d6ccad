//! The outbox: every encoded batch on its way to one destination, in order. Memory holds
//! them while the sink keeps up; the disk spool takes over when it does not.
//!
//! One FIFO across both tiers: the sender always takes the oldest batch (the spool's
//! first record when the spool holds anything, else memory's front) and removes it only
//! once it was delivered or rejected. So per-series order holds across retries, spooling,
//! replay and restarts, and a batch is never delivered twice within a run. When the
//! sender reports the sink failing, or memory passes its bound, memory is moved to the
//! spool and new batches go there too until the spool has been replayed: a SIGKILL during
//! an outage loses at most what the spool's fsync policy allows.
//!
//! Without a spool (none configured, or its directory unusable) the outbox is memory
//! only, bounded in bytes, dropping the oldest batches when full.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use tokio::sync::Notify;

use super::spool::{Lost, Spool};
use crate::{
    encode::remote_write::EncodedBatch,
    stats::{DropReason, Stats},
};

pub struct Outbox {
    inner: Mutex<Inner>,
    /// Copies of what the runtime thread asks between operations, kept under the lock
    /// and read without it: a blocking-pool thread may hold the lock across a spool
    /// write and fsync, and the runtime thread (which also runs the sampling tick) must
    /// never wait for that.
    disk: AtomicBool,
    /// The sink is failing: new batches go straight to the spool.
    failing: AtomicBool,
    memory_batches: AtomicUsize,
    memory_bytes: AtomicUsize,
    spooled_samples: AtomicU64,
    notify: Notify,
    max_memory_bytes: usize,
    stats: Arc<Stats>,
}

struct Inner {
    memory: VecDeque<EncodedBatch>,
    bytes: usize,
    spool: Option<Spool>,
    /// The sender's last attempt failed: keep new batches on disk.
    failing: bool,
    closed: bool,
}

impl Outbox {
    pub fn new(max_memory_bytes: usize, spool: Option<Spool>, stats: Arc<Stats>) -> Arc<Self> {
        let outbox = Outbox {
            inner: Mutex::new(Inner { memory: VecDeque::new(), bytes: 0, spool, failing: false, closed: false }),
            disk: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            memory_batches: AtomicUsize::new(0),
            memory_bytes: AtomicUsize::new(0),
            spooled_samples: AtomicU64::new(0),
            notify: Notify::new(),
            max_memory_bytes,
            stats,
        };
        outbox.publish(&outbox.lock());
        Arc::new(outbox)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the state consistent between statements; a poisoned lock
        // (a panic elsewhere while holding it) is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, q: &Inner) {
        self.disk.store(q.spool.as_ref().is_some_and(|s| q.failing || !s.is_empty()), Relaxed);
        self.failing.store(q.failing && q.spool.is_some(), Relaxed);
        self.memory_batches.store(q.memory.len(), Relaxed);
        self.memory_bytes.store(q.bytes, Relaxed);
        self.spooled_samples.store(q.spool.as_ref().map_or(0, |s| s.pending_samples()), Relaxed);
        self.stats.queued_bytes.store(q.bytes as u64, Relaxed);
        if let Some(s) = &q.spool {
            self.stats.spool_bytes.store(s.bytes(), Relaxed);
            self.stats.spool_samples.store(s.pending_samples(), Relaxed);
            self.stats.spool_age_ms.store(s.oldest_age().map_or(0, |a| a.as_millis() as u64), Relaxed);
        }
    }

    fn count_lost(&self, lost: Lost) {
        if lost.corrupt_samples > 0 || lost.corrupt_records > 0 {
            self.stats.dropped(DropReason::SpoolCorrupt, lost.corrupt_samples);
            self.stats.spool_corrupt_records.fetch_add(lost.corrupt_records, Relaxed);
        }
        if lost.dropped_samples > 0 {
            self.stats.dropped(DropReason::SpoolFull, lost.dropped_samples);
            tracing::warn!(
                samples = lost.dropped_samples,
                "spool full (max_bytes or max_age reached): dropped the oldest spooled batches"
            );
        }
    }

    /// Move memory to the spool, oldest first. Blocking file I/O.
    fn spill(&self, q: &mut Inner) {
        let Some(spool) = q.spool.as_mut() else { return };
        while let Some(b) = q.memory.front() {
            match spool.append(b) {
                Ok(lost) => {
                    self.stats.samples_spooled.fetch_add(b.samples as u64, Relaxed);
                    self.count_lost(lost);
                    q.bytes -= b.body.len();
                    q.memory.pop_front();
                }
                Err(e) => {
                    tracing::warn!("spool write failed ({e}); batches stay in memory");
                    return;
                }
            }
        }
    }

    /// Whether the next operation may touch the disk (the spool holds batches, or the
    /// sink is failing so new ones will go there). When not, callers skip the hop to the
    /// blocking thread pool: the common case costs no extra thread wake-up.
    /// Reads no lock (see [`Outbox::disk`]).
    pub fn on_disk(&self) -> bool {
        self.disk.load(Relaxed)
    }

    /// Whether no endpoint takes data and batches go to the spool as they come: then the
    /// sampler hands over every cycle's samples at once, so a crash (SIGKILL, power)
    /// during an outage loses at most the cycle being collected. Reads no lock.
    pub fn spooling_through_outage(&self) -> bool {
        self.failing.load(Relaxed)
    }

    /// Queue a batch. Blocking file I/O when it goes to the spool.
    pub fn push(&self, batch: EncodedBatch) {
        let mut q = self.lock();
        let to_disk = q.spool.as_ref().is_some_and(|s| !s.is_empty())
            || (q.spool.is_some() && (q.failing || q.bytes + batch.body.len() > self.max_memory_bytes));
        if to_disk {
            self.spill(&mut q);
            if q.memory.is_empty()
                && let Some(spool) = q.spool.as_mut()
            {
                match spool.append(&batch) {
                    Ok(lost) => {
                        self.stats.samples_spooled.fetch_add(batch.samples as u64, Relaxed);
                        self.count_lost(lost);
                        self.publish(&q);
                        drop(q);
                        self.notify.notify_one();
                        return;
                    }
                    Err(e) => tracing::warn!("spool write failed ({e}); the batch stays in memory"),
                }
            }
        }
        // Memory only: bounded, oldest dropped.
        let mut dropped = 0;
        while !q.memory.is_empty() && q.bytes + batch.body.len() > self.max_memory_bytes {
            if let Some(old) = q.memory.pop_front() {
                q.bytes -= old.body.len();
                dropped += old.samples as u64;
            }
        }
        if dropped > 0 {
            self.stats.dropped(DropReason::QueueFull, dropped);
            tracing::warn!(
                dropped_samples = dropped,
                max_queued_bytes = self.max_memory_bytes,
                "send queue full and no spool: dropped the oldest batches"
            );
        }
        q.bytes += batch.body.len();
        q.memory.push_back(batch);
        self.publish(&q);
        drop(q);
        self.notify.notify_one();
    }

    /// The oldest batch, without removing it; `None` when empty. Blocking file I/O.
    fn peek_now(&self) -> Result<Option<EncodedBatch>, bool> {
        let mut q = self.lock();
        if let Some(spool) = q.spool.as_mut() {
            let peeked = spool.peek();
            let lost = spool.take_lost();
            self.count_lost(lost);
            match peeked {
                Ok(Some(b)) => return Ok(Some(b)),
                Ok(None) => {}
                Err(e) => tracing::warn!("spool read failed: {e}"),
            }
        }
        match q.memory.front() {
            Some(b) => Ok(Some(b.clone())),
            None => Err(q.closed),
        }
    }

    /// Wait for the oldest batch; `None` once closed and empty.
    pub async fn next(self: &Arc<Self>) -> Option<EncodedBatch> {
        loop {
            let me = self.clone();
            let notified = self.notify.notified();
            let peeked = if self.on_disk() {
                tokio::task::spawn_blocking(move || me.peek_now()).await
            } else {
                Ok(me.peek_now())
            };
            match peeked {
                Ok(Ok(Some(b))) => return Some(b),
                Ok(Err(true)) => return None,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("outbox reader task failed: {e}");
                    return None;
                }
            }
            notified.await;
        }
    }

    /// `batch` (from [`next`](Self::next)) was delivered or rejected: remove it.
    pub fn ack(&self, batch: &EncodedBatch) {
        let mut q = self.lock();
        // The head is the spool's first record when the spool holds any, else memory's.
        let spool_head = q.spool.as_mut().and_then(|s| s.peek().ok().flatten());
        if let Some(head) = spool_head {
            // The spool may have dropped the head to stay in bounds meanwhile; only
            // remove the record that is this batch.
            if head.samples == batch.samples
                && head.body == batch.body
                && let Some(spool) = q.spool.as_mut()
            {
                if let Err(e) = spool.ack() {
                    tracing::warn!("spool: {e}");
                }
                self.stats.samples_replayed.fetch_add(batch.samples as u64, Relaxed);
            }
        } else if q.memory.front().is_some_and(|h| h.body == batch.body)
            && let Some(b) = q.memory.pop_front()
        {
            q.bytes -= b.body.len();
        }
        self.publish(&q);
    }

    /// The sender's view of the sink. While failing, batches go to disk.
    pub fn set_failing(&self, failing: bool) {
        let mut q = self.lock();
        if q.failing == failing {
            return;
        }
        q.failing = failing;
        if failing {
            self.spill(&mut q);
        }
        self.publish(&q);
    }

    /// No more pushes.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Shutdown deadline: spool what memory holds and flush the spool. Returns the
    /// samples left behind in memory (no spool, or it failed) for the caller to count.
    pub fn park(&self) -> u64 {
        let mut q = self.lock();
        self.spill(&mut q);
        if let Some(spool) = q.spool.as_mut()
            && let Err(e) = spool.sync()
        {
            tracing::warn!("spool sync at shutdown: {e}");
        }
        let spooled = q.spool.as_ref().map_or(0, |s| s.pending_samples());
        if spooled > 0 {
            tracing::info!(samples = spooled, "undelivered samples kept in the spool for the next run");
        }
        let left: u64 = q.memory.drain(..).map(|b| b.samples as u64).sum();
        q.bytes = 0;
        self.publish(&q);
        left
    }

    /// (batches in memory, bytes in memory, samples in the spool), as of the last
    /// operation; reads no lock.
    pub fn len(&self) -> (usize, usize, u64) {
        (self.memory_batches.load(Relaxed), self.memory_bytes.load(Relaxed), self.spooled_samples.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::send::spool::{Fsync, SpoolConfig};

    fn batch(n: usize) -> EncodedBatch {
        EncodedBatch { body: Bytes::from(vec![n as u8; 100]), samples: n, series: 1, uncompressed_len: 100 }
    }

    fn spool(dir: &std::path::Path) -> Spool {
        let cfg = SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
            fsync: Fsync::Never,
            segment_bytes: 1000,
        };
        Spool::open(cfg).unwrap().0
    }

    async fn take(o: &Arc<Outbox>) -> usize {
        let b = o.next().await.unwrap();
        o.ack(&b);
        b.samples
    }

    #[tokio::test]
    async fn one_fifo_across_memory_and_spool() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::new([]));
        let o = Outbox::new(1 << 20, Some(spool(dir.path())), stats.clone());
        o.push(batch(1));
        o.push(batch(2));
        // The sink fails while 1 is in flight: memory (1 and 2) moves to disk, 3 follows.
        let inflight = o.next().await.unwrap();
        o.set_failing(true);
        o.push(batch(3));
        assert_eq!(o.len(), (0, 0, 6));
        o.set_failing(false);
        o.ack(&inflight);
        // Fresh data while the spool is replayed goes behind it.
        o.push(batch(4));
        assert_eq!(take(&o).await, 2);
        assert_eq!(take(&o).await, 3);
        assert_eq!(take(&o).await, 4);
        // Spool empty again: memory again.
        o.push(batch(5));
        assert_eq!(o.len(), (1, 100, 0));
        assert_eq!(take(&o).await, 5);
        assert_eq!(stats.samples_spooled.load(Relaxed), 1 + 2 + 3 + 4);
        o.close();
        assert!(o.next().await.is_none());
    }

    #[tokio::test]
    async fn memory_only_is_bounded_and_drops_oldest() {
        let stats = Arc::new(Stats::new([]));
        let o = Outbox::new(250, None, stats.clone());
        for n in 1..=5 {
            o.push(batch(n));
        }
        assert_eq!(o.len().0, 2);
        assert_eq!(stats.dropped_total(DropReason::QueueFull), 1 + 2 + 3);
        assert_eq!(take(&o).await, 4);
    }

    #[tokio::test]
    async fn park_spools_memory_for_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::new(1 << 20, Some(spool(dir.path())), Arc::new(Stats::new([])));
        o.push(batch(7));
        o.push(batch(8));
        assert_eq!(o.park(), 0);
        drop(o);
        let o = Outbox::new(1 << 20, Some(spool(dir.path())), Arc::new(Stats::new([])));
        assert_eq!(take(&o).await, 7);
        assert_eq!(take(&o).await, 8);
    }
}
