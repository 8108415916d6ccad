//! Parser shared by `/proc/interrupts` and `/proc/softirqs`: a header naming the online
//! CPUs (`CPU0 CPU2 …`, gaps when CPUs are offline), then one row per counter:
//! `NAME: <one count per CPU> [description]`. Allocation-free once warmed up.

use super::text::{ParseReport, numbered_lines, parse_cpu, parse_u64};

/// Reused buffers for [`parse`].
#[derive(Debug, Default)]
pub struct CpuTable {
    /// CPU number of each column, from the header.
    pub cpus: Vec<u32>,
    values: Vec<u64>,
    /// The header last parsed, and whether this parse's differs from it (the columns
    /// of a row with the same bytes then mean other CPUs).
    header: Vec<u8>,
    pub header_changed: bool,
    /// Whether `cpus` holds the CPUs of `header` (false after a bad header): then a
    /// header that did not change is not parsed again — on a 256-CPU host it is 2.8 KB
    /// of `CPUn` columns every 100 ms.
    header_parsed: bool,
}

/// One row: its name (without `:`), a count per header column (fewer when the row has
/// a single total, as `ERR:` and `MIS:` do), and the description after the counts.
pub struct Row<'a> {
    pub name: &'a [u8],
    /// The whole row (leading blanks trimmed), for `text::Memo`.
    pub line: &'a [u8],
    /// CPU number of each column (from the header).
    pub cpus: &'a [u32],
    pub values: &'a [u64],
    pub description: &'a [u8],
}

impl Row<'_> {
    /// (cpu, count) for each count that lines up with a header column.
    pub fn per_cpu(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.cpus.iter().copied().zip(self.values.iter().copied())
    }

    /// True for rows with one total instead of a count per CPU (`ERR:`, `MIS:`).
    pub fn is_total(&self) -> bool {
        self.values.len() == 1 && self.cpus.len() > 1
    }
}

/// Parse `buf`, calling `row` for each well-formed row. Malformed rows are skipped and
/// reported; a missing or bad header makes every row unusable (one report).
pub fn parse(buf: &[u8], table: &mut CpuTable, mut row: impl FnMut(Row<'_>)) -> ParseReport {
    parse_skipping(buf, table, &mut row, |_, _, _| false, |row, r| row(r))
}

/// As [`parse`], asking `skip(state, name, line)` first for each named row: a row it
/// skips is not parsed (its bytes are those last parsed, see `text::Memo`). Not asked
/// when the header changed: the same bytes then mean other CPUs. `state` is what both
/// callbacks work on.
pub fn parse_skipping<S>(
    buf: &[u8],
    table: &mut CpuTable,
    state: &mut S,
    mut skip: impl FnMut(&mut S, &[u8], &[u8]) -> bool,
    mut row: impl FnMut(&mut S, Row<'_>),
) -> ParseReport {
    let mut report = ParseReport::default();
    let mut lines = numbered_lines(buf);
    let Some((_, header)) = lines.next() else {
        table.cpus.clear();
        table.header_parsed = false;
        return report;
    };
    table.header_changed = table.header != header;
    if table.header_changed {
        table.header.clear();
        table.header.extend_from_slice(header);
    }
    if table.header_changed || !table.header_parsed {
        table.cpus.clear();
        table.header_parsed = false;
        for col in header.split(|c| c.is_ascii_whitespace()).filter(|f| !f.is_empty()) {
            match col.strip_prefix(b"CPU").and_then(parse_cpu) {
                Some(cpu) => table.cpus.push(cpu),
                None => {
                    report.bad(1, col, "header column is not CPU<n> with n below 8192");
                    table.cpus.clear();
                    return report;
                }
            }
        }
        table.header_parsed = true;
    }
    for (lineno, line) in lines {
        let trimmed = line.trim_ascii_start();
        if trimmed.is_empty() {
            continue;
        }
        let Some(colon) = trimmed.iter().position(|&c| c == b':') else {
            report.bad(lineno, trimmed, "no `NAME:` at the start of the row");
            continue;
        };
        let name = &trimmed[..colon];
        if name.is_empty() || name.iter().any(|c| c.is_ascii_whitespace()) {
            report.bad(lineno, trimmed, "row name is empty or has spaces");
            continue;
        }
        if !table.header_changed && skip(state, name, trimmed) {
            continue;
        }
        let mut rest = &trimmed[colon + 1..];
        table.values.clear();
        while table.values.len() < table.cpus.len() {
            let r = rest.trim_ascii_start();
            let end = r.iter().position(|c| c.is_ascii_whitespace()).unwrap_or(r.len());
            match parse_u64(&r[..end]) {
                Some(v) => {
                    table.values.push(v);
                    rest = &r[end..];
                }
                None => break,
            }
        }
        if table.values.is_empty() {
            report.bad(lineno, name, "row has no counts");
            continue;
        }
        row(
            state,
            Row { name, line: trimmed, cpus: &table.cpus, values: &table.values, description: rest.trim_ascii() },
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Vec<(String, Vec<u64>, String)>;

    fn rows(text: &str) -> (Vec<u32>, Rows, ParseReport) {
        let mut t = CpuTable::default();
        let mut got = Vec::new();
        let r = parse(text.as_bytes(), &mut t, |row| {
            got.push((
                String::from_utf8_lossy(row.name).into_owned(),
                row.values.to_vec(),
                String::from_utf8_lossy(row.description).into_owned(),
            ))
        });
        (t.cpus.clone(), got, r)
    }

    #[test]
    fn interrupts_with_hotplug_gap_totals_and_descriptions() {
        let (cpus, got, r) = rows(
            "           CPU0       CPU2\n  \
             0:         44          0   IO-APIC   2-edge      timer\n \
             24:          1          2   PCI-MSIX-0000:00:04.0   0-edge      virtio0-config\n\
             NMI:          0          0   Non-maskable interrupts\n\
             ERR:          0\n",
        );
        assert_eq!(r, ParseReport::default());
        assert_eq!(cpus, [0, 2]);
        assert_eq!(got[0], ("0".into(), vec![44, 0], "IO-APIC   2-edge      timer".into()));
        assert_eq!(got[1].2, "PCI-MSIX-0000:00:04.0   0-edge      virtio0-config");
        assert_eq!(got[3], ("ERR".into(), vec![0], "".into()));
    }

    #[test]
    fn bad_rows_are_skipped_bad_header_stops() {
        let (_, got, r) = rows("CPU0 CPU1\nHI: 1 2\ngarbage\n: 1 2\nTIMER: x y\nNET_RX: 5 6\n");
        assert_eq!(got.len(), 2);
        assert_eq!(r.bad_lines, 3);
        for header in ["CPUx CPU1", "CPU0 CPU4000000000", "CPU0 CPU8192"] {
            let (_, got, r) = rows(&format!("{header}\nHI: 1 2\n"));
            assert!(got.is_empty(), "{header}");
            assert_eq!(r.bad_lines, 1, "{header}");
        }
        let (cpus, _, _) = rows("CPU0 CPU8191\nHI: 1 2\n");
        assert_eq!(cpus, [0, 8191]);
    }

    #[test]
    fn a_header_read_again_means_the_same_cpus_and_a_bad_one_is_reported_each_time() {
        let mut t = CpuTable::default();
        let mut values = Vec::new();
        for text in ["CPU0 CPU2\nHI: 1 2\n", "CPU0 CPU2\nHI: 3 4\n"] {
            let r = parse(text.as_bytes(), &mut t, |row| values.push(row.per_cpu().collect::<Vec<_>>()));
            assert_eq!(r, ParseReport::default());
        }
        assert_eq!(values, [vec![(0, 1), (2, 2)], vec![(0, 3), (2, 4)]]);
        for _ in 0..2 {
            let r = parse(b"CPU0 CPUx\nHI: 1 2\n", &mut t, |_| panic!("a row under a bad header"));
            assert_eq!(r.bad_lines, 1);
        }
        let r = parse(b"", &mut t, |_| ());
        assert_eq!(r, ParseReport::default());
        assert!(t.cpus.is_empty());
    }
}
