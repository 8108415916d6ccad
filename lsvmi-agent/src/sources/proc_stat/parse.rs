//! Parser for `/proc/stat`: pure (no I/O, no clock), allocation-free once the output's
//! CPU table has grown to the host's CPU count. Hand-written because this file is read
//! every 100 ms; `benches/hot_paths.rs` compares it with the procfs crate's parser.

pub use crate::sources::text::ParseReport;
use crate::sources::text::{lines, parse_cpu, parse_u64};

/// Number of time columns of a `cpuN` line (user … guest_nice) on kernels ≥ 2.6.33.
pub const CPU_COLUMNS: usize = 10;

/// One `cpuN` line: ticks (USER_HZ) per column, in kernel order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub cpu: u32,
    /// How many of the columns the line had (older kernels have fewer).
    pub columns: u8,
    pub ticks: [u64; CPU_COLUMNS],
}

/// The parts of /proc/stat we export. Scalars are `None` when their line is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    /// Per-CPU lines, in file order (ascending CPU number; offline CPUs are missing).
    pub cpus: Vec<CpuTicks>,
    pub ctxt: Option<u64>,
    pub btime: Option<u64>,
    pub processes: Option<u64>,
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
    /// First number of the `intr` line: all interrupts serviced since boot.
    pub intr_total: Option<u64>,
}

/// Parse `buf` into `out` (cleared first, its allocations kept). Unknown lines are
/// ignored (newer kernels add lines); malformed known lines are skipped and reported.
pub fn parse(buf: &[u8], out: &mut ProcStat) -> ParseReport {
    out.cpus.clear();
    out.ctxt = None;
    out.btime = None;
    out.processes = None;
    out.procs_running = None;
    out.procs_blocked = None;
    out.intr_total = None;
    let mut report = ParseReport::default();

    for (i, line) in lines(buf).enumerate() {
        let lineno = i + 1;
        let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
        let Some(key) = fields.next() else { continue };
        let scalar = match key {
            b"ctxt" => &mut out.ctxt,
            b"btime" => &mut out.btime,
            b"processes" => &mut out.processes,
            b"procs_running" => &mut out.procs_running,
            b"procs_blocked" => &mut out.procs_blocked,
            b"intr" => &mut out.intr_total,
            b"cpu" => continue, // the all-CPU sum: derivable, not exported
            _ if key.starts_with(b"cpu") => {
                // Parsed in place, at the end of the table (an 88-byte move per CPU saved):
                // kept when the line is good.
                let previous = out.cpus.last().map(|last| last.cpu);
                out.cpus.push(CpuTicks::default());
                let n = out.cpus.len() - 1;
                let lead = line.iter().take_while(|&&b| b == b' ').count();
                let rest = &line[lead + key.len()..];
                match parse_cpu_line(&key[3..], rest, &mut out.cpus[n]) {
                    Ok(()) if previous.is_some_and(|p| p >= out.cpus[n].cpu) => {
                        out.cpus.pop();
                        report.bad(lineno, key, "CPU number repeated or out of order")
                    }
                    Ok(()) => {}
                    Err(reason) => {
                        out.cpus.pop();
                        report.bad(lineno, key, reason)
                    }
                }
                continue;
            }
            _ => continue,
        };
        match fields.next().map(parse_u64) {
            Some(Some(v)) => *scalar = Some(v),
            Some(None) => report.bad(lineno, key, "value is not an unsigned 64-bit number"),
            None => report.bad(lineno, key, "value missing"),
        }
    }
    report
}

/// `number` is what follows `cpu` in the key, `rest` the line after the key. One pass
/// over the columns, each number parsed where its field ends.
fn parse_cpu_line(number: &[u8], rest: &[u8], ticks: &mut CpuTicks) -> Result<(), &'static str> {
    ticks.cpu = parse_cpu(number).ok_or("CPU number is not a number below 8192")?;
    let mut at = 0;
    loop {
        while at < rest.len() && rest[at] == b' ' {
            at += 1;
        }
        if at == rest.len() {
            break;
        }
        let start = at;
        while at < rest.len() && rest[at] != b' ' {
            at += 1;
        }
        let slot = ticks.ticks.get_mut(ticks.columns as usize).ok_or("more columns than known")?;
        *slot = parse_u64(&rest[start..at]).ok_or("column is not an unsigned 64-bit number")?;
        ticks.columns += 1;
    }
    // user, nice, system, idle have been there since Linux 2.4; fewer means a torn line.
    if ticks.columns < 4 {
        return Err("fewer than 4 columns");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> (ProcStat, ParseReport) {
        let mut out = ProcStat::default();
        let r = parse(s.as_bytes(), &mut out);
        (out, r)
    }

    #[test]
    fn spaces_around_and_between_columns_do_not_matter() {
        let (s, r) = parsed("  cpu3   1 2  3 4 \ncpu5 1 2 3 4\t\ncpu6 1 2 3 4 5 6 7 8 9 10 11\ncpu7 1 2 3\n");
        assert_eq!(s.cpus.len(), 1);
        assert_eq!((s.cpus[0].cpu, s.cpus[0].columns), (3, 4));
        assert_eq!(s.cpus[0].ticks[..4], [1, 2, 3, 4]);
        // A tab is not a separator; eleven columns; three columns: all reported.
        assert_eq!(r.bad_lines, 3);
    }

    #[test]
    fn parses_cpu_lines_and_scalars() {
        let (s, r) = parsed(
            "cpu  10 20 30 40 50 60 70 80 90 100\n\
             cpu0 1 2 3 4 5 6 7 8 9 10\n\
             cpu1 11 12 13 14 15 16 17 18 19 20\n\
             intr 12345 0 1 2\n\
             ctxt 999\nbtime 1700000000\nprocesses 42\nprocs_running 3\nprocs_blocked 1\n\
             softirq 5 1 1 1 1 1 0 0 0 0 0\n",
        );
        assert_eq!(r, ParseReport::default());
        assert_eq!(s.cpus.len(), 2);
        assert_eq!(s.cpus[1].cpu, 1);
        assert_eq!(s.cpus[1].columns, 10);
        assert_eq!(s.cpus[1].ticks, [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
        assert_eq!(
            (s.intr_total, s.ctxt, s.btime, s.processes, s.procs_running, s.procs_blocked),
            (Some(12345), Some(999), Some(1_700_000_000), Some(42), Some(3), Some(1))
        );
    }

    #[test]
    fn skips_and_reports_bad_lines_keeps_the_rest() {
        let (s, r) = parsed(
            "cpu0 1 2 3 4 5 6 7 8 9 10\n\
             cpu1 1 2 x 4 5 6 7 8 9 10\n\
             cpu2 1 2\n\
             cpu3 1 2 3 4 5 6 7 8 9 10 11\n\
             cpuX 1 2 3 4\n\
             cpu4000000000 1 2 3 4\n\
             cpu8192 1 2 3 4\n\
             cpu4 1 2 3 4 5 6 7 8 9 10\n\
             ctxt -5\nprocs_running\n\
             garbage line here\n\0\0\n",
        );
        assert_eq!(s.cpus.iter().map(|c| c.cpu).collect::<Vec<_>>(), [0, 4]);
        assert_eq!(r.bad_lines, 8);
        let first = r.first_error.unwrap();
        assert_eq!((first.line, first.field.as_str()), (2, "cpu1"));
        assert_eq!(s.ctxt, None);
    }

    #[test]
    fn hotplug_gap_and_old_kernel_columns() {
        let (s, r) = parsed("cpu0 1 2 3 4 5 6 7\ncpu3 1 2 3 4\n");
        assert_eq!(r.bad_lines, 0);
        assert_eq!(s.cpus.iter().map(|c| (c.cpu, c.columns)).collect::<Vec<_>>(), [(0, 7), (3, 4)]);
    }

    #[test]
    fn duplicate_cpu_line_is_rejected() {
        let (s, r) = parsed("cpu0 1 2 3 4\ncpu0 1 2 3 4\n");
        assert_eq!(s.cpus.len(), 1);
        assert_eq!(r.bad_lines, 1);
    }

    #[test]
    fn truncated_file_yields_what_is_complete() {
        let full = "cpu0 1 2 3 4 5 6 7 8 9 10\ncpu1 1 2 3 4 5 6 7 8 9 10\nctxt 5\n";
        let whole = parsed(full).0;
        for cut in 0..=full.len() {
            let text = &full.as_bytes()[..cut];
            let mut out = ProcStat::default();
            let _ = parse(text, &mut out);
            // Every line that ends before the cut is there, exactly as in the whole file;
            // a torn last line is either left out or kept with the columns it has.
            let complete = text.iter().filter(|&&b| b == b'\n').count().min(2);
            assert_eq!(out.cpus[..complete], whole.cpus[..complete], "cut at {cut}");
            assert!(out.cpus.len() <= complete + 1, "cut at {cut}");
            if let Some(torn) = out.cpus.get(complete) {
                assert!(torn.columns >= 4, "cut at {cut}");
                let n = torn.columns as usize;
                assert_eq!(torn.ticks[..n - 1], whole.cpus[complete].ticks[..n - 1], "cut at {cut}");
            }
            assert_eq!(out.ctxt.is_some(), cut + 1 >= full.len(), "cut at {cut}");
        }
    }
}
