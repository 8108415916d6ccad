//! The `sched` deep-tracing profile: attached only while a session runs (the always-on
//! programs never pay for it). Each thread's time on a runqueue — from being woken,
//! created or preempted while runnable, to running — is added to its entry, and the
//! thread that was on the CPU when the waiter got it is credited with the wait it ended.
//!
//! The agent's own threads are skipped in the kernel, so reading these maps cannot feed
//! them; a full map drops the event and counts it by reason.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use lsvmi_common::{
    hist::{LOG2_BUCKETS, log2_record},
    trace_sched::{
        Culprit, DROP_CULPRITS_FULL, DROP_QUEUED_FULL, DROP_REASONS, DROP_RING_FULL, DROP_THREADS_FULL, Filter,
        PREEMPTED, PROGRAMS, Queued, RUN_MIGRATE, RUN_SWITCH, RUN_WAKEUP_NEW, RUN_WAKING, SLEPT, THREAD_ENTRIES,
        ThreadWait, TraceOffsets, WAITS_RING_BYTES, WOKEN, WaitRecord,
    },
};

use crate::kernel::{comm_at, field, global};

// Allocated as entries appear (BPF_F_NO_PREALLOC): between sessions they are empty
// and cost no kernel memory.
#[map]
static TRACE_QUEUED: HashMap<u32, Queued> = HashMap::with_max_entries(THREAD_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static TRACE_THREADS: HashMap<u32, ThreadWait> = HashMap::with_max_entries(THREAD_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static TRACE_CULPRITS: HashMap<u32, Culprit> = HashMap::with_max_entries(THREAD_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static TRACE_FILTER: Array<Filter> = Array::with_max_entries(1, 0);

#[map]
static TRACE_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS as u32, 0);

#[map]
static TRACE_WAITS: RingBuf = RingBuf::with_byte_size(WAITS_RING_BYTES, 0);

#[map]
static TRACE_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROGRAMS as u32, 0);

/// `task_struct` offsets from the kernel's BTF and the agent's pid (set at load).
#[unsafe(no_mangle)]
static TRACE_OFFSETS: TraceOffsets = TraceOffsets { pid: 0, tgid: 0, comm: 0, agent_tgid: 0 };

#[inline(always)]
fn count(map: &PerCpuArray<u64>, slot: u32) {
    if let Some(c) = map.get_ptr_mut(slot) {
        // SAFETY: this CPU's counter; preemption is off in a tracepoint.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn dropped(reason: usize) {
    count(&TRACE_DROPS, reason as u32);
}

/// The session's filter while one runs; the run is counted (its cost).
#[inline(always)]
fn session(program: u32) -> Option<Filter> {
    let f = *TRACE_FILTER.get(0)?;
    if f.active == 0 {
        return None;
    }
    count(&TRACE_RUNS, program);
    Some(f)
}

/// (thread id, process id) of `task` when the session traces it.
#[inline(always)]
fn traced(f: &Filter, o: &TraceOffsets, task: *const u8) -> Option<(u32, u32)> {
    let tid: i32 = field(task, o.pid);
    let tgid: i32 = field(task, o.tgid);
    let (tid, tgid) = (tid as u32, tgid as u32);
    if tid == 0 || tgid == o.agent_tgid || (f.tgid != 0 && tgid != f.tgid) || (f.tid != 0 && tid != f.tid) {
        return None;
    }
    Some((tid, tgid))
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn queue(tid: u32, how: u32, at_ns: u64) {
    let q = Queued { at_ns, how, _pad: 0 };
    if TRACE_QUEUED.insert(&tid, &q, 0).is_err() {
        dropped(DROP_QUEUED_FULL);
    }
}

/// `task`'s entry, made on first sight (None when the map is full: counted).
#[inline(always)]
fn thread(task: *const u8, o: &TraceOffsets, tid: u32, tgid: u32) -> Option<&'static mut ThreadWait> {
    if let Some(t) = TRACE_THREADS.get_ptr_mut(&tid) {
        // SAFETY: the entry stays valid while the program runs; a thread's entry is
        // updated by the CPU that runs, wakes or moves it.
        return Some(unsafe { &mut *t });
    }
    let t = ThreadWait {
        woken_ns: 0,
        woken: 0,
        preempted_ns: 0,
        preempted: 0,
        max_ns: 0,
        tgid,
        _pad: 0,
        comm: comm_of(task, o),
        hist: [0; LOG2_BUCKETS],
        slept_ns: 0,
        slept: 0,
        migrations: 0,
    };
    if TRACE_THREADS.insert(&tid, &t, 0).is_err() {
        dropped(DROP_THREADS_FULL);
        return None;
    }
    // SAFETY: as above, just inserted.
    TRACE_THREADS.get_ptr_mut(&tid).map(|t| unsafe { &mut *t })
}

/// A wake-up (or creation): a thread asleep since it was switched out has slept until now.
#[inline(always)]
fn woken(ctx: &BtfTracePointContext, program: u32) {
    let Some(f) = session(program) else { return };
    let o = global(&TRACE_OFFSETS);
    let p: *const u8 = ctx.arg(0);
    let Some((tid, tgid)) = traced(&f, &o, p) else { return };
    let t = now();
    // SAFETY: copied out at once.
    if let Some(q) = unsafe { TRACE_QUEUED.get(&tid) }.copied()
        && q.how == SLEPT
        && let Some(w) = thread(p, &o, tid, tgid)
    {
        w.slept_ns += t.saturating_sub(q.at_ns);
        w.slept += 1;
    }
    queue(tid, WOKEN, t);
}

/// `tp_btf/sched_migrate_task(p, dest_cpu)`: a thread moves to another CPU.
#[btf_tracepoint(function = "sched_migrate_task")]
pub fn trace_sched_migrate(ctx: BtfTracePointContext) -> u32 {
    let Some(f) = session(RUN_MIGRATE) else { return 0 };
    let o = global(&TRACE_OFFSETS);
    let p: *const u8 = ctx.arg(0);
    if let Some((tid, tgid)) = traced(&f, &o, p)
        && let Some(w) = thread(p, &o, tid, tgid)
    {
        w.migrations += 1;
    }
    0
}

/// `tp_btf/sched_waking(p)`: `p` is about to be queued.
#[btf_tracepoint(function = "sched_waking")]
pub fn trace_sched_waking(ctx: BtfTracePointContext) -> u32 {
    woken(&ctx, RUN_WAKING);
    0
}

/// `tp_btf/sched_wakeup_new(p)`: a new task is queued for the first time.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn trace_sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    woken(&ctx, RUN_WAKEUP_NEW);
    0
}

/// `tp_btf/sched_switch(preempt, prev, next, prev_state)`: `prev` goes back to the
/// runqueue when still runnable; `next`'s wait ends, and `prev` ended it.
#[btf_tracepoint(function = "sched_switch")]
pub fn trace_sched_switch(ctx: BtfTracePointContext) -> u32 {
    let Some(f) = session(RUN_SWITCH) else { return 0 };
    let o = global(&TRACE_OFFSETS);
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let prev_state: u32 = ctx.arg(3);
    if let Some((tid, _)) = traced(&f, &o, prev) {
        // Still runnable: preempted, it waits from now; otherwise it sleeps from now.
        queue(tid, if prev_state == 0 { PREEMPTED } else { SLEPT }, now());
    }
    let Some((tid, tgid)) = traced(&f, &o, next) else { return 0 };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(q) = (unsafe { TRACE_QUEUED.get(&tid) }).copied() else { return 0 };
    let _ = TRACE_QUEUED.remove(&tid);
    if q.how == SLEPT {
        return 0; // its wake-up came before the session: no wait to measure
    }
    if f.cpus != 0 {
        // SAFETY: helper without preconditions.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        if cpu >= 64 || f.cpus & (1u64 << cpu) == 0 {
            return 0;
        }
    }
    // SAFETY: helper without preconditions.
    let wait = now().saturating_sub(q.at_ns);
    if wait < f.min_count_ns {
        return 0; // below the threshold the budget raised
    }
    if let Some(t) = thread(next, &o, tid, tgid) {
        add_wait(t, q.how, wait);
    }
    // The thread leaving the CPU (the current one) ended that wait.
    let prev_tid: i32 = field(prev, o.pid);
    if wait >= f.min_wait_ns {
        record(&o, next, tid, tgid, q.how, wait, prev_tid as u32);
    }
    if prev_tid != 0 {
        let prev_tid = prev_tid as u32;
        match TRACE_CULPRITS.get_ptr_mut(&prev_tid) {
            Some(c) => {
                // SAFETY: entries are updated by the CPU the thread runs on.
                let c = unsafe { &mut *c };
                c.ended_wait_ns += wait;
                c.ended += 1;
            }
            None => {
                let c = Culprit {
                    ended_wait_ns: wait,
                    ended: 1,
                    tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
                    _pad: 0,
                    comm: bpf_get_current_comm().unwrap_or([0; 16]),
                };
                if TRACE_CULPRITS.insert(&prev_tid, &c, 0).is_err() {
                    dropped(DROP_CULPRITS_FULL);
                }
            }
        }
    }
    0
}

/// `task`'s name.
#[inline(always)]
fn comm_of(task: *const u8, o: &TraceOffsets) -> [u8; 16] {
    comm_at(task, o.comm)
}

/// One wait for the timeline; the agent is not woken (it drains on its tick).
#[inline(always)]
fn record(o: &TraceOffsets, next: *const u8, tid: u32, tgid: u32, how: u32, wait: u64, culprit_tid: u32) {
    let Some(mut entry) = TRACE_WAITS.reserve::<WaitRecord>(0) else {
        dropped(DROP_RING_FULL);
        return;
    };
    // SAFETY: helpers without preconditions.
    let (end_ns, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    entry.write(WaitRecord {
        end_ns,
        wait_ns: wait,
        tid,
        tgid,
        cpu,
        how,
        culprit_tid,
        _pad: 0,
        comm: comm_of(next, o),
        culprit_comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}

#[inline(always)]
fn add_wait(t: &mut ThreadWait, how: u32, wait: u64) {
    if how == PREEMPTED {
        t.preempted_ns += wait;
        t.preempted += 1;
    } else {
        t.woken_ns += wait;
        t.woken += 1;
    }
    if wait > t.max_ns {
        t.max_ns = wait;
    }
    log2_record(&mut t.hist, wait);
}
