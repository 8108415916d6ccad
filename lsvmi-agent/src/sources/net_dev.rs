//! `/proc/net/dev`: every receive and transmit counter per interface. Interfaces that
//! appear (a VF, a container's veth) get series on first sight; those that go away get
//! a staleness marker.

use std::path::Path;

use super::{
    Collector, Source, SourceError,
    procfs_file::ProcFile,
    text::{Memo, ParseReport, Row, Tracked, fields, label, numbered_lines, parse_u64},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

const SOURCE: &str = "/proc/net/dev";

macro_rules! dev_metrics {
    ($($ident:ident $name:literal $unit:literal $help:literal;)*) => {
        $(metric!($ident, $name, Counter, $unit, ["interface"], SOURCE, $help);)*
        /// In /proc/net/dev column order.
        const COLUMNS: [&MetricDesc; 16] = [$(&$ident),*];
    };
}

dev_metrics! {
    RX_BYTES "proc_net_dev_receive_bytes_total" "bytes" "Bytes received.";
    RX_PACKETS "proc_net_dev_receive_packets_total" "" "Packets received.";
    RX_ERRS "proc_net_dev_receive_errors_total" "" "Receive errors reported by the driver.";
    RX_DROP "proc_net_dev_receive_drop_total" "" "Packets dropped on receive (no buffer, filtered, …).";
    RX_FIFO "proc_net_dev_receive_fifo_total" "" "Receive FIFO (ring) overruns.";
    RX_FRAME "proc_net_dev_receive_frame_total" "" "Receive framing errors.";
    RX_COMPRESSED "proc_net_dev_receive_compressed_total" "" "Compressed packets received.";
    RX_MULTICAST "proc_net_dev_receive_multicast_total" "" "Multicast packets received.";
    TX_BYTES "proc_net_dev_transmit_bytes_total" "bytes" "Bytes transmitted.";
    TX_PACKETS "proc_net_dev_transmit_packets_total" "" "Packets transmitted.";
    TX_ERRS "proc_net_dev_transmit_errors_total" "" "Transmit errors reported by the driver.";
    TX_DROP "proc_net_dev_transmit_drop_total" "" "Packets dropped on transmit.";
    TX_FIFO "proc_net_dev_transmit_fifo_total" "" "Transmit FIFO errors.";
    TX_COLLS "proc_net_dev_transmit_collisions_total" "" "Collisions detected on transmit.";
    TX_CARRIER "proc_net_dev_transmit_carrier_total" "" "Carrier losses on transmit.";
    TX_COMPRESSED "proc_net_dev_transmit_compressed_total" "" "Compressed packets transmitted.";
}

pub static METRICS: &[&MetricDesc] = &COLUMNS;

pub struct NetDevSource {
    file: ProcFile,
    interfaces: Tracked<Memo<[SeriesId; 16]>>,
}

impl NetDevSource {
    pub fn new(procfs_root: &Path) -> Self {
        NetDevSource { file: ProcFile::new(procfs_root.join("net/dev")), interfaces: Tracked::default() }
    }
}

/// Call `f(interface, counters)` for each interface line (the two header lines skipped).
pub fn parse(buf: &[u8], mut f: impl FnMut(&[u8], &[u64; 16])) -> ParseReport {
    rows(buf, |row| {
        let name = row.name;
        if let Some(values) = counters(row) {
            f(name, &values);
        }
    })
}

/// An interface's 16 counters; `None` (reported) when the line is malformed.
fn counters(mut row: Row<'_>) -> Option<[u64; 16]> {
    let mut values = [0u64; 16];
    let mut cols = fields(row.values);
    for v in &mut values {
        let Some(n) = cols.next().and_then(parse_u64) else {
            row.bad(row.name, "expected 16 unsigned counters");
            return None;
        };
        *v = n;
    }
    if row.name.is_empty() {
        row.bad(row.line, "empty interface name");
        return None;
    }
    Some(values)
}

/// Call `f` for each interface line; lines without `interface:` are reported.
fn rows(buf: &[u8], mut f: impl FnMut(Row<'_>)) -> ParseReport {
    let mut report = ParseReport::default();
    for (lineno, line) in numbered_lines(buf).skip(2) {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            report.bad(lineno, line, "no `interface:`");
            continue;
        };
        let name = line[..colon].trim_ascii();
        f(Row::new(lineno, line, name, &line[colon + 1..], &mut report));
    }
    report
}

impl Source for NetDevSource {
    fn name(&self) -> &'static str {
        "proc_net_dev"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let buf = self.file.contents()?;
        let ts = now_ms();
        let interfaces = &mut self.interfaces;
        let report = rows(buf, |row| {
            if interfaces.unchanged(row.name, row.line, out, ts) {
                return;
            }
            let (name, line) = (row.name, row.line);
            let Some(values) = counters(row) else { return };
            let memo = interfaces.entry(name, || {
                let l = label(name);
                Memo::new(COLUMNS.map(|d| out.series(d, &[("interface", &l)])))
            });
            memo.last.start();
            for (id, v) in memo.ids.iter().zip(values) {
                memo.last.push(out, *id, ts, v as f64);
            }
            memo.last.parsed(line);
        });
        report.report_to(out);
        self.interfaces.sweep(out, ts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Registry, STALE_NAN_BITS};

    #[test]
    fn interfaces_come_and_go_with_a_staleness_marker() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        let header = "h1\nh2\n";
        let line = |n: &str| format!("{n}: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n");
        let mut src = NetDevSource::new(dir.path());
        let mut reg = Registry::new([]);
        let mut cycle = |text: String| {
            std::fs::write(dir.path().join("net/dev"), text).unwrap();
            let mut samples = Vec::new();
            src.collect(&mut Collector::new(&mut reg, &mut samples)).unwrap();
            samples
        };
        assert_eq!(cycle(format!("{header}{}{}", line("lo"), line("veth0"))).len(), 32);
        let after = cycle(format!("{header}{}", line("lo")));
        // lo's 16 values, and one staleness marker for each of veth0's 16 series.
        assert_eq!(after.len(), 32);
        assert_eq!(after.iter().filter(|s| s.value.to_bits() == STALE_NAN_BITS).count(), 16);
        assert_eq!(cycle(format!("{header}{}{}", line("lo"), line("veth0"))).len(), 32);
        // A counter going backwards (driver reset, counter wrap) is sent as read:
        // the sink's rate() treats a decrease as a reset; the agent does not guess.
        let back = cycle(format!("{header}lo: 0 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"));
        assert_eq!(back[0].value, 0.0);
    }

    #[test]
    fn skipping_unchanged_interfaces_sends_what_parsing_them_sends() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        let header = "h1\nh2\n";
        let line = |n: &str, first: u32| format!("{n}: {first} 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n");
        let contents = [
            format!("{header}{}{}", line("lo", 1), line("eth0", 1)),
            format!("{header}{}{}", line("lo", 1), line("eth0", 1)),
            format!("{header}{}{}", line("lo", 2), line("eth0", 1)),
            format!("{header}{}eth0: 1 2\n", line("lo", 2)),
            format!("{header}{}{}", line("lo", 2), line("eth0", 1)),
            format!("{header}{}", line("lo", 2)),
            format!("{header}{}{}", line("lo", 2), line("eth0", 1)),
            format!("{header}{}{}", line("lo", 2), line("eth0", 1)),
        ];
        crate::sources::assert_skipping_sends_what_parsing_sends(
            NetDevSource::new(dir.path()),
            NetDevSource::new(dir.path()),
            |text| std::fs::write(dir.path().join("net/dev"), text).unwrap(),
            &contents,
        );
    }

    #[test]
    fn parses_interfaces_skips_short_lines() {
        let text = "Inter-|   Receive\n face |bytes\n    lo: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n\
                    eth0:18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n  bad: 1 2 3\n";
        let mut got = Vec::new();
        let r = parse(text.as_bytes(), |n, v| got.push((label(n), v[0], v[15])));
        assert_eq!(got, [("lo".into(), 1, 16), ("eth0".into(), u64::MAX, 0)]);
        assert_eq!(r.bad_lines, 1);
    }
}
