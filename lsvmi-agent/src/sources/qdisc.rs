//! Queueing disciplines: what `tc -s qdisc` shows, per interface and qdisc, from a
//! netlink `RTM_GETQDISC` dump. Drops and requeues here are the transmit-side losses and
//! delays that /proc/net/dev does not show; backlog is the queue a packet waits behind.
//!
//! Netlink speaks for the agent's network namespace; `--procfs-root` does not change it.
//! The message format is `netlink-packet-route`'s (a maintained crate); the socket stays
//! open between cycles and the receive buffer is reused.

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcMessage, TcStats2},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{
    Collector, Source, SourceError,
    text::{ParseReport, Tracked},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

const SOURCE: &str = "netlink RTM_GETQDISC";
const LABELS: [&str; 4] = ["interface", "kind", "handle", "parent"];

metric!(
    BYTES,
    "qdisc_bytes_total",
    Counter,
    "bytes",
    ["interface", "kind", "handle", "parent"],
    SOURCE,
    "Bytes sent through the qdisc."
);
metric!(
    PACKETS,
    "qdisc_packets_total",
    Counter,
    "",
    ["interface", "kind", "handle", "parent"],
    SOURCE,
    "Packets sent through the qdisc."
);
metric!(
    DROPS,
    "qdisc_drops_total",
    Counter,
    "",
    ["interface", "kind", "handle", "parent"],
    SOURCE,
    "Packets the qdisc dropped (queue full, AQM)."
);
metric!(
    REQUEUES,
    "qdisc_requeues_total",
    Counter,
    "",
    ["interface", "kind", "handle", "parent"],
    SOURCE,
    "Packets requeued because the driver was busy."
);
metric!(
    OVERLIMITS,
    "qdisc_overlimits_total",
    Counter,
    "",
    ["interface", "kind", "handle", "parent"],
    SOURCE,
    "Times the qdisc held packets back for shaping or policing."
);
metric!(
    QLEN,
    "qdisc_queue_length",
    Gauge,
    "",
    ["interface", "kind", "handle", "parent"],
    SOURCE,
    "Packets queued at the instant of reading."
);
metric!(
    BACKLOG,
    "qdisc_backlog_bytes",
    Gauge,
    "bytes",
    ["interface", "kind", "handle", "parent"],
    SOURCE,
    "Bytes queued at the instant of reading."
);

pub static METRICS: &[&MetricDesc] = &[&BYTES, &PACKETS, &DROPS, &REQUEUES, &OVERLIMITS, &QLEN, &BACKLOG];

/// One qdisc's counters, in METRICS order.
#[derive(Debug, Default, PartialEq)]
pub struct QdiscStats {
    pub ifindex: i32,
    pub kind: String,
    pub handle: TcHandle,
    pub parent: TcHandle,
    pub values: [u64; 7],
}

/// The counters of one dumped qdisc (Stats2 when present, the old Stats otherwise).
pub fn stats_of(msg: &TcMessage) -> QdiscStats {
    let mut q = QdiscStats {
        ifindex: msg.header.index,
        handle: msg.header.handle,
        parent: msg.header.parent,
        ..Default::default()
    };
    let mut have_stats2 = false;
    for attr in &msg.attributes {
        match attr {
            TcAttribute::Kind(k) => q.kind = k.clone(),
            TcAttribute::Stats2(list) => {
                for s in list {
                    match s {
                        TcStats2::Basic(b) => {
                            have_stats2 = true;
                            q.values[0] = b.bytes;
                            q.values[1] = u64::from(b.packets);
                        }
                        TcStats2::Queue(s) => {
                            have_stats2 = true;
                            q.values[2] = u64::from(s.drops);
                            q.values[3] = u64::from(s.requeues);
                            q.values[4] = u64::from(s.overlimits);
                            q.values[5] = u64::from(s.qlen);
                            q.values[6] = u64::from(s.backlog);
                        }
                        _ => {}
                    }
                }
            }
            TcAttribute::Stats(s) if !have_stats2 => {
                q.values = [
                    s.bytes,
                    u64::from(s.packets),
                    u64::from(s.drops),
                    0,
                    u64::from(s.overlimits),
                    u64::from(s.qlen),
                    u64::from(s.backlog),
                ];
            }
            _ => {}
        }
    }
    q
}

/// `tc`'s notation: `8001:` for a qdisc handle, `1:2` for a class, `root`, `ingress`.
pub fn handle_text(h: TcHandle) -> String {
    match (h.major, h.minor) {
        (0xffff, 0xffff) => "root".into(),
        (0xffff, 0xfff1) => "ingress".into(),
        (major, 0) => format!("{major:x}:"),
        (major, minor) => format!("{major:x}:{minor:x}"),
    }
}

fn interface_name(ifindex: i32) -> String {
    let Ok(index) = u32::try_from(ifindex) else { return ifindex.to_string() };
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes (NUL included) into buf.
    let ptr = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if ptr.is_null() {
        return ifindex.to_string();
    }
    let len = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

pub struct QdiscSource {
    socket: Option<Socket>,
    buf: Vec<u8>,
    seq: u32,
    qdiscs: Tracked<[SeriesId; 7]>,
    key: Vec<u8>,
}

impl Default for QdiscSource {
    fn default() -> Self {
        QdiscSource { socket: None, buf: vec![0; 64 * 1024], seq: 0, qdiscs: Tracked::default(), key: Vec::new() }
    }
}

impl QdiscSource {
    pub fn new() -> Self {
        Self::default()
    }

    fn dump(&mut self, mut f: impl FnMut(&TcMessage)) -> std::io::Result<u64> {
        let socket = match self.socket.take() {
            Some(s) => s,
            None => {
                let mut s = Socket::new(NETLINK_ROUTE)?;
                s.bind_auto()?;
                s.connect(&SocketAddr::new(0, 0))?;
                s
            }
        };
        let socket = &*self.socket.insert(socket);
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let mut request = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default())),
        );
        request.finalize();
        let mut out = vec![0; request.buffer_len()];
        request.serialize(&mut out);
        socket.send(&out, 0)?;
        let mut malformed = 0;
        loop {
            let n = socket.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n]) {
                    Ok(m) => m,
                    Err(_) => {
                        malformed += 1;
                        break;
                    }
                };
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(malformed),
                    NetlinkPayload::Error(e) => {
                        return Err(std::io::Error::other(format!("netlink error: {e}")));
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(tc)) => f(&tc),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
}

impl Source for QdiscSource {
    fn name(&self) -> &'static str {
        "qdisc"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let mut found = Vec::new();
        let malformed = match self.dump(|m| found.push(stats_of(m))) {
            Ok(m) => m,
            Err(e) => {
                self.socket = None; // reconnect next cycle
                return Err(SourceError::Read { path: SOURCE.into(), source: e });
            }
        };
        let ts = now_ms();
        for q in &found {
            self.key.clear();
            self.key.extend_from_slice(&q.ifindex.to_le_bytes());
            self.key.extend_from_slice(&u32::from(q.handle).to_le_bytes());
            self.key.extend_from_slice(&u32::from(q.parent).to_le_bytes());
            self.key.extend_from_slice(q.kind.as_bytes());
            let ids = self.qdiscs.entry(&self.key, || {
                let values = [interface_name(q.ifindex), q.kind.clone(), handle_text(q.handle), handle_text(q.parent)];
                let labels: Vec<(&str, &str)> = LABELS.iter().copied().zip(values.iter().map(String::as_str)).collect();
                [&BYTES, &PACKETS, &DROPS, &REQUEUES, &OVERLIMITS, &QLEN, &BACKLOG].map(|d| out.series(d, &labels))
            });
            for (id, v) in ids.iter().zip(q.values) {
                out.push(*id, ts, v as f64);
            }
        }
        if malformed > 0 {
            let mut r = ParseReport::default();
            r.bad(0, b"netlink", "undecodable netlink message");
            r.report_to(out);
        }
        self.qdiscs.sweep(out, ts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_print_like_tc() {
        assert_eq!(handle_text(TcHandle { major: 0xffff, minor: 0xffff }), "root");
        assert_eq!(handle_text(TcHandle { major: 0x8001, minor: 0 }), "8001:");
        assert_eq!(handle_text(TcHandle { major: 1, minor: 0x2a }), "1:2a");
        assert_eq!(handle_text(TcHandle { major: 0, minor: 0 }), "0:");
    }

    #[test]
    fn this_hosts_qdiscs_dump() {
        // Any Linux host has at least the loopback's qdisc; no privilege needed to read.
        let mut src = QdiscSource::new();
        let mut found = Vec::new();
        src.dump(|m| found.push(stats_of(m))).unwrap();
        assert!(!found.is_empty());
        assert!(found.iter().all(|q| !q.kind.is_empty()), "{found:?}");
    }
}
