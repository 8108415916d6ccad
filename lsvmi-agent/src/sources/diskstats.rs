//! `/proc/diskstats`: I/O per block device, every field the kernel has (reads, writes,
//! discards, flushes; counts, merges, bytes, time). Sectors are always 512 bytes here,
//! whatever the device's sector size; times are ms in the file, seconds here.

use std::path::Path;

use super::{
    Collector, Source, SourceError,
    procfs_file::ProcFile,
    text::{Memo, ParseReport, Row, Tracked, fields, label, numbered_lines, parse_u64, split_fields},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

const SOURCE: &str = "/proc/diskstats";

macro_rules! disk_metrics {
    ($($ident:ident $name:literal $kind:ident $unit:literal $scale:literal $help:literal;)*) => {
        $(metric!($ident, $name, $kind, $unit, ["device"], SOURCE, $help);)*
        /// In /proc/diskstats column order (after major, minor, name), with the factor
        /// to base units.
        const COLUMNS: [(&MetricDesc, f64); 17] = [$((&$ident, $scale)),*];
    };
}

disk_metrics! {
    READS "proc_diskstats_reads_completed_total" Counter "" 1.0 "Reads completed.";
    READS_MERGED "proc_diskstats_reads_merged_total" Counter "" 1.0 "Adjacent reads merged before reaching the device.";
    READ_BYTES "proc_diskstats_read_bytes_total" Counter "bytes" 512.0 "Bytes read (sectors × 512).";
    READ_TIME "proc_diskstats_read_time_seconds_total" Counter "seconds" 0.001 "Time spent by all reads (sum over requests).";
    WRITES "proc_diskstats_writes_completed_total" Counter "" 1.0 "Writes completed.";
    WRITES_MERGED "proc_diskstats_writes_merged_total" Counter "" 1.0 "Adjacent writes merged.";
    WRITE_BYTES "proc_diskstats_written_bytes_total" Counter "bytes" 512.0 "Bytes written (sectors × 512).";
    WRITE_TIME "proc_diskstats_write_time_seconds_total" Counter "seconds" 0.001 "Time spent by all writes.";
    IN_PROGRESS "proc_diskstats_io_now" Gauge "" 1.0 "I/Os in flight at the instant of reading.";
    IO_TIME "proc_diskstats_io_time_seconds_total" Counter "seconds" 0.001 "Time the device had I/O in flight (utilisation when rated).";
    IO_WEIGHTED "proc_diskstats_io_time_weighted_seconds_total" Counter "seconds" 0.001 "I/O time weighted by the number in flight (queue depth when rated).";
    DISCARDS "proc_diskstats_discards_completed_total" Counter "" 1.0 "Discards completed (Linux 4.18+).";
    DISCARDS_MERGED "proc_diskstats_discards_merged_total" Counter "" 1.0 "Discards merged.";
    DISCARD_BYTES "proc_diskstats_discarded_bytes_total" Counter "bytes" 512.0 "Bytes discarded (sectors × 512).";
    DISCARD_TIME "proc_diskstats_discard_time_seconds_total" Counter "seconds" 0.001 "Time spent by all discards.";
    FLUSHES "proc_diskstats_flushes_total" Counter "" 1.0 "Flush requests completed (Linux 5.5+).";
    FLUSH_TIME "proc_diskstats_flush_time_seconds_total" Counter "seconds" 0.001 "Time spent by flush requests.";
}

pub static METRICS: &[&MetricDesc] = &[
    &READS,
    &READS_MERGED,
    &READ_BYTES,
    &READ_TIME,
    &WRITES,
    &WRITES_MERGED,
    &WRITE_BYTES,
    &WRITE_TIME,
    &IN_PROGRESS,
    &IO_TIME,
    &IO_WEIGHTED,
    &DISCARDS,
    &DISCARDS_MERGED,
    &DISCARD_BYTES,
    &DISCARD_TIME,
    &FLUSHES,
    &FLUSH_TIME,
];

pub struct DiskstatsSource {
    file: ProcFile,
    devices: Tracked<Memo<[SeriesId; 17]>>,
}

impl DiskstatsSource {
    pub fn new(procfs_root: &Path) -> Self {
        DiskstatsSource { file: ProcFile::new(procfs_root.join("diskstats")), devices: Tracked::default() }
    }
}

/// Call `f(device, values, count)` per line; older kernels have 11 or 15 value columns.
pub fn parse(buf: &[u8], mut f: impl FnMut(&[u8], &[u64; 17], usize)) -> ParseReport {
    rows(buf, |row| {
        let name = row.name;
        if let Some((values, n)) = counters(row) {
            f(name, &values, n);
        }
    })
}

/// A device's counters and how many there are (11, 15 or 17); `None` (reported) when the
/// line is malformed.
fn counters(mut row: Row<'_>) -> Option<([u64; 17], usize)> {
    let mut values = [0u64; 17];
    let mut n = 0;
    for col in fields(row.values) {
        let Some(v) = parse_u64(col) else {
            row.bad(row.name, "counter is not an unsigned 64-bit number");
            return None;
        };
        if n < values.len() {
            values[n] = v;
            n += 1;
        }
    }
    if n < 11 {
        row.bad(row.name, "fewer than 11 counters");
        return None;
    }
    Some((values, n))
}

/// Call `f` for each device line; lines without major, minor and name are reported.
fn rows(buf: &[u8], mut f: impl FnMut(Row<'_>)) -> ParseReport {
    let mut report = ParseReport::default();
    for (lineno, line) in numbered_lines(buf) {
        let Some((name, values)) = split_fields(line, 2) else {
            if !line.iter().all(u8::is_ascii_whitespace) {
                report.bad(lineno, line, "expected major, minor and device name");
            }
            continue;
        };
        f(Row::new(lineno, line, name, values, &mut report));
    }
    report
}

impl Source for DiskstatsSource {
    fn name(&self) -> &'static str {
        "proc_diskstats"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let buf = self.file.contents()?;
        let ts = now_ms();
        let devices = &mut self.devices;
        let report = rows(buf, |row| {
            if devices.unchanged(row.name, row.line, out, ts) {
                return;
            }
            let (name, line) = (row.name, row.line);
            let Some((values, n)) = counters(row) else { return };
            let memo = devices.entry(name, || {
                let l = label(name);
                Memo::new(COLUMNS.map(|(d, _)| out.series(d, &[("device", &l)])))
            });
            memo.last.start();
            for ((id, (_, scale)), v) in memo.ids.iter().zip(COLUMNS).zip(values).take(n) {
                memo.last.push(out, *id, ts, v as f64 * scale);
            }
            memo.last.parsed(line);
        });
        report.report_to(out);
        self.devices.sweep(out, ts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_unchanged_devices_sends_what_parsing_them_sends() {
        let dir = tempfile::tempdir().unwrap();
        let (sda, sda2) =
            ("8 0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17", "8 0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 18");
        let (loop0, loop0_short) = ("7 0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0", "7 0 loop0 5 0 0 0 0 0 0 0 0 0 0");
        let contents = [
            format!("{sda}\n{loop0}\n"),
            format!("{sda}\n{loop0}\n"),
            format!("{sda2}\n{loop0}\n"),
            format!("{sda2}\n7 0 loop0 x\n"),
            format!("{sda}\n{loop0}\n"),
            format!("{sda}\n{loop0_short}\n"),
            format!("{sda}\n"),
            format!("{sda}\n{loop0}\n"),
            format!("{sda}\n{loop0}\n"),
        ];
        crate::sources::assert_skipping_sends_what_parsing_sends(
            DiskstatsSource::new(dir.path()),
            DiskstatsSource::new(dir.path()),
            |text| std::fs::write(dir.path().join("diskstats"), text).unwrap(),
            &contents,
        );
    }

    #[test]
    fn old_and_new_kernels_and_bad_lines() {
        let text = "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n 259 0 nvme0n1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n\
                    8 1 sda1 1 2\n8 2 sdb x 2 3 4 5 6 7 8 9 10 11\n";
        let mut got = Vec::new();
        let r = parse(text.as_bytes(), |d, v, n| got.push((label(d), v[n - 1], n)));
        assert_eq!(got, [("sda".into(), 11, 11), ("nvme0n1".into(), 17, 17)]);
        assert_eq!(r.bad_lines, 2);
    }
}
