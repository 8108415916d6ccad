//! What every profile does the same way: load and attach its set of tp_btf programs in
//! the agent's BPF object at session start and unload them at its end, zero per-CPU
//! counters, and meter the session's cost against its budget.

use std::{
    os::fd::OwnedFd,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuValues},
    programs::BtfTracePoint,
};

use lsvmi_common::hist::{LOG2_BUCKETS, log2_upper_bound};

use super::{SessionInfo, Sessions, Tracer, budget::Meter};
use crate::{
    model::SeriesId,
    sources::{Collector, histogram::HistogramDesc, text::Tracked},
};

/// A profile's programs: (program name, tp_btf tracepoint).
pub type ProgramSet = &'static [(&'static str, &'static str)];

/// Load and attach `set`; on any failure, unload what was loaded and say why.
pub fn load(ebpf: &Arc<Mutex<Ebpf>>, set: ProgramSet) -> Result<(), String> {
    let attached = (|| -> Result<(), String> {
        let tracepoints: Vec<&str> = set.iter().map(|(_, tp)| *tp).collect();
        let btf = crate::bpf::attach_btf(&tracepoints)?;
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

/// Runs counted in the kernel × the ns per run measured for each program
/// (docs/performance.md): the cost when the kernel's own BPF stats are not available.
pub fn estimate<const N: usize>(runs: [u64; N], cost_ns: [f64; N]) -> (u64, f64) {
    (runs.iter().sum(), runs.iter().zip(cost_ns).map(|(n, ns)| *n as f64 * ns).sum())
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
    /// The session's cost so far from the programs' run counts: (runs, estimated ns).
    fn estimate(&self) -> (u64, f64);
    /// Take step `n` (1, 2, …) down in cost; what was done, or None when no step is left.
    fn step_down(&mut self, _n: u32) -> Option<String> {
        None
    }
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
    /// The profile's shared maps, also put in `slot` for its tracer to find. One BPF
    /// object per agent, so one source per profile: a second set is impossible.
    pub fn new(maps: M, slot: &OnceLock<Arc<Self>>) -> Arc<Self> {
        let shared = Arc::new(Shared { maps: Mutex::new(maps), sessions: OnceLock::new() });
        let _ = slot.set(shared.clone());
        shared
    }

    pub fn lock(&self) -> MutexGuard<'_, M> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For the source on the tick: never waits (a session being set up holds the lock
    /// only briefly; that tick skips).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, M>> {
        self.maps.try_lock().ok()
    }

    /// What a profile's source does first on its tick: the maps and the session they
    /// report, or None — the lock is busy (a session being set up holds it briefly: this
    /// tick skips rather than wait), or no session is left, and then its series end.
    pub fn tick(
        &self,
        series: &mut SessionSeries,
        out: &mut Collector<'_>,
        ts: i64,
    ) -> Option<(MutexGuard<'_, M>, SessionInfo)> {
        let mut maps = self.try_lock()?;
        let Some(session) = maps.session().clone() else {
            drop(maps);
            series.sweep(out, ts);
            return None;
        };
        Some((maps, session))
    }

    /// Write an ended session's timeline off the tick, from `make(id, records, dropped)`.
    pub fn write_timeline<R: Send + 'static>(
        &self,
        id: &str,
        (records, dropped): (Vec<R>, u64),
        make: impl FnOnce(&str, &[R], u64) -> super::timeline::Files + Send + 'static,
    ) {
        let owned = id.to_string();
        super::timeline::write_later(self.sessions.get(), id, move || make(&owned, &records, dropped));
    }
}

/// The tracer of a profile with programs of its own: the same lifecycle for each.
pub struct ProgramTracer<M: SessionMaps> {
    ebpf: Arc<Mutex<Ebpf>>,
    shared: Arc<Shared<M>>,
    programs: ProgramSet,
    /// Refuses a session the profile cannot run, before anything is loaded.
    check: fn(&SessionInfo) -> Result<(), String>,
    /// While a session runs: the kernel's BPF run-time stats, on while this is held.
    stats: Mutex<Option<OwnedFd>>,
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
        Ok(ProgramTracer { ebpf, shared, programs, check, stats: Mutex::new(None) })
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
        // The kernel times every BPF program while stats are on (a clock read per run,
        // other tools' programs included): on for the session only, off when the last
        // holder closes its fd. Without CAP_SYS_ADMIN it is refused; the run counts then
        // estimate the cost.
        let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::info!(session = %session.id, "kernel BPF stats unavailable ({e}): the session's cost is estimated from its program runs");
                None
            }
        };
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
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
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn meter(&self, session: &SessionInfo) -> Option<Meter> {
        let kernel = self.stats.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        if kernel {
            let ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
            let (mut runs, mut ns) = (0u64, 0f64);
            for (prog, _) in self.programs {
                let info = ebpf.program(prog).and_then(|p| p.info().ok())?;
                runs += info.run_count();
                ns += info.run_time().as_nanos() as f64;
            }
            return Some(Meter { runs, ns, kernel });
        }
        let mut maps = self.shared.lock();
        if maps.session().as_ref().is_none_or(|s| s.id != session.id) {
            return None;
        }
        let (runs, ns) = maps.estimate();
        Some(Meter { runs, ns, kernel })
    }

    fn step_down(&self, session: &SessionInfo, n: u32) -> Option<String> {
        let mut maps = self.shared.lock();
        if maps.session().as_ref().is_none_or(|s| s.id != session.id) {
            return None;
        }
        maps.step_down(n)
    }

    fn events(&self, session: &SessionInfo, since: usize) -> (Vec<serde_json::Value>, usize) {
        let mut maps = self.shared.lock();
        if maps.session().as_ref().is_none_or(|s| s.id != session.id) {
            return (Vec::new(), since);
        }
        maps.events(since)
    }
}

/// `le` of coarse bucket `i`, in seconds.
fn log2_le(i: usize) -> String {
    if i >= LOG2_BUCKETS - 1 { "+Inf".into() } else { format!("{}", log2_upper_bound(i) as f64 / 1e9) }
}

/// Add a kernel-side coarse histogram into `into`.
pub fn add_hist(into: &mut [u64; LOG2_BUCKETS], h: &[u32; LOG2_BUCKETS]) {
    for (a, b) in into.iter_mut().zip(h) {
        *a += u64::from(*b);
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

    /// A coarse histogram's series (`_bucket{le}` cumulative, `_sum` in seconds,
    /// `_count`) for the member `key` with `labels`.
    #[allow(clippy::too_many_arguments, reason = "one call per member; the arguments are its parts")]
    pub fn histogram(
        &mut self,
        out: &mut Collector<'_>,
        key: &str,
        desc: &'static HistogramDesc,
        labels: &[(&'static str, &str)],
        h: &[u64; LOG2_BUCKETS],
        sum_ns: u64,
        ts: i64,
    ) {
        let make = |out: &mut Collector<'_>| {
            let mut ids: Vec<SeriesId> = (0..LOG2_BUCKETS)
                .map(|i| {
                    let le = log2_le(i);
                    let mut l = labels.to_vec();
                    l.push(("le", le.as_str()));
                    out.series(&desc.bucket, &l)
                })
                .collect();
            ids.push(out.series(&desc.sum, labels));
            ids.push(out.series(&desc.count, labels));
            ids
        };
        let mut values = Vec::with_capacity(LOG2_BUCKETS + 2);
        let mut cumulative = 0u64;
        for n in h {
            cumulative += n;
            values.push(cumulative as f64);
        }
        values.push(sum_ns as f64 / 1e9);
        values.push(cumulative as f64);
        self.set(out, &format!("{key}\0hist\0{}", desc.bucket.name), make, &values, ts);
    }

    /// `trace_dropped_events_total{session,reason}`, and the session's summary.
    #[allow(clippy::too_many_arguments, reason = "the series, and where the summary goes")]
    pub fn dropped(
        &mut self,
        out: &mut Collector<'_>,
        sessions: Option<&Sessions>,
        session: &str,
        reason: &str,
        n: u64,
        ts: i64,
    ) {
        if let Some(s) = sessions {
            s.dropped(session, reason, n);
        }
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
