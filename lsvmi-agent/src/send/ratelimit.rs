//! Egress rate limit (LSVMI's bandwidth control): a token bucket in bytes, shared by every
//! sender of the agent. `bytes_per_second` refills it; `burst_bytes` is its size, so a
//! backlog after an outage drains at the cap while a single large batch can still go at
//! once. A batch larger than the bucket waits for a full bucket and then goes, leaving the
//! bucket in debt, so nothing is ever too large to send. Off by default.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(bytes_per_second: u64, burst_bytes: u64) -> Self {
        let burst = burst_bytes.max(1) as f64;
        RateLimit { rate: bytes_per_second.max(1) as f64, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// How long to wait before sending `bytes`; takes them from the bucket at the
    /// instant they may go. That instant is remembered, so the tokens that accrue while
    /// the caller waits are not counted a second time by the next reservation (which
    /// let twice the rate through), and a reservation made while another still waits
    /// queues behind it.
    pub fn reserve(&self, bytes: usize) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = *s;
        // `last` is in the future while an earlier reservation waits.
        let start = last.max(now);
        let tokens = (tokens + start.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        // A batch larger than the bucket needs a full bucket, not more.
        let need = (bytes as f64).min(self.burst);
        let extra = if tokens >= need { 0.0 } else { (need - tokens) / self.rate };
        let send_at = start + Duration::from_secs_f64(extra);
        *s = (tokens + extra * self.rate - bytes as f64, send_at);
        send_at.duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_the_rate() {
        let r = RateLimit::new(1000, 2000);
        assert_eq!(r.reserve(1500), Duration::ZERO);
        // 500 left: 1000 more needs 0.5 s.
        let w = r.reserve(1000);
        assert!((w.as_secs_f64() - 0.5).abs() < 0.05, "{w:?}");
        // Bigger than the bucket: queued behind the 0.5 s reservation, it waits for a full
        // bucket (2 s from empty) and goes at about 2.5 s.
        let w = r.reserve(10_000);
        assert!((w.as_secs_f64() - 2.5).abs() < 0.05, "{w:?}");
        // ... leaving the bucket 8000 in debt: the next 1000 bytes go 9 s after that.
        let w = r.reserve(1000);
        assert!((w.as_secs_f64() - 11.5).abs() < 0.05, "{w:?}");
    }

    #[test]
    fn the_long_run_rate_is_the_configured_one_neither_more_nor_less() {
        // 100 batches of 1000 bytes through a 5000-byte bucket at 10 000 B/s: the first
        // five go at once, the rest one every 0.1 s. Reserving them back to back (as
        // queued senders would) says when the last may go: 9.5 s from now.
        let r = RateLimit::new(10_000, 5_000);
        let last = (0..100).map(|_| r.reserve(1000)).last().unwrap();
        assert!((last.as_secs_f64() - 9.5).abs() < 0.05, "{last:?}");
    }
}
