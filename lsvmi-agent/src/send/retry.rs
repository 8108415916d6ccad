//! Retry decisions in one place (the remote-write 1.0 spec's rules): 2xx done; 5xx, 429 and
//! transport errors retried with capped exponential back-off and jitter; any other 4xx
//! dropped at once (resending the same bytes cannot succeed).

use std::time::Duration;

/// What to do with a batch after one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// The sink answered 5xx or 429: try again after a back-off; the string says why.
    Retry(String),
    /// No answer (connection refused, timeout, DNS): try again after a back-off, or as
    /// soon as the endpoint answers a health check.
    Unreachable(String),
    /// Give up on this batch; the string says why.
    Reject(String),
}

/// Classify an HTTP status. `body` is the response text (already truncated).
pub fn classify(status: u16, body: &str) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        429 | 500..=599 => Verdict::Retry(format!("HTTP {status}: {body}")),
        _ => Verdict::Reject(format!("HTTP {status}: {body}")),
    }
}

/// Exponential back-off: each delay ≥ the previous one, doubling up to `max`, with
/// jitter in the upper half so many agents restarting together spread out.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    base: Duration,
    prev: Duration,
    pub attempts: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max: max.max(min), base: Duration::ZERO, prev: Duration::ZERO, attempts: 0 }
    }

    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        self.base = if self.base.is_zero() { self.min } else { (self.base * 2).min(self.max) };
        let half = self.base / 2;
        let jittered = half + half.mul_f64(fastrand::f64());
        self.prev = jittered.max(self.prev).min(self.max);
        self.prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(classify(204, ""), Verdict::Delivered);
        assert!(matches!(classify(500, "x"), Verdict::Retry(_)));
        assert!(matches!(classify(503, "x"), Verdict::Retry(_)));
        assert!(matches!(classify(429, "x"), Verdict::Retry(_)));
        assert!(matches!(classify(400, "bad"), Verdict::Reject(m) if m.contains("bad")));
        assert!(matches!(classify(404, ""), Verdict::Reject(_)));
    }

    #[test]
    fn delays_never_shrink_and_are_capped() {
        let max = Duration::from_secs(30);
        let mut b = Backoff::new(Duration::from_millis(250), max);
        let mut prev = Duration::ZERO;
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= prev, "{d:?} < {prev:?}");
            assert!(d <= max);
            prev = d;
        }
        assert!(prev >= max / 2);
    }
}
