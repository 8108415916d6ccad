//! The `irq` deep-tracing profile: hard-IRQ handler time per IRQ, and per softirq vector
//! the delay from being raised to running and the run time. Attached only while a
//! session runs; all state is per CPU (an IRQ or softirq runs on one CPU, without
//! preemption), so no event takes a lock.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use lsvmi_common::{
    softirq::VECTORS,
    trace_irq::{
        CpuIrq, IRQ_ENTRIES, IrqTime, PROGRAMS, RUN_IRQ_ENTRY, RUN_IRQ_EXIT, RUN_SOFTIRQ_ENTRY, RUN_SOFTIRQ_EXIT,
        RUN_SOFTIRQ_RAISE,
    },
};

#[map]
static TRACE_IRQ_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static TRACE_IRQS: PerCpuHashMap<u32, IrqTime> = PerCpuHashMap::with_max_entries(IRQ_ENTRIES, 0);

#[map]
static TRACE_IRQ_CPU: PerCpuArray<CpuIrq> = PerCpuArray::with_max_entries(1, 0);

#[map]
static TRACE_IRQ_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROGRAMS as u32, 0);

/// This CPU's state while a session runs (the run counted: its cost).
#[inline(always)]
fn active(program: u32) -> Option<&'static mut CpuIrq> {
    if *TRACE_IRQ_ACTIVE.get(0)? == 0 {
        return None;
    }
    if let Some(c) = TRACE_IRQ_RUNS.get_ptr_mut(program) {
        // SAFETY: this CPU's counter; IRQ and softirq tracepoints run with preemption off.
        unsafe { *c += 1 };
    }
    // SAFETY: this CPU's value, as above.
    Some(unsafe { &mut *TRACE_IRQ_CPU.get_ptr_mut(0)? })
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// `tp_btf/irq_handler_entry(int irq, struct irqaction *action)`.
#[btf_tracepoint(function = "irq_handler_entry")]
pub fn trace_irq_handler_entry(ctx: BtfTracePointContext) -> u32 {
    if let Some(cpu) = active(RUN_IRQ_ENTRY) {
        let irq: i32 = ctx.arg(0);
        cpu.irq = irq as u32;
        cpu.irq_entered_ns = now();
    }
    0
}

/// `tp_btf/irq_handler_exit(int irq, struct irqaction *action, int ret)`.
#[btf_tracepoint(function = "irq_handler_exit")]
pub fn trace_irq_handler_exit(ctx: BtfTracePointContext) -> u32 {
    let Some(cpu) = active(RUN_IRQ_EXIT) else { return 0 };
    let irq: i32 = ctx.arg(0);
    let irq = irq as u32;
    // An exit without its entry (attached in between, or another IRQ's) is skipped.
    if cpu.irq_entered_ns == 0 || cpu.irq != irq {
        return 0;
    }
    let took = now().saturating_sub(cpu.irq_entered_ns);
    cpu.irq_entered_ns = 0;
    match TRACE_IRQS.get_ptr_mut(&irq) {
        Some(t) => {
            // SAFETY: this CPU's value for this IRQ.
            let t = unsafe { &mut *t };
            t.time_ns += took;
            t.count += 1;
            if took > t.max_ns {
                t.max_ns = took;
            }
        }
        None => {
            let t = IrqTime { time_ns: took, count: 1, max_ns: took };
            if TRACE_IRQS.insert(&irq, &t, 0).is_err() {
                cpu.dropped += 1;
            }
        }
    }
    0
}

#[inline(always)]
fn vector(ctx: &BtfTracePointContext) -> Option<usize> {
    let vec: u32 = ctx.arg(0);
    let vec = vec as usize;
    (vec < VECTORS).then_some(vec)
}

/// `tp_btf/softirq_raise(unsigned int vec_nr)`: the first raise of a pending vector
/// starts its delay.
#[btf_tracepoint(function = "softirq_raise")]
pub fn trace_softirq_raise(ctx: BtfTracePointContext) -> u32 {
    if let (Some(cpu), Some(v)) = (active(RUN_SOFTIRQ_RAISE), vector(&ctx))
        && cpu.raised_ns[v] == 0
    {
        cpu.raised_ns[v] = now();
    }
    0
}

/// `tp_btf/softirq_entry(unsigned int vec_nr)`.
#[btf_tracepoint(function = "softirq_entry")]
pub fn trace_softirq_entry(ctx: BtfTracePointContext) -> u32 {
    let (Some(cpu), Some(v)) = (active(RUN_SOFTIRQ_ENTRY), vector(&ctx)) else { return 0 };
    let t = now();
    let raised = cpu.raised_ns[v];
    if raised != 0 {
        let delay = t.saturating_sub(raised);
        cpu.delay_ns[v] += delay;
        cpu.delays[v] += 1;
        if delay > cpu.max_delay_ns[v] {
            cpu.max_delay_ns[v] = delay;
        }
        cpu.raised_ns[v] = 0;
    }
    cpu.entered_ns[v] = t;
    0
}

/// `tp_btf/softirq_exit(unsigned int vec_nr)`.
#[btf_tracepoint(function = "softirq_exit")]
pub fn trace_softirq_exit(ctx: BtfTracePointContext) -> u32 {
    let (Some(cpu), Some(v)) = (active(RUN_SOFTIRQ_EXIT), vector(&ctx)) else { return 0 };
    let entered = cpu.entered_ns[v];
    if entered != 0 {
        let run = now().saturating_sub(entered);
        cpu.run_ns[v] += run;
        cpu.runs[v] += 1;
        if run > cpu.max_run_ns[v] {
            cpu.max_run_ns[v] = run;
        }
        cpu.entered_ns[v] = 0;
    }
    0
}
