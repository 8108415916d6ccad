//! The `block` profile: per device and process, the time block requests waited in the
//! queue (insert to issue) apart from the time the device took (issue to completion).
//! The kernel side is `lsvmi-ebpf/src/trace_block.rs`, loaded at session start,
//! unloaded at its end. The top 10 (device, process) pairs by total time get series; the
//! rest are folded into one `comm="_other"` series per device.

use std::sync::{Arc, Mutex, OnceLock};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
};
use lsvmi_common::{
    hist::LOG2_BUCKETS,
    trace_block::{
        BlockFilter, BlockOffsets, BlockRecord, COUNTERS, COUNTERS_MAP, DROP_REQUESTS_FULL, DROP_RING_FULL,
        DROP_STATS_FULL, FILTER_MAP, GLOBAL_OFFSETS, Key, PROG_COMPLETE, PROG_INSERT, PROG_ISSUE,
        PROGRAMS as RUN_SLOTS, REQUESTS_MAP, RING, Request, STATS_MAP, Stat,
    },
};
use serde_json::json;

use super::{
    SessionInfo, Sessions, Tracer,
    programs::{self, ProgramTracer, SessionMaps, Shared},
    sched::TOP_K,
};
use crate::{
    bpf::{Bpf, BpfError, BpfSource, Global, Kernel},
    model::{MetricDesc, now_ms},
    sources::{Collector, Source, SourceError},
};

const SOURCE: &str = "BPF tp_btf block_rq_insert, block_rq_issue, block_rq_complete (trace sessions)";

metric!(
    QUEUE,
    "trace_block_queue_seconds_total",
    Counter,
    "seconds",
    ["session", "device", "pid", "comm"],
    SOURCE,
    "Time block requests waited in the queue (insert to issue) during a block trace session, per device and \
     the process that queued them."
);
metric!(
    DEVICE,
    "trace_block_device_seconds_total",
    Counter,
    "seconds",
    ["session", "device", "pid", "comm"],
    SOURCE,
    "Time block requests spent at the device (issue to completion)."
);
metric!(
    REQUESTS,
    "trace_block_requests_total",
    Counter,
    "",
    ["session", "device", "pid", "comm"],
    SOURCE,
    "Requests completed."
);
metric!(
    MAX_QUEUE,
    "trace_block_max_queue_seconds",
    Gauge,
    "seconds",
    ["session", "device", "pid", "comm"],
    SOURCE,
    "The longest queue wait of one request."
);
metric!(
    MAX_DEVICE,
    "trace_block_max_device_seconds",
    Gauge,
    "seconds",
    ["session", "device", "pid", "comm"],
    SOURCE,
    "The longest device time of one request."
);

histogram!(
    QUEUE_LATENCY,
    "trace_block_queue_latency_seconds",
    ["session", "device", "pid", "comm"],
    SOURCE,
    "Each request's queue wait during a block trace session, in buckets of powers of two."
);
histogram!(
    DEVICE_LATENCY,
    "trace_block_device_latency_seconds",
    ["session", "device", "pid", "comm"],
    SOURCE,
    "Each request's time at the device during a block trace session, in buckets of powers of two."
);

pub static METRICS: &[&MetricDesc] = &[
    &QUEUE,
    &DEVICE,
    &REQUESTS,
    &MAX_QUEUE,
    &MAX_DEVICE,
    &QUEUE_LATENCY.bucket,
    &QUEUE_LATENCY.sum,
    &QUEUE_LATENCY.count,
    &DEVICE_LATENCY.bucket,
    &DEVICE_LATENCY.sum,
    &DEVICE_LATENCY.count,
];

/// Every request goes on the timeline until the budget's first step raises this to
/// [`STEP_TIMELINE_NS`].
const TIMELINE_MIN_NS: u64 = 0;
const STEP_TIMELINE_NS: u64 = 1_000_000;

const PROGRAMS: [(&str, &str); 3] =
    [(PROG_INSERT, "block_rq_insert"), (PROG_ISSUE, "block_rq_issue"), (PROG_COMPLETE, "block_rq_complete")];

/// ns per run of each program (slots of the run counters), measured by `cargo xtask
/// bench-bpf` under direct I/O to a loop device (docs/performance.md): issue and
/// complete; insert ran only cold (direct I/O skips the queue), taken as the issue's
/// cost plus the insert of a new entry. The cost estimate where the kernel's own
/// timing is refused.
const COST_NS: [f64; RUN_SLOTS] = [400.0, 279.0, 286.0];

pub static BPF: BpfSource = BpfSource {
    programs: &[],
    needs: &[],
    globals: |kernel| offsets(kernel).map(|o| vec![Global::new(GLOBAL_OFFSETS, o)]).unwrap_or_default(),
    attach: |bpf, _| Ok(Box::new(TraceBlockSource::attach(bpf)?)),
};

fn offsets(kernel: &Kernel) -> Result<BlockOffsets, String> {
    let at = |s: &str, m: &str| kernel.member_offset(s, m);
    Ok(BlockOffsets { rq_part: at("request", "part")?, bd_dev: at("block_device", "bd_dev")? })
}

struct Maps {
    filter: Array<MapData, BlockFilter>,
    requests: BpfHashMap<MapData, u64, Request>,
    stats: BpfHashMap<MapData, Key, Stat>,
    counters: PerCpuArray<MapData, u64>,
    timeline: super::timeline::Records<BlockRecord>,
    session: Option<SessionInfo>,
}

static SHARED: OnceLock<Arc<Shared<Maps>>> = OnceLock::new();

impl Maps {
    fn set_filter(&mut self, f: BlockFilter) -> Result<(), String> {
        self.filter.set(0, f, 0).map_err(|e| format!("setting the block session's filter: {e}"))
    }
}

impl SessionMaps for Maps {
    fn clear(&mut self) {
        self.timeline.clear();
        programs::clear_hash(&mut self.requests);
        programs::clear_hash(&mut self.stats);
        programs::zero(&mut self.counters, COUNTERS);
    }

    fn switch(&mut self, session: Option<&SessionInfo>) -> Result<(), String> {
        let min_ns = session.and_then(|s| s.threshold_ns).unwrap_or(TIMELINE_MIN_NS);
        self.set_filter(BlockFilter { active: u32::from(session.is_some()), _pad: 0, min_ns })
    }

    fn session(&mut self) -> &mut Option<SessionInfo> {
        &mut self.session
    }

    fn estimate(&self) -> (u64, f64) {
        let counters: [u64; COUNTERS] = programs::sums(&self.counters);
        let mut runs = [0u64; RUN_SLOTS];
        runs.copy_from_slice(&counters[..RUN_SLOTS]);
        programs::estimate(runs, COST_NS)
    }

    /// 1: the timeline takes requests of 1 ms or more. Every request still runs the
    /// three programs, so nothing narrows further: then the session stops.
    fn step_down(&mut self, n: u32) -> Option<String> {
        let mut f = self.filter.get(&0, 0).ok()?;
        if n != 1 {
            return None;
        }
        f.min_ns = f.min_ns.max(STEP_TIMELINE_NS);
        self.set_filter(f).ok()?;
        Some("timeline from 1 ms requests".into())
    }
}

/// The session's files: per device, each request as an async slice in two parts —
/// queued, then at the device — named by the process (overlapping requests get rows of
/// their own in the viewer).
fn files(
    session_id: &str,
    records: &[BlockRecord],
    dropped: u64,
    names: &std::collections::HashMap<u32, String>,
) -> super::timeline::Files {
    const DEVICE_TRACKS: i64 = -3;
    let mut doc = super::timeline::Doc::default();
    let offset = super::timeline::realtime_offset_ns();
    doc.process(DEVICE_TRACKS, "block devices");
    let mut lines = Vec::with_capacity(records.len());
    for (n, r) in records.iter().enumerate() {
        let device = names.get(&r.dev).cloned().unwrap_or_else(|| device_name(r.dev));
        let comm = crate::sources::text::comm(&r.comm);
        let args = json!({ "device": device, "pid": r.tgid, "comm": comm });
        if r.insert_ns != 0 {
            doc.async_slice(
                DEVICE_TRACKS,
                &device,
                format!("{comm} queued"),
                n,
                r.insert_ns,
                r.issue_ns.saturating_sub(r.insert_ns),
                args.clone(),
            );
        }
        doc.async_slice(
            DEVICE_TRACKS,
            &device,
            format!("{comm} at device"),
            n,
            r.issue_ns,
            r.complete_ns.saturating_sub(r.issue_ns),
            args,
        );
        let wall = |ns: u64| if ns == 0 { 0 } else { (i128::from(ns) + offset) as u64 };
        lines.push(json!({
            "insert_ns": wall(r.insert_ns), "issue_ns": wall(r.issue_ns), "complete_ns": wall(r.complete_ns),
            "device": device, "pid": r.tgid, "comm": comm,
        }));
    }
    super::timeline::Files {
        doc: doc.finish(session_id, records.len(), dropped),
        lines,
        records: records.len(),
        dropped,
    }
}

pub fn tracer(ebpf: Arc<Mutex<Ebpf>>, sessions: &Sessions) -> Result<Arc<dyn Tracer>, String> {
    Ok(Arc::new(ProgramTracer::new(ebpf, SHARED.get(), sessions, &PROGRAMS, check, "trace_block")?))
}

fn check(session: &SessionInfo) -> Result<(), String> {
    if session.comm.is_some() || session.cpus.is_some() {
        return Err("the block profile narrows by --pid only (in userspace)".into());
    }
    Ok(())
}

/// The kernel's dev_t (major << 20 | minor) as `name` (from sysfs) or `major:minor`.
fn device_name(dev: u32) -> String {
    let (major, minor) = (dev >> 20, dev & 0xf_ffff);
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).unwrap_or_default();
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

pub struct TraceBlockSource {
    shared: Arc<Shared<Maps>>,
    series: programs::SessionSeries,
    names: std::collections::HashMap<u32, String>,
}

impl TraceBlockSource {
    fn attach(bpf: &mut Bpf) -> Result<Self, BpfError> {
        let maps = Maps {
            filter: bpf.take_map(FILTER_MAP)?,
            requests: bpf.take_map(REQUESTS_MAP)?,
            stats: bpf.take_map(STATS_MAP)?,
            counters: bpf.take_map(COUNTERS_MAP)?,
            timeline: super::timeline::Records::new(RING, bpf.take_raw_map(RING)?)?,
            session: None,
        };
        let shared = Shared::new(maps, &SHARED);
        Ok(TraceBlockSource {
            shared,
            series: programs::SessionSeries::default(),
            names: std::collections::HashMap::new(),
        })
    }
}

impl Source for TraceBlockSource {
    fn name(&self) -> &'static str {
        "trace_block"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let ts = now_ms();
        let Some((mut maps, session)) = self.shared.tick(&mut self.series, out, ts) else { return Ok(()) };
        let mut rows: Vec<(Key, Stat)> = maps.stats.iter().filter_map(Result::ok).collect();
        let counters: [u64; COUNTERS] = programs::sums(&maps.counters);
        maps.timeline.drain();
        let ended = session.ended.is_some();
        if ended {
            maps.session = None;
            let timeline = maps.timeline.take();
            for r in &timeline.0 {
                self.names.entry(r.dev).or_insert_with(|| device_name(r.dev));
            }
            let names = self.names.clone();
            self.shared
                .write_timeline(&session.id, timeline, move |id, records, dropped| files(id, records, dropped, &names));
        }
        drop(maps);
        if let Some(pid) = session.pid {
            rows.retain(|(k, _)| k.tgid == pid);
        }
        rows.sort_by_key(|(_, s)| std::cmp::Reverse(s.queue_ns + s.device_ns));
        // The rest folded per device.
        let mut rest: Vec<(u32, Stat)> = Vec::new();
        for (k, s) in rows.iter().skip(TOP_K) {
            let i = match rest.iter().position(|(d, _)| *d == k.dev) {
                Some(i) => i,
                None => {
                    rest.push((k.dev, Stat::default()));
                    rest.len() - 1
                }
            };
            let r = &mut rest[i].1;
            r.queue_ns += s.queue_ns;
            r.device_ns += s.device_ns;
            r.completed += s.completed;
            r.max_queue_ns = r.max_queue_ns.max(s.max_queue_ns);
            r.max_device_ns = r.max_device_ns.max(s.max_device_ns);
            for (a, b) in r.queue_hist.iter_mut().zip(s.queue_hist) {
                *a = a.saturating_add(b);
            }
            for (a, b) in r.device_hist.iter_mut().zip(s.device_hist) {
                *a = a.saturating_add(b);
            }
        }
        rows.truncate(TOP_K);
        let mut labelled: Vec<(u32, String, String, Stat)> = rows
            .into_iter()
            .map(|(k, s)| (k.dev, k.tgid.to_string(), crate::sources::text::comm(&s.comm), s))
            .collect();
        labelled.extend(rest.into_iter().map(|(dev, s)| (dev, String::new(), "_other".to_string(), s)));
        for (dev, pid, comm, s) in labelled {
            let device = self.names.entry(dev).or_insert_with(|| device_name(dev)).clone();
            let labels = [("session", session.id.as_str()), ("device", &device), ("pid", &pid), ("comm", &comm)];
            let make = |out: &mut Collector<'_>| {
                [&QUEUE, &DEVICE, &REQUESTS, &MAX_QUEUE, &MAX_DEVICE].iter().map(|d| out.series(d, &labels)).collect()
            };
            let values = [
                s.queue_ns as f64 / 1e9,
                s.device_ns as f64 / 1e9,
                s.completed as f64,
                s.max_queue_ns as f64 / 1e9,
                s.max_device_ns as f64 / 1e9,
            ];
            let key = format!("{device}\0{pid}\0{comm}");
            self.series.set(out, &key, make, &values, ts);
            let (mut queue, mut device_h) = ([0u64; LOG2_BUCKETS], [0u64; LOG2_BUCKETS]);
            programs::add_hist(&mut queue, &s.queue_hist);
            programs::add_hist(&mut device_h, &s.device_hist);
            self.series.histogram(out, &key, &QUEUE_LATENCY, &labels, &queue, s.queue_ns, ts);
            self.series.histogram(out, &key, &DEVICE_LATENCY, &labels, &device_h, s.device_ns, ts);
        }
        let id = session.id.clone();
        for (slot, reason) in [
            (DROP_REQUESTS_FULL, "requests_map_full"),
            (DROP_STATS_FULL, "stats_map_full"),
            (DROP_RING_FULL, "ring_full"),
        ] {
            self.series.dropped(out, self.shared.sessions.get(), &id, reason, counters[slot as usize], ts);
        }
        self.series.sweep(out, ts);
        Ok(())
    }
}
