//! What crosses the kernel boundary between `lsvmi-ebpf` (the BPF programs) and
//! `lsvmi-agent` (the daemon that reads their maps): map and program names, `#[repr(C)]`
//! map values and records, the globals the agent fills in at load time, and the
//! histogram bucketing both sides must agree on. Nothing else lives here, so both sides
//! agree by construction.
#![cfg_attr(not(test), no_std)]

/// Log-linear histogram buckets, computed in the kernel with a few shifts per event.
///
/// Values (nanoseconds) below `2^MIN_POW` fall in bucket 0; each power of two from
/// `2^MIN_POW` to `2^MAX_POW` is split into `SUB` equal buckets; values from `2^MAX_POW`
/// up fall in the last bucket (`+Inf`). With `SUB = 4` a bucket is at most 25 % wide, so
/// a quantile read from it is within 25 % of the truth — the precision HdrHistogram-style
/// tools (Rezolus, bcc's runqlat with its power-of-two buckets is coarser) give.
pub mod hist {
    /// log2 of the number of sub-buckets per power of two.
    pub const GROUPING: u32 = 2;
    /// Sub-buckets per power of two.
    pub const SUB: u32 = 1 << GROUPING;
    /// Values below `2^MIN_POW` ns (1.024 µs) share bucket 0.
    pub const MIN_POW: u32 = 10;
    /// Values from `2^MAX_POW` ns (17.2 s) up share the last bucket.
    pub const MAX_POW: u32 = 34;
    /// Number of buckets.
    pub const BUCKETS: usize = (2 + (MAX_POW - MIN_POW) * SUB) as usize;

    /// The bucket of `v`.
    #[inline(always)]
    pub fn index(v: u64) -> usize {
        if v < 1 << MIN_POW {
            return 0;
        }
        if v >= 1 << MAX_POW {
            return BUCKETS - 1;
        }
        let high = 63 - v.leading_zeros();
        let sub = ((v >> (high - GROUPING)) as u32) & (SUB - 1);
        (1 + (high - MIN_POW) * SUB + sub) as usize
    }

    /// The exclusive upper bound of bucket `i` in ns; `u64::MAX` for the last bucket.
    pub fn upper_bound(i: usize) -> u64 {
        if i == 0 {
            return 1 << MIN_POW;
        }
        if i >= BUCKETS - 1 {
            return u64::MAX;
        }
        let i = i as u32 - 1;
        let high = MIN_POW + i / SUB;
        (u64::from(SUB + i % SUB) + 1) << (high - GROUPING)
    }

    /// Buckets of the coarse histogram: one per power of two from `2^MIN_POW` ns to
    /// `2^MAX_POW` ns, plus one below and one above. Its bounds are bounds of the
    /// log-linear buckets too, so both read alike; 26 u32 fit a deep-tracing session's
    /// per-thread entry where 98 u64 would not.
    pub const LOG2_BUCKETS: usize = (MAX_POW - MIN_POW + 2) as usize;

    /// The coarse bucket of `v`.
    #[inline(always)]
    pub fn log2_index(v: u64) -> usize {
        if v < 1 << MIN_POW {
            return 0;
        }
        if v >= 1 << MAX_POW {
            return LOG2_BUCKETS - 1;
        }
        (64 - MIN_POW - v.leading_zeros()) as usize
    }

    /// The exclusive upper bound of coarse bucket `i` in ns; `u64::MAX` for the last.
    pub fn log2_upper_bound(i: usize) -> u64 {
        if i >= LOG2_BUCKETS - 1 { u64::MAX } else { 1 << (MIN_POW as usize + i) }
    }

    /// Count `v` in a coarse histogram.
    #[inline(always)]
    pub fn log2_record(h: &mut [u32; LOG2_BUCKETS], v: u64) {
        if let Some(b) = h.get_mut(log2_index(v)) {
            *b += 1;
        }
    }

    /// Add `v` to a running figure: its sum, count, maximum and coarse histogram.
    #[inline(always)]
    pub fn tally(sum: &mut u64, count: &mut u64, max: &mut u64, h: &mut [u32; LOG2_BUCKETS], v: u64) {
        *sum += v;
        *count += 1;
        if v > *max {
            *max = v;
        }
        log2_record(h, v);
    }

    /// A histogram as a map value: bucket counts, their sum (ns) and count.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Histogram {
        pub buckets: [u64; BUCKETS],
        pub sum_ns: u64,
        pub count: u64,
    }

    impl Histogram {
        /// Record one value (the kernel side; preemption is off, the map is per-CPU).
        #[inline(always)]
        pub fn record(&mut self, v: u64) {
            let i = index(v);
            if let Some(b) = self.buckets.get_mut(i) {
                *b += 1;
            }
            self.sum_ns += v;
            self.count += 1;
        }
    }
}

/// Scheduler programs (`lsvmi-ebpf/src/sched.rs`).
pub mod sched {
    use crate::hist::Histogram;

    /// Per-CPU array (one entry) of [`CpuSched`].
    pub const CPU_MAP: &str = "SCHED_CPU";
    /// LRU hash: thread id → [`TaskTimes`] (filled only when `SCHED_TASK_STATS` is set).
    /// Entries are never deleted, so one that disappears was evicted.
    pub const TASKS_MAP: &str = "SCHED_TASKS";
    /// Capacity of `SCHED_TASKS`: threads tracked at once (least recently run evicted).
    pub const TASK_ENTRIES: u32 = 4096;

    /// Global of type [`SchedOffsets`].
    pub const GLOBAL_OFFSETS: &str = "SCHED_OFFSETS";
    /// Global (u32): non-zero to keep per-task times in `SCHED_TASKS`.
    pub const GLOBAL_TASK_STATS: &str = "SCHED_TASK_STATS";

    /// Byte offsets of the kernel fields sched_switch reads, from the kernel's BTF (the
    /// agent fills them in before load; see `lsvmi-agent/src/bpf/btf.rs`).
    ///
    /// Run-queue latency is the kernel's own measure: `rq->clock` (updated at the start
    /// of `__schedule`) minus `next->sched_info.last_queued` (set when the task was
    /// queued), both on the runqueue clock — the delta the kernel itself adds to
    /// `run_delay` a few instructions later. The runqueue is reached through
    /// `next->se.cfs_rq->rq`. So no wake-up hook and no map are needed.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct SchedOffsets {
        /// `task_struct.pid`.
        pub pid: u32,
        /// `task_struct.sched_info.last_queued`.
        pub last_queued: u32,
        /// `task_struct.se.cfs_rq`.
        pub se_cfs_rq: u32,
        /// `cfs_rq.rq`.
        pub cfs_rq_rq: u32,
        /// `rq.clock`.
        pub rq_clock: u32,
        /// Non-zero when the four run-queue offsets above are known.
        pub runq: u32,
        /// `task_struct.comm` (for hindsight records).
        pub comm: u32,
        pub _pad: u32,
    }

    /// One CPU's scheduler state and counters.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct CpuSched {
        /// Context switches.
        pub switches: u64,
        /// Switches away from a task that blocked.
        pub voluntary: u64,
        /// Switches away from a task still runnable (preempted or yielded).
        pub involuntary: u64,
        /// Task migrations started on this CPU.
        pub migrations: u64,
        /// On-CPU time of non-idle tasks up to `last_switch_ns` (ns).
        pub busy_ns: u64,
        /// The last switch, on the CPU's clock (see `pair_rq`); 0 before the first.
        pub last_switch_ns: u64,
        /// pid of the task on the CPU since the last switch (0: idle). The agent adds the
        /// time since `last_switch_ns` to `busy_ns` when it is not 0, so a CPU busy with one
        /// thread that never switches still reads as busy.
        pub running_pid: u64,
        /// The CPU's clock is the runqueue clock (`rq->clock`, read for free at every switch)
        /// when the BTF offsets allow, else `bpf_ktime_get_ns()`. With the runqueue clock,
        /// this pair (`rq->clock`, `bpf_ktime_get_ns()`) is refreshed at most every
        /// millisecond, so the agent can place CLOCK_MONOTONIC on the CPU's clock; with
        /// ktime both stay 0. A clock read costs ~80 ns on this VM: skipping it on most
        /// switches halves sched_switch's cost.
        pub pair_rq: u64,
        pub pair_ktime: u64,
        /// Run-queue wait of the task on the CPU, for per-task accounting at switch-out.
        pub running_wait_ns: u64,
        /// Run-queue latency: from being queued (woken, new, or preempted while
        /// runnable) to running on this CPU.
        pub runq: Histogram,
    }

    /// A thread's times, accumulated while it runs (per-task stats).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct TaskTimes {
        /// On-CPU time (ns).
        pub oncpu_ns: u64,
        /// Run-queue wait (ns).
        pub runq_ns: u64,
        /// Times it was switched out.
        pub switches: u64,
        /// `bpf_ktime_get_ns()` at its last switch-out.
        pub last_ns: u64,
        /// Process id (thread group).
        pub tgid: u32,
        pub _pad: u32,
        /// Thread name at its first switch-out.
        pub comm: [u8; 16],
    }

    /// Name of the program attached to `tp_btf/sched_switch`.
    pub const PROG_SWITCH: &str = "sched_switch";
    /// Name of the program attached to `tp_btf/sched_migrate_task`.
    pub const PROG_MIGRATE: &str = "sched_migrate_task";
}

/// Network programs (`lsvmi-ebpf/src/net.rs`), on classic tracepoints whose field
/// offsets the agent reads from tracefs `format` files and passes in [`NetOffsets`].
pub mod net {
    use crate::hist::Histogram;

    /// Per-CPU array (one entry) of [`CpuNet`].
    pub const CPU_MAP: &str = "NET_CPU";
    /// Ring buffer of [`NetEvent`] records.
    pub const EVENTS_MAP: &str = "NET_EVENTS";
    /// Size of `NET_EVENTS` in bytes: ~1 450 records of 88 bytes, drained every 100 ms
    /// (14 500 records/s before any is lost; the counters count every event regardless).
    /// The agent maps the ring twice over, so each KiB here is 2 KiB of its RSS.
    pub const EVENTS_BYTES: u32 = 128 * 1024;
    /// Global of type [`NetOffsets`].
    pub const GLOBAL_OFFSETS: &str = "NET_OFFSETS";

    /// TCP states are 1..=13 in Linux (TCP_ESTABLISHED..TCP_BOUND_INACTIVE); slot 0 and
    /// anything out of range is counted in slot 0.
    pub const TCP_STATES: usize = 16;
    /// Drop reasons counted individually; larger values land in the last slot.
    pub const DROP_REASONS: usize = 256;

    /// One CPU's network counters.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct CpuNet {
        /// Retransmitted segments by the socket's TCP state.
        pub retransmits: [u64; TCP_STATES],
        /// Resets sent, by the socket's TCP state (0 when sent without a socket).
        pub resets_sent: [u64; TCP_STATES],
        /// Resets received.
        pub resets_received: u64,
        /// TCP state transitions, `[from * TCP_STATES + to]`.
        pub transitions: [u64; TCP_STATES * TCP_STATES],
        /// Packets freed as dropped, by the kernel's drop reason.
        pub drops: [u64; DROP_REASONS],
        /// Ring-buffer records lost because the buffer was full.
        pub events_lost: u64,
        /// Smoothed RTT of TCP sockets, sampled at each tcp_probe (ns).
        pub srtt: Histogram,
    }

    /// Where the fields of one tracepoint are (byte offsets in its record); `ABSENT`
    /// when this kernel's tracepoint lacks the field.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct TpFields {
        pub state: u16,
        pub sport: u16,
        pub dport: u16,
        pub family: u16,
        /// IPv4 address, 4 bytes.
        pub saddr: u16,
        pub daddr: u16,
        /// IPv6 address, 16 bytes.
        pub saddr_v6: u16,
        pub daddr_v6: u16,
        /// A whole `sockaddr_in`/`sockaddr_in6` (28 bytes), as tcp_send_reset and
        /// tcp_probe carry them.
        pub ssockaddr: u16,
        pub dsockaddr: u16,
        /// tcp_probe: smoothed RTT (µs); kfree_skb: drop reason; inet_sock_set_state:
        /// the new state (old state in `state`); softirq: vec.
        pub value: u16,
        /// inet_sock_set_state: protocol.
        pub protocol: u16,
    }

    /// Field offset not present in this kernel's tracepoint.
    pub const ABSENT: u16 = u16::MAX;

    impl TpFields {
        pub const NONE: TpFields = TpFields {
            state: ABSENT,
            sport: ABSENT,
            dport: ABSENT,
            family: ABSENT,
            saddr: ABSENT,
            daddr: ABSENT,
            saddr_v6: ABSENT,
            daddr_v6: ABSENT,
            ssockaddr: ABSENT,
            dsockaddr: ABSENT,
            value: ABSENT,
            protocol: ABSENT,
        };
    }

    /// The offsets of every network tracepoint, filled by the agent before load.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct NetOffsets {
        pub retransmit: TpFields,
        pub send_reset: TpFields,
        pub receive_reset: TpFields,
        pub set_state: TpFields,
        pub probe: TpFields,
        pub kfree_skb: TpFields,
    }

    impl NetOffsets {
        pub const NONE: NetOffsets = NetOffsets {
            retransmit: TpFields::NONE,
            send_reset: TpFields::NONE,
            receive_reset: TpFields::NONE,
            set_state: TpFields::NONE,
            probe: TpFields::NONE,
            kfree_skb: TpFields::NONE,
        };
    }

    /// Kind of a [`NetEvent`].
    pub const EVENT_RETRANSMIT: u16 = 1;
    pub const EVENT_SEND_RESET: u16 = 2;
    pub const EVENT_RECEIVE_RESET: u16 = 3;
    pub const EVENT_DROP: u16 = 4;

    /// A discrete, low-rate event, written to `NET_EVENTS` without waking the agent.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct NetEvent {
        /// `bpf_ktime_get_ns()`.
        pub ts_ns: u64,
        pub kind: u16,
        /// AF_INET (2) or AF_INET6 (10); 0 when the event has no socket address.
        pub family: u16,
        /// Host byte order.
        pub sport: u16,
        pub dport: u16,
        pub cpu: u32,
        /// Thread running when it happened (often unrelated to the socket in softirq).
        pub pid: u32,
        /// TCP state (retransmit, send reset) or drop reason.
        pub detail: u32,
        /// Drop: the skb's protocol (ETH_P_*); otherwise 0.
        pub protocol: u32,
        /// IPv4 in the first 4 bytes, or IPv6.
        pub saddr: [u8; 16],
        pub daddr: [u8; 16],
        pub comm: [u8; 16],
    }

    pub const PROG_RETRANSMIT: &str = "tcp_retransmit_skb";
    pub const PROG_SEND_RESET: &str = "tcp_send_reset";
    pub const PROG_RECEIVE_RESET: &str = "tcp_receive_reset";
    pub const PROG_SET_STATE: &str = "inet_sock_set_state";
    pub const PROG_PROBE: &str = "tcp_probe";
    pub const PROG_KFREE_SKB: &str = "kfree_skb";
}

/// Softirq time (`lsvmi-ebpf/src/softirq.rs`).
pub mod softirq {
    /// Softirq vectors (HI..RCU); NR_SOFTIRQS is 10.
    pub const VECTORS: usize = 10;
    /// Per-CPU array (one entry) of [`CpuSoftirq`].
    pub const CPU_MAP: &str = "SOFTIRQ_CPU";
    /// Vector names, as /proc/softirqs and the kernel's `softirq_to_name` have them.
    pub const NAMES: [&str; VECTORS] =
        ["HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU"];

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct CpuSoftirq {
        /// Entry instant of the running softirq per vector (0: not running).
        pub entered_ns: [u64; VECTORS],
        /// Time spent per vector (ns).
        pub time_ns: [u64; VECTORS],
        /// Completed runs per vector.
        pub count: [u64; VECTORS],
    }

    pub const PROG_ENTRY: &str = "softirq_entry";
    pub const PROG_EXIT: &str = "softirq_exit";
}

/// The `sched` deep-tracing profile (`lsvmi-ebpf/src/trace_sched.rs`): attached only
/// while a session runs. Per thread: time from being queued (woken, created, or
/// preempted while runnable) to running, split by how it was queued; per thread that
/// held a CPU when a waiter got it, the wait it ended.
pub mod trace_sched {
    /// Hash: thread id → when it was queued (`bpf_ktime_get_ns()`), and how.
    pub const QUEUED_MAP: &str = "TRACE_QUEUED";
    /// Hash: thread id → [`ThreadWait`].
    pub const THREADS_MAP: &str = "TRACE_THREADS";
    /// Hash: thread id → [`Culprit`].
    pub const CULPRITS_MAP: &str = "TRACE_CULPRITS";
    /// Array (one entry) of [`Filter`], set by the agent at session start.
    pub const FILTER_MAP: &str = "TRACE_FILTER";
    /// Per-CPU array of `DROP_REASONS` u64 counters.
    pub const DROPS_MAP: &str = "TRACE_DROPS";
    /// Per-CPU array of `PROGRAMS` u64 counters: runs of each program while a session is
    /// active. Runs × the measured ns per run is the session's cost, with no clock read.
    pub const RUNS_MAP: &str = "TRACE_RUNS";
    /// Slots of `TRACE_RUNS`.
    pub const RUN_WAKING: u32 = 0;
    pub const RUN_WAKEUP_NEW: u32 = 1;
    pub const RUN_SWITCH: u32 = 2;
    pub const RUN_MIGRATE: u32 = 3;
    pub const PROGRAMS: usize = 4;
    /// Global of type [`TraceOffsets`].
    pub const GLOBAL_OFFSETS: &str = "TRACE_OFFSETS";
    /// Ring buffer of [`WaitRecord`]s: each wait of at least `Filter::min_wait_ns`,
    /// written without waking the agent, drained on its tick, for the session's timeline.
    pub const WAITS_RING: &str = "TRACE_WAITS";
    /// Size of `TRACE_WAITS` in bytes: ~1 800 records, drained every second (beyond,
    /// counted as `ring_full`). The agent maps the ring twice over, so each KiB here is
    /// 2 KiB of its RSS, sessions or not.
    pub const WAITS_RING_BYTES: u32 = 128 * 1024;

    /// Threads followed at once (queued, and aggregated); beyond, events are dropped and
    /// counted.
    pub const THREAD_ENTRIES: u32 = 16384;
    /// Drop reasons, in the slots of `TRACE_DROPS`.
    pub const DROP_QUEUED_FULL: usize = 0;
    pub const DROP_THREADS_FULL: usize = 1;
    pub const DROP_CULPRITS_FULL: usize = 2;
    pub const DROP_RING_FULL: usize = 3;
    pub const DROP_REASONS: usize = 4;
    pub const DROP_NAMES: [&str; DROP_REASONS] =
        ["queued_map_full", "threads_map_full", "culprits_map_full", "ring_full"];

    /// How a thread came to wait (`Queued::how`).
    pub const WOKEN: u32 = 0;
    pub const PREEMPTED: u32 = 1;
    /// Switched out asleep (`Queued::how` until its wake-up): the time to it is slept.
    pub const SLEPT: u32 = 2;

    /// Byte offsets in `task_struct`, from the kernel's BTF.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct TraceOffsets {
        pub pid: u32,
        pub tgid: u32,
        pub comm: u32,
        /// The agent's own process: its threads are never traced (no feedback loop).
        pub agent_tgid: u32,
    }

    /// What a session narrows to; 0 means "any".
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Filter {
        /// Non-zero while a session runs: the programs do nothing otherwise.
        pub active: u32,
        pub tgid: u32,
        /// Waits at least this long (ns) are also written to the timeline ring.
        pub min_wait_ns: u64,
        /// Bit `n`: count waits that end on CPU `n`; 0 means every CPU (CPUs 0–63).
        pub cpus: u64,
        /// Only this thread (0: any); set when the budget narrows the session.
        pub tid: u32,
        pub _pad: u32,
        /// Waits shorter than this (ns) are not counted; raised by the budget.
        pub min_count_ns: u64,
    }

    /// One wait, for the session's timeline.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct WaitRecord {
        /// When it ended (`bpf_ktime_get_ns()`), and how long it was.
        pub end_ns: u64,
        pub wait_ns: u64,
        pub tid: u32,
        pub tgid: u32,
        pub cpu: u32,
        /// [`WOKEN`] or [`PREEMPTED`].
        pub how: u32,
        /// The thread that left the CPU to it (0: idle).
        pub culprit_tid: u32,
        pub _pad: u32,
        pub comm: [u8; 16],
        pub culprit_comm: [u8; 16],
    }

    /// A queued thread.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Queued {
        pub at_ns: u64,
        pub how: u32,
        pub _pad: u32,
    }

    /// One thread's waits during the session.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct ThreadWait {
        /// Time from woken (or created) to running, and how many times.
        pub woken_ns: u64,
        pub woken: u64,
        /// Time from preempted (still runnable) to running again, and how many times.
        pub preempted_ns: u64,
        pub preempted: u64,
        pub max_ns: u64,
        pub tgid: u32,
        pub _pad: u32,
        pub comm: [u8; 16],
        /// Every wait (both causes) in coarse buckets ([`crate::hist::log2_index`]).
        pub hist: [u32; crate::hist::LOG2_BUCKETS],
        /// Time asleep (switched out not runnable, to its wake-up), and how many times.
        pub slept_ns: u64,
        pub slept: u64,
        /// Moves to another CPU.
        pub migrations: u64,
    }

    /// A thread that was on a CPU when a waiter got it: the waits it ended.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Culprit {
        pub ended_wait_ns: u64,
        pub ended: u64,
        pub tgid: u32,
        pub _pad: u32,
        pub comm: [u8; 16],
    }

    pub const PROG_WAKING: &str = "trace_sched_waking";
    pub const PROG_WAKEUP_NEW: &str = "trace_sched_wakeup_new";
    pub const PROG_SWITCH: &str = "trace_sched_switch";
    pub const PROG_MIGRATE: &str = "trace_sched_migrate";
}

/// The hindsight ring (`lsvmi-ebpf/src/hindsight.rs`): the always-on programs write a
/// compact record into a per-CPU overwrite ring when an event crosses a threshold (a
/// long run-queue wait, a long softirq run, any retransmit, reset or drop). Nothing
/// reads it until a trigger fires or `lsvmi trace dump` asks: no wake-up, no copy.
pub mod hindsight {
    /// Per-CPU array of `SLOTS` [`Record`]s: each CPU's ring.
    pub const RING_MAP: &str = "HINDSIGHT";
    /// Per-CPU array of 2 u64: records written (the next slot is this mod `SLOTS`), and
    /// records skipped while the agent read the ring.
    pub const HEAD_MAP: &str = "HINDSIGHT_HEAD";
    pub const HEAD_WRITTEN: u32 = 0;
    pub const HEAD_SKIPPED: u32 = 1;
    /// Array (one entry) of u32: non-zero while the agent reads the ring (writers skip,
    /// and count it).
    pub const FROZEN_MAP: &str = "HINDSIGHT_FROZEN";
    /// Global of type [`Thresholds`].
    pub const GLOBAL_THRESHOLDS: &str = "HINDSIGHT_THRESHOLDS";
    /// Slots per CPU: 4096 × 64 bytes = 256 KiB of kernel memory per CPU.
    pub const SLOTS: u32 = 4096;

    /// `Record::kind`.
    pub const RUNQ: u16 = 1;
    pub const SOFTIRQ: u16 = 2;
    /// The network kinds are `NET_BASE` + the `net::EVENT_*` kind.
    pub const NET_BASE: u16 = 2;
    pub const RETRANSMIT: u16 = NET_BASE + crate::net::EVENT_RETRANSMIT;
    pub const SEND_RESET: u16 = NET_BASE + crate::net::EVENT_SEND_RESET;
    pub const RECEIVE_RESET: u16 = NET_BASE + crate::net::EVENT_RECEIVE_RESET;
    pub const DROP: u16 = NET_BASE + crate::net::EVENT_DROP;

    /// What is worth a record; 0 turns a kind off. Set by the agent at load.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Thresholds {
        /// A run-queue wait at least this long (ns).
        pub runq_ns: u64,
        /// A softirq run at least this long (ns).
        pub softirq_ns: u64,
        /// Non-zero: every retransmit, reset and drop.
        pub net: u32,
        pub _pad: u32,
    }

    /// One event worth keeping. The CPU is the ring's.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Record {
        /// When (`bpf_ktime_get_ns()`); 0: an empty slot.
        pub ts_ns: u64,
        /// RUNQ: the wait (ns); SOFTIRQ: the run (ns); net: source port << 16 | destination port.
        pub value: u64,
        /// RUNQ: the thread that waited; otherwise the thread running.
        pub tid: u32,
        /// RUNQ: the thread that held the CPU until the wait ended (0: idle).
        pub other_tid: u32,
        pub kind: u16,
        /// SOFTIRQ: the vector; RETRANSMIT, SEND_RESET: the TCP state; DROP: the reason.
        pub detail: u16,
        /// net, IPv4: the destination address (network order); otherwise 0.
        pub addr: u32,
        pub comm: [u8; 16],
        pub other_comm: [u8; 16],
    }
}

/// The `irq` deep-tracing profile (`lsvmi-ebpf/src/trace_irq.rs`): hard-IRQ handler
/// time per IRQ, softirq raise-to-entry delay and run time per vector. Attached only
/// while a session runs.
pub mod trace_irq {
    use crate::softirq::VECTORS;

    use crate::hist::LOG2_BUCKETS;

    /// Array (one entry) of [`IrqFilter`], set by the agent.
    pub const FILTER_MAP: &str = "TRACE_IRQ_FILTER";
    /// Ring buffer of [`IrqRecord`]s: each handler or softirq run of at least
    /// `IrqFilter::min_ns`, for the session's timeline (drained on the agent's tick).
    pub const RING: &str = "TRACE_IRQ_RING";
    pub const RING_BYTES: u32 = 64 * 1024;
    /// Per-CPU hash: IRQ number → [`IrqTime`].
    pub const IRQS_MAP: &str = "TRACE_IRQS";
    /// Per-CPU array (one entry) of [`CpuIrq`].
    pub const CPU_MAP: &str = "TRACE_IRQ_CPU";
    /// Per-CPU array of `PROGRAMS` run counters (the session's cost).
    pub const RUNS_MAP: &str = "TRACE_IRQ_RUNS";
    /// IRQ numbers followed; beyond, counted in `CpuIrq::dropped`.
    pub const IRQ_ENTRIES: u32 = 1024;

    pub const RUN_IRQ_ENTRY: u32 = 0;
    pub const RUN_IRQ_EXIT: u32 = 1;
    pub const RUN_SOFTIRQ_RAISE: u32 = 2;
    pub const RUN_SOFTIRQ_ENTRY: u32 = 3;
    pub const RUN_SOFTIRQ_EXIT: u32 = 4;
    pub const PROGRAMS: usize = 5;

    /// `IrqFilter::cpu` for every CPU.
    pub const ANY_CPU: u32 = u32::MAX;

    /// What a session records.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct IrqFilter {
        /// Non-zero while a session runs.
        pub active: u32,
        /// Only this CPU ([`ANY_CPU`]: all); set when the budget narrows the session.
        pub cpu: u32,
        /// Runs at least this long (ns) go to the timeline ring.
        pub min_ns: u64,
    }

    /// `IrqRecord::kind`.
    pub const HARD: u32 = 0;
    pub const SOFT: u32 = 1;

    /// One handler or softirq run, for the timeline.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct IrqRecord {
        /// When it started running (`bpf_ktime_get_ns()`) and how long it ran.
        pub start_ns: u64,
        pub run_ns: u64,
        /// Softirq: from raised to running (0: not seen raised).
        pub delay_ns: u64,
        pub cpu: u32,
        /// [`HARD`] or [`SOFT`].
        pub kind: u32,
        /// The IRQ number or the softirq vector.
        pub num: u32,
        pub _pad: u32,
    }

    /// One IRQ's handler time on one CPU.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct IrqTime {
        pub time_ns: u64,
        pub count: u64,
        pub max_ns: u64,
        pub hist: [u32; LOG2_BUCKETS],
    }

    /// One CPU's state and softirq figures.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct CpuIrq {
        /// The hard IRQ being handled (entry time, 0 when none) and its number.
        pub irq_entered_ns: u64,
        pub irq: u32,
        pub _pad: u32,
        /// Per vector: when it was raised (0: not pending) and when it started running.
        pub raised_ns: [u64; VECTORS],
        pub entered_ns: [u64; VECTORS],
        /// The delay of the run in progress (for its timeline record).
        pub entered_delay_ns: [u64; VECTORS],
        /// Per vector: raise-to-entry delay, runs, and their maxima.
        pub delay_ns: [u64; VECTORS],
        pub delays: [u64; VECTORS],
        pub max_delay_ns: [u64; VECTORS],
        pub run_ns: [u64; VECTORS],
        pub runs: [u64; VECTORS],
        pub max_run_ns: [u64; VECTORS],
        /// IRQ handler times not recorded: the IRQ map was full.
        pub dropped: u64,
        /// Timeline records not written: the ring was full.
        pub ring_full: u64,
        /// Per vector, coarse histograms of the delays and the runs.
        pub delay_hist: [[u32; LOG2_BUCKETS]; VECTORS],
        pub run_hist: [[u32; LOG2_BUCKETS]; VECTORS],
    }

    pub const PROG_IRQ_ENTRY: &str = "trace_irq_handler_entry";
    pub const PROG_IRQ_EXIT: &str = "trace_irq_handler_exit";
    pub const PROG_SOFTIRQ_RAISE: &str = "trace_softirq_raise";
    pub const PROG_SOFTIRQ_ENTRY: &str = "trace_softirq_entry";
    pub const PROG_SOFTIRQ_EXIT: &str = "trace_softirq_exit";
}

/// The `block` deep-tracing profile (`lsvmi-ebpf/src/trace_block.rs`): per block
/// request, the wait in the queue (insert to issue) apart from the device's time (issue
/// to completion), summed per device and process. Attached only while a session runs.
pub mod trace_block {
    use crate::hist::LOG2_BUCKETS;

    /// Array (one entry) of [`BlockFilter`], set by the agent.
    pub const FILTER_MAP: &str = "TRACE_BLOCK_FILTER";
    /// Ring buffer of [`BlockRecord`]s: each request of at least `BlockFilter::min_ns`
    /// (queue + device), for the session's timeline (drained on the agent's tick).
    pub const RING: &str = "TRACE_BLOCK_RING";
    pub const RING_BYTES: u32 = 64 * 1024;
    /// Hash: request address → [`Request`] while it is in flight.
    pub const REQUESTS_MAP: &str = "TRACE_BLOCK_REQS";
    /// Hash: [`Key`] → [`Stat`].
    pub const STATS_MAP: &str = "TRACE_BLOCK_STATS";
    /// Per-CPU array of `PROGRAMS` run counters, then `DROPS` drop counters.
    pub const COUNTERS_MAP: &str = "TRACE_BLOCK_COUNTERS";
    /// Global of type [`BlockOffsets`].
    pub const GLOBAL_OFFSETS: &str = "TRACE_BLOCK_OFFSETS";
    pub const ENTRIES: u32 = 16384;

    pub const RUN_INSERT: u32 = 0;
    pub const RUN_ISSUE: u32 = 1;
    pub const RUN_COMPLETE: u32 = 2;
    pub const PROGRAMS: usize = 3;
    /// Counter slots after the run counters: requests or stats not recorded (map full).
    pub const DROP_REQUESTS_FULL: u32 = 3;
    pub const DROP_STATS_FULL: u32 = 4;
    pub const DROP_RING_FULL: u32 = 5;
    pub const COUNTERS: usize = 6;

    /// What a session records.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct BlockFilter {
        /// Non-zero while a session runs.
        pub active: u32,
        pub _pad: u32,
        /// Requests at least this long (ns, queue + device) go to the timeline ring.
        pub min_ns: u64,
    }

    /// One completed request, for the timeline.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct BlockRecord {
        /// Inserted (0: issued directly), issued, completed (`bpf_ktime_get_ns()`).
        pub insert_ns: u64,
        pub issue_ns: u64,
        pub complete_ns: u64,
        pub dev: u32,
        pub tgid: u32,
        pub comm: [u8; 16],
    }

    /// `request.part` and `block_device.bd_dev`, from the kernel's BTF.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct BlockOffsets {
        pub rq_part: u32,
        pub bd_dev: u32,
    }

    /// A request in flight.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Request {
        /// 0 when it was issued without being queued.
        pub insert_ns: u64,
        pub issue_ns: u64,
        pub dev: u32,
        pub tgid: u32,
        pub comm: [u8; 16],
    }

    /// Device (the kernel's dev_t: major << 20 | minor) and process.
    #[repr(C)]
    #[derive(Clone, Copy, Default, PartialEq, Eq)]
    pub struct Key {
        pub dev: u32,
        pub tgid: u32,
    }

    /// Requests of one process on one device during the session.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Stat {
        pub queue_ns: u64,
        pub device_ns: u64,
        pub completed: u64,
        pub max_queue_ns: u64,
        pub max_device_ns: u64,
        pub comm: [u8; 16],
        /// Coarse histograms of the queue and device times.
        pub queue_hist: [u32; LOG2_BUCKETS],
        pub device_hist: [u32; LOG2_BUCKETS],
    }

    pub const PROG_INSERT: &str = "trace_block_rq_insert";
    pub const PROG_ISSUE: &str = "trace_block_rq_issue";
    pub const PROG_COMPLETE: &str = "trace_block_rq_complete";
}

/// The agent's side (feature `user`): these types are read from maps and written as
/// globals through aya, which needs them to be `Pod`.
#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: #[repr(C)], Copy, integers and arrays of integers only, laid out without
    // implicit padding (explicit `_pad` fields fill the gaps): any bit pattern is valid.
    unsafe impl aya::Pod for sched::CpuSched {}
    // SAFETY: as above.
    unsafe impl aya::Pod for sched::TaskTimes {}
    // SAFETY: as above.
    unsafe impl aya::Pod for net::NetOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for sched::SchedOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for net::CpuNet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for softirq::CpuSoftirq {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_sched::TraceOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_sched::Filter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_sched::Queued {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_sched::ThreadWait {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_sched::Culprit {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_sched::WaitRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_irq::IrqTime {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_irq::CpuIrq {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_irq::IrqFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_irq::IrqRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_block::BlockRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_block::BlockFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_block::BlockOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_block::Request {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_block::Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for trace_block::Stat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for hindsight::Thresholds {}
    // SAFETY: as above.
    unsafe impl aya::Pod for hindsight::Record {}
}

#[cfg(test)]
mod tests {
    use super::hist::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_bounds() {
        let mut lower = 0u64;
        for i in 0..BUCKETS - 1 {
            let upper = upper_bound(i);
            assert!(upper > lower, "bucket {i}");
            assert_eq!(index(lower), i, "lower bound of {i}");
            assert_eq!(index(upper - 1), i, "upper bound of {i}");
            assert_eq!(index(upper), i + 1, "next after {i}");
            // At most 25 % wide (relative to the lower bound) above the first bucket.
            if i > 0 {
                assert!((upper - lower) * 4 <= lower, "bucket {i} too wide");
            }
            lower = upper;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(upper_bound(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn coarse_buckets_are_powers_of_two_shared_with_the_fine_ones() {
        let mut lower = 0u64;
        for i in 0..LOG2_BUCKETS - 1 {
            let upper = log2_upper_bound(i);
            assert_eq!(log2_index(lower), i, "lower bound of {i}");
            assert_eq!(log2_index(upper - 1), i, "upper bound of {i}");
            assert_eq!(log2_index(upper), i + 1, "next after {i}");
            // A coarse bound is a fine one too: both histograms read alike.
            assert_eq!(upper_bound(index(upper - 1)), upper, "bucket {i}");
            lower = upper;
        }
        assert_eq!(log2_index(u64::MAX), LOG2_BUCKETS - 1);
        assert_eq!(log2_upper_bound(LOG2_BUCKETS - 1), u64::MAX);
        let mut h = [0u32; LOG2_BUCKETS];
        log2_record(&mut h, 1500);
        assert_eq!(h[1], 1);
    }
}
