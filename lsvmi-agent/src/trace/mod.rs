//! Deep-tracing sessions: per-event programs loaded only while a session runs, bounded in
//! time, started and stopped from the command line (`lsvmi trace start|status|stop`)
//! through the daemon's control socket ([`control`]).
//!
//! One session at a time. A session has a profile (what it traces), a duration (default
//! 10 s, capped by `trace.max_duration`), optional filters, and an id that labels what
//! it produces. It ends by itself at its deadline, on `lsvmi trace stop`, or with the
//! daemon; nothing it loads is pinned, so even a SIGKILL of the daemon lets the kernel
//! detach its programs.

pub mod block;
pub mod budget;
pub mod control;
pub mod hindsight;
pub mod irq;
pub mod net;
pub mod programs;
pub mod sched;
pub mod timeline;
pub mod triggers;

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// What a session traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Wake-to-run latency per thread, with who held the CPU meanwhile.
    Sched,
    /// Hard-IRQ handler time, softirq raise-to-entry delay and run time.
    Irq,
    /// Per-connection retransmits, resets and drops.
    Net,
    /// Per-request block I/O queue wait and device time.
    Block,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Sched => "sched",
            Profile::Irq => "irq",
            Profile::Net => "net",
            Profile::Block => "block",
        }
    }
}

/// What `lsvmi trace start` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StartRequest {
    pub profile: Profile,
    /// None: the daemon's default (10 s).
    pub duration_ms: Option<u64>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// CPU list as `0-3,8`.
    pub cpus: Option<String>,
    /// CPU budget in percent of one CPU (0.5 = 0.5 %).
    pub budget_percent: Option<f64>,
    /// Events at least this long go on the timeline; None: the profile's default.
    #[serde(default)]
    pub threshold_ns: Option<u64>,
}

/// One request line on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Start(StartRequest),
    Status,
    Stop,
    /// Copy the hindsight ring into a session file.
    Dump,
    /// The running session's events from index `since` on (`--follow`).
    Events {
        since: usize,
    },
}

/// One answer line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The session now running (after start), running (status), or just ended (stop).
    Session { session: SessionInfo },
    /// Nothing runs (status, stop).
    Idle { last: Option<SessionInfo> },
    /// Refused, with why in one line.
    Error { message: String },
    /// Events of the running session from `since`, and the index to ask from next.
    Events { session: SessionInfo, events: Vec<serde_json::Value>, next: usize },
    /// The hindsight ring was written to `path`.
    Dumped { path: String, records: usize },
}

/// A session as the control socket reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionInfo {
    /// `<profile>-<start time in ms>`: the `session` label of what it produces.
    pub id: String,
    pub profile: Profile,
    pub started_ms: i64,
    pub until_ms: i64,
    /// Set once it ended: `deadline`, `stopped`, `budget`, `shutdown`, or an error.
    pub ended: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cpus: Option<String>,
    pub budget_percent: f64,
    /// Program runs per second over the last second, and what they cost in percent of
    /// one CPU (runs × the measured ns per run), while it runs.
    #[serde(default)]
    pub events_per_s: Option<f64>,
    #[serde(default)]
    pub cost_percent: Option<f64>,
    /// The session's timeline file (Chrome trace-event JSON), once written.
    #[serde(default)]
    pub timeline: Option<String>,
    /// `--threshold`: events at least this long go on the timeline (None: the profile's
    /// default).
    #[serde(default)]
    pub threshold_ns: Option<u64>,
    /// What the budget did, in order (raised a threshold, narrowed, stopped).
    #[serde(default)]
    pub steps: Vec<String>,
    /// How the cost is known: `kernel` (the kernel's BPF run-time stats) or `estimate`
    /// (run counts × the measured ns per run).
    #[serde(default)]
    pub cost_from: Option<String>,
    /// Events not recorded so far, by reason (a map or ring full).
    #[serde(default)]
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// Set when a trigger started it.
    #[serde(default)]
    pub trigger: Option<TriggerInfo>,
}

/// Which trigger started a session, and when it fired.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TriggerInfo {
    pub name: String,
    pub fired_ms: i64,
    /// What it saw, in words (`runq on CPU 1: 3.1 ms > 0.5 ms`).
    pub what: String,
}

/// What a request leaves to do once answered.
#[derive(Debug)]
pub enum Then {
    /// Load and attach the new session's programs.
    Start(SessionInfo),
    /// Detach the ended session's programs.
    Stop(SessionInfo),
}

/// Session limits (config `trace:`).
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// The control socket.
    pub socket: std::path::PathBuf,
    /// Where session files go (the newest `KEEP_SESSIONS` are kept).
    pub dir: std::path::PathBuf,
    pub default_duration: Duration,
    pub max_duration: Duration,
    pub default_budget_percent: f64,
    /// What the always-on programs keep for hindsight.
    pub hindsight: hindsight::HindsightSettings,
    /// Conditions that start sessions by themselves, and their limits.
    pub triggers: Vec<triggers::TriggerSpec>,
    pub limits: triggers::Limits,
}

pub const DEFAULT_SOCKET: &str = "/run/lsvmi/control.sock";
pub const DEFAULT_DIR: &str = "/var/lib/lsvmi/trace";

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            socket: DEFAULT_SOCKET.into(),
            dir: DEFAULT_DIR.into(),
            default_duration: Duration::from_secs(10),
            max_duration: Duration::from_secs(120),
            default_budget_percent: 0.5,
            hindsight: hindsight::HindsightSettings::default(),
            triggers: Vec::new(),
            limits: triggers::Limits { cooldown: Duration::from_secs(600), per_hour: 6 },
        }
    }
}

/// What loads and unloads a session's programs. Both calls may block (BTF, the
/// verifier): the control socket runs them on the blocking pool, never on the tick.
pub trait Tracer: Send + Sync {
    /// Attach the profile's programs and start counting for `session`.
    fn start(&self, session: &SessionInfo) -> Result<(), String>;
    /// Stop counting and detach every program of the session.
    fn stop(&self, session: &SessionInfo);
    /// The session's events so far from index `since` (at most a few hundred), and the
    /// index after them. Profiles without per-event records have none.
    fn events(&self, _session: &SessionInfo, since: usize) -> (Vec<serde_json::Value>, usize) {
        (Vec::new(), since)
    }
    /// What the session's programs cost so far; None when there is nothing to meter.
    fn meter(&self, _session: &SessionInfo) -> Option<budget::Meter> {
        None
    }
    /// Take step `n` (1, 2, …) down in cost: what was done, or None when none is left.
    fn step_down(&self, _session: &SessionInfo, _n: u32) -> Option<String> {
        None
    }
}

/// The tracers of the profiles that can run, by profile.
pub struct Tracers(Vec<(Profile, Arc<dyn Tracer>)>);

impl Tracers {
    /// Every profile whose source started with the BPF object.
    pub fn new(ebpf: &Arc<Mutex<aya::Ebpf>>, sessions: &Sessions) -> Result<Tracers, String> {
        let mut all: Vec<(Profile, Arc<dyn Tracer>)> = Vec::new();
        let mut why = Vec::new();
        match sched::tracer(ebpf.clone(), sessions) {
            Ok(t) => all.push((Profile::Sched, t)),
            Err(e) => why.push(e),
        }
        match irq::tracer(ebpf.clone(), sessions) {
            Ok(t) => all.push((Profile::Irq, t)),
            Err(e) => why.push(e),
        }
        match block::tracer(ebpf.clone(), sessions) {
            Ok(t) => all.push((Profile::Block, t)),
            Err(e) => why.push(e),
        }
        match net::tracer(sessions) {
            Ok(t) => all.push((Profile::Net, Arc::new(t))),
            Err(e) => why.push(e),
        }
        if all.is_empty() { Err(why.join("; ")) } else { Ok(Tracers(all)) }
    }

    fn of(&self, profile: Profile) -> Result<&Arc<dyn Tracer>, String> {
        self.0.iter().find(|(p, _)| *p == profile).map(|(_, t)| t).ok_or_else(|| {
            let have: Vec<&str> = self.0.iter().map(|(p, _)| p.as_str()).collect();
            format!("profile {} is not available (these are: {})", profile.as_str(), have.join(", "))
        })
    }
}

impl Tracer for Tracers {
    fn start(&self, session: &SessionInfo) -> Result<(), String> {
        self.of(session.profile)?.start(session)
    }

    fn stop(&self, session: &SessionInfo) {
        if let Ok(t) = self.of(session.profile) {
            t.stop(session);
        }
    }

    fn events(&self, session: &SessionInfo, since: usize) -> (Vec<serde_json::Value>, usize) {
        self.of(session.profile).map_or((Vec::new(), since), |t| t.events(session, since))
    }

    fn meter(&self, session: &SessionInfo) -> Option<budget::Meter> {
        self.of(session.profile).ok()?.meter(session)
    }

    fn step_down(&self, session: &SessionInfo, n: u32) -> Option<String> {
        self.of(session.profile).ok()?.step_down(session, n)
    }
}

#[derive(Default)]
struct State {
    current: Option<SessionInfo>,
    last: Option<SessionInfo>,
    /// A triggered session's hindsight records (and the firing's time on the programs'
    /// clock) until its files are written.
    hindsight: Option<(String, Vec<hindsight::Kept>, u64)>,
}

/// The daemon's side: at most one session, and the last one that ended.
#[derive(Clone)]
pub struct Sessions {
    settings: Arc<TraceSettings>,
    state: Arc<Mutex<State>>,
    tracer: Arc<Mutex<Result<Arc<dyn Tracer>, String>>>,
}

impl Sessions {
    pub fn new(settings: TraceSettings) -> Self {
        Sessions {
            settings: Arc::new(settings),
            state: Arc::default(),
            tracer: Arc::new(Mutex::new(Err("eBPF is not running".into()))),
        }
    }

    /// What runs the sessions' programs, or why there is nothing (no BPF).
    pub fn set_tracer(&self, tracer: Result<Arc<dyn Tracer>, String>) {
        *self.tracer.lock().unwrap_or_else(|p| p.into_inner()) = tracer;
    }

    pub fn tracer(&self) -> Result<Arc<dyn Tracer>, String> {
        self.tracer.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn settings(&self) -> &TraceSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answer one request at `now_ms`, and say what must follow on the blocking pool:
    /// the programs of a session that starts, or of one that ended, to load or unload.
    pub fn handle(&self, req: Request, now_ms: i64) -> (Response, Vec<Then>) {
        let mut then: Vec<Then> = self.expire(now_ms).into_iter().map(Then::Stop).collect();
        let response = match req {
            Request::Start(start) => match self.start(start, now_ms) {
                Ok(session) => {
                    then.push(Then::Start(session.clone()));
                    Response::Session { session }
                }
                Err(message) => Response::Error { message },
            },
            Request::Status => {
                // One lock at a time: the guard of a match scrutinee lives through its arms.
                let current = self.current();
                match current {
                    Some(session) => Response::Session { session },
                    None => Response::Idle { last: self.lock_last() },
                }
            }
            Request::Events { since } => match (self.current(), self.tracer()) {
                (Some(session), Ok(tracer)) => {
                    let (events, next) = tracer.events(&session, since);
                    Response::Events { session, events, next }
                }
                _ => Response::Idle { last: self.lock_last() },
            },
            // Answered by the control socket itself (it blocks).
            Request::Dump => Response::Error { message: "dump is answered by the control socket".into() },
            Request::Stop => match self.end("stopped") {
                Some(session) => {
                    then.push(Then::Stop(session.clone()));
                    Response::Session { session }
                }
                None => Response::Idle { last: self.lock_last() },
            },
        };
        (response, then)
    }

    fn lock_last(&self) -> Option<SessionInfo> {
        self.lock().last.clone()
    }

    fn start(&self, req: StartRequest, now_ms: i64) -> Result<SessionInfo, String> {
        if let Err(why) = self.tracer() {
            return Err(format!("deep tracing needs eBPF: {why}"));
        }
        let mut st = self.lock();
        if let Some(s) = &st.current {
            return Err(format!(
                "session {} ({}) runs until {}; one session at a time (`lsvmi trace stop` ends it)",
                s.id,
                s.profile.as_str(),
                humantime::format_rfc3339_millis(to_system_time(s.until_ms))
            ));
        }
        let duration = req.duration_ms.map(Duration::from_millis).unwrap_or(self.settings.default_duration);
        if duration.is_zero() {
            return Err("duration must be above 0".into());
        }
        if duration > self.settings.max_duration {
            return Err(format!(
                "duration {} is above the cap of {} (trace.max_duration)",
                humantime::format_duration(duration),
                humantime::format_duration(self.settings.max_duration)
            ));
        }
        let budget = req.budget_percent.unwrap_or(self.settings.default_budget_percent);
        if !(budget > 0.0 && budget <= 100.0) {
            return Err(format!("budget {budget}% must be above 0 and at most 100"));
        }
        if let Some(cpus) = &req.cpus
            && crate::sources::host::parse_cpu_list(cpus).is_none_or(|l| l.is_empty())
        {
            return Err(format!("--cpu {cpus:?} is not a CPU list such as 0-3,8"));
        }
        let session = SessionInfo {
            id: format!("{}-{now_ms}", req.profile.as_str()),
            profile: req.profile,
            started_ms: now_ms,
            until_ms: now_ms + i64::try_from(duration.as_millis()).unwrap_or(i64::MAX),
            ended: None,
            pid: req.pid,
            comm: req.comm,
            cpus: req.cpus,
            budget_percent: budget,
            events_per_s: None,
            cost_percent: None,
            timeline: None,
            threshold_ns: req.threshold_ns,
            steps: Vec::new(),
            cost_from: None,
            dropped: Default::default(),
            trigger: None,
        };
        tracing::info!(
            session = %session.id,
            until = %humantime::format_rfc3339_millis(to_system_time(session.until_ms)),
            "trace session started"
        );
        st.current = Some(session.clone());
        Ok(session)
    }

    /// End the running session, if any, saying why.
    pub fn end(&self, why: &str) -> Option<SessionInfo> {
        let mut st = self.lock();
        let mut s = st.current.take()?;
        s.ended = Some(why.to_string());
        tracing::info!(session = %s.id, reason = why, "trace session ended");
        st.last = Some(s.clone());
        Some(s)
    }

    /// End the session whose deadline has passed; it is returned for its programs to go.
    pub fn expire(&self, now_ms: i64) -> Option<SessionInfo> {
        let due = self.lock().current.as_ref().is_some_and(|s| now_ms >= s.until_ms);
        if due { self.end("deadline") } else { None }
    }

    /// End session `id` if it is still the one running.
    pub fn end_if(&self, id: &str, why: &str) -> Option<SessionInfo> {
        let same = self.lock().current.as_ref().is_some_and(|s| s.id == id);
        if same { self.end(why) } else { None }
    }

    /// What session `id` measured of itself over the last window, and how.
    pub fn measured(&self, id: &str, events_per_s: f64, cost_percent: f64, kernel: bool) {
        if let Some(s) = self.lock().current.as_mut()
            && s.id == id
        {
            s.events_per_s = Some(events_per_s);
            s.cost_percent = Some(cost_percent);
            s.cost_from = Some(if kernel { "kernel" } else { "estimate" }.into());
        }
    }

    /// The budget stepped session `id` down: `what` goes into its summary.
    pub fn stepped(&self, id: &str, what: &str) {
        if let Some(s) = self.lock().current.as_mut()
            && s.id == id
        {
            s.steps.push(what.to_string());
        }
    }

    /// Session `id` has dropped `n` events for `reason` so far (its last values arrive
    /// after it ended: the last session is updated too).
    pub fn dropped(&self, id: &str, reason: &str, n: u64) {
        let mut guard = self.lock();
        let st = &mut *guard;
        for s in [st.current.as_mut(), st.last.as_mut()].into_iter().flatten() {
            if s.id == id {
                s.dropped.insert(reason.to_string(), n);
            }
        }
    }

    /// Session `id` was started by a trigger, which kept `kept` from before it fired.
    pub fn triggered(&self, id: &str, info: TriggerInfo, kept: Vec<hindsight::Kept>, fired_mono_ns: u64) {
        let mut st = self.lock();
        if let Some(s) = st.current.as_mut()
            && s.id == id
        {
            s.trigger = Some(info);
        }
        st.hindsight = Some((id.to_string(), kept, fired_mono_ns));
    }

    /// Session `id`'s trigger and hindsight records, for its files (taken once).
    pub fn take_hindsight(&self, id: &str) -> (Option<TriggerInfo>, Option<(Vec<hindsight::Kept>, u64)>) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let info = [st.current.as_ref(), st.last.as_ref()]
            .into_iter()
            .flatten()
            .find(|s| s.id == id)
            .and_then(|s| s.trigger.clone());
        let kept = match st.hindsight.take() {
            Some((hid, kept, at)) if hid == id => Some((kept, at)),
            other => {
                st.hindsight = other;
                None
            }
        };
        (info, kept)
    }

    /// Session `id`'s timeline file was written.
    pub fn timeline_written(&self, id: &str, path: &std::path::Path) {
        let mut guard = self.lock();
        let st = &mut *guard;
        for s in [st.current.as_mut(), st.last.as_mut()].into_iter().flatten() {
            if s.id == id {
                s.timeline = Some(path.display().to_string());
            }
        }
    }

    /// The running session, if any.
    pub fn current(&self) -> Option<SessionInfo> {
        self.lock().current.clone()
    }
}

fn to_system_time(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(profile: Profile, ms: Option<u64>) -> Request {
        Request::Start(StartRequest {
            profile,
            duration_ms: ms,
            pid: None,
            comm: None,
            cpus: None,
            budget_percent: None,
            threshold_ns: None,
        })
    }

    struct NoPrograms;
    impl Tracer for NoPrograms {
        fn start(&self, _: &SessionInfo) -> Result<(), String> {
            Ok(())
        }
        fn stop(&self, _: &SessionInfo) {}
    }

    #[test]
    fn without_ebpf_a_start_says_why() {
        let s = Sessions::new(TraceSettings::default());
        let (Response::Error { message }, then) = s.handle(start(Profile::Sched, None), 1) else { panic!() };
        assert!(message.contains("needs eBPF"), "{message}");
        assert!(then.is_empty());
    }

    #[test]
    fn one_session_at_a_time_with_a_capped_duration_ending_at_its_deadline() {
        let s = Sessions::new(TraceSettings::default());
        s.set_tracer(Ok(Arc::new(NoPrograms)));
        let s = Handle(s);
        let Response::Session { session } = s.handle(start(Profile::Sched, None), 1_000) else { panic!() };
        assert_eq!(session.until_ms, 11_000);
        let Response::Error { message } = s.handle(start(Profile::Irq, None), 2_000) else { panic!() };
        assert!(message.contains(&session.id) && message.contains("runs until"), "{message}");
        assert!(matches!(s.handle(Request::Status, 5_000), Response::Session { .. }));
        // Past the deadline it has ended, and says why.
        let Response::Idle { last: Some(last) } = s.handle(Request::Status, 11_000) else { panic!() };
        assert_eq!(last.ended.as_deref(), Some("deadline"));
        let Response::Error { message } = s.handle(start(Profile::Sched, Some(121_000)), 12_000) else { panic!() };
        assert!(message.contains("cap of 2m"), "{message}");
        assert!(matches!(s.handle(start(Profile::Sched, Some(5_000)), 12_000), Response::Session { .. }));
        let Response::Session { session } = s.handle(Request::Stop, 13_000) else { panic!() };
        assert_eq!(session.ended.as_deref(), Some("stopped"));
        assert!(matches!(s.handle(Request::Stop, 13_000), Response::Idle { .. }));
    }

    /// The response alone (the unit tests have no programs to load).
    struct Handle(Sessions);
    impl Handle {
        fn handle(&self, req: Request, now: i64) -> Response {
            self.0.handle(req, now).0
        }
    }

    #[test]
    fn requests_round_trip_as_one_json_line() {
        let line = serde_json::to_string(&start(Profile::Net, Some(5))).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), start(Profile::Net, Some(5)));
    }
}
