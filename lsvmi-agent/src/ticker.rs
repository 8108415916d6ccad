//! The sampler's clock: one wake-up per tick, on the kernel's timer.
//!
//! Why not `tokio::time::interval`: tokio's timer wheel keeps a 100 ms deadline in a
//! 64 ms slot, so the runtime woke once at the slot's boundary only to go back to sleep,
//! and re-arming the interval from inside the runtime wrote its wake-up eventfd, which
//! cost one more empty `epoll_wait`. That was three `epoll_wait`s, one `write` and two
//! sleeps per tick where one sleep is needed (docs/performance.md, "Where the rest
//! goes"). A `timerfd` with the period set once fires on the tick's grid by itself,
//! and its read says how many periods passed, so missed ticks are counted exactly.
//! Should the kernel refuse a timerfd, the tokio interval is used.

use std::{io, os::fd::OwnedFd, time::Duration};

use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use tokio::io::unix::AsyncFd;

pub enum Ticker {
    Kernel(AsyncFd<OwnedFd>),
    /// The interval, and the grid instant of its last tick.
    Tokio(tokio::time::Interval, Option<tokio::time::Instant>),
}

impl Ticker {
    /// Ticks every `period`, the first one at once.
    pub fn new(period: Duration) -> Ticker {
        match timerfd(period) {
            Ok(fd) => Ticker::Kernel(fd),
            Err(e) => {
                tracing::warn!("no kernel timer for the sampler ({e}): using the runtime's timer");
                Self::tokio(period)
            }
        }
    }

    fn tokio(period: Duration) -> Ticker {
        let mut interval = tokio::time::interval(period);
        // A late tick is taken at once and the schedule continues on the original grid.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Ticker::Tokio(interval, None)
    }

    /// Wait for the next tick; returns the periods that passed since the last one (1 when
    /// on time, more when ticks were missed).
    pub async fn tick(&mut self) -> u64 {
        loop {
            match self {
                Ticker::Tokio(interval, last) => {
                    // With `Skip`, ticks stay on the grid: the distance to the last one
                    // in periods is exact. (A late tick comes at its own deadline; the
                    // ticks skipped show in the distance to the next one.)
                    let at = interval.tick().await;
                    let period = interval.period().as_nanos().max(1);
                    let periods = last.map_or(1, |l| (at.duration_since(l).as_nanos() / period) as u64);
                    *last = Some(at);
                    return periods.max(1);
                }
                Ticker::Kernel(fd) => match expirations(fd).await {
                    Ok(n) => return n.max(1),
                    Err(e) => {
                        // Not seen in practice: keep ticking on the runtime's timer.
                        tracing::warn!("sampler's kernel timer failed ({e}): using the runtime's timer");
                        let period = timerfd_period(fd).unwrap_or(Duration::from_millis(100));
                        *self = Self::tokio(period);
                    }
                },
            }
        }
    }
}

fn timerfd(period: Duration) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = rustix::time::timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)?;
    let interval = Timespec::try_from(period).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // it_value 0 would disarm the timer: 1 ns is "at once".
    let spec = Itimerspec { it_interval: interval, it_value: Timespec { tv_sec: 0, tv_nsec: 1 } };
    rustix::time::timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec)?;
    // SAFETY: an `OwnedFd` always returns the descriptor it owns, which stays open until
    // the `AsyncFd` (its owner) is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?)
}

fn timerfd_period(fd: &AsyncFd<OwnedFd>) -> Option<Duration> {
    let spec = rustix::time::timerfd_gettime(fd.get_ref()).ok()?;
    Duration::try_from(spec.it_interval).ok()
}

/// Wait until the timer has fired and read how many times it did.
async fn expirations(fd: &AsyncFd<OwnedFd>) -> io::Result<u64> {
    loop {
        let mut guard = fd.readable().await?;
        let mut count = [0u8; 8];
        match rustix::io::read(fd.get_ref(), &mut count) {
            Ok(8) => {
                // The read reset the timer's count: nothing is left until it fires again
                // (a new edge), so no second read to see EAGAIN.
                guard.clear_ready();
                return Ok(u64::from_ne_bytes(count));
            }
            Ok(_) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn ticks_at_once_then_on_the_period_and_counts_missed_ones() {
        let mut t = Ticker::new(Duration::from_millis(20));
        assert!(matches!(t, Ticker::Kernel(_)));
        let start = std::time::Instant::now();
        assert_eq!(t.tick().await, 1);
        assert_eq!(t.tick().await, 1);
        assert!(start.elapsed() >= Duration::from_millis(15));
        // Blocking the thread past three periods: the next tick says so.
        std::thread::sleep(Duration::from_millis(70));
        assert!(t.tick().await >= 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_runtime_timer_is_a_working_fallback() {
        let mut t = Ticker::tokio(Duration::from_millis(10));
        assert!(matches!(t, Ticker::Tokio(..)));
        assert_eq!(t.tick().await, 1);
        assert_eq!(t.tick().await, 1);
        // It counts missed ticks too: blocked 35 ms at 10 ms, the late tick runs and the
        // next one is at least three periods on.
        std::thread::sleep(Duration::from_millis(35));
        let (late, next) = (t.tick().await, t.tick().await);
        assert!(late + next >= 4, "{late} + {next}");
    }
}
