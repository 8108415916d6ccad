//! What every profile does the same way: load and attach its set of tp_btf programs in
//! the agent's BPF object at session start and unload them at its end, zero per-CPU
//! counters, and meter the session's cost against its budget.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuValues},
    programs::BtfTracePoint,
};

use super::{SessionInfo, Sessions};

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
