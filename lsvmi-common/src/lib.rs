//! What crosses the kernel boundary between `lsvmi-ebpf` (the BPF programs) and
//! `lsvmi-agent` (the daemon that reads their maps): map names, slot numbers and
//! `#[repr(C)]` records. Nothing else lives here, so both sides agree by construction.
#![no_std]

/// Scheduler programs (`lsvmi-ebpf/src/sched.rs`).
pub mod sched {
    /// Name of the per-CPU array of scheduler counters.
    pub const COUNTERS_MAP: &str = "SCHED_COUNTERS";
    /// Slot of `SCHED_COUNTERS`: context switches seen by `tp_btf/sched_switch`.
    pub const SLOT_CONTEXT_SWITCHES: u32 = 0;
    /// Number of slots in `SCHED_COUNTERS` (spare slots are reserved for later counters).
    pub const COUNTER_SLOTS: u32 = 8;
    /// Name of the program attached to `tp_btf/sched_switch`.
    pub const PROG_SCHED_SWITCH: &str = "sched_switch";
}
