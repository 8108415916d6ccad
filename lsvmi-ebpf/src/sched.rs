//! Scheduler programs.

use aya_ebpf::{macros::btf_tracepoint, macros::map, maps::PerCpuArray, programs::BtfTracePointContext};
use lsvmi_common::sched::{COUNTER_SLOTS, SLOT_CONTEXT_SWITCHES};

/// Per-CPU counters; the agent sums nothing: it exports one series per CPU.
#[map]
static SCHED_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// `tp_btf/sched_switch`: one per-CPU increment per context switch. Per-CPU memory means
/// no atomics and no cache-line bouncing between CPUs.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(_ctx: BtfTracePointContext) -> u32 {
    bump(SLOT_CONTEXT_SWITCHES);
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
