//! Scheduler programs. Each event is one or two per-CPU increments; the agent reads the
//! per-CPU array on its tick.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, macros::map, maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use lsvmi_common::sched::{
    COUNTER_SLOTS, SLOT_CONTEXT_SWITCHES, SLOT_INVOLUNTARY, SLOT_MIGRATIONS, SLOT_VOLUNTARY,
};

/// Per-CPU counters; the agent sums nothing: it exports one series per CPU.
#[map]
static SCHED_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// `tp_btf/sched_switch(bool preempt, prev, next, unsigned int prev_state)`.
///
/// Every switch is counted; a switch away from a real task (not the idle task, pid 0) is
/// also classified the way the kernel's own nvcsw/nivcsw are: involuntary when the task
/// was preempted or still runnable (`prev_state` 0, TASK_RUNNING), voluntary when it
/// blocked. Only scalar arguments are read (no task_struct fields): the tracepoint runs
/// while `prev` is still `current`, so its pid comes from a helper.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    bump(SLOT_CONTEXT_SWITCHES);
    let prev_pid = bpf_get_current_pid_tgid() as u32;
    if prev_pid != 0 {
        let preempt: u8 = ctx.arg(0);
        let prev_state: u32 = ctx.arg(3);
        bump(if preempt != 0 || prev_state == 0 { SLOT_INVOLUNTARY } else { SLOT_VOLUNTARY });
    }
    0
}

/// `tp_btf/sched_migrate_task(p, dest_cpu)`: counted on the CPU that moves the task.
#[btf_tracepoint(function = "sched_migrate_task")]
pub fn sched_migrate_task(_ctx: BtfTracePointContext) -> u32 {
    bump(SLOT_MIGRATIONS);
    0
}

#[inline(always)]
fn bump(slot: u32) {
    if let Some(p) = SCHED_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: the pointer comes from the map lookup and is valid for this CPU while
        // the program runs (preemption is off inside a tracepoint).
        unsafe { *p += 1 };
    }
}
