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
    /// Slot of `SCHED_COUNTERS`: switches away from a task that blocked (voluntary).
    pub const SLOT_VOLUNTARY: u32 = 1;
    /// Slot of `SCHED_COUNTERS`: switches away from a task that was still runnable
    /// (preempted, or yielded): involuntary.
    pub const SLOT_INVOLUNTARY: u32 = 2;
    /// Slot of `SCHED_COUNTERS`: task migrations started on this CPU.
    pub const SLOT_MIGRATIONS: u32 = 3;
    /// Number of slots in `SCHED_COUNTERS` (spare slots are reserved for later counters).
    pub const COUNTER_SLOTS: u32 = 8;
    /// Name of the program attached to `tp_btf/sched_switch`.
    pub const PROG_SCHED_SWITCH: &str = "sched_switch";
    /// Name of the program attached to `tp_btf/sched_migrate_task`.
    pub const PROG_SCHED_MIGRATE: &str = "sched_migrate_task";
}
