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
use lsvmi_common::trace_block::{
    ACTIVE_MAP, BlockOffsets, COUNTERS, COUNTERS_MAP, DROP_REQUESTS_FULL, DROP_STATS_FULL, GLOBAL_OFFSETS, Key,
    PROG_COMPLETE, PROG_INSERT, PROG_ISSUE, PROGRAMS as RUN_SLOTS, REQUESTS_MAP, Request, STATS_MAP, Stat,
};

use super::{
    SessionInfo, Sessions, Tracer,
    programs::{self, ProgramTracer, SessionMaps, Shared},
    sched::TOP_K,
};
use crate::{
    bpf::{Bpf, BpfError, BpfSource, Global, Kernel, Plain, btf},
    model::{MetricDesc, SeriesId, now_ms},
    sources::{Collector, Source, SourceError, text::Tracked},
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

pub static METRICS: &[&MetricDesc] = &[&QUEUE, &DEVICE, &REQUESTS, &MAX_QUEUE, &MAX_DEVICE];

const PROGRAMS: [(&str, &str); 3] =
    [(PROG_INSERT, "block_rq_insert"), (PROG_ISSUE, "block_rq_issue"), (PROG_COMPLETE, "block_rq_complete")];

/// ns per run of each program (slots of the run counters), measured with the kernel's
/// BPF stats under direct I/O to a loop device (docs/performance.md): issue 271 ns and
/// complete 264 ns over 10 022 requests; insert from only 22 runs (4 µs, cold), taken as
/// the issue's cost plus the insert of a new entry.
const COST_NS: [f64; RUN_SLOTS] = [400.0, 271.0, 264.0];

pub static BPF: BpfSource = BpfSource {
    programs: &[],
    needs: &[],
    globals: |kernel| offsets(kernel).map(|o| vec![Global::new(GLOBAL_OFFSETS, o)]).unwrap_or_default(),
    attach: |bpf, _| Ok(Box::new(TraceBlockSource::attach(bpf)?)),
};

fn offsets(kernel: &Kernel) -> Result<BlockOffsets, String> {
    let raw = kernel.btf.as_ref().map_err(Clone::clone)?;
    let b = btf::Btf::parse(raw).map_err(|e| e.to_string())?;
    let at = |s: &str, m: &str| b.member_offset(s, m).map_err(|e| e.to_string());
    Ok(BlockOffsets { rq_part: at("request", "part")?, bd_dev: at("block_device", "bd_dev")? })
}

struct Maps {
    active: Array<MapData, Plain<u32>>,
    requests: BpfHashMap<MapData, u64, Plain<Request>>,
    stats: BpfHashMap<MapData, Plain<Key>, Plain<Stat>>,
    counters: PerCpuArray<MapData, u64>,
    session: Option<SessionInfo>,
}

static SHARED: OnceLock<Arc<Shared<Maps>>> = OnceLock::new();

impl SessionMaps for Maps {
    fn clear(&mut self) {
        programs::clear_hash(&mut self.requests);
        programs::clear_hash(&mut self.stats);
        programs::zero(&mut self.counters, COUNTERS);
    }

    fn switch(&mut self, session: Option<&SessionInfo>) -> Result<(), String> {
        let on = u32::from(session.is_some());
        self.active.set(0, Plain(on), 0).map_err(|e| format!("switching the block session: {e}"))
    }

    fn session(&mut self) -> &mut Option<SessionInfo> {
        &mut self.session
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

fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

pub struct TraceBlockSource {
    shared: Arc<Shared<Maps>>,
    series: Tracked<Vec<SeriesId>>,
    key: Vec<u8>,
    names: std::collections::HashMap<u32, String>,
    cost: programs::CostMeter<RUN_SLOTS>,
}

impl TraceBlockSource {
    fn attach(bpf: &mut Bpf) -> Result<Self, BpfError> {
        let maps = Maps {
            active: bpf.take_map(ACTIVE_MAP)?,
            requests: bpf.take_map(REQUESTS_MAP)?,
            stats: bpf.take_map(STATS_MAP)?,
            counters: bpf.take_map(COUNTERS_MAP)?,
            session: None,
        };
        let shared = Shared::new(maps);
        let _ = SHARED.set(shared.clone());
        Ok(TraceBlockSource {
            shared,
            series: Tracked::default(),
            key: Vec::new(),
            names: std::collections::HashMap::new(),
            cost: programs::CostMeter::new(COST_NS),
        })
    }
}

impl Source for TraceBlockSource {
    fn name(&self) -> &'static str {
        "trace_block"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let ts = now_ms();
        let Some(mut maps) = self.shared.try_lock() else { return Ok(()) };
        let Some(session) = maps.session.clone() else {
            self.series.sweep(out, ts);
            return Ok(());
        };
        let mut rows: Vec<(Key, Stat)> =
            maps.stats.iter().filter_map(Result::ok).map(|(Plain(k), Plain(s))| (k, s)).collect();
        let counters: [u64; COUNTERS] = programs::sums(&maps.counters);
        let ended = session.ended.is_some();
        if ended {
            maps.session = None;
        }
        drop(maps);
        let mut runs = [0u64; RUN_SLOTS];
        runs.copy_from_slice(&counters[..RUN_SLOTS]);
        if !ended && let Some(sessions) = self.shared.sessions.get() {
            self.cost.observe(&session, runs, sessions);
        }
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
        }
        rows.truncate(TOP_K);
        let mut labelled: Vec<(u32, String, String, Stat)> =
            rows.into_iter().map(|(k, s)| (k.dev, k.tgid.to_string(), comm_str(&s.comm), s)).collect();
        labelled.extend(rest.into_iter().map(|(dev, s)| (dev, String::new(), "_other".to_string(), s)));
        for (dev, pid, comm, s) in labelled {
            let device = self.names.entry(dev).or_insert_with(|| device_name(dev)).clone();
            self.key.clear();
            self.key.extend_from_slice(format!("{device}\0{pid}\0{comm}").as_bytes());
            let labels = [("session", session.id.as_str()), ("device", &device), ("pid", &pid), ("comm", &comm)];
            let ids = self.series.entry(&self.key, || {
                [&QUEUE, &DEVICE, &REQUESTS, &MAX_QUEUE, &MAX_DEVICE].iter().map(|d| out.series(d, &labels)).collect()
            });
            let values = [
                s.queue_ns as f64 / 1e9,
                s.device_ns as f64 / 1e9,
                s.completed as f64,
                s.max_queue_ns as f64 / 1e9,
                s.max_device_ns as f64 / 1e9,
            ];
            for (id, v) in ids.iter().zip(values) {
                out.push(*id, ts, v);
            }
        }
        let id = session.id.clone();
        for (slot, reason) in [(DROP_REQUESTS_FULL, "requests_map_full"), (DROP_STATS_FULL, "stats_map_full")] {
            self.key.clear();
            self.key.extend_from_slice(format!("d\0{reason}").as_bytes());
            let ids = self.series.entry(&self.key, || {
                vec![out.series(&super::sched::DROPPED, &[("session", id.as_str()), ("reason", reason)])]
            });
            out.push(ids[0], ts, counters[slot as usize] as f64);
        }
        self.series.sweep(out, ts);
        Ok(())
    }
}
