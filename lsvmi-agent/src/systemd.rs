//! Running under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once the first tick
//! collected, WATCHDOG=1 from the sampling tick itself — so a tick that stops (a hung
//! read, a deadlock) stops the pings and systemd restarts the agent — and STOPPING=1 on
//! the way out. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! A notification is one datagram on a socket connected once and set non-blocking, so
//! the tick never waits on it: a service manager that does not read (its queue full)
//! costs a dropped ping, not a stalled tick. (The `sd-notify` crate opens a blocking
//! socket for every message, which a send on the tick cannot afford.)

use std::{
    os::unix::net::UnixDatagram,
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The service manager's socket, connected on first use; None outside systemd or when
/// it cannot be reached.
fn socket() -> Option<&'static UnixDatagram> {
    static SOCKET: OnceLock<Option<UnixDatagram>> = OnceLock::new();
    SOCKET
        .get_or_init(|| {
            let path = std::env::var_os("NOTIFY_SOCKET")?;
            let sock = UnixDatagram::unbound().ok()?;
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
            // `@name` is a socket in the abstract namespace.
            let connected = match bytes.strip_prefix(b"@") {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt as _;
                    std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.connect_addr(&a))
                }
                None => sock.connect(&path),
            };
            connected.ok()?;
            sock.set_nonblocking(true).ok()?;
            Some(sock)
        })
        .as_ref()
}

/// Send `message` (newline-separated `KEY=value` lines); never waits.
fn notify(message: &str) {
    if let Some(sock) = socket() {
        let _ = sock.send(message.as_bytes());
    }
}

/// Tell systemd the agent collects (once).
pub fn ready(sources: usize) {
    notify(&format!("READY=1\nSTATUS=collecting from {sources} sources\n"));
}

/// Tell systemd the agent is stopping.
pub fn stopping() {
    notify("STOPPING=1\n");
}

/// The watchdog as the unit set it: pinged at half its period.
pub struct Watchdog {
    every: Duration,
    last: Option<Instant>,
}

impl Watchdog {
    /// As libsystemd's `sd_watchdog_enabled`: `WATCHDOG_USEC` set, and `WATCHDOG_PID`
    /// (when set) this process.
    pub fn from_env() -> Option<Watchdog> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID")
            && pid.parse::<u32>().ok() != Some(std::process::id())
        {
            return None;
        }
        (usec > 0).then(|| Watchdog { every: Duration::from_micros(usec / 2), last: None })
    }

    /// Called on every tick that ran: pings when half the period has passed and
    /// `healthy` says the rest of the agent is too (asked only then).
    pub fn tick(&mut self, healthy: impl FnOnce() -> bool) {
        if self.last.is_none_or(|t| t.elapsed() >= self.every) && healthy() {
            notify("WATCHDOG=1\n");
            self.last = Some(Instant::now());
        }
    }
}
