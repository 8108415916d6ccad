//! Parsers for the per-task files: `stat`, `status`, `io`, `schedstat`, `cmdline`,
//! `cgroup`. Pure functions over bytes; every field is optional in the sense that a
//! malformed file yields `None` (counted by the caller), never a panic.

use crate::sources::text::{fields, lines, parse_i64, parse_u64};

/// The fields of `/proc/[pid]/stat` we use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub ppid: i64,
    pub minflt: u64,
    pub majflt: u64,
    /// Clock ticks (USER_HZ).
    pub utime: u64,
    pub stime: u64,
    pub num_threads: i64,
    /// Clock ticks after boot: with the pid, identifies a task across pid reuse.
    pub starttime: u64,
    pub vsize: u64,
    /// CPU the task last ran on.
    pub processor: i64,
}

/// `pid (comm) S ppid …\n`; comm may hold spaces and parentheses, so it ends at the last
/// `)`. The kernel always ends the line with `\n`: without it the read was cut short, and
/// a number cut in half would parse as a wrong value, so the line is refused.
pub fn parse_stat(buf: &[u8]) -> Option<Stat> {
    let buf = buf.strip_suffix(b"\n")?;
    let open = buf.iter().position(|&c| c == b'(')?;
    let close = buf.iter().rposition(|&c| c == b')')?;
    if close < open {
        return None;
    }
    let comm = stable_comm(&buf[open + 1..close]);
    // After `)`: state is index 0, so field N of proc(5) (1-based) is index N - 3.
    let mut f = fields(&buf[close + 1..]);
    let mut nth = |skip: usize| f.nth(skip);
    let _state = nth(0)?;
    let ppid = parse_i64(nth(0)?)?; // 4
    let minflt = parse_u64(nth(5)?)?; // 10
    let majflt = parse_u64(nth(1)?)?; // 12
    let utime = parse_u64(nth(1)?)?; // 14
    let stime = parse_u64(nth(0)?)?; // 15
    let num_threads = parse_i64(nth(4)?)?; // 20
    let starttime = parse_u64(nth(1)?)?; // 22
    let vsize = parse_u64(nth(0)?)?; // 23
    let processor = nth(15).and_then(parse_i64).unwrap_or(-1); // 39 (absent on very old kernels)
    Some(Stat { comm, ppid, minflt, majflt, utime, stime, num_threads, starttime, vsize, processor })
}

/// The comm to label with. A kworker's comm names the work it is doing right now
/// (`kworker/1:0-events`, then `kworker/1:0-mm_percpu_wq`); as a label that would end and
/// start series every second, so the part after `-` is dropped.
fn stable_comm(comm: &[u8]) -> String {
    let comm = match comm.strip_prefix(b"kworker/") {
        Some(rest) => match rest.iter().position(|&c| c == b'-') {
            Some(dash) => &comm[..8 + dash],
            None => comm,
        },
        None => comm,
    };
    String::from_utf8_lossy(comm).into_owned()
}

/// Memory fields of `status`, in bytes, in [`STATUS_MEMORY`] order; then the two
/// context-switch counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub memory: [Option<u64>; 6],
    pub voluntary: Option<u64>,
    pub involuntary: Option<u64>,
}

/// (status key, `kind` label).
pub const STATUS_MEMORY: [(&[u8], &str); 6] = [
    (b"VmSize:", "virtual"),
    (b"VmRSS:", "resident"),
    (b"VmHWM:", "resident_peak"),
    (b"RssAnon:", "resident_anon"),
    (b"RssFile:", "resident_file"),
    (b"VmSwap:", "swap"),
];

pub fn parse_status(buf: &[u8]) -> Status {
    let mut st = Status::default();
    for line in lines(buf) {
        let mut f = fields(line);
        let (Some(key), Some(value)) = (f.next(), f.next()) else { continue };
        if let Some(i) = STATUS_MEMORY.iter().position(|(k, _)| *k == key) {
            st.memory[i] = parse_u64(value).and_then(|kb| kb.checked_mul(1024));
        } else if key == b"voluntary_ctxt_switches:" {
            st.voluntary = parse_u64(value);
        } else if key == b"nonvoluntary_ctxt_switches:" {
            st.involuntary = parse_u64(value);
        }
    }
    st
}

/// `io`: (key, label) in order; values in bytes except the syscall counts.
pub const IO_FIELDS: [(&[u8], &str); 7] = [
    (b"rchar:", "rchar"),
    (b"wchar:", "wchar"),
    (b"syscr:", "syscr"),
    (b"syscw:", "syscw"),
    (b"read_bytes:", "read_bytes"),
    (b"write_bytes:", "write_bytes"),
    (b"cancelled_write_bytes:", "cancelled_write_bytes"),
];

pub fn parse_io(buf: &[u8]) -> [Option<u64>; 7] {
    let mut out = [None; 7];
    for line in lines(buf) {
        let mut f = fields(line);
        let (Some(key), Some(value)) = (f.next(), f.next()) else { continue };
        if let Some(i) = IO_FIELDS.iter().position(|(k, _)| *k == key) {
            out[i] = parse_u64(value);
        }
    }
    out
}

/// `schedstat`: ns on CPU, ns waiting on a run queue, timeslices.
pub fn parse_schedstat(buf: &[u8]) -> Option<[u64; 3]> {
    let mut f = fields(buf);
    Some([parse_u64(f.next()?)?, parse_u64(f.next()?)?, parse_u64(f.next()?)?])
}

/// `cmdline`: NUL-separated arguments, joined with spaces and cut at `max` bytes (on a
/// character boundary). Kernel threads have none.
pub fn parse_cmdline(buf: &[u8], max: usize) -> String {
    let joined: Vec<u8> = buf.split(|&c| c == 0).filter(|a| !a.is_empty()).collect::<Vec<_>>().join(&b' ');
    let mut s = String::from_utf8_lossy(&joined).into_owned();
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// `cgroup`: the cgroup v2 path (`0::/system.slice/x.service`), else the first v1 path.
pub fn parse_cgroup(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    let mut first = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if id == "0" {
            return path.to_string();
        }
        first.get_or_insert_with(|| path.to_string());
    }
    first.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &[u8] = b"4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 1500 0 3 0 250 120 0 0 20 0 7 0 \
        123456 10485760 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn stat_with_parens_in_comm() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.comm, "my (odd) proc");
        assert_eq!((s.ppid, s.minflt, s.majflt, s.utime, s.stime), (1, 1500, 3, 250, 120));
        assert_eq!((s.num_threads, s.starttime, s.vsize, s.processor), (7, 123456, 10485760, 1));
    }

    #[test]
    fn kworker_comm_is_stable() {
        assert_eq!(stable_comm(b"kworker/1:0-mm_percpu_wq"), "kworker/1:0");
        assert_eq!(stable_comm(b"kworker/u8:3"), "kworker/u8:3");
        assert_eq!(stable_comm(b"feed-handler"), "feed-handler");
    }

    #[test]
    fn stat_truncated_anywhere_is_none_or_valid() {
        let whole = parse_stat(STAT).unwrap();
        for cut in 0..=STAT.len() {
            match parse_stat(&STAT[..cut]) {
                None => assert!(cut < STAT.len(), "the whole line must parse"),
                Some(st) => assert_eq!(st, whole, "cut at {cut}: a torn line parsed to other values"),
            }
        }
        assert!(parse_stat(b"1 (x) S 1").is_none());
        assert!(parse_stat(b") (").is_none());
    }

    #[test]
    fn status_io_schedstat_cmdline_cgroup() {
        let st = parse_status(b"Name:\tx\nVmSize:\t  100 kB\nVmRSS:\t 2 kB\nvoluntary_ctxt_switches:\t5\nnonvoluntary_ctxt_switches:\t6\n");
        assert_eq!(st.memory[0], Some(102_400));
        assert_eq!(st.memory[1], Some(2048));
        assert_eq!(st.memory[5], None);
        assert_eq!((st.voluntary, st.involuntary), (Some(5), Some(6)));
        let io = parse_io(
            b"rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 6\ncancelled_write_bytes: 7\n",
        );
        assert_eq!(io, [Some(1), Some(2), Some(3), Some(4), Some(5), Some(6), Some(7)]);
        assert_eq!(parse_schedstat(b"100 200 3\n"), Some([100, 200, 3]));
        assert_eq!(parse_schedstat(b"100 x 3\n"), None);
        assert_eq!(parse_cmdline(b"/usr/bin/feed\0--port\0\x009000\0", 1000), "/usr/bin/feed --port 9000");
        assert_eq!(parse_cmdline("é".repeat(10).as_bytes(), 5), "éé");
        assert_eq!(parse_cgroup(b"0::/system.slice/feed.service\n"), "/system.slice/feed.service");
        assert_eq!(parse_cgroup(b"12:cpu:/a\n"), "/a");
    }
}
