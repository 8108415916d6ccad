//! Triggers: conditions on the 100 ms data the agent already collects that, held for a
//! few intervals, start a deep-tracing session by themselves — with the hindsight ring's
//! record of the seconds before.
//!
//! Two halves. The [`Engine`] runs on the sampling tick, inside the sampler, over the
//! samples that tick produced: a few table lookups per sample and arithmetic, nothing
//! that can block; a firing is handed over with `try_send`. The [`run`] task does the
//! rest off the tick: cooldown and hourly cap, the hindsight dump (blocking pool), the
//! session start (as `lsvmi trace start` would), and the count of every outcome in
//! `lsvmi_trace_triggers_total{trigger,outcome}`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Profile, Request, Response, Sessions, StartRequest, TriggerInfo};
use crate::model::{MetricDesc, Registry, Sample};

/// What a trigger watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Watched {
    /// A quantile (default p99) of one CPU's run-queue latency in one interval, in
    /// seconds (`sched_runq_latency_seconds`). Starts a sched session on that CPU.
    RunqLatency,
    /// One CPU's time in softirqs, percent of the interval (`softirq_time_seconds_total`).
    /// Starts an irq session on that CPU.
    SoftirqPercent,
    /// TCP retransmits per second, host-wide (`net_tcp_retransmits_total`). Starts a net
    /// session.
    RetransmitsPerSecond,
    /// CPU pressure, "some", percent of the interval (`proc_pressure_stalled_seconds_total`).
    /// Starts a sched session on the whole host.
    PsiCpuSomePercent,
}

impl Watched {
    fn profile(self) -> Profile {
        match self {
            Watched::RunqLatency | Watched::PsiCpuSomePercent => Profile::Sched,
            Watched::SoftirqPercent => Profile::Irq,
            Watched::RetransmitsPerSecond => Profile::Net,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Watched::RunqLatency => "s",
            Watched::SoftirqPercent | Watched::PsiCpuSomePercent => "%",
            Watched::RetransmitsPerSecond => "/s",
        }
    }
}

/// A threshold as written: a number, or for latency a duration (`500us`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Above {
    Number(f64),
    Text(String),
}

/// One `trace.triggers` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    pub name: String,
    pub metric: Watched,
    pub above: Above,
    /// run_queue_latency only: which quantile (default 0.99).
    pub quantile: Option<f64>,
    /// Consecutive intervals the condition must hold (default 3).
    #[serde(rename = "for")]
    pub for_intervals: Option<u32>,
}

/// A trigger, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerSpec {
    pub name: String,
    pub metric: Watched,
    /// Seconds for latency, percent, or per second.
    pub above: f64,
    pub quantile: f64,
    pub for_intervals: u32,
}

impl TriggerConfig {
    /// The trigger, or why not (in words for the config error).
    pub fn check(&self) -> Result<TriggerSpec, String> {
        let name = &self.name;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!("trigger name {name:?}: letters, digits, _ and - only"));
        }
        let above = match (&self.above, self.metric) {
            (Above::Number(n), _) => *n,
            (Above::Text(t), Watched::RunqLatency) => {
                humantime::parse_duration(t).map_err(|e| format!("trigger {name}: above {t:?}: {e}"))?.as_secs_f64()
            }
            (Above::Text(t), _) => return Err(format!("trigger {name}: above {t:?} must be a number")),
        };
        if !(above.is_finite() && above >= 0.0) {
            return Err(format!("trigger {name}: above must be a number at least 0"));
        }
        let quantile = self.quantile.unwrap_or(0.99);
        if self.quantile.is_some() && self.metric != Watched::RunqLatency {
            return Err(format!("trigger {name}: quantile applies to runq_latency only"));
        }
        if !(quantile > 0.0 && quantile <= 1.0) {
            return Err(format!("trigger {name}: quantile {quantile} must be in (0, 1]"));
        }
        let for_intervals = self.for_intervals.unwrap_or(3);
        if for_intervals == 0 {
            return Err(format!("trigger {name}: for must be at least 1"));
        }
        Ok(TriggerSpec { name: name.clone(), metric: self.metric, above, quantile, for_intervals })
    }
}

/// A trigger that fired, handed from the tick to [`run`].
#[derive(Debug, Clone)]
pub struct Fired {
    pub trigger: String,
    pub metric: Watched,
    /// The CPU it fired on (per-CPU metrics).
    pub cpu: Option<u32>,
    pub value: f64,
    pub above: f64,
    pub at_ms: i64,
    /// `bpf_ktime_get_ns()`'s clock at the firing: hindsight records up to it are "before".
    pub at_mono_ns: u64,
}

impl Fired {
    fn describe(&self) -> String {
        let unit = self.metric.unit();
        let (v, a) = if unit == "s" {
            (format!("{:.3} ms", self.value * 1e3), format!("{:.3} ms", self.above * 1e3))
        } else {
            (format!("{:.1}{unit}", self.value), format!("{}{unit}", self.above))
        };
        let on = self.cpu.map(|c| format!(" on CPU {c}")).unwrap_or_default();
        format!("{}{on}: {v} > {a}", self.trigger)
    }
}

/// What a sample of a series is to the triggers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Unknown,
    Ignore,
    RunqBucket { cpu: u32, le: f64 },
    Softirq { cpu: u32 },
    Retransmits,
    PsiCpuSome,
}

/// The tick's side: watches the samples, says when a condition has held long enough.
pub struct Engine {
    triggers: Vec<(TriggerSpec, HashMap<Option<u32>, u32>)>,
    /// By series index: the series' generation when resolved, and its role.
    roles: Vec<(u32, Role)>,
    /// By series index: the last value and its time (ms).
    last: Vec<Option<(f64, i64)>>,
    /// Where firings go; one the task has no room for (it is behind) is counted as
    /// outcome `dropped`.
    fire: Option<mpsc::Sender<Fired>>,
    /// Which metrics some trigger watches (by `Watched as usize`).
    watching: [bool; 4],
    /// Conditions count from here: the agent's own start-up (loading BPF, the first
    /// reads) stirs the run queues it would otherwise trace.
    armed_at: Instant,
}

/// How long after start-up triggers begin to count.
pub const WARM_UP: Duration = Duration::from_secs(2);

impl Engine {
    pub fn new(triggers: &[TriggerSpec], fire: mpsc::Sender<Fired>) -> Self {
        let mut watching = [false; 4];
        for t in triggers {
            watching[t.metric as usize] = true;
        }
        Engine {
            triggers: triggers.iter().map(|t| (t.clone(), HashMap::new())).collect(),
            roles: Vec::new(),
            last: Vec::new(),
            fire: Some(fire),
            watching,
            armed_at: Instant::now() + WARM_UP,
        }
    }

    fn role(&self, desc: &MetricDesc, label: impl Fn(&str) -> Option<String>) -> Role {
        let cpu = || label("cpu").and_then(|c| c.parse::<u32>().ok());
        let on = |w: Watched| self.watching[w as usize];
        match desc.name {
            "sched_runq_latency_seconds_bucket" if on(Watched::RunqLatency) => {
                let le = label("le").and_then(|l| if l == "+Inf" { Some(f64::INFINITY) } else { l.parse().ok() });
                match (cpu(), le) {
                    (Some(cpu), Some(le)) => Role::RunqBucket { cpu, le },
                    _ => Role::Ignore,
                }
            }
            "softirq_time_seconds_total" if on(Watched::SoftirqPercent) => {
                cpu().map_or(Role::Ignore, |cpu| Role::Softirq { cpu })
            }
            "net_tcp_retransmits_total" if on(Watched::RetransmitsPerSecond) => Role::Retransmits,
            "proc_pressure_stalled_seconds_total"
                if on(Watched::PsiCpuSomePercent)
                    && label("resource").as_deref() == Some("cpu")
                    && label("kind").as_deref() == Some("some") =>
            {
                Role::PsiCpuSome
            }
            _ => Role::Ignore,
        }
    }

    /// Look at one tick's samples; hand over what fired. Never blocks.
    pub fn observe(&mut self, registry: &Registry, samples: &[Sample]) {
        if self.triggers.is_empty() {
            return;
        }
        let mut runq: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
        let mut softirq: BTreeMap<u32, f64> = BTreeMap::new();
        let (mut retransmits, mut psi): (Option<f64>, Option<f64>) = (None, None);
        for s in samples {
            let i = s.series.index();
            let Some(series) = registry.get(s.series) else { continue };
            if self.roles.len() <= i {
                self.roles.resize(i + 1, (0, Role::Unknown));
                self.last.resize(i + 1, None);
            }
            if self.roles[i].1 == Role::Unknown || self.roles[i].0 != series.generation {
                let label = |n: &str| registry.label(series, n).map(str::to_string);
                self.roles[i] = (series.generation, self.role(series.desc, label));
                self.last[i] = None;
            }
            let role = self.roles[i].1;
            if role == Role::Ignore {
                continue;
            }
            // The first sight of a series is its baseline.
            let Some((v0, t0)) = self.last[i].replace((s.value, s.ts_ms)) else { continue };
            let dv = (s.value - v0).max(0.0);
            let dt = (s.ts_ms - t0) as f64 / 1e3;
            match role {
                Role::RunqBucket { cpu, le } => runq.entry(cpu).or_default().push((le, dv)),
                Role::Softirq { cpu } if dt > 0.0 => *softirq.entry(cpu).or_default() += dv / dt * 100.0,
                Role::Retransmits if dt > 0.0 => *retransmits.get_or_insert(0.0) += dv / dt,
                Role::PsiCpuSome if dt > 0.0 => *psi.get_or_insert(0.0) += dv / dt * 100.0,
                _ => {}
            }
        }
        if Instant::now() < self.armed_at {
            return; // the baselines above are taken; no condition counts yet
        }
        // The firing's instant on both clocks (wall for people, the programs' for the
        // hindsight records), taken together.
        let (now_ms, now_mono) = (crate::model::now_ms(), crate::bpf::monotonic_ns());
        let mut fired = Vec::new();
        for (spec, streaks) in &mut self.triggers {
            let values: Vec<(Option<u32>, f64)> = match spec.metric {
                Watched::RunqLatency => {
                    runq.iter().filter_map(|(cpu, b)| Some((Some(*cpu), quantile(b, spec.quantile)?))).collect()
                }
                Watched::SoftirqPercent => softirq.iter().map(|(cpu, v)| (Some(*cpu), *v)).collect(),
                Watched::RetransmitsPerSecond => retransmits.map(|v| (None, v)).into_iter().collect(),
                Watched::PsiCpuSomePercent => psi.map(|v| (None, v)).into_iter().collect(),
            };
            // A key not over this tick (or not seen) starts again.
            let over: HashMap<Option<u32>, f64> = values.into_iter().filter(|(_, v)| *v > spec.above).collect();
            streaks.retain(|k, _| over.contains_key(k));
            for (key, value) in over {
                let n = streaks.entry(key).or_insert(0);
                *n += 1;
                if *n == spec.for_intervals {
                    fired.push(Fired {
                        trigger: spec.name.clone(),
                        metric: spec.metric,
                        cpu: key,
                        value,
                        above: spec.above,
                        at_ms: now_ms,
                        at_mono_ns: now_mono,
                    });
                }
            }
        }
        for f in fired {
            if let Some(tx) = &self.fire
                && tx.try_send(f.clone()).is_err()
            {
                count(&f.trigger, "dropped");
            }
        }
    }
}

/// The smallest bucket bound under which `q` of this interval's observations fell, from
/// (bound, cumulative count growth) pairs; None without observations.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let mut b = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last().filter(|(le, _)| le.is_infinite()).map(|(_, n)| *n)?;
    if total <= 0.0 {
        return None;
    }
    b.iter().find(|(_, n)| *n >= q * total).map(|(le, _)| *le)
}

/// Outcomes so far, by (trigger, outcome).
static OUTCOMES: Mutex<BTreeMap<(String, &'static str), u64>> = Mutex::new(BTreeMap::new());

fn count(trigger: &str, outcome: &'static str) {
    *OUTCOMES.lock().unwrap_or_else(|p| p.into_inner()).entry((trigger.to_string(), outcome)).or_insert(0) += 1;
}

/// Every (trigger, outcome) count, for the series.
pub fn outcomes() -> Vec<((String, &'static str), u64)> {
    OUTCOMES.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// Limits on what firings may start.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// After a trigger started a session, its firings start none for this long.
    pub cooldown: Duration,
    /// Sessions all triggers may start in any hour.
    pub per_hour: u32,
}

/// Act on firings until the channel closes: each one started, or suppressed with why,
/// logged and counted.
pub async fn run(mut fired: mpsc::Receiver<Fired>, sessions: Sessions, limits: Limits) {
    let mut last_start: HashMap<String, Instant> = HashMap::new();
    let mut starts: VecDeque<Instant> = VecDeque::new();
    while let Some(f) = fired.recv().await {
        let what = f.describe();
        while starts.front().is_some_and(|t| t.elapsed() > Duration::from_secs(3600)) {
            starts.pop_front();
        }
        let outcome = if last_start.get(&f.trigger).is_some_and(|t| t.elapsed() < limits.cooldown) {
            "cooldown"
        } else if starts.len() >= limits.per_hour as usize {
            "hourly_cap"
        } else if let Some(s) = sessions.current() {
            tracing::info!(running = %s.id, "trigger {what}: a session already runs, none started");
            "busy"
        } else {
            match start(&sessions, &f, &what).await {
                Ok(id) => {
                    tracing::warn!(session = %id, "trigger {what}: started a trace session (hindsight kept)");
                    last_start.insert(f.trigger.clone(), Instant::now());
                    starts.push_back(Instant::now());
                    "started"
                }
                Err(e) => {
                    tracing::warn!("trigger {what}: no session: {e}");
                    "failed"
                }
            }
        };
        if matches!(outcome, "cooldown" | "hourly_cap") {
            tracing::info!("trigger {what}: suppressed ({outcome})");
        }
        count(&f.trigger, outcome);
    }
}

/// Dump the hindsight ring, then start the session narrowed to what tripped.
async fn start(sessions: &Sessions, f: &Fired, what: &str) -> Result<String, String> {
    let kept = tokio::task::spawn_blocking(super::hindsight::dump).await.map_err(|e| e.to_string())?;
    let kept = match kept {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("trigger {what}: hindsight not kept: {e}");
            Vec::new()
        }
    };
    let req = StartRequest {
        profile: f.metric.profile(),
        duration_ms: None,
        pid: None,
        comm: None,
        cpus: f.cpu.map(|c| c.to_string()),
        budget_percent: None,
        threshold_ns: None,
    };
    let (response, then) = sessions.handle(Request::Start(req), crate::model::now_ms());
    let Response::Session { session } = &response else {
        return Err(match response {
            Response::Error { message } => message,
            other => format!("{other:?}"),
        });
    };
    let id = session.id.clone();
    let info = TriggerInfo { name: f.trigger.clone(), fired_ms: f.at_ms, what: what.to_string() };
    sessions.triggered(&id, info, kept, f.at_mono_ns);
    let why = match super::control::follow_up(sessions, response, then).await {
        Response::Session { .. } => return Ok(id),
        Response::Error { message } => message,
        other => format!("{other:?}"),
    };
    // No session (its budget, say): the past seconds are still worth keeping, in the
    // files it would have had (the trigger and the hindsight records alone).
    let file_id = id.clone();
    super::timeline::write_later(Some(sessions), &id, move || super::timeline::Files {
        doc: super::timeline::Doc::default().finish(&file_id, 0, 0),
        lines: Vec::new(),
        records: 0,
        dropped: 0,
    });
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MetricKind;

    static BUCKET: MetricDesc = MetricDesc {
        name: "sched_runq_latency_seconds_bucket",
        kind: MetricKind::Histogram,
        unit: "seconds",
        help: "",
        labels: &["cpu", "le"],
        source: "test",
    };

    fn spec(for_intervals: u32) -> TriggerSpec {
        TriggerConfig {
            name: "runq".into(),
            metric: Watched::RunqLatency,
            above: Above::Text("500us".into()),
            quantile: None,
            for_intervals: Some(for_intervals),
        }
        .check()
        .unwrap()
    }

    static SOFTIRQ: MetricDesc = MetricDesc {
        name: "softirq_time_seconds_total",
        kind: MetricKind::Counter,
        unit: "seconds",
        help: "",
        labels: &["cpu", "type"],
        source: "test",
    };
    static RETRANSMITS: MetricDesc = MetricDesc {
        name: "net_tcp_retransmits_total",
        kind: MetricKind::Counter,
        unit: "",
        help: "",
        labels: &["state"],
        source: "test",
    };

    fn armed(specs: &[TriggerSpec]) -> (Engine, mpsc::Receiver<Fired>) {
        let (tx, rx) = mpsc::channel(8);
        let mut engine = Engine::new(specs, tx);
        engine.armed_at = Instant::now();
        (engine, rx)
    }

    fn trigger(metric: Watched, above: f64, for_intervals: u32) -> TriggerSpec {
        TriggerConfig {
            name: "t".into(),
            metric,
            above: Above::Number(above),
            quantile: None,
            for_intervals: Some(for_intervals),
        }
        .check()
        .unwrap()
    }

    #[test]
    fn rates_add_up_per_cpu_and_per_host() {
        let mut registry = Registry::new(Vec::new());
        let rx_cpu1 = registry.register(&SOFTIRQ, &[("cpu", "1"), ("type", "NET_RX")]);
        let timer_cpu1 = registry.register(&SOFTIRQ, &[("cpu", "1"), ("type", "TIMER")]);
        let rx_cpu0 = registry.register(&SOFTIRQ, &[("cpu", "0"), ("type", "NET_RX")]);
        let est = registry.register(&RETRANSMITS, &[("state", "ESTABLISHED")]);
        let (mut engine, mut rx) =
            armed(&[trigger(Watched::SoftirqPercent, 30.0, 1), trigger(Watched::RetransmitsPerSecond, 100.0, 1)]);
        let tick = |engine: &mut Engine, ts: i64, v: [f64; 4]| {
            let samples: Vec<Sample> = [rx_cpu1, timer_cpu1, rx_cpu0, est]
                .iter()
                .zip(v)
                .map(|(id, value)| Sample { series: *id, ts_ms: ts, value })
                .collect();
            engine.observe(&registry, &samples);
        };
        tick(&mut engine, 0, [0.0, 0.0, 0.0, 0.0]);
        // In 100 ms, CPU 1: 20 ms + 15 ms of softirqs (35 %), CPU 0: 10 ms; 5 retransmits (50/s).
        tick(&mut engine, 100, [0.020, 0.015, 0.010, 5.0]);
        let f = rx.try_recv().expect("softirq fired");
        assert_eq!((f.metric, f.cpu), (Watched::SoftirqPercent, Some(1)));
        assert!((f.value - 35.0).abs() < 1e-6, "{}", f.value);
        assert!(rx.try_recv().is_err(), "CPU 0 and the retransmits stayed under");
        tick(&mut engine, 200, [0.020, 0.015, 0.010, 25.0]); // 200/s
        let f = rx.try_recv().expect("retransmits fired");
        assert_eq!((f.metric, f.cpu, f.value), (Watched::RetransmitsPerSecond, None, 200.0));
    }

    #[test]
    fn config_is_checked_in_words() {
        assert_eq!(spec(3).above, 0.0005);
        let bad = TriggerConfig {
            name: "x".into(),
            metric: Watched::SoftirqPercent,
            above: Above::Text("lots".into()),
            quantile: None,
            for_intervals: None,
        };
        assert!(bad.check().unwrap_err().contains("must be a number"));
        let bad = TriggerConfig { quantile: Some(0.5), above: Above::Number(30.0), ..bad };
        assert!(bad.check().unwrap_err().contains("runq_latency only"));
    }

    #[test]
    fn the_quantile_is_the_bucket_bound_reached() {
        // 100 observations: 98 under 64 µs, 2 under 4 ms.
        let b = [(0.000064, 98.0), (0.004096, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&b, 0.99), Some(0.004096));
        assert_eq!(quantile(&b, 0.5), Some(0.000064));
        assert_eq!(quantile(&[(f64::INFINITY, 0.0)], 0.99), None);
    }

    #[test]
    fn a_cpu_over_the_threshold_for_n_intervals_fires_once() {
        let mut registry = Registry::new(Vec::new());
        let ids: Vec<_> = ["0.000064", "0.004096", "+Inf"]
            .iter()
            .map(|le| registry.register(&BUCKET, &[("cpu", "1"), ("le", le)]))
            .collect();
        let (tx, mut rx) = mpsc::channel(4);
        let mut engine = Engine::new(&[spec(2)], tx);
        engine.armed_at = Instant::now();
        // Cumulative counts per tick: the first tick is the baseline.
        let mut cum = [0.0, 0.0, 0.0];
        let mut tick = |engine: &mut Engine, slow: f64, fast: f64, ts: i64| {
            cum[0] += fast;
            cum[1] += fast + slow;
            cum[2] += fast + slow;
            let samples: Vec<Sample> =
                ids.iter().zip(cum).map(|(id, v)| Sample { series: *id, ts_ms: ts, value: v }).collect();
            engine.observe(&registry, &samples);
        };
        tick(&mut engine, 0.0, 10.0, 0);
        tick(&mut engine, 5.0, 10.0, 100); // p99 4 ms: 1
        assert!(rx.try_recv().is_err());
        tick(&mut engine, 5.0, 10.0, 200); // 2: fires
        let f = rx.try_recv().expect("fired");
        assert_eq!((f.cpu, f.value), (Some(1), 0.004096));
        tick(&mut engine, 5.0, 10.0, 300); // still over: no second firing
        assert!(rx.try_recv().is_err());
        tick(&mut engine, 0.0, 10.0, 400); // under: the streak ends
        tick(&mut engine, 5.0, 10.0, 500);
        tick(&mut engine, 5.0, 10.0, 600);
        assert!(rx.try_recv().is_ok(), "a new streak fires again");
    }
}
