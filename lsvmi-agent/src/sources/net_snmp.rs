//! `/proc/net/snmp` (Ip, Icmp, IcmpMsg, Tcp, Udp, UdpLite) and `/proc/net/netstat`
//! (TcpExt, IpExt, MPTcpExt): pairs of lines, `Proto: Name1 Name2 …` then
//! `Proto: v1 v2 …`. Retransmits, listen drops, backlog drops and prune events live here.

use std::path::Path;

use super::{
    Collector, Source, SourceError,
    procfs_file::ProcFile,
    text::{ParseReport, Tracked, fields, label, numbered_lines, parse_int},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

metric!(
    SNMP_COUNTERS,
    "proc_net_snmp_total",
    Counter,
    "",
    ["protocol", "field"],
    "/proc/net/snmp",
    "IPv4, ICMP, TCP, UDP and UDP-Lite counters since boot: protocol=Tcp, field=RetransSegs, …"
);
metric!(
    SNMP_GAUGES,
    "proc_net_snmp",
    Gauge,
    "",
    ["protocol", "field"],
    "/proc/net/snmp",
    "The /proc/net/snmp values that are settings or current amounts: Ip Forwarding and DefaultTTL, \
     Tcp RtoAlgorithm, RtoMin, RtoMax, MaxConn and CurrEstab."
);
metric!(
    NETSTAT_COUNTERS,
    "proc_net_netstat_total",
    Counter,
    "",
    ["protocol", "field"],
    "/proc/net/netstat",
    "Linux TCP and IP extension counters since boot: protocol=TcpExt, field=ListenDrops, TCPBacklogDrop, …"
);

pub static SNMP_METRICS: &[&MetricDesc] = &[&SNMP_COUNTERS, &SNMP_GAUGES];
pub static NETSTAT_METRICS: &[&MetricDesc] = &[&NETSTAT_COUNTERS];

const SNMP_GAUGE_FIELDS: &[(&[u8], &[u8])] = &[
    (b"Ip", b"Forwarding"),
    (b"Ip", b"DefaultTTL"),
    (b"Tcp", b"RtoAlgorithm"),
    (b"Tcp", b"RtoMin"),
    (b"Tcp", b"RtoMax"),
    (b"Tcp", b"MaxConn"),
    (b"Tcp", b"CurrEstab"),
];

pub struct PairedSource {
    name: &'static str,
    file: ProcFile,
    counters: &'static MetricDesc,
    gauges: Option<&'static MetricDesc>,
    /// Keyed by `Proto:Name`.
    series: Tracked<SeriesId>,
    key: Vec<u8>,
}

pub fn snmp(procfs_root: &Path) -> PairedSource {
    PairedSource::new("proc_net_snmp", procfs_root.join("net/snmp"), &SNMP_COUNTERS, Some(&SNMP_GAUGES))
}

pub fn netstat(procfs_root: &Path) -> PairedSource {
    PairedSource::new("proc_net_netstat", procfs_root.join("net/netstat"), &NETSTAT_COUNTERS, None)
}

impl PairedSource {
    fn new(
        name: &'static str,
        path: std::path::PathBuf,
        counters: &'static MetricDesc,
        gauges: Option<&'static MetricDesc>,
    ) -> Self {
        PairedSource { name, file: ProcFile::new(path), counters, gauges, series: Tracked::default(), key: Vec::new() }
    }
}

/// Call `f(protocol, field, value)` for each pair of lines; report what does not pair up.
pub fn parse(buf: &[u8], mut f: impl FnMut(&[u8], &[u8], f64)) -> ParseReport {
    let mut report = ParseReport::default();
    let mut lines = numbered_lines(buf).filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace));
    while let Some((n1, names)) = lines.next() {
        let Some((n2, values)) = lines.next() else {
            report.bad(n1, names, "header line without a value line");
            break;
        };
        let mut nf = fields(names);
        let mut vf = fields(values);
        let (Some(p1), Some(p2)) = (nf.next(), vf.next()) else { continue };
        if p1 != p2 || !p1.ends_with(b":") {
            report.bad(n2, p2, "value line does not match its header line");
            continue;
        }
        let protocol = &p1[..p1.len() - 1];
        if fields(names).count() != fields(values).count() {
            report.bad(n2, protocol, "header and value lines differ in length");
        }
        for (name, value) in nf.zip(vf) {
            match parse_int(value) {
                Some(v) => f(protocol, name, v),
                None => report.bad(n2, name, "value is not a 64-bit integer"),
            }
        }
    }
    report
}

impl Source for PairedSource {
    fn name(&self) -> &'static str {
        self.name
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let buf = self.file.contents()?;
        let ts = now_ms();
        let (series, key, counters, gauges) = (&mut self.series, &mut self.key, self.counters, self.gauges);
        let report = parse(buf, |protocol, field, value| {
            key.clear();
            key.extend_from_slice(protocol);
            key.push(b':');
            key.extend_from_slice(field);
            let id = *series.entry(key, || {
                let desc = match gauges {
                    Some(g) if SNMP_GAUGE_FIELDS.contains(&(protocol, field)) => g,
                    _ => counters,
                };
                out.series(desc, &[("protocol", &label(protocol)), ("field", &label(field))])
            });
            out.push(id, ts, value);
        });
        report.report_to(out);
        self.series.sweep(out, ts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_mismatches() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: MaxConn RetransSegs\nTcp: -1 7\n\
                    Udp: InDatagrams\nIcmp: 5\nUdp: A B\nUdp: 1\n";
        let mut got = Vec::new();
        let r = parse(text.as_bytes(), |p, f, v| got.push((label(p), label(f), v)));
        assert_eq!(got.len(), 5);
        assert_eq!(got[2], ("Tcp".into(), "MaxConn".into(), -1.0));
        assert_eq!(r.bad_lines, 2);
    }
}
