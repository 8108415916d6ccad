//! A running session's CPU budget and deadline, kept by one task per session.
//!
//! Every [`WINDOW`] the task reads what the session's programs cost since the last
//! read — the kernel's own BPF run-time stats when it may switch them on, otherwise the
//! programs' run counts × the ns per run measured for each (docs/performance.md) — and
//! shows it in `lsvmi trace status`. A window over budget takes the next step down: the
//! profile raises its thresholds, then narrows (to the top thread, the busiest CPU),
//! and when no step is left the session ends. Each step is logged and kept in the
//! session's summary. The always-on programs and their series are never touched, and
//! nothing here runs on the sampling tick: the reads go to the blocking pool.

use std::time::{Duration, Instant};

use super::{SessionInfo, Sessions, control::stop_programs};

/// How often the cost is read: a quarter second lets a session over budget take its
/// first step within the first second and stop within three.
pub const WINDOW: Duration = Duration::from_millis(250);

/// What a session's programs cost so far (cumulative).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Meter {
    /// Program runs.
    pub runs: u64,
    /// Their run time in ns.
    pub ns: f64,
    /// Measured by the kernel (true) or estimated from run counts.
    pub kernel: bool,
}

/// The cost between two reads `secs` apart: (runs per second, percent of one CPU).
pub fn rate(before: &Meter, now: &Meter, secs: f64) -> Option<(f64, f64)> {
    if secs <= 0.0 {
        return None;
    }
    let runs = now.runs.saturating_sub(before.runs) as f64;
    let ns = (now.ns - before.ns).max(0.0);
    Some((runs / secs, ns / secs / 1e9 * 100.0))
}

/// Keep `session` within its budget until it ends, and end it at its deadline.
pub async fn govern(sessions: Sessions, session: SessionInfo) {
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(session.until_ms.saturating_sub(crate::model::now_ms()).max(0) as u64);
    let mut tick = tokio::time::interval(WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last: Option<(Meter, Instant)> = None;
    let mut step = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                if let Some(ended) = sessions.end_if(&session.id, "deadline") {
                    stop_programs(&sessions, ended).await;
                }
                return;
            }
            _ = tick.tick() => {}
        }
        if sessions.current().is_none_or(|s| s.id != session.id) {
            return; // stopped by hand, or by the daemon
        }
        let Ok(tracer) = sessions.tracer() else { return };
        let s = session.clone();
        let Ok(Some(now)) = tokio::task::spawn_blocking(move || tracer.meter(&s)).await else { continue };
        let at = Instant::now();
        let Some((before, then)) = last.replace((now, at)) else { continue };
        let Some((runs_per_s, cost)) = rate(&before, &now, at.duration_since(then).as_secs_f64()) else { continue };
        sessions.measured(&session.id, runs_per_s, cost, now.kernel);
        if cost <= session.budget_percent {
            continue;
        }
        step += 1;
        let Ok(tracer) = sessions.tracer() else { return };
        let s = session.clone();
        let what = tokio::task::spawn_blocking(move || tracer.step_down(&s, step)).await.ok().flatten();
        match what {
            Some(what) => {
                let what = format!("{cost:.2}% of a CPU over {}%: {what}", session.budget_percent);
                tracing::warn!(session = %session.id, "trace session over its budget, stepping down: {what}");
                sessions.stepped(&session.id, &what);
                // The next window measures the session as it is now.
                last = Some((now, Instant::now()));
            }
            None => {
                let why = format!("budget: {cost:.2}% of a CPU over {}%", session.budget_percent);
                tracing::warn!(session = %session.id, "trace session over its budget ({cost:.2}% > {}%): stopping it", session.budget_percent);
                if let Some(ended) = sessions.end_if(&session.id, &why) {
                    stop_programs(&sessions, ended).await;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_cost_between_two_reads() {
        let a = Meter { runs: 1_000, ns: 1e6, kernel: true };
        let b = Meter { runs: 51_000, ns: 1e6 + 5e6, kernel: true };
        let (runs, cost) = rate(&a, &b, 0.25).unwrap();
        assert_eq!(runs, 200_000.0);
        assert!((cost - 2.0).abs() < 1e-9, "{cost}"); // 5 ms in 250 ms
        assert_eq!(rate(&a, &b, 0.0), None);
        // A counter that went back (programs reloaded) is no negative cost.
        assert_eq!(rate(&b, &a, 1.0), Some((0.0, 0.0)));
    }
}
