//! The `block` deep-tracing profile: each block request's time queued (insert to
//! issue) apart from its time at the device (issue to completion), summed per device
//! and process. Attached only while a session runs. The device comes from
//! `rq->part->bd_dev` (offsets from the kernel's BTF); the process is the one running
//! when the request was queued or, issued directly, when it was issued.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use lsvmi_common::{
    hist::{LOG2_BUCKETS, log2_record},
    trace_block::{
        BlockFilter, BlockOffsets, BlockRecord, COUNTERS, DROP_REQUESTS_FULL, DROP_RING_FULL, DROP_STATS_FULL, ENTRIES,
        Key, RING_BYTES, RUN_COMPLETE, RUN_INSERT, RUN_ISSUE, Request, Stat,
    },
};

use crate::kernel::{field, global};

#[map]
static TRACE_BLOCK_FILTER: Array<BlockFilter> = Array::with_max_entries(1, 0);

#[map]
static TRACE_BLOCK_RING: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
static TRACE_BLOCK_REQS: HashMap<u64, Request> = HashMap::with_max_entries(ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static TRACE_BLOCK_STATS: HashMap<Key, Stat> = HashMap::with_max_entries(ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static TRACE_BLOCK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS as u32, 0);

#[unsafe(no_mangle)]
static TRACE_BLOCK_OFFSETS: BlockOffsets = BlockOffsets { rq_part: 0, bd_dev: 0 };

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = TRACE_BLOCK_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: this CPU's counter; tracepoints run with preemption off.
        unsafe { *c += 1 };
    }
}

/// While a session runs, count the run (its cost) and give the timeline's threshold.
#[inline(always)]
fn active(program: u32) -> Option<u64> {
    let f = TRACE_BLOCK_FILTER.get(0)?;
    if f.active == 0 {
        return None;
    }
    count(program);
    Some(f.min_ns)
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The request's device (`rq->part->bd_dev`).
#[inline(always)]
fn dev(rq: *const u8) -> u32 {
    let o = global(&TRACE_BLOCK_OFFSETS);
    let part: *const u8 = field(rq, o.rq_part);
    field(part, o.bd_dev)
}

#[inline(always)]
fn track(rq: *const u8, insert_ns: u64, issue_ns: u64) {
    let r = Request {
        insert_ns,
        issue_ns,
        dev: dev(rq),
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if TRACE_BLOCK_REQS.insert(&(rq as u64), &r, 0).is_err() {
        count(DROP_REQUESTS_FULL);
    }
}

/// `tp_btf/block_rq_insert(struct request *rq)`: queued.
#[btf_tracepoint(function = "block_rq_insert")]
pub fn trace_block_rq_insert(ctx: BtfTracePointContext) -> u32 {
    if active(RUN_INSERT).is_some() {
        let rq: *const u8 = ctx.arg(0);
        track(rq, now(), 0);
    }
    0
}

/// `tp_btf/block_rq_issue(struct request *rq)`: handed to the device.
#[btf_tracepoint(function = "block_rq_issue")]
pub fn trace_block_rq_issue(ctx: BtfTracePointContext) -> u32 {
    if active(RUN_ISSUE).is_none() {
        return 0;
    }
    let rq: *const u8 = ctx.arg(0);
    match TRACE_BLOCK_REQS.get_ptr_mut(&(rq as u64)) {
        // SAFETY: the entry of this request, which moves on one CPU at a time.
        Some(r) => unsafe { (*r).issue_ns = now() },
        None => track(rq, 0, now()),
    }
    0
}

/// `tp_btf/block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`.
#[btf_tracepoint(function = "block_rq_complete")]
pub fn trace_block_rq_complete(ctx: BtfTracePointContext) -> u32 {
    let Some(min_ns) = active(RUN_COMPLETE) else { return 0 };
    let rq: *const u8 = ctx.arg(0);
    let key = rq as u64;
    // SAFETY: copied out before the entry is removed.
    let Some(r) = (unsafe { TRACE_BLOCK_REQS.get(&key) }).copied() else { return 0 };
    let _ = TRACE_BLOCK_REQS.remove(&key);
    if r.issue_ns == 0 {
        return 0; // queued, never issued while traced
    }
    let t = now();
    let queue = if r.insert_ns != 0 { r.issue_ns.saturating_sub(r.insert_ns) } else { 0 };
    let device = t.saturating_sub(r.issue_ns);
    let k = Key { dev: r.dev, tgid: r.tgid };
    match TRACE_BLOCK_STATS.get_ptr_mut(&k) {
        Some(s) => {
            // SAFETY: the map value stays valid during the program. Completions of one
            // process on one device landing on two CPUs at the same instant can lose an
            // update (this target has no atomic add in Rust); a session's sums can
            // afford that, and the test compares them with /proc/diskstats.
            let s = unsafe { &mut *s };
            s.queue_ns += queue;
            s.device_ns += device;
            s.completed += 1;
            if queue > s.max_queue_ns {
                s.max_queue_ns = queue;
            }
            if device > s.max_device_ns {
                s.max_device_ns = device;
            }
            log2_record(&mut s.queue_hist, queue);
            log2_record(&mut s.device_hist, device);
        }
        None => {
            let mut s = Stat {
                queue_ns: queue,
                device_ns: device,
                completed: 1,
                max_queue_ns: queue,
                max_device_ns: device,
                comm: r.comm,
                queue_hist: [0; LOG2_BUCKETS],
                device_hist: [0; LOG2_BUCKETS],
            };
            log2_record(&mut s.queue_hist, queue);
            log2_record(&mut s.device_hist, device);
            if TRACE_BLOCK_STATS.insert(&k, &s, 0).is_err() {
                count(DROP_STATS_FULL);
            }
        }
    }
    if queue + device >= min_ns {
        match TRACE_BLOCK_RING.reserve::<BlockRecord>(0) {
            Some(mut e) => {
                e.write(BlockRecord {
                    insert_ns: r.insert_ns,
                    issue_ns: r.issue_ns,
                    complete_ns: t,
                    dev: r.dev,
                    tgid: r.tgid,
                    comm: r.comm,
                });
                e.submit(BPF_RB_NO_WAKEUP as u64);
            }
            None => count(DROP_RING_FULL),
        }
    }
    0
}
