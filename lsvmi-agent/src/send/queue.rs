//! The bounded queue between the batcher and the sender. Bounded in bytes: when the
//! sink is down, memory stays flat and the oldest batches are dropped, counted and logged.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, atomic::Ordering::Relaxed},
};

use tokio::sync::Notify;

use crate::{
    encode::remote_write::EncodedBatch,
    stats::{DropReason, Stats},
};

pub struct SendQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    max_bytes: usize,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Inner {
    batches: VecDeque<EncodedBatch>,
    bytes: usize,
    closed: bool,
}

impl SendQueue {
    pub fn new(max_bytes: usize, stats: Arc<Stats>) -> Self {
        SendQueue { inner: Mutex::default(), notify: Notify::new(), max_bytes, stats }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // update is a single push/pop plus a byte count), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a batch; if that passes the byte bound, drop the oldest batches first.
    pub fn push(&self, batch: EncodedBatch) {
        let mut dropped_samples = 0;
        let mut dropped_batches = 0;
        {
            let mut q = self.lock();
            while !q.batches.is_empty() && q.bytes + batch.body.len() > self.max_bytes {
                if let Some(old) = q.batches.pop_front() {
                    q.bytes -= old.body.len();
                    dropped_samples += old.samples;
                    dropped_batches += 1;
                }
            }
            q.bytes += batch.body.len();
            q.batches.push_back(batch);
            self.stats.queued_bytes.store(q.bytes as u64, Relaxed);
        }
        if dropped_batches > 0 {
            self.stats.dropped(DropReason::QueueFull, dropped_samples as u64);
            tracing::warn!(
                dropped_batches,
                dropped_samples,
                max_queued_bytes = self.max_bytes,
                "send queue full (the sink is down or too slow): dropped the oldest batches"
            );
        }
        self.notify.notify_one();
    }

    /// The oldest batch, waiting for one; `None` once closed and empty.
    pub async fn pop(&self) -> Option<EncodedBatch> {
        loop {
            {
                let mut q = self.lock();
                if let Some(b) = q.batches.pop_front() {
                    q.bytes -= b.body.len();
                    self.stats.queued_bytes.store(q.bytes as u64, Relaxed);
                    return Some(b);
                }
                if q.closed {
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }

    /// No more pushes; `pop` returns `None` once the queue is drained.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// Empty the queue, returning how many batches and samples were in it.
    pub fn drain(&self) -> (usize, usize) {
        let mut q = self.lock();
        let n = q.batches.len();
        let samples = q.batches.drain(..).map(|b| b.samples).sum();
        q.bytes = 0;
        self.stats.queued_bytes.store(0, Relaxed);
        (n, samples)
    }

    pub fn len(&self) -> (usize, usize) {
        let q = self.lock();
        (q.batches.len(), q.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(len: usize, samples: usize) -> EncodedBatch {
        EncodedBatch { body: vec![0; len].into(), samples, series: 1, uncompressed_len: len }
    }

    #[tokio::test]
    async fn bounded_in_bytes_drops_oldest_and_counts() {
        let stats = Arc::new(Stats::new([]));
        let q = SendQueue::new(250, stats.clone());
        for i in 0..10 {
            q.push(batch(100, i + 1));
        }
        // Only two 100-byte batches fit in 250 bytes: the newest two.
        assert_eq!(q.len(), (2, 200));
        assert_eq!(stats.dropped_total(DropReason::QueueFull), (1..=8).sum::<usize>() as u64);
        assert_eq!(q.pop().await.unwrap().samples, 9);
        q.close();
        assert_eq!(q.pop().await.unwrap().samples, 10);
        assert!(q.pop().await.is_none());
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_bound_is_still_sent() {
        let q = SendQueue::new(10, Arc::new(Stats::new([])));
        q.push(batch(100, 1));
        assert_eq!(q.len(), (1, 100));
    }
}
