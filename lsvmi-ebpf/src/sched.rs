//! Scheduler programs. All state of a CPU is one per-CPU map value ([`CpuSched`]), found
//! with one lookup per event; the agent copies it on its tick. The only shared map is
//! `SCHED_RUNNABLE` (task → the instant it became runnable), needed because a task
//! wakes on one CPU and runs on another.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use lsvmi_common::sched::{CpuSched, RUNNABLE_ENTRIES, TASK_ENTRIES, TaskTimes};

#[map]
static SCHED_CPU: PerCpuArray<CpuSched> = PerCpuArray::with_max_entries(1, 0);

/// task_struct address → when it became runnable. LRU, so a task that exits while
/// runnable cannot leak an entry forever.
#[map]
static SCHED_RUNNABLE: LruHashMap<u64, u64> = LruHashMap::with_max_entries(RUNNABLE_ENTRIES, 0);

/// Thread id → its times; only written when `SCHED_TASK_STATS` is set.
#[map]
static SCHED_TASKS: LruHashMap<u32, TaskTimes> = LruHashMap::with_max_entries(TASK_ENTRIES, 0);

/// Offset of `task_struct.pid`, from the kernel's BTF (set by the agent at load).
#[unsafe(no_mangle)]
static SCHED_PID_OFFSET: u32 = 0;

/// Non-zero: keep per-task times (set by the agent at load; the verifier prunes the
/// per-task code when it is 0, since globals are read-only and known at load).
#[unsafe(no_mangle)]
static SCHED_TASK_STATS: u32 = 0;

#[inline(always)]
fn global(v: &u32) -> u32 {
    // SAFETY: reading a static; volatile so the compiler keeps the load the loader patches.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn cpu_state() -> Option<&'static mut CpuSched> {
    // SAFETY: the pointer comes from the map lookup and is this CPU's value; nothing
    // else runs on this CPU while the program does (preemption is off in tracepoints).
    SCHED_CPU.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// pid of the task at `task` (a `struct task_struct *`), through the BTF offset.
#[inline(always)]
fn task_pid(task: u64) -> u32 {
    let off = global(&SCHED_PID_OFFSET) as u64;
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read gives 0.
    unsafe { bpf_probe_read_kernel((task + off) as *const i32) }.map_or(0, |p| p as u32)
}

#[inline(always)]
fn mark_runnable(task: u64) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = SCHED_RUNNABLE.insert(&task, &now, 0);
}

/// `tp_btf/sched_wakeup(p)`: `p` becomes runnable.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    mark_runnable(ctx.arg(0));
    0
}

/// `tp_btf/sched_wakeup_new(p)`: a new task becomes runnable.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    mark_runnable(ctx.arg(0));
    0
}

/// `tp_btf/sched_switch(bool preempt, prev, next, unsigned int prev_state)`.
///
/// - counts the switch, and classifies it like the kernel's nvcsw/nivcsw when `prev` is
///   a real task: involuntary when preempted or still runnable (`prev_state` 0);
/// - adds the time `prev` ran to the CPU's busy time (not for the idle task, pid 0);
/// - a preempted `prev` is runnable again from now;
/// - `next`'s run-queue latency (now − when it became runnable) goes into the histogram.
///
/// `prev` is `current` here, so its pid comes from a helper; `next`'s from BTF.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let Some(cpu) = cpu_state() else { return 0 };
    // SAFETY: helpers without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let prev_pid = pid_tgid as u32;
    cpu.switches += 1;
    let ran = if cpu.last_switch_ns != 0 { now.saturating_sub(cpu.last_switch_ns) } else { 0 };
    if prev_pid != 0 {
        let preempt: u8 = ctx.arg(0);
        let prev_state: u32 = ctx.arg(3);
        if preempt != 0 || prev_state == 0 {
            cpu.involuntary += 1;
            let prev: u64 = ctx.arg(1);
            let _ = SCHED_RUNNABLE.insert(&prev, &now, 0);
        } else {
            cpu.voluntary += 1;
        }
        cpu.busy_ns += ran;
        if global(&SCHED_TASK_STATS) != 0 {
            account_task(cpu, prev_pid, (pid_tgid >> 32) as u32, ran, now);
        }
    }
    let next: u64 = ctx.arg(2);
    let next_pid = task_pid(next);
    let mut wait = 0;
    if next_pid != 0 {
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(since) = unsafe { SCHED_RUNNABLE.get(&next) }.copied() {
            let _ = SCHED_RUNNABLE.remove(&next);
            wait = now.saturating_sub(since);
            cpu.runq.record(wait);
        }
    }
    cpu.running_pid = next_pid as u64;
    cpu.running_wait_ns = wait;
    cpu.last_switch_ns = now;
    0
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
