//! The hindsight ring: each CPU keeps its last `SLOTS` events worth a look (a long
//! run-queue wait, a long softirq run, a retransmit, reset or drop), overwriting the
//! oldest. Writers are the always-on programs, and only when an event crosses its
//! threshold (a global the verifier sees as a constant, so a kind turned off costs
//! nothing): one compare on the common path. No wake-up, no reader until the agent
//! needs the past — a trigger fired, or `lsvmi trace dump`.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray},
};
use lsvmi_common::hindsight::{HEAD_SKIPPED, HEAD_WRITTEN, Record, SLOTS, Thresholds};

use crate::kernel::global;

#[map]
static HINDSIGHT: PerCpuArray<Record> = PerCpuArray::with_max_entries(SLOTS, 0);

#[map]
static HINDSIGHT_HEAD: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[map]
static HINDSIGHT_FROZEN: Array<u32> = Array::with_max_entries(1, 0);

/// What is worth a record (set by the agent at load; 0 turns a kind off).
#[unsafe(no_mangle)]
static HINDSIGHT_THRESHOLDS: Thresholds = Thresholds { runq_ns: 0, softirq_ns: 0, net: 0, _pad: 0 };

#[inline(always)]
pub fn thresholds() -> Thresholds {
    global(&HINDSIGHT_THRESHOLDS)
}

/// Keep `r` in this CPU's ring (its time set here), unless the agent is reading it.
#[inline(always)]
pub fn keep(mut r: Record) {
    let Some(head) = HINDSIGHT_HEAD.get_ptr_mut(HEAD_WRITTEN) else { return };
    if HINDSIGHT_FROZEN.get(0).is_some_and(|f| *f != 0) {
        if let Some(skipped) = HINDSIGHT_HEAD.get_ptr_mut(HEAD_SKIPPED) {
            // SAFETY: this CPU's counter; programs run with preemption off.
            unsafe { *skipped += 1 };
        }
        return;
    }
    // SAFETY: this CPU's counter, as above.
    let n = unsafe { *head };
    // SAFETY: as above.
    unsafe { *head = n + 1 };
    let Some(slot) = HINDSIGHT.get_ptr_mut((n % u64::from(SLOTS)) as u32) else { return };
    // SAFETY: helper without preconditions.
    r.ts_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slot; nothing else writes it while this program runs.
    unsafe { *slot = r };
}
