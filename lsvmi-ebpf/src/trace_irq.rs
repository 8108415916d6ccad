//! The `irq` deep-tracing profile: hard-IRQ handler time per IRQ, and per softirq vector
//! the delay from being raised to running and the run time. Attached only while a
//! session runs; all state is per CPU (an IRQ or softirq runs on one CPU, without
//! preemption), so no event takes a lock.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{Array, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::BtfTracePointContext,
};
use lsvmi_common::{
    hist::{LOG2_BUCKETS, tally},
    softirq::VECTORS,
    trace_irq::{
        ANY_CPU, CpuIrq, HARD, IRQ_ENTRIES, IrqFilter, IrqRecord, IrqTime, PROGRAMS, RING_BYTES, RUN_IRQ_ENTRY,
        RUN_IRQ_EXIT, RUN_SOFTIRQ_ENTRY, RUN_SOFTIRQ_EXIT, RUN_SOFTIRQ_RAISE, SOFT,
    },
};

#[map]
static TRACE_IRQ_FILTER: Array<IrqFilter> = Array::with_max_entries(1, 0);

#[map]
static TRACE_IRQ_RING: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
static TRACE_IRQS: PerCpuHashMap<u32, IrqTime> = PerCpuHashMap::with_max_entries(IRQ_ENTRIES, 0);

#[map]
static TRACE_IRQ_CPU: PerCpuArray<CpuIrq> = PerCpuArray::with_max_entries(1, 0);

#[map]
static TRACE_IRQ_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROGRAMS as u32, 0);

/// This CPU's state while a session runs here (the run counted: its cost), and the
/// timeline's threshold.
#[inline(always)]
fn active(program: u32) -> Option<(&'static mut CpuIrq, u64)> {
    let f = TRACE_IRQ_FILTER.get(0)?;
    if f.active == 0 {
        return None;
    }
    // SAFETY: helper without preconditions.
    if f.cpu != ANY_CPU && f.cpu != unsafe { bpf_get_smp_processor_id() } {
        return None;
    }
    let min_ns = f.min_ns;
    if let Some(c) = TRACE_IRQ_RUNS.get_ptr_mut(program) {
        // SAFETY: this CPU's counter; IRQ and softirq tracepoints run with preemption off.
        unsafe { *c += 1 };
    }
    // SAFETY: this CPU's value, as above.
    Some((unsafe { &mut *TRACE_IRQ_CPU.get_ptr_mut(0)? }, min_ns))
}

/// A run for the timeline when it lasted `min_ns` or more; the agent is not woken.
#[inline(always)]
fn record(cpu: &mut CpuIrq, min_ns: u64, r: IrqRecord) {
    if r.run_ns < min_ns {
        return;
    }
    match TRACE_IRQ_RING.reserve::<IrqRecord>(0) {
        Some(mut e) => {
            e.write(r);
            e.submit(BPF_RB_NO_WAKEUP as u64);
        }
        None => cpu.ring_full += 1,
    }
}

#[inline(always)]
fn this_cpu() -> u32 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_smp_processor_id() }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// `tp_btf/irq_handler_entry(int irq, struct irqaction *action)`.
#[btf_tracepoint(function = "irq_handler_entry")]
pub fn trace_irq_handler_entry(ctx: BtfTracePointContext) -> u32 {
    if let Some((cpu, _)) = active(RUN_IRQ_ENTRY) {
        let irq: i32 = ctx.arg(0);
        cpu.irq = irq as u32;
        cpu.irq_entered_ns = now();
    }
    0
}

/// `tp_btf/irq_handler_exit(int irq, struct irqaction *action, int ret)`.
#[btf_tracepoint(function = "irq_handler_exit")]
pub fn trace_irq_handler_exit(ctx: BtfTracePointContext) -> u32 {
    let Some((cpu, min_ns)) = active(RUN_IRQ_EXIT) else { return 0 };
    let irq: i32 = ctx.arg(0);
    let irq = irq as u32;
    // An exit without its entry (attached in between, or another IRQ's) is skipped.
    if cpu.irq_entered_ns == 0 || cpu.irq != irq {
        return 0;
    }
    let entered = cpu.irq_entered_ns;
    let took = now().saturating_sub(entered);
    cpu.irq_entered_ns = 0;
    let r = IrqRecord { start_ns: entered, run_ns: took, delay_ns: 0, cpu: this_cpu(), kind: HARD, num: irq, _pad: 0 };
    record(cpu, min_ns, r);
    match TRACE_IRQS.get_ptr_mut(&irq) {
        Some(t) => {
            // SAFETY: this CPU's value for this IRQ.
            let t = unsafe { &mut *t };
            tally(&mut t.time_ns, &mut t.count, &mut t.max_ns, &mut t.hist, took);
        }
        None => {
            let mut t = IrqTime { time_ns: 0, count: 0, max_ns: 0, hist: [0; LOG2_BUCKETS] };
            tally(&mut t.time_ns, &mut t.count, &mut t.max_ns, &mut t.hist, took);
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
    if let (Some((cpu, _)), Some(v)) = (active(RUN_SOFTIRQ_RAISE), vector(&ctx))
        && cpu.raised_ns[v] == 0
    {
        cpu.raised_ns[v] = now();
    }
    0
}

/// `tp_btf/softirq_entry(unsigned int vec_nr)`.
#[btf_tracepoint(function = "softirq_entry")]
pub fn trace_softirq_entry(ctx: BtfTracePointContext) -> u32 {
    let (Some((cpu, _)), Some(v)) = (active(RUN_SOFTIRQ_ENTRY), vector(&ctx)) else { return 0 };
    let t = now();
    let raised = cpu.raised_ns[v];
    let mut delay = 0;
    if raised != 0 {
        delay = t.saturating_sub(raised);
        tally(&mut cpu.delay_ns[v], &mut cpu.delays[v], &mut cpu.max_delay_ns[v], &mut cpu.delay_hist[v], delay);
        cpu.raised_ns[v] = 0;
    }
    cpu.entered_ns[v] = t;
    cpu.entered_delay_ns[v] = delay;
    0
}

/// `tp_btf/softirq_exit(unsigned int vec_nr)`.
#[btf_tracepoint(function = "softirq_exit")]
pub fn trace_softirq_exit(ctx: BtfTracePointContext) -> u32 {
    let (Some((cpu, min_ns)), Some(v)) = (active(RUN_SOFTIRQ_EXIT), vector(&ctx)) else { return 0 };
    let entered = cpu.entered_ns[v];
    if entered != 0 {
        let run = now().saturating_sub(entered);
        tally(&mut cpu.run_ns[v], &mut cpu.runs[v], &mut cpu.max_run_ns[v], &mut cpu.run_hist[v], run);
        cpu.entered_ns[v] = 0;
        let delay_ns = cpu.entered_delay_ns[v];
        let r =
            IrqRecord { start_ns: entered, run_ns: run, delay_ns, cpu: this_cpu(), kind: SOFT, num: v as u32, _pad: 0 };
        record(cpu, min_ns, r);
    }
    0
}
