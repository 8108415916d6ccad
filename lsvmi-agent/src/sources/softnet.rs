//! `/proc/net/softnet_stat`: per-CPU receive-path counters, in hex. `dropped` (backlog
//! full) and `time_squeeze` (NAPI budget or time ran out with work left) are the
//! receive-side drops and delays latency-sensitive hosts chase.

use std::path::Path;

use super::{
    Collector, Source, SourceError,
    procfs_file::ProcFile,
    text::{MAX_CPUS, ParseReport, fields, numbered_lines, parse_hex},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

const SOURCE: &str = "/proc/net/softnet_stat";

metric!(
    PROCESSED,
    "proc_net_softnet_processed_total",
    Counter,
    "",
    ["cpu"],
    SOURCE,
    "Packets processed by the CPU's receive softirq."
);
metric!(
    DROPPED,
    "proc_net_softnet_dropped_total",
    Counter,
    "",
    ["cpu"],
    SOURCE,
    "Packets dropped because the CPU's input backlog was full (net.core.netdev_max_backlog)."
);
metric!(
    SQUEEZED,
    "proc_net_softnet_time_squeeze_total",
    Counter,
    "",
    ["cpu"],
    SOURCE,
    "Receive softirq runs that stopped with work left (budget or time exhausted): packets waited."
);
metric!(
    RPS,
    "proc_net_softnet_received_rps_total",
    Counter,
    "",
    ["cpu"],
    SOURCE,
    "Times the CPU was woken by RPS to process packets."
);
metric!(
    FLOW_LIMIT,
    "proc_net_softnet_flow_limit_total",
    Counter,
    "",
    ["cpu"],
    SOURCE,
    "Packets dropped by the RPS flow limit."
);
metric!(
    BACKLOG,
    "proc_net_softnet_backlog_length",
    Gauge,
    "",
    ["cpu"],
    SOURCE,
    "Packets in the CPU's input backlog at the instant of reading (Linux 5.10 and later)."
);

pub static METRICS: &[&MetricDesc] = &[&PROCESSED, &DROPPED, &SQUEEZED, &RPS, &FLOW_LIMIT, &BACKLOG];

/// (column, metric). Columns 3–8 are always zero on current kernels (fastroute and
/// cpu_collision, long gone); 13 and 14 split column 11.
const COLUMNS: [(usize, &MetricDesc); 6] =
    [(0, &PROCESSED), (1, &DROPPED), (2, &SQUEEZED), (9, &RPS), (10, &FLOW_LIMIT), (11, &BACKLOG)];

/// Column 12 (Linux 5.10+) names the CPU; before that, line N is the Nth online CPU.
const CPU_COLUMN: usize = 12;

pub struct SoftnetSource {
    file: ProcFile,
    /// Indexed by CPU number.
    series: Vec<Option<[SeriesId; 6]>>,
}

impl SoftnetSource {
    pub fn new(procfs_root: &Path) -> Self {
        SoftnetSource { file: ProcFile::new(procfs_root.join("net/softnet_stat")), series: Vec::new() }
    }
}

/// Call `f(cpu, columns, count)` per line.
pub fn parse(buf: &[u8], mut f: impl FnMut(u32, &[u64; 13], usize)) -> ParseReport {
    let mut report = ParseReport::default();
    let mut row = 0u32;
    'lines: for (lineno, line) in numbered_lines(buf) {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut cols = [0u64; 13];
        let mut n = 0;
        for field in fields(line) {
            let Some(v) = parse_hex(field) else {
                report.bad(lineno, field, "not a hexadecimal number");
                continue 'lines;
            };
            if n < cols.len() {
                cols[n] = v;
                n += 1;
            }
        }
        if n < 3 {
            report.bad(lineno, line, "fewer than 3 columns");
            continue;
        }
        let cpu = if n > CPU_COLUMN { u32::try_from(cols[CPU_COLUMN]).unwrap_or(u32::MAX) } else { row };
        row += 1;
        if cpu >= MAX_CPUS {
            report.bad(lineno, line, "CPU number not below 8192");
            continue;
        }
        f(cpu, &cols, n);
    }
    report
}

impl Source for SoftnetSource {
    fn name(&self) -> &'static str {
        "proc_net_softnet"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let buf = self.file.contents()?;
        let ts = now_ms();
        let series = &mut self.series;
        let report = parse(buf, |cpu, cols, n| {
            let idx = cpu as usize; // below MAX_CPUS: the parser refuses larger ones
            if series.len() <= idx {
                series.resize(idx + 1, None);
            }
            let ids = *series[idx].get_or_insert_with(|| {
                let l = cpu.to_string();
                COLUMNS.map(|(_, d)| out.series(d, &[("cpu", &l)]))
            });
            for ((col, _), id) in COLUMNS.iter().zip(ids) {
                if *col < n {
                    out.push(id, ts, cols[*col] as f64);
                }
            }
        });
        report.report_to(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_and_old_layouts() {
        let text = "0000abcd 00000001 00000002 00000000 00000000 00000000 00000000 00000000 00000000 00000003 00000000 00000000 00000002\n\
                    00000010 00000000 00000000\nzz 1 2\n\
                    0 0 0 0 0 0 0 0 0 0 0 0 ffffffff\n";
        let mut got = Vec::new();
        let r = parse(text.as_bytes(), |cpu, c, n| got.push((cpu, c[0], c[1], n)));
        assert_eq!(got, [(2, 0xabcd, 1, 13), (1, 0x10, 0, 3)]);
        assert_eq!(r.bad_lines, 2);
    }
}
