//! Per-thread run-queue wait and on-CPU time, kept by `sched_switch` in the LRU map
//! `SCHED_TASKS` when the source `sched_tasks` is enabled (off by default: it adds a
//! hash update to every switch and one series pair per thread that runs).
//!
//! The kernel accumulates; this source reads the whole map once per interval (1 s by
//! default) and exports the threads that ran since the previous read. The map holds
//! `TASK_ENTRIES` threads; the least recently run is evicted when a new one needs
//! room. Entries are never deleted otherwise, so a thread that vanishes from the map
//! was evicted: that is counted, and its series are ended.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData};
use lsvmi_common::sched::{GLOBAL_TASK_STATS, TASKS_MAP, TaskTimes};

use crate::{
    bpf::{Bpf, BpfError, BpfSource, Global},
    model::{MetricDesc, SeriesId, now_ms},
    sources::{Collector, Source, SourceError},
};

const SOURCE: &str = "BPF tp_btf/sched_switch (sched_tasks)";

metric!(
    TASK_RUNQ,
    "sched_task_runq_wait_seconds_total",
    Counter,
    "seconds",
    ["pid", "tid", "comm"],
    SOURCE,
    "Time each thread waited runnable for a CPU, for threads that ran in the interval: which thread waited."
);
metric!(
    TASK_ONCPU,
    "sched_task_oncpu_seconds_total",
    Counter,
    "seconds",
    ["pid", "tid", "comm"],
    SOURCE,
    "Time each thread ran on a CPU, for threads that ran in the interval."
);
metric!(
    EVICTED,
    "sched_task_evictions_total",
    Counter,
    "",
    [],
    SOURCE,
    "Threads dropped from the kernel's per-task table to make room (least recently run first)."
);
metric!(TRACKED, "sched_tasks_tracked", Gauge, "", [], SOURCE, "Threads in the kernel's per-task table.");

pub static METRICS: &[&MetricDesc] = &[&TASK_RUNQ, &TASK_ONCPU, &EVICTED, &TRACKED];

struct Known {
    tgid: u32,
    comm: [u8; 16],
    runq: SeriesId,
    oncpu: SeriesId,
    last_ns: u64,
    /// Read pass in which it was last present in the map.
    pass: u64,
}

/// No program of its own: it switches on the per-task part of `sched`'s sched_switch
/// at load (global `SCHED_TASK_STATS`) and reads the map that fills.
pub static BPF: BpfSource = BpfSource {
    programs: &[],
    needs: &["sched"],
    globals: |_| vec![Global::new(GLOBAL_TASK_STATS, 1u32)],
    attach: |bpf, _| Ok(Box::new(SchedTasksSource::attach(bpf)?)),
};

pub struct SchedTasksSource {
    map: BpfHashMap<MapData, u32, TaskTimes>,
    known: HashMap<u32, Known>,
    pass: u64,
    evicted: u64,
    evicted_series: Option<SeriesId>,
    tracked_series: Option<SeriesId>,
}

impl SchedTasksSource {
    /// Take the per-task map. The per-task code in sched_switch was switched on at load
    /// (see [`BPF`]); this source only reads.
    pub fn attach(bpf: &mut Bpf) -> Result<Self, BpfError> {
        let map = bpf.take_map(TASKS_MAP)?;
        Ok(SchedTasksSource {
            map,
            known: HashMap::new(),
            pass: 0,
            evicted: 0,
            evicted_series: None,
            tracked_series: None,
        })
    }
}

impl Source for SchedTasksSource {
    fn name(&self) -> &'static str {
        "sched_tasks"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        self.pass += 1;
        let pass = self.pass;
        let ts = now_ms();
        let mut tracked = 0u64;
        for entry in self.map.iter() {
            // An entry evicted between listing its key and reading it is skipped.
            let Ok((tid, t)) = entry else { continue };
            tracked += 1;
            let fresh = match self.known.get(&tid) {
                // A reused thread id (another process, or renamed by exec) is a new series.
                Some(k) if k.tgid == t.tgid && k.comm == t.comm => false,
                Some(k) => {
                    out.end_series(k.runq, ts);
                    out.end_series(k.oncpu, ts);
                    true
                }
                None => true,
            };
            if fresh {
                let (pid, tid_s, comm) = (t.tgid.to_string(), tid.to_string(), crate::sources::text::comm(&t.comm));
                let labels = [("pid", pid.as_str()), ("tid", tid_s.as_str()), ("comm", comm.as_str())];
                let k = Known {
                    tgid: t.tgid,
                    comm: t.comm,
                    runq: out.series(&TASK_RUNQ, &labels),
                    oncpu: out.series(&TASK_ONCPU, &labels),
                    last_ns: 0,
                    pass,
                };
                self.known.insert(tid, k);
            }
            let Some(k) = self.known.get_mut(&tid) else { continue };
            k.pass = pass;
            if t.last_ns != k.last_ns {
                k.last_ns = t.last_ns;
                out.push(k.runq, ts, t.runq_ns as f64 / 1e9);
                out.push(k.oncpu, ts, t.oncpu_ns as f64 / 1e9);
            }
        }
        let mut gone = 0;
        self.known.retain(|_, k| {
            if k.pass == pass {
                return true;
            }
            out.end_series(k.runq, ts);
            out.end_series(k.oncpu, ts);
            gone += 1;
            false
        });
        self.evicted += gone;
        let evicted = *self.evicted_series.get_or_insert_with(|| out.series(&EVICTED, &[]));
        let tracked_id = *self.tracked_series.get_or_insert_with(|| out.series(&TRACKED, &[]));
        out.push(evicted, ts, self.evicted as f64);
        out.push(tracked_id, ts, tracked as f64);
        Ok(())
    }
}
