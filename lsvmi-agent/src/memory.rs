//! The agent's own footprint: handing back, once start-up is over, the pages of its
//! binary and libraries that only start-up needed.
//!
//! Why: a mapped file page counts in RSS from its first touch until the process ends.
//! Start-up runs code the agent never runs again (argument and YAML parsing, the BPF
//! loader, the kernel BTF walk) and reads data it never reads again (the embedded BPF
//! object, 0.7 MB): about a third of the steady RSS. Unmapping them makes RSS the
//! working set, and makes those pages plain page cache, which the kernel reclaims first
//! under memory pressure, instead of mapped pages it keeps.
//!
//! Only private, read-only file mappings without a single written page are unmapped
//! (`Anonymous: 0 kB` in smaps): their contents are exactly the file's, so a later access
//! maps the same bytes again, from the page cache (a minor fault, well under a
//! microsecond a page; the hot code of a tick comes back within the next tick). A
//! relocated read-only segment (RELRO: written by the dynamic loader, then made
//! read-only) has anonymous pages and is left alone: dropping it would lose the
//! relocations.

/// One malloc heap for all the agent's threads. glibc gives each thread that allocates
/// a heap of its own (an arena: 64 MiB reserved, its touched pages resident and kept
/// after `free`); the sampler's thread and the runtime's blocking pool would each add
/// one. Measured with the sampler's: 0.2 MB more anonymous RSS, for threads that
/// allocate little and seldom at the same time. Call before any thread starts.
pub fn one_heap() {
    // SAFETY: mallopt only sets an allocator parameter; no thread allocates yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// The mappings in `smaps` (/proc/self/smaps) that may be released: (start, length,
/// resident bytes).
fn releasable(smaps: &str) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut rss_kb = 0u64;
    for line in smaps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16))
        {
            // A mapping's header: "start-end perms offset dev inode path".
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            let candidate = matches!(perms, "r-xp" | "r--p") && path.starts_with('/') && end > start;
            current = candidate.then_some((start, end - start));
            rss_kb = 0;
            continue;
        }
        let Some((start, len)) = current else { continue };
        let mut kb = || fields.next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => rss_kb = kb().unwrap_or(0),
            // The last field this needs; a mapping with written pages is not released.
            "Anonymous:" => {
                if kb() == Some(0) && rss_kb > 0 {
                    out.push((start, len, rss_kb * 1024));
                }
                current = None;
            }
            _ => {}
        }
    }
    out
}

/// Unmap the resident pages of every releasable mapping; returns the bytes they held.
/// Called once, on the blocking pool (off the thread the sampler ticks on); it costs a
/// read of this process's smaps and one madvise per mapping.
pub fn release_start_up_pages() -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for (start, len, rss) in releasable(&smaps) {
        // SAFETY: the range is a whole private, read-only, file-backed mapping of this
        // process with no anonymous (written) page: MADV_DONTNEED only drops its page
        // table entries, and the next access maps the file's unchanged bytes again.
        if unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) } == 0 {
            released += rss;
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0200000 r--p 00000000 08:01 123 /usr/bin/lsvmi
Size:               2048 kB
Rss:                1300 kB
Anonymous:             0 kB
55d0c0200000-55d0c0800000 r-xp 00200000 08:01 123 /usr/bin/lsvmi
Size:               6144 kB
Rss:                4900 kB
Anonymous:             0 kB
55d0c0800000-55d0c0840000 r--p 00800000 08:01 123 /usr/bin/lsvmi
Size:                256 kB
Rss:                 204 kB
Anonymous:           204 kB
55d0c0840000-55d0c0850000 rw-p 00840000 08:01 123 /usr/bin/lsvmi
Rss:                  16 kB
Anonymous:            16 kB
55d0c1000000-55d0c1400000 rw-p 00000000 00:00 0 [heap]
Rss:                3900 kB
Anonymous:          3900 kB
7f0000000000-7f0000041000 r--s 00000000 00:0f 9 anon_inode:bpf-map
Rss:                 260 kB
Anonymous:             0 kB
7f0000100000-7f0000200000 r-xp 00028000 08:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn only_unwritten_read_only_file_pages_are_released() {
        let got = releasable(SMAPS);
        assert_eq!(
            got,
            vec![(0x55d0c0000000, 0x200000, 1300 * 1024), (0x55d0c0200000, 0x600000, 4900 * 1024)],
            "not RELRO (written), not writable, not the heap, not a shared BPF map, not what holds nothing"
        );
    }

    #[test]
    fn garbage_is_skipped() {
        assert!(releasable("zz-yy r-xp\nRss: x\nAnonymous: 0 kB\n\n-\n").is_empty());
    }

    /// On this process: releasing its own pages leaves it running, and code whose pages
    /// were dropped (this module's, the formatting machinery's) runs again, the same.
    #[test]
    fn releasing_this_process_pages_keeps_it_working() {
        let before = format!("{:?}", releasable(SMAPS));
        let released = release_start_up_pages().unwrap();
        assert!(released > 0);
        assert_eq!(format!("{:?}", releasable(SMAPS)), before);
    }
}
