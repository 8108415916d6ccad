//! Scheduler programs. All state of a CPU is one per-CPU map value ([`CpuSched`]), found
//! with one lookup per event; the agent copies it on its tick. Kernel fields are read
//! with plain loads at offsets from the kernel's BTF ([`SchedOffsets`]): the verifier
//! knows the tp_btf arguments' types and the offsets (read-only globals are constants
//! to it), checks each load lands on a member of the right type, and makes it
//! fault-safe. That is far cheaper than a bpf_probe_read_kernel call, and it is what
//! keeps sched_switch — run on every context switch of every CPU — near the floor.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use lsvmi_common::{
    hindsight::{RUNQ, Record},
    sched::{CpuSched, SchedOffsets, TASK_ENTRIES, TaskTimes},
};

use crate::{
    hindsight,
    kernel::{comm_at, field, global},
};

#[map]
static SCHED_CPU: PerCpuArray<CpuSched> = PerCpuArray::with_max_entries(1, 0);

/// Thread id → its times; only written when `SCHED_TASK_STATS` is set.
#[map]
static SCHED_TASKS: LruHashMap<u32, TaskTimes> = LruHashMap::with_max_entries(TASK_ENTRIES, 0);

/// Field offsets from the kernel's BTF (set by the agent at load).
#[unsafe(no_mangle)]
static SCHED_OFFSETS: SchedOffsets =
    SchedOffsets { pid: 0, last_queued: 0, se_cfs_rq: 0, cfs_rq_rq: 0, rq_clock: 0, runq: 0, comm: 0, _pad: 0 };

/// Non-zero: keep per-task times (set by the agent at load; the verifier prunes the
/// per-task code when it is 0, since globals are read-only and known at load).
#[unsafe(no_mangle)]
static SCHED_TASK_STATS: u32 = 0;

#[inline(always)]
fn cpu_state() -> Option<&'static mut CpuSched> {
    // SAFETY: the pointer comes from the map lookup and is this CPU's value; nothing
    // else runs on this CPU while the program does (preemption is off in tracepoints).
    SCHED_CPU.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// This CPU's runqueue clock (`next->se.cfs_rq->rq->clock`, updated by `__schedule` just
/// before the tracepoint), or None without the offsets or on a failed read.
#[inline(always)]
fn rq_clock(next: *const u8, o: &SchedOffsets) -> Option<u64> {
    if o.runq == 0 {
        return None;
    }
    let cfs_rq: *const u8 = field(next, o.se_cfs_rq);
    let rq: *const u8 = field(cfs_rq, o.cfs_rq_rq);
    let clock: u64 = field(rq, o.rq_clock);
    (clock != 0).then_some(clock)
}

/// Refresh the (runqueue clock, ktime) pair at most this often.
const PAIR_EVERY_NS: u64 = 1_000_000;

/// `tp_btf/sched_switch(bool preempt, prev, next, unsigned int prev_state)`.
///
/// - counts the switch, and classifies it like the kernel's nvcsw/nivcsw when `prev` is
///   a real task: involuntary when preempted or still runnable (`prev_state` 0);
/// - adds the time `prev` ran to the CPU's busy time (not for the idle task, pid 0);
/// - records `next`'s run-queue latency in the histogram.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let Some(cpu) = cpu_state() else { return 0 };
    let o = global(&SCHED_OFFSETS);
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    // The CPU's clock: the runqueue clock when reachable (no helper call), else ktime.
    let rq_now = rq_clock(next, &o);
    let now = match rq_now {
        Some(c) => {
            if c.wrapping_sub(cpu.pair_rq) > PAIR_EVERY_NS {
                // SAFETY: helper without preconditions.
                cpu.pair_ktime = unsafe { bpf_ktime_get_ns() };
                cpu.pair_rq = c;
            }
            c
        }
        // A failed read with the offsets known: do not mix clocks, skip the timing.
        None if o.runq != 0 => {
            cpu.switches += 1;
            return 0;
        }
        // SAFETY: helper without preconditions.
        None => unsafe { bpf_ktime_get_ns() },
    };
    let prev_pid: i32 = field(prev, o.pid);
    cpu.switches += 1;
    let ran = if cpu.last_switch_ns != 0 { now.saturating_sub(cpu.last_switch_ns) } else { 0 };
    if prev_pid != 0 {
        let preempt: u8 = ctx.arg(0);
        let prev_state: u32 = ctx.arg(3);
        if preempt != 0 || prev_state == 0 {
            cpu.involuntary += 1;
        } else {
            cpu.voluntary += 1;
        }
        cpu.busy_ns += ran;
        if global(&SCHED_TASK_STATS) != 0 {
            account_task(cpu, prev_pid as u32, (bpf_get_current_pid_tgid() >> 32) as u32, ran, now);
        }
    }
    let next_pid: i32 = field(next, o.pid);
    let mut wait = 0;
    if next_pid != 0
        && let Some(clock) = rq_now
    {
        // Queued: the kernel's own stamp, on the same runqueue clock.
        let queued: u64 = field(next, o.last_queued);
        if queued != 0 {
            wait = clock.saturating_sub(queued);
            cpu.runq.record(wait);
            let th = hindsight::thresholds().runq_ns;
            if th != 0 && wait >= th {
                keep_wait(next, next_pid as u32, prev_pid as u32, wait, &o);
            }
        }
    }
    cpu.running_pid = next_pid as u64;
    cpu.running_wait_ns = wait;
    cpu.last_switch_ns = now;
    0
}

/// A long wait for the hindsight ring: who waited, and who held the CPU (the current
/// task, leaving it). Off the common path: only past the threshold.
#[inline(never)]
fn keep_wait(next: *const u8, tid: u32, prev_tid: u32, wait: u64, o: &SchedOffsets) {
    hindsight::keep(Record {
        value: wait,
        tid,
        other_tid: prev_tid,
        kind: RUNQ,
        comm: if o.comm != 0 { comm_at(next, o.comm) } else { [0; 16] },
        other_comm: if prev_tid != 0 { bpf_get_current_comm().unwrap_or([0; 16]) } else { [0; 16] },
        ..Record::default()
    });
}

/// Add what `prev` (the current task) just did to its per-task entry.
#[inline(always)]
fn account_task(cpu: &CpuSched, tid: u32, tgid: u32, ran: u64, now: u64) {
    if let Some(t) = SCHED_TASKS.get_ptr_mut(&tid) {
        // SAFETY: the pointer is the map value for `tid`; a concurrent update of the same
        // thread is impossible (it runs on one CPU at a time).
        let t = unsafe { &mut *t };
        t.oncpu_ns += ran;
        t.runq_ns += cpu.running_wait_ns;
        t.switches += 1;
        t.last_ns = now;
        return;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let t = TaskTimes { oncpu_ns: ran, runq_ns: cpu.running_wait_ns, switches: 1, last_ns: now, tgid, _pad: 0, comm };
    let _ = SCHED_TASKS.insert(&tid, &t, 0);
}

/// `tp_btf/sched_migrate_task(p, dest_cpu)`: counted on the CPU that moves the task.
#[btf_tracepoint(function = "sched_migrate_task")]
pub fn sched_migrate_task(_ctx: BtfTracePointContext) -> u32 {
    if let Some(cpu) = cpu_state() {
        cpu.migrations += 1;
    }
    0
}
