//! Scheduler events from BPF (`lsvmi-ebpf/src/sched.rs`): each CPU's counters, busy
//! time and run-queue latency histogram live in one per-CPU map value that this source
//! copies on the sampling tick. No ring buffer, no wake-up per event.

use lsvmi_common::sched::{CPU_MAP, CpuSched, GLOBAL_OFFSETS, PROG_MIGRATE, PROG_SWITCH, SchedOffsets};

use super::{Collector, Source, SourceError, histogram::HistogramFamily};
use crate::{
    bpf::{Bpf, BpfError, BpfSource, Global, Hook, Kernel, monotonic_ns},
    model::{MetricDesc, SeriesId, now_ms},
};

pub mod tasks;

const SOURCE: &str = "BPF tp_btf/sched_switch";

metric!(
    CONTEXT_SWITCHES,
    "sched_context_switches_total",
    Counter,
    "",
    ["cpu"],
    SOURCE,
    "Context switches on each CPU since the agent started, counted in the kernel at every sched_switch. \
     Exact per CPU, unlike /proc/stat's ctxt which is host-wide."
);
metric!(
    SWITCHES_BY_KIND,
    "sched_task_switches_total",
    Counter,
    "",
    ["cpu", "kind"],
    SOURCE,
    "Switches away from a task (the idle task excluded), kind=voluntary (it blocked) or involuntary \
     (preempted or still runnable) — the kernel's nvcsw/nivcsw, per CPU. Involuntary switches on a core \
     that runs one busy-polling thread mean something else was scheduled there."
);
metric!(
    MIGRATIONS,
    "sched_migrations_total",
    Counter,
    "",
    ["cpu"],
    "BPF tp_btf/sched_migrate_task",
    "Task migrations started on each CPU (the CPU that moved the task)."
);
metric!(
    BUSY,
    "sched_cpu_busy_seconds_total",
    Counter,
    "seconds",
    ["cpu"],
    SOURCE,
    "Time each CPU ran a task other than its idle task, in ns resolution: timestamps at every switch, plus \
     the running stretch up to the read. /proc/stat counts in 10 ms ticks, so one 100 ms sample of it has \
     10 % resolution; this one is exact."
);
histogram!(
    RUNQ_LATENCY,
    "sched_runq_latency_seconds",
    ["cpu"],
    SOURCE,
    "Run-queue latency on each CPU: from a task being queued (woken, created, or preempted while \
     runnable) to it running on this CPU — the kernel's own per-switch run_delay, read at sched_switch. \
     Log-linear buckets, at most 25 % wide."
);

pub static METRICS: &[&MetricDesc] = &[
    &CONTEXT_SWITCHES,
    &SWITCHES_BY_KIND,
    &MIGRATIONS,
    &BUSY,
    &RUNQ_LATENCY.bucket,
    &RUNQ_LATENCY.sum,
    &RUNQ_LATENCY.count,
];

/// The programs, where they attach, the kernel fields they read (offsets from BTF).
pub static BPF: BpfSource = BpfSource {
    programs: &[(PROG_SWITCH, Hook::TpBtf), (PROG_MIGRATE, Hook::TpBtf)],
    needs: &[],
    globals: |kernel| offsets(kernel).map(|o| vec![Global::new(GLOBAL_OFFSETS, o)]).unwrap_or_default(),
    attach: |bpf, disabled| Ok(Box::new(SchedSource::attach(bpf, disabled)?)),
};

/// The fields sched_switch reads. `pid` is required; the run-queue ones are optional (a
/// kernel without CONFIG_FAIR_GROUP_SCHED or CONFIG_SCHED_INFO lacks some of them, and
/// run-queue latency is then left out with one warning).
fn offsets(kernel: &Kernel) -> Result<SchedOffsets, String> {
    let at = |s: &str, m: &str| kernel.member_offset(s, m);
    let mut o = SchedOffsets {
        pid: at("task_struct", "pid")?,
        // Only names the hindsight ring's records: without it they carry none.
        comm: at("task_struct", "comm").unwrap_or(0),
        ..Default::default()
    };
    let runq = (|| -> Result<(), String> {
        o.last_queued = at("task_struct", "sched_info")? + at("sched_info", "last_queued")?;
        o.se_cfs_rq = at("task_struct", "se")? + at("sched_entity", "cfs_rq")?;
        o.cfs_rq_rq = at("cfs_rq", "rq")?;
        o.rq_clock = at("rq", "clock")?;
        Ok(())
    })();
    if runq.is_ok() {
        o.runq = 1;
    }
    Ok(o)
}

/// Series of one CPU.
struct CpuSeries {
    switches: SeriesId,
    voluntary: SeriesId,
    involuntary: SeriesId,
    migrations: SeriesId,
    busy: SeriesId,
    /// Busy seconds last exported: a counter must not step back when a read races a
    /// switch on that CPU.
    last_busy: f64,
}

pub struct SchedSource {
    map: crate::bpf::percpu::PerCpuEntry<CpuSched>,
    switch: bool,
    /// Run-queue latency offsets known (see `SchedOffsets`).
    runq: bool,
    migrate: bool,
    /// By CPU; None for a CPU not (yet) online.
    cpus: Vec<Option<CpuSeries>>,
    online: crate::sources::host::OnlineCpus,
    runq_hist: HistogramFamily,
}

impl SchedSource {
    /// Attach the scheduler programs not in `disabled` and take their map. A program
    /// that fails is one warning and its series are left out; `Err` when sched_switch,
    /// which everything but migrations needs, cannot run and neither can migrations.
    pub fn attach(bpf: &mut Bpf, disabled: &[String]) -> Result<Self, BpfError> {
        // The offsets the programs were loaded with (none: the kernel's BTF lacked them).
        let runq = match bpf.global::<SchedOffsets>(GLOBAL_OFFSETS) {
            Some(o) if o.runq == 0 => {
                tracing::warn!("run-queue latency not measured: the kernel's BTF lacks the sched_info or rq fields");
                false
            }
            Some(_) => true,
            // Without the pid offset sched_switch would take every task for idle.
            None => {
                return Err(BpfError::Kernel {
                    what: "task_struct.pid offset".into(),
                    cause: "not found in the kernel's BTF".into(),
                });
            }
        };
        let on = bpf.attach_each("sched", BPF.programs, disabled);
        let (switch, migrate) = (on[0], on[1]);
        if !switch && !migrate {
            return Err(BpfError::Kernel {
                what: "scheduler programs".into(),
                cause: "neither sched_switch nor sched_migrate_task is running".into(),
            });
        }
        let map = bpf.take_per_cpu(CPU_MAP)?;
        Ok(SchedSource {
            map,
            switch,
            runq,
            migrate,
            cpus: Vec::new(),
            online: crate::sources::host::OnlineCpus::new(),
            runq_hist: HistogramFamily::new(&RUNQ_LATENCY),
        })
    }
}

impl Source for SchedSource {
    fn name(&self) -> &'static str {
        "sched"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        self.map.read(0).map_err(|source| SourceError::Map { map: CPU_MAP, source })?;
        let values = self.map.values();
        let now_ns = monotonic_ns();
        let ts = now_ms();
        let online = self.online.refresh();
        self.cpus.resize_with(values.len(), || None);
        for (cpu, slot) in self.cpus.iter_mut().enumerate() {
            if slot.is_none() && online.is_online(cpu) {
                let cpu = cpu.to_string();
                let one =
                    |out: &mut Collector<'_>, desc, kind: &str| out.series(desc, &[("cpu", &cpu), ("kind", kind)]);
                *slot = Some(CpuSeries {
                    switches: one(out, &CONTEXT_SWITCHES, ""),
                    voluntary: one(out, &SWITCHES_BY_KIND, "voluntary"),
                    involuntary: one(out, &SWITCHES_BY_KIND, "involuntary"),
                    migrations: one(out, &MIGRATIONS, ""),
                    busy: one(out, &BUSY, ""),
                    last_busy: 0.0,
                });
            }
        }
        if self.runq {
            let runq = &mut self.runq_hist;
            values
                .clone()
                .enumerate()
                .filter(|(cpu, _)| online.is_online(*cpu))
                .for_each(|(_, v)| runq.observe_range(&v.runq));
        }
        for (cpu, (v, series)) in values.zip(self.cpus.iter_mut()).enumerate() {
            let (Some(series), true) = (series.as_mut(), online.is_online(cpu)) else { continue };
            if self.switch {
                out.push(series.switches, ts, v.switches as f64);
                out.push(series.voluntary, ts, v.voluntary as f64);
                out.push(series.involuntary, ts, v.involuntary as f64);
                // "Now" on this CPU's clock: the runqueue clock placed by its last
                // (rq clock, CLOCK_MONOTONIC) pair, or CLOCK_MONOTONIC itself.
                let cpu_now = if v.pair_ktime != 0 { v.pair_rq + now_ns.saturating_sub(v.pair_ktime) } else { now_ns };
                let running = if v.running_pid != 0 && v.last_switch_ns != 0 {
                    cpu_now.saturating_sub(v.last_switch_ns)
                } else {
                    0
                };
                let busy = ((v.busy_ns + running) as f64 / 1e9).max(series.last_busy);
                series.last_busy = busy;
                out.push(series.busy, ts, busy);
            }
            if self.migrate {
                out.push(series.migrations, ts, v.migrations as f64);
            }
            if self.switch && self.runq {
                self.runq_hist.push(out, cpu, || vec![("cpu", cpu.to_string())], ts, &v.runq);
            }
        }
        Ok(())
    }
}
