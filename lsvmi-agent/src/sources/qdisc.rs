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
                set_receive_timeout(&s, DUMP_LIMIT)?;
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
        let mut local = SocketAddr::new(0, 0);
        // 0 (port not checked) if the address cannot be read; the sequence still is.
        let port = socket.get_address(&mut local).map(|()| local.port_number()).unwrap_or(0);
        let deadline = std::time::Instant::now() + DUMP_LIMIT;
        let mut malformed = 0;
        loop {
            // SO_RCVTIMEO bounds each wait; the deadline bounds the whole dump.
            let n = match socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("netlink dump did not finish within {} ms", DUMP_LIMIT.as_millis()),
                    ));
                }
                Err(e) => return Err(e),
            };
            match walk(&self.buf[..n], self.seq, port, &mut f) {
                Walk::Done(m) => return Ok(malformed + m),
                Walk::More(m) => malformed += m,
                Walk::Failed(why) => return Err(std::io::Error::other(why)),
            }
            if std::time::Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("netlink dump did not finish within {} ms", DUMP_LIMIT.as_millis()),
                ));
            }
        }
    }
}

/// How long one dump may take in all; the kernel answers in microseconds.
const DUMP_LIMIT: std::time::Duration = std::time::Duration::from_millis(200);

/// What one datagram of a dump said.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// The dump's DONE was in it; the count of messages that could not be decoded.
    Done(u64),
    /// More datagrams follow.
    More(u64),
    /// An error answer, or a message cut short (its length runs past the datagram).
    Failed(String),
}

/// Walk the messages of one datagram by their own length field (`nlmsg_len`), so one
/// undecodable message is skipped without losing the ones after it (the DONE among
/// them). Messages of another sequence or port (a late answer to an earlier dump) are
/// ignored.
fn walk(buf: &[u8], seq: u32, port: u32, f: &mut impl FnMut(&TcMessage)) -> Walk {
    const HEADER: usize = 16;
    let mut malformed = 0;
    let mut off = 0;
    while off < buf.len() {
        let rest = &buf[off..];
        let word = |at: usize| rest.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
        let (Some(len), Some(msg_seq), Some(msg_port)) = (word(0), word(8), word(12)) else {
            return Walk::Failed(format!("netlink message header cut short at byte {off}"));
        };
        let len = len as usize;
        if len < HEADER || len > rest.len() {
            return Walk::Failed(format!("netlink message at byte {off} claims {len} bytes, {} left", rest.len()));
        }
        // Messages are 4-byte aligned within a datagram.
        off += (len + 3) & !3;
        if msg_seq != seq || (port != 0 && msg_port != port) {
            continue;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len]) {
            Ok(msg) => match msg.payload {
                NetlinkPayload::Done(_) => return Walk::Done(malformed),
                NetlinkPayload::Error(e) => return Walk::Failed(format!("netlink error: {e}")),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(tc)) => f(&tc),
                _ => {}
            },
            Err(_) => malformed += 1,
        }
    }
    Walk::More(malformed)
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
                if e.kind() == std::io::ErrorKind::TimedOut {
                    return Err(SourceError::Timeout { what: SOURCE, limit_ms: DUMP_LIMIT.as_millis() as u64 });
                }
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

/// SO_RCVTIMEO: a receive that waits longer fails with EAGAIN instead of blocking.
fn set_receive_timeout(socket: &Socket, limit: std::time::Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let tv =
        libc::timeval { tv_sec: limit.as_secs() as libc::time_t, tv_usec: limit.subsec_micros() as libc::suseconds_t };
    // SAFETY: a valid socket descriptor and a timeval that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message as the kernel would send it.
    fn message(seq: u32, port: u32, payload: impl Into<NetlinkPayload<RouteNetlinkMessage>>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.port_number = port;
        let mut m = NetlinkMessage::new(header, payload.into());
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    fn done(seq: u32, port: u32) -> Vec<u8> {
        message(seq, port, NetlinkPayload::Done(netlink_packet_core::DoneMessage::default()))
    }

    fn qdisc() -> RouteNetlinkMessage {
        RouteNetlinkMessage::NewQueueDiscipline(TcMessage::default())
    }

    #[test]
    fn an_undecodable_message_is_skipped_and_done_after_it_still_ends_the_dump() {
        let mut bad = message(7, 42, qdisc());
        bad[4..6].copy_from_slice(&0x7777u16.to_ne_bytes()); // an unknown message type
        bad.truncate(16);
        bad[0..4].copy_from_slice(&16u32.to_ne_bytes());
        let datagram = [message(7, 42, qdisc()), bad, message(7, 42, qdisc()), done(7, 42)].concat();
        let mut n = 0;
        let walk = walk(&datagram, 7, 42, &mut |_| n += 1);
        assert!(matches!(walk, Walk::Done(_)), "{walk:?}");
        assert_eq!(n, 2);
    }

    #[test]
    fn a_reply_cut_short_fails_instead_of_waiting() {
        let datagram = [message(7, 42, qdisc()), done(7, 42)].concat();
        for cut in 1..datagram.len() {
            let mut n = 0;
            match walk(&datagram[..cut], 7, 42, &mut |_| n += 1) {
                Walk::Failed(_) => {}
                // Cut exactly between whole messages: the dump goes on in the next datagram.
                Walk::More(_) => assert!(cut % 4 == 0 && n <= 1, "cut at {cut}"),
                Walk::Done(_) => panic!("cut at {cut}: DONE cannot be whole"),
            }
        }
    }

    #[test]
    fn answers_to_another_dump_are_ignored() {
        let datagram =
            [message(6, 42, qdisc()), done(6, 42), message(7, 43, qdisc()), message(7, 42, qdisc())].concat();
        let mut n = 0;
        assert_eq!(walk(&datagram, 7, 42, &mut |_| n += 1), Walk::More(0));
        assert_eq!(n, 1);
    }

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
