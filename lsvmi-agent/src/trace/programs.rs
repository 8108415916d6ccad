//! What every profile does the same way: load and attach its set of tp_btf programs in
//! the agent's BPF object at session start and unload them at its end, zero per-CPU
//! counters, and meter the session's cost against its budget.

use std::{
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuValues},
    programs::BtfTracePoint,
};

use super::{SessionInfo, Sessions, Tracer};
use crate::{
    model::SeriesId,
    sources::{Collector, text::Tracked},
};

/// A profile's programs: (program name, tp_btf tracepoint).
pub type ProgramSet = &'static [(&'static str, &'static str)];

/// Load and attach `set`; on any failure, unload what was loaded and say why.
pub fn load(ebpf: &Arc<Mutex<Ebpf>>, set: ProgramSet) -> Result<(), String> {
    let attached = (|| -> Result<(), String> {
        // The parsed kernel BTF is ~25 MB; it is needed only while loading.
        let btf = aya::Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
        let mut ebpf = ebpf.lock().unwrap_or_else(|p| p.into_inner());
        for (prog, tp) in set {
            let p = ebpf.program_mut(prog).ok_or_else(|| format!("{prog} missing from the BPF object"))?;
            let p: &mut BtfTracePoint = p.try_into().map_err(|e| format!("{prog}: {e}"))?;
            p.load(tp, &btf).map_err(|e| format!("loading {prog}: {}", crate::bpf::describe(&e)))?;
            p.attach().map_err(|e| format!("attaching {prog}: {}", crate::bpf::describe(&e)))?;
        }
        Ok(())
    })();
    if attached.is_err() {
        unload(ebpf, set);
    }
    attached
}

/// Detach and unload `set` (a program not loaded is skipped).
pub fn unload(ebpf: &Arc<Mutex<Ebpf>>, set: ProgramSet) {
    let mut ebpf = ebpf.lock().unwrap_or_else(|p| p.into_inner());
    for (prog, _) in set {
        if let Some(p) = ebpf.program_mut(prog)
            && let Ok(p) = <&mut BtfTracePoint>::try_from(p)
        {
            let _ = p.unload();
        }
    }
}

/// Set every CPU's counters of the first `slots` slots to 0.
pub fn zero(map: &mut PerCpuArray<MapData, u64>, slots: usize) {
    let cpus = aya::util::nr_cpus().unwrap_or(1);
    for slot in 0..slots as u32 {
        if let Ok(z) = PerCpuValues::try_from(vec![0u64; cpus]) {
            let _ = map.set(slot, z, 0);
        }
    }
}

/// Remove every entry of a hash map.
pub fn clear_hash<K: aya::Pod, V: aya::Pod>(map: &mut aya::maps::HashMap<MapData, K, V>) {
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for k in &keys {
        let _ = map.remove(k);
    }
}

/// Each slot's count summed over CPUs.
pub fn sums<const N: usize>(map: &PerCpuArray<MapData, u64>) -> [u64; N] {
    let mut out = [0u64; N];
    for (slot, n) in out.iter_mut().enumerate() {
        *n = map.get(&(slot as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
    }
    out
}

/// A session's cost: program runs counted in the kernel × the ns per run measured for
/// each program (docs/performance.md), over each interval between two reads.
pub struct CostMeter<const N: usize> {
    cost_ns: [f64; N],
    last: Option<(String, [u64; N], Instant)>,
}

impl<const N: usize> CostMeter<N> {
    pub const fn new(cost_ns: [f64; N]) -> Self {
        CostMeter { cost_ns, last: None }
    }

    /// Report the cost since the last read to `status`; over budget, end the session
    /// (its programs unloaded off the tick). The always-on collection is never touched.
    pub fn observe(&mut self, session: &SessionInfo, runs: [u64; N], sessions: &Sessions) {
        let now = Instant::now();
        let last = self.last.replace((session.id.clone(), runs, now));
        let Some((id, before, at)) = last.filter(|(id, ..)| *id == session.id) else { return };
        let secs = now.duration_since(at).as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let delta: Vec<f64> = runs.iter().zip(before).map(|(n, b)| n.saturating_sub(b) as f64).collect();
        let events_per_s = delta.iter().sum::<f64>() / secs;
        let cost = delta.iter().zip(self.cost_ns).map(|(n, ns)| n * ns).sum::<f64>() / secs / 1e9 * 100.0;
        sessions.measured(&id, events_per_s, cost);
        if cost > session.budget_percent {
            let why = format!("budget: {cost:.2}% of a CPU over {}%", session.budget_percent);
            tracing::warn!(session = %id, "trace session over its budget ({cost:.2}% > {}%): stopping it", session.budget_percent);
            let sessions = sessions.clone();
            tokio::spawn(async move {
                if let Some(ended) = sessions.end_if(&id, &why) {
                    super::control::stop_programs(&sessions, ended).await;
                }
            });
        }
    }
}

/// A profile's maps as the session lifecycle sees them.
pub trait SessionMaps: Send + 'static {
    /// Empty every map (before a session).
    fn clear(&mut self);
    /// Turn the programs' recording on for `session`, or off.
    fn switch(&mut self, session: Option<&SessionInfo>) -> Result<(), String>;
    /// The session the profile's source reports: set at start, kept once ended until
    /// its last values are out.
    fn session(&mut self) -> &mut Option<SessionInfo>;
    /// Per-event records from index `since` (`--follow`); none by default.
    fn events(&self, _since: usize) -> (Vec<serde_json::Value>, usize) {
        (Vec::new(), _since)
    }
}

/// What a profile's tracer and its source share: its maps, and where sessions are told
/// their cost.
pub struct Shared<M> {
    maps: Mutex<M>,
    pub sessions: OnceLock<Sessions>,
}

impl<M: SessionMaps> Shared<M> {
    pub fn new(maps: M) -> Arc<Self> {
        Arc::new(Shared { maps: Mutex::new(maps), sessions: OnceLock::new() })
    }

    pub fn lock(&self) -> MutexGuard<'_, M> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For the source on the tick: never waits (a session being set up holds the lock
    /// only briefly; that tick skips).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, M>> {
        self.maps.try_lock().ok()
    }
}

/// The tracer of a profile with programs of its own: the same lifecycle for each.
pub struct ProgramTracer<M: SessionMaps> {
    ebpf: Arc<Mutex<Ebpf>>,
    shared: Arc<Shared<M>>,
    programs: ProgramSet,
    /// Refuses a session the profile cannot run, before anything is loaded.
    check: fn(&SessionInfo) -> Result<(), String>,
}

impl<M: SessionMaps> ProgramTracer<M> {
    /// The tracer, once the profile's source started (it set `shared`).
    pub fn new(
        ebpf: Arc<Mutex<Ebpf>>,
        shared: Option<&Arc<Shared<M>>>,
        sessions: &Sessions,
        programs: ProgramSet,
        check: fn(&SessionInfo) -> Result<(), String>,
        source: &str,
    ) -> Result<Self, String> {
        let shared = shared.cloned().ok_or_else(|| format!("the {source} source is not running"))?;
        let _ = shared.sessions.set(sessions.clone());
        Ok(ProgramTracer { ebpf, shared, programs, check })
    }
}

impl<M: SessionMaps> Tracer for ProgramTracer<M> {
    fn start(&self, session: &SessionInfo) -> Result<(), String> {
        (self.check)(session)?;
        {
            let mut maps = self.shared.lock();
            maps.switch(None)?;
            maps.clear();
        }
        load(&self.ebpf, self.programs)?;
        let mut maps = self.shared.lock();
        *maps.session() = Some(session.clone());
        maps.switch(Some(session))
    }

    fn stop(&self, session: &SessionInfo) {
        {
            let mut maps = self.shared.lock();
            let _ = maps.switch(None);
            if let Some(s) = maps.session().as_mut()
                && s.id == session.id
            {
                s.ended = session.ended.clone();
            }
        }
        unload(&self.ebpf, self.programs);
    }

    fn events(&self, session: &SessionInfo, since: usize) -> (Vec<serde_json::Value>, usize) {
        let mut maps = self.shared.lock();
        if maps.session().as_ref().is_none_or(|s| s.id != session.id) {
            return (Vec::new(), since);
        }
        maps.events(since)
    }
}

/// A profile source's series: registered on first sight of their key, ended (with
/// staleness markers) once a collection no longer sets them — when their session ends.
#[derive(Default)]
pub struct SessionSeries {
    series: Tracked<Vec<SeriesId>>,
    key: Vec<u8>,
}

impl SessionSeries {
    /// Push `values` to the series of `key`, made by `make` the first time.
    pub fn set(
        &mut self,
        out: &mut Collector<'_>,
        key: &str,
        make: impl FnOnce(&mut Collector<'_>) -> Vec<SeriesId>,
        values: &[f64],
        ts: i64,
    ) {
        self.key.clear();
        self.key.extend_from_slice(key.as_bytes());
        let ids = self.series.entry(&self.key, || make(out));
        for (id, v) in ids.iter().zip(values) {
            out.push(*id, ts, *v);
        }
    }

    /// `trace_dropped_events_total{session,reason}`.
    pub fn dropped(&mut self, out: &mut Collector<'_>, session: &str, reason: &str, n: u64, ts: i64) {
        let make = |out: &mut Collector<'_>| {
            vec![out.series(&super::sched::DROPPED, &[("session", session), ("reason", reason)])]
        };
        self.set(out, &format!("dropped\0{reason}"), make, &[n as f64], ts);
    }

    /// End the series not set since the last sweep.
    pub fn sweep(&mut self, out: &mut Collector<'_>, ts: i64) {
        self.series.sweep(out, ts);
    }
}
