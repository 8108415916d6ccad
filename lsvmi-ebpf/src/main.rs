//! lsvmi's BPF programs. One module per kernel area; each program is a thin wrapper
//! that keeps the per-event work to a few instructions (see docs/ebpf.md: counters and
//! histograms are aggregated in the kernel and read by the agent on its 100 ms tick,
//! never one wake-up per event).
#![no_std]
#![no_main]

mod hindsight;
mod kernel;
mod net;
mod sched;
mod softirq;
mod trace_block;
mod trace_irq;
mod trace_sched;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a real panic; this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
