//! Softirq time per CPU and vector, timed between tp_btf/softirq_entry and
//! tp_btf/softirq_exit. Their one argument, the vector number, is a scalar: no field
//! read at all, so each event is a map lookup and a clock read.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use lsvmi_common::{
    hindsight::{Record, SOFTIRQ},
    softirq::{CpuSoftirq, VECTORS},
};

use crate::hindsight;

#[map]
static SOFTIRQ_CPU: PerCpuArray<CpuSoftirq> = PerCpuArray::with_max_entries(1, 0);

/// The vector of this event and this CPU's state, or None (vector out of range).
#[inline(always)]
fn event(ctx: &BtfTracePointContext) -> Option<(usize, &'static mut CpuSoftirq)> {
    let vec: u32 = ctx.arg(0);
    let vec = vec as usize;
    if vec >= VECTORS {
        return None;
    }
    // SAFETY: this CPU's map value; preemption is off in a tracepoint.
    let cpu = unsafe { &mut *SOFTIRQ_CPU.get_ptr_mut(0)? };
    Some((vec, cpu))
}

/// `tp_btf/softirq_entry(unsigned int vec_nr)`.
#[btf_tracepoint(function = "softirq_entry")]
pub fn softirq_entry(ctx: BtfTracePointContext) -> u32 {
    if let Some((vec, cpu)) = event(&ctx) {
        // SAFETY: no preconditions.
        cpu.entered_ns[vec] = unsafe { bpf_ktime_get_ns() };
    }
    0
}

/// `tp_btf/softirq_exit(unsigned int vec_nr)`.
#[btf_tracepoint(function = "softirq_exit")]
pub fn softirq_exit(ctx: BtfTracePointContext) -> u32 {
    if let Some((vec, cpu)) = event(&ctx) {
        let entered = cpu.entered_ns[vec];
        // An exit without its entry (the program attached in between) is skipped.
        if entered != 0 {
            // SAFETY: no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            let ran = now.saturating_sub(entered);
            cpu.time_ns[vec] += ran;
            let th = hindsight::thresholds().softirq_ns;
            if th != 0 && ran >= th {
                keep_run(vec as u16, ran);
            }
            cpu.count[vec] += 1;
            cpu.entered_ns[vec] = 0;
        }
    }
    0
}

/// A long softirq run for the hindsight ring, with the task it interrupted.
#[inline(never)]
fn keep_run(vec: u16, ran: u64) {
    hindsight::keep(Record {
        value: ran,
        tid: bpf_get_current_pid_tgid() as u32,
        kind: SOFTIRQ,
        detail: vec,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..Record::default()
    });
}
