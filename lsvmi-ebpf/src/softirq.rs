//! Softirq time per CPU and vector, from the classic tracepoints irq:softirq_entry and
//! irq:softirq_exit (tp_btf would do too; the classic record carries `vec` as a plain
//! field whose offset the agent reads from tracefs).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use lsvmi_common::softirq::{CpuSoftirq, VECTORS};

#[map]
static SOFTIRQ_CPU: PerCpuArray<CpuSoftirq> = PerCpuArray::with_max_entries(1, 0);

/// Offset of `vec` in the softirq_entry/exit record (same layout for both).
#[unsafe(no_mangle)]
static SOFTIRQ_VEC_OFFSET: u32 = 8;

/// The vector of this event and this CPU's state, or None (bad vector, failed read).
#[inline(always)]
fn event(ctx: &TracePointContext) -> Option<(usize, &'static mut CpuSoftirq)> {
    // SAFETY: reading a static the loader patches.
    let off = unsafe { core::ptr::read_volatile(&SOFTIRQ_VEC_OFFSET) } as usize;
    // SAFETY: read_at goes through bpf_probe_read_kernel, which checks the address.
    let vec: u32 = unsafe { ctx.read_at(off) }.ok()?;
    let vec = vec as usize;
    if vec >= VECTORS {
        return None;
    }
    // SAFETY: this CPU's map value; preemption is off in a tracepoint.
    let cpu = unsafe { &mut *SOFTIRQ_CPU.get_ptr_mut(0)? };
    Some((vec, cpu))
}

#[tracepoint(category = "irq", name = "softirq_entry")]
pub fn softirq_entry(ctx: TracePointContext) -> u32 {
    if let Some((vec, cpu)) = event(&ctx) {
        // SAFETY: no preconditions.
        cpu.entered_ns[vec] = unsafe { bpf_ktime_get_ns() };
    }
    0
}

#[tracepoint(category = "irq", name = "softirq_exit")]
pub fn softirq_exit(ctx: TracePointContext) -> u32 {
    if let Some((vec, cpu)) = event(&ctx) {
        let entered = cpu.entered_ns[vec];
        // An exit without its entry (the program attached in between) is skipped.
        if entered != 0 {
            // SAFETY: no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            cpu.time_ns[vec] += now.saturating_sub(entered);
            cpu.count[vec] += 1;
            cpu.entered_ns[vec] = 0;
        }
    }
    0
}
