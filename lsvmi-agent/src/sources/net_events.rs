//! TCP and packet-drop events from BPF (`lsvmi-ebpf/src/net.rs`): retransmits by TCP
//! state, resets sent and received, state transitions, drops by the kernel's drop
//! reason, and the smoothed-RTT histogram, all counted in the kernel per CPU and summed
//! here on the tick. Retransmits, resets and drops are also written to a ring buffer
//! (timestamp, CPU, pid, comm, 4-tuple) without waking the agent; this source drains it
//! on the same tick, counts the records and logs each at debug level (target
//! `lsvmi::net_events`) — the seed of the deep-tracing mode.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::{MapData, RingBuf};
use lsvmi_common::net::{
    ABSENT, CPU_MAP, CpuNet, DROP_REASONS, EVENT_DROP, EVENT_RETRANSMIT, EVENT_SEND_RESET, EVENTS_MAP, GLOBAL_OFFSETS,
    NetEvent, NetOffsets, PROG_KFREE_SKB, PROG_PROBE, PROG_RECEIVE_RESET, PROG_RETRANSMIT, PROG_SEND_RESET,
    PROG_SET_STATE, TCP_STATES, TpFields,
};
use tracing::debug;

use super::{Collector, Source, SourceError, histogram::HistogramFamily};
use crate::{
    bpf::{Bpf, BpfError, BpfSource, Global, Hook, tracefs::Format},
    model::{MetricDesc, SeriesId, now_ms},
};

metric!(
    RETRANSMITS,
    "net_tcp_retransmits_total",
    Counter,
    "",
    ["state"],
    "BPF tracepoint tcp:tcp_retransmit_skb",
    "TCP segments retransmitted, by the socket's TCP state."
);
metric!(
    RESETS_SENT,
    "net_tcp_resets_sent_total",
    Counter,
    "",
    ["state"],
    "BPF tracepoint tcp:tcp_send_reset",
    "TCP resets sent, by the socket's state (NONE when sent without a socket, e.g. to a closed port)."
);
metric!(
    RESETS_RECEIVED,
    "net_tcp_resets_received_total",
    Counter,
    "",
    [],
    "BPF tracepoint tcp:tcp_receive_reset",
    "TCP resets received on a socket."
);
metric!(
    TRANSITIONS,
    "net_tcp_state_transitions_total",
    Counter,
    "",
    ["from", "to"],
    "BPF tracepoint sock:inet_sock_set_state",
    "TCP socket state changes (from → to). to=ESTABLISHED counts connections made; to=CLOSE counts \
     sockets closed."
);
metric!(
    DROPS,
    "net_skb_drops_total",
    Counter,
    "",
    ["reason"],
    "BPF tracepoint skb:kfree_skb",
    "Packets the kernel dropped, by its drop reason (enum skb_drop_reason, names from tracefs)."
);
histogram!(
    SRTT,
    "net_tcp_srtt_seconds",
    [],
    "BPF tracepoint tcp:tcp_probe",
    "Smoothed round-trip time of TCP sockets, sampled at every tcp_probe (each ACK received on an \
     established socket)."
);
metric!(
    EVENTS,
    "net_events_total",
    Counter,
    "",
    ["event"],
    "BPF ring buffer NET_EVENTS",
    "Event records drained from the ring buffer (retransmit, send_reset, receive_reset, drop)."
);
metric!(
    EVENTS_LOST,
    "net_events_lost_total",
    Counter,
    "",
    [],
    "BPF ring buffer NET_EVENTS",
    "Event records lost because the ring buffer was full between two drains (the counters above still \
     count them)."
);

pub static METRICS: &[&MetricDesc] = &[
    &RETRANSMITS,
    &RESETS_SENT,
    &RESETS_RECEIVED,
    &TRANSITIONS,
    &DROPS,
    &SRTT.bucket,
    &SRTT.sum,
    &SRTT.count,
    &EVENTS,
    &EVENTS_LOST,
];

/// Classic tracepoints, whose record layouts (from tracefs) reach the programs as a global.
pub static BPF: BpfSource = BpfSource {
    programs: &[
        (PROG_RETRANSMIT, Hook::Tracepoint("tcp")),
        (PROG_SEND_RESET, Hook::Tracepoint("tcp")),
        (PROG_RECEIVE_RESET, Hook::Tracepoint("tcp")),
        (PROG_SET_STATE, Hook::Tracepoint("sock")),
        (PROG_PROBE, Hook::Tracepoint("tcp")),
        (PROG_KFREE_SKB, Hook::Tracepoint("skb")),
    ],
    needs: &[],
    globals: |kernel| match &kernel.tracefs {
        Ok(root) => vec![Global::new(GLOBAL_OFFSETS, Layout::discover(root).offsets)],
        Err(_) => Vec::new(),
    },
    attach: |bpf, disabled| Ok(Box::new(NetEventsSource::attach(bpf, disabled)?)),
};

/// TCP state names when tracefs does not give them (include/net/tcp_states.h).
const TCP_STATE_NAMES: [&str; 14] = [
    "NONE",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
    "BOUND_INACTIVE",
];

/// This kernel's record layouts and enum names for the network tracepoints.
pub struct Layout {
    pub offsets: NetOffsets,
    /// Index → TCP state name.
    pub states: Vec<String>,
    /// Index → drop reason name.
    pub drop_reasons: Vec<String>,
}

/// The offsets of `format`'s fields, with `state` and `value` taken from the named fields.
fn tp_fields(format: &Format, state: &str, value: &str) -> TpFields {
    let at = |name: &str| format.offset(name).unwrap_or(ABSENT);
    let mut f = TpFields::NONE;
    f.state = at(state);
    f.value = at(value);
    f.sport = at("sport");
    f.dport = at("dport");
    f.family = at("family");
    f.protocol = at("protocol");
    f.saddr_v6 = at("saddr_v6");
    f.daddr_v6 = at("daddr_v6");
    // Addresses are either 4-byte arrays (with separate _v6 fields) or whole sockaddrs.
    for (name, plain, whole) in [("saddr", &mut f.saddr, &mut f.ssockaddr), ("daddr", &mut f.daddr, &mut f.dsockaddr)] {
        match format.field(name) {
            Some(x) if x.size >= 16 => *whole = x.offset,
            Some(x) => *plain = x.offset,
            None => {}
        }
    }
    f
}

fn names(symbols: &[(u64, String)], len: usize, fallback: impl Fn(usize) -> String) -> Vec<String> {
    (0..len)
        .map(|i| symbols.iter().find(|(v, _)| *v == i as u64).map_or_else(|| fallback(i), |(_, n)| n.clone()))
        .collect()
}

impl Layout {
    /// Read each tracepoint's format. A missing one leaves its offsets ABSENT (its
    /// program then fails to attach, which is reported there).
    pub fn discover(tracefs: &Path) -> Layout {
        let read = |cat, ev| Format::read(tracefs, cat, ev).unwrap_or_default();
        let set_state = read("sock", "inet_sock_set_state");
        let kfree = read("skb", "kfree_skb");
        let offsets = NetOffsets {
            retransmit: tp_fields(&read("tcp", "tcp_retransmit_skb"), "state", ""),
            send_reset: tp_fields(&read("tcp", "tcp_send_reset"), "state", ""),
            receive_reset: tp_fields(&read("tcp", "tcp_receive_reset"), "", ""),
            set_state: tp_fields(&set_state, "oldstate", "newstate"),
            probe: tp_fields(&read("tcp", "tcp_probe"), "", "srtt"),
            kfree_skb: tp_fields(&kfree, "", "reason"),
        };
        let mut states: Vec<String> = names(&set_state.symbols("oldstate"), TCP_STATES, |i| {
            TCP_STATE_NAMES.get(i).map_or_else(|| i.to_string(), |s| format!("TCP_{s}"))
        })
        .into_iter()
        .map(|s| s.strip_prefix("TCP_").map(str::to_string).unwrap_or(s))
        .collect();
        // Slot 0 is not a TCP state: no socket, or a state out of range.
        states[0] = TCP_STATE_NAMES[0].to_string();
        let drop_reasons = names(&kfree.symbols("reason"), DROP_REASONS, |i| {
            if i == DROP_REASONS - 1 { format!("{i}_or_more") } else { i.to_string() }
        });
        Layout { offsets, states, drop_reasons }
    }
}

/// Lazily registered series for each non-zero slot of a counter array.
struct Slots(Vec<Option<SeriesId>>);

impl Slots {
    fn new(n: usize) -> Self {
        Slots(vec![None; n])
    }

    /// Push slot `i` once it has ever been non-zero (a zero slot is a series nobody needs).
    fn push(
        &mut self,
        out: &mut Collector<'_>,
        i: usize,
        ts: i64,
        value: u64,
        register: impl FnOnce(&mut Collector<'_>) -> SeriesId,
    ) {
        if value == 0 && self.0[i].is_none() {
            return;
        }
        let id = *self.0[i].get_or_insert_with(|| register(out));
        out.push(id, ts, value as f64);
    }
}

pub struct NetEventsSource {
    map: crate::bpf::percpu::PerCpuEntry<CpuNet>,
    ring: Option<RingBuf<MapData>>,
    layout: Layout,
    on: Vec<bool>,
    retransmits: Slots,
    resets_sent: Slots,
    resets_received: Slots,
    transitions: Slots,
    drops: Slots,
    srtt: HistogramFamily,
    events: [u64; 5],
    event_series: Slots,
    lost: Slots,
    /// Ticks run: the counters are read every [`COUNTERS_EVERY`]th.
    ticks: u64,
}

/// The per-CPU counters (`CpuNet`, ~5 KB per *possible* CPU: 1.3 MB at 256 CPUs) are
/// copied every this many ticks (1 s at the default 100 ms); the event ring is drained
/// every tick. Retransmits, resets and drops are rare: per-second counts lose nothing
/// an operator reads, and the copy is 10× less.
const COUNTERS_EVERY: u64 = 10;

const EVENT_NAMES: [&str; 5] = ["other", "retransmit", "send_reset", "receive_reset", "drop"];

impl NetEventsSource {
    pub fn attach(bpf: &mut Bpf, disabled: &[String]) -> Result<Self, BpfError> {
        let layout = match &bpf.tracefs {
            Ok(root) => Layout::discover(root),
            Err(cause) => return Err(BpfError::Kernel { what: "network tracepoints".into(), cause: cause.clone() }),
        };
        let on = bpf.attach_each("net_events", BPF.programs, disabled);
        if !on.iter().any(|&o| o) {
            return Err(BpfError::Kernel { what: "network programs".into(), cause: "none is running".into() });
        }
        let map = bpf.take_per_cpu(CPU_MAP)?;
        let ring = match bpf.take_map::<RingBuf<MapData>>(EVENTS_MAP) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("network event records unavailable: {e}; the counters continue");
                None
            }
        };
        Ok(NetEventsSource {
            map,
            ring,
            layout,
            on,
            retransmits: Slots::new(TCP_STATES),
            resets_sent: Slots::new(TCP_STATES),
            resets_received: Slots::new(1),
            transitions: Slots::new(TCP_STATES * TCP_STATES),
            drops: Slots::new(DROP_REASONS),
            srtt: HistogramFamily::new(&SRTT),
            events: [0; 5],
            event_series: Slots::new(5),
            lost: Slots::new(1),
            ticks: 0,
        })
    }

    /// Drain the ring buffer: count records by kind, log each at debug level.
    fn drain(&mut self) {
        let Some(ring) = &mut self.ring else { return };
        while let Some(item) = ring.next() {
            if item.len() < size_of::<NetEvent>() {
                continue;
            }
            // SAFETY: the record is a NetEvent written by the BPF program (length checked);
            // read_unaligned copes with the ring's 8-byte alignment.
            let ev: NetEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let kind = usize::from(ev.kind).min(EVENT_NAMES.len() - 1);
            self.events[kind] += 1;
            let logged = tracing::enabled!(target: "lsvmi::net_events", tracing::Level::DEBUG);
            // A `net` trace session takes every record, per connection (trace/net.rs).
            let traced = crate::trace::net::tracing();
            if logged || traced {
                let d = describe(&ev, &self.layout);
                if logged {
                    log_event(&ev, &d);
                }
                if traced {
                    crate::trace::net::observe(d);
                }
            }
        }
    }
}

fn address(family: u16, bytes: &[u8; 16], port: u16) -> String {
    let ip: Option<IpAddr> = match family {
        2 => Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()),
        10 => Some(Ipv6Addr::from(*bytes).into()),
        _ => None,
    };
    match ip {
        Some(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        Some(ip) => format!("{ip}:{port}"),
        None => "-".into(),
    }
}

/// A record in words: what happened, between which addresses, the TCP state or drop
/// reason, and the thread that was running.
pub struct Described {
    /// When (`bpf_ktime_get_ns()`), on which CPU.
    pub ts_ns: u64,
    pub cpu: u32,
    pub event: &'static str,
    pub src: String,
    pub dst: String,
    pub detail: String,
    pub comm: String,
}

fn describe(ev: &NetEvent, layout: &Layout) -> Described {
    let comm = super::text::comm(&ev.comm);
    let detail = match ev.kind {
        EVENT_DROP => layout.drop_reasons.get(ev.detail as usize).cloned().unwrap_or_else(|| ev.detail.to_string()),
        EVENT_RETRANSMIT | EVENT_SEND_RESET => {
            layout.states.get(ev.detail as usize).cloned().unwrap_or_else(|| ev.detail.to_string())
        }
        _ => String::new(),
    };
    Described {
        ts_ns: ev.ts_ns,
        cpu: ev.cpu,
        event: EVENT_NAMES[usize::from(ev.kind).min(4)],
        src: address(ev.family, &ev.saddr, ev.sport),
        dst: address(ev.family, &ev.daddr, ev.dport),
        detail,
        comm,
    }
}

fn log_event(ev: &NetEvent, d: &Described) {
    debug!(
        target: "lsvmi::net_events",
        event = d.event,
        ts_ns = ev.ts_ns,
        cpu = ev.cpu,
        pid = ev.pid,
        comm = d.comm,
        src = d.src,
        dst = d.dst,
        detail = d.detail,
        "network event"
    );
}

impl Source for NetEventsSource {
    fn name(&self) -> &'static str {
        "net_events"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let tick = self.ticks;
        self.ticks += 1;
        if !tick.is_multiple_of(COUNTERS_EVERY) {
            self.drain();
            return Ok(());
        }
        self.map.read(0).map_err(|source| SourceError::Map { map: CPU_MAP, source })?;
        let ts = now_ms();
        self.drain();
        // Host-wide sums: per-CPU attribution of network events says little (softirq
        // runs them on whichever CPU the packet landed on).
        let mut sum = zeroed();
        for v in self.map.values() {
            add(&mut sum, v);
        }
        let l = &self.layout;
        let [retx, sent, received, set_state, probe, kfree] = [0, 1, 2, 3, 4, 5].map(|i| self.on[i]);
        for i in 0..TCP_STATES {
            if retx {
                self.retransmits
                    .push(out, i, ts, sum.retransmits[i], |o| o.series(&RETRANSMITS, &[("state", &l.states[i])]));
            }
            if sent {
                self.resets_sent
                    .push(out, i, ts, sum.resets_sent[i], |o| o.series(&RESETS_SENT, &[("state", &l.states[i])]));
            }
        }
        if received {
            // Always exported (zero included): "no resets" is worth a series.
            let id = *self.resets_received.0[0].get_or_insert_with(|| out.series(&RESETS_RECEIVED, &[]));
            out.push(id, ts, sum.resets_received as f64);
        }
        if set_state {
            for (i, &v) in sum.transitions.iter().enumerate() {
                let (from, to) = (&l.states[i / TCP_STATES], &l.states[i % TCP_STATES]);
                self.transitions.push(out, i, ts, v, |o| o.series(&TRANSITIONS, &[("from", from), ("to", to)]));
            }
        }
        if kfree {
            for (i, &v) in sum.drops.iter().enumerate() {
                self.drops.push(out, i, ts, v, |o| o.series(&DROPS, &[("reason", &l.drop_reasons[i])]));
            }
        }
        if probe {
            self.srtt.observe_range(&sum.srtt);
            self.srtt.push(out, 0, Vec::new, ts, &sum.srtt);
        }
        if self.ring.is_some() {
            for (i, name) in EVENT_NAMES.iter().enumerate().skip(1) {
                let v = self.events[i];
                self.event_series.push(out, i, ts, v, |o| o.series(&EVENTS, &[("event", name)]));
            }
            let id = *self.lost.0[0].get_or_insert_with(|| out.series(&EVENTS_LOST, &[]));
            out.push(id, ts, sum.events_lost as f64);
        }
        Ok(())
    }
}

fn zeroed() -> CpuNet {
    // SAFETY: CpuNet is integers only; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn add(a: &mut CpuNet, b: &CpuNet) {
    let pairs = a.retransmits.iter_mut().zip(&b.retransmits).chain(a.resets_sent.iter_mut().zip(&b.resets_sent));
    pairs
        .chain(a.transitions.iter_mut().zip(&b.transitions))
        .chain(a.drops.iter_mut().zip(&b.drops))
        .for_each(|(x, y)| *x += y);
    a.resets_received += b.resets_received;
    a.events_lost += b.events_lost;
    super::histogram::merge(&mut a.srtt, &b.srtt);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/tracefs/debian12-6.18")
    }

    #[test]
    fn layout_from_a_captured_tracefs() {
        let l = Layout::discover(&fixture());
        let o = l.offsets;
        // tcp_retransmit_skb keeps separate v4/v6 address fields.
        assert_eq!((o.retransmit.state, o.retransmit.sport, o.retransmit.saddr), (24, 28, 34));
        assert_eq!((o.retransmit.saddr_v6, o.retransmit.ssockaddr), (42, ABSENT));
        // tcp_send_reset carries whole sockaddrs and no ports of its own.
        assert_eq!((o.send_reset.ssockaddr, o.send_reset.dsockaddr, o.send_reset.sport), (32, 60, ABSENT));
        assert_eq!((o.set_state.state, o.set_state.value, o.set_state.protocol), (16, 20, 30));
        assert_eq!(o.probe.value, 100);
        assert_eq!(o.kfree_skb.value, 36);
        assert_eq!(&l.states[..3], ["NONE", "ESTABLISHED", "SYN_SENT"]);
        assert_eq!(l.drop_reasons[2], "NOT_SPECIFIED");
        assert_eq!(l.drop_reasons[DROP_REASONS - 1], format!("{}_or_more", DROP_REASONS - 1));
    }

    #[test]
    fn a_missing_tracefs_leaves_every_field_absent() {
        let l = Layout::discover(Path::new("/nonexistent"));
        assert_eq!(l.offsets.kfree_skb.value, ABSENT);
        assert_eq!(l.states[1], "ESTABLISHED");
        assert_eq!(l.drop_reasons[2], "2");
    }

    #[test]
    fn addresses_print_like_ss() {
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(address(2, &[127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 80), "127.0.0.1:80");
        assert_eq!(address(10, &v6, 443), "[::1]:443");
        assert_eq!(address(0, &v6, 0), "-");
    }
}
