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

    /// How long to wait before sending `bytes`; takes them from the bucket.
    pub fn reserve(&self, bytes: usize) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = *s;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        // A batch larger than the bucket needs a full bucket, not more.
        let need = (bytes as f64).min(self.burst);
        let wait = if tokens >= need { 0.0 } else { (need - tokens) / self.rate };
        *s = (tokens - bytes as f64 + wait * self.rate, now);
        Duration::from_secs_f64(wait)
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
        // Bigger than the bucket: waits for a full bucket (about 2 s from empty), then goes.
        let w = r.reserve(10_000);
        assert!(w.as_secs_f64() > 1.5 && w.as_secs_f64() < 2.6, "{w:?}");
    }
}
