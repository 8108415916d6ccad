//! Running under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once the first tick
//! collected, WATCHDOG=1 from the sampling tick itself — so a tick that stops (a hung
//! read, a deadlock) stops the pings and systemd restarts the agent — and STOPPING=1 on
//! the way out. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! A notification is one datagram to a local socket, non-blocking: the tick never waits
//! on it.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Tell systemd the agent collects (once).
pub fn ready(sources: usize) {
    let status = format!("collecting from {sources} sources");
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Tell systemd the agent is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// The watchdog as the unit set it: pinged at half its period.
pub struct Watchdog {
    every: Duration,
    last: Option<Instant>,
}

impl Watchdog {
    /// None when systemd asked for no watchdog (or this is not systemd).
    /// As libsystemd's `sd_watchdog_enabled`: `WATCHDOG_USEC` set, and `WATCHDOG_PID`
    /// (when set) this process. (The crate's own check also demands `WATCHDOG_PID`.)
    pub fn from_env() -> Option<Watchdog> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID")
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return None;
        }
        (usec > 0).then(|| Watchdog { every: Duration::from_micros(usec / 2), last: None })
    }

    /// Called on every tick that ran: pings when half the period has passed.
    pub fn tick(&mut self) {
        if self.last.is_none_or(|t| t.elapsed() >= self.every) {
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            self.last = Some(Instant::now());
        }
    }
}
