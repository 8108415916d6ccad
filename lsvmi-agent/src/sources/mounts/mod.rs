//! Mounted filesystems: the host's mount table (`<procfs root>/1/mountinfo`, or the
//! agent's own `self/mountinfo` where PID 1's cannot be read) for what is mounted,
//! statfs(2) for size, free space and inodes.
//!
//! Only local filesystem types are statted by default (an allowlist, configurable):
//! pseudo filesystems have no space to run out of, and a network or FUSE filesystem
//! whose server is gone can hang statfs indefinitely. Even so, statfs runs in a helper
//! process with a bounded wait ([`statfs`]): a mount that does not answer is reported
//! once, counted, and skipped until it answers; the tick never waits on it.

pub mod statfs;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use tracing::{info, warn};

use super::{
    Collector, Source, SourceError,
    procfs_file::ProcFile,
    text::{ParseReport, Tracked, fields, label, numbered_lines, parse_u64},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

const SOURCE: &str = "/proc/1/mountinfo + statfs(2)";
const LABELS: [&str; 3] = ["mountpoint", "fstype", "device"];

/// How long one collection waits for statfs answers in all. Local filesystems answer in
/// microseconds; whatever has not answered by then is set aside as stuck.
const STATFS_WAIT: Duration = Duration::from_millis(50);

/// The first collection also waits for the helper process to start (once, at start-up).
const FIRST_WAIT: Duration = Duration::from_secs(1);

metric!(SIZE, "proc_mount_size_bytes", Gauge, "bytes", ["mountpoint", "fstype", "device"], SOURCE, "Filesystem size.");
metric!(
    FREE,
    "proc_mount_free_bytes",
    Gauge,
    "bytes",
    ["mountpoint", "fstype", "device"],
    SOURCE,
    "Free space, including the part reserved for root."
);
metric!(
    AVAIL,
    "proc_mount_avail_bytes",
    Gauge,
    "bytes",
    ["mountpoint", "fstype", "device"],
    SOURCE,
    "Space available to unprivileged users."
);
metric!(FILES, "proc_mount_files", Gauge, "", ["mountpoint", "fstype", "device"], SOURCE, "Inodes in the filesystem.");
metric!(FILES_FREE, "proc_mount_files_free", Gauge, "", ["mountpoint", "fstype", "device"], SOURCE, "Free inodes.");
metric!(
    READONLY,
    "proc_mount_readonly",
    Gauge,
    "",
    ["mountpoint", "fstype", "device"],
    SOURCE,
    "1 when mounted read-only."
);

pub static METRICS: &[&MetricDesc] = &[&SIZE, &FREE, &AVAIL, &FILES, &FILES_FREE, &READONLY];

/// Local filesystems with space to run out of: the default allowlist (`fs_types`).
/// Network filesystems (nfs, cifs, ceph, lustre, gpfs, …) and FUSE are left out: their
/// statfs goes to a server that may not answer. Add them in the config if wanted; the
/// helper process keeps a hung one from hurting anything but its own series.
pub const DEFAULT_FS_TYPES: &[&str] = &[
    "btrfs", "exfat", "ext2", "ext3", "ext4", "f2fs", "jfs", "ntfs", "ntfs3", "reiserfs", "tmpfs", "vfat", "xfs",
    "zfs", "bcachefs",
];

/// One line of mountinfo: what we need of it.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mount's id and its parent's: a mount stacked on a mountpoint has the mount
    /// it covers as parent.
    pub id: u64,
    pub parent: u64,
    pub mountpoint: String,
    pub fstype: String,
    pub device: String,
    pub readonly: bool,
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`; a backslash not
/// followed by three octal digits is kept as written. An escape above `\377` names no
/// byte: the kernel never writes one, so the line is malformed.
fn unescape(field: &[u8]) -> Result<String, &'static str> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let byte = u16::from(oct[0] - b'0') * 64 + u16::from(oct[1] - b'0') * 8 + u16::from(oct[2] - b'0');
                out.push(u8::try_from(byte).map_err(|_| "octal escape above \\377")?);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    Ok(label(&out))
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
pub fn parse(buf: &[u8], mut f: impl FnMut(Mount)) -> ParseReport {
    let mut report = ParseReport::default();
    for (lineno, line) in numbered_lines(buf) {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut cols = fields(line);
        let (Some(id), Some(parent), Some(_devno), Some(_root), Some(mountpoint), Some(options)) =
            (cols.next(), cols.next(), cols.next(), cols.next(), cols.next(), cols.next())
        else {
            report.bad(lineno, line, "fewer than 6 fields before the separator");
            continue;
        };
        let (Some(id), Some(parent)) = (parse_u64(id), parse_u64(parent)) else {
            report.bad(lineno, id, "mount id or parent id is not a number");
            continue;
        };
        // Optional fields until the lone `-`.
        if !cols.by_ref().any(|c| c == b"-") {
            report.bad(lineno, mountpoint, "no ` - ` separator");
            continue;
        }
        let (Some(fstype), Some(device)) = (cols.next(), cols.next()) else {
            report.bad(lineno, mountpoint, "no filesystem type and source after ` - `");
            continue;
        };
        let (mountpoint, device) = match (unescape(mountpoint), unescape(device)) {
            (Ok(m), Ok(d)) => (m, d),
            (Err(reason), _) => {
                report.bad(lineno, mountpoint, reason);
                continue;
            }
            (_, Err(reason)) => {
                report.bad(lineno, device, reason);
                continue;
            }
        };
        f(Mount {
            id,
            parent,
            mountpoint,
            fstype: label(fstype),
            device,
            readonly: options.split(|&c| c == b',').any(|o| o == b"ro"),
        });
    }
    report
}

/// Keep only the visible mount at each mountpoint: the one no other mount at the same
/// mountpoint is stacked on. Two stacked mounts would otherwise give two samples of one
/// series with one timestamp, and only the top one's numbers are what a path there sees.
pub fn visible_only(mounts: &mut Vec<Mount>) {
    let covered: HashSet<(u64, &str)> = mounts.iter().map(|m| (m.parent, m.mountpoint.as_str())).collect();
    let hidden: HashSet<u64> =
        mounts.iter().filter(|m| covered.contains(&(m.id, m.mountpoint.as_str()))).map(|m| m.id).collect();
    mounts.retain(|m| !hidden.contains(&m.id));
}

/// The key of a mount's series: mountpoint, type and device, NUL-separated.
fn mount_key(key: &mut Vec<u8>, m: &Mount) {
    key.clear();
    for part in [&m.mountpoint, &m.fstype, &m.device] {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
}

/// The host's mount table, and the agent's own as the fallback.
struct MountTable {
    host: ProcFile,
    own: ProcFile,
    use_own: bool,
}

impl MountTable {
    /// PID 1's table where it can be read (the host's, even when the agent runs in a
    /// private mount namespace), else the agent's own.
    fn read(&mut self) -> Result<&[u8], SourceError> {
        if !self.use_own {
            match self.host.read() {
                Ok(_) => return Ok(self.host.last()),
                Err(e) => {
                    info!(
                        source = "proc_mounts",
                        "{} unreadable ({e}); using {} instead",
                        self.host.path().display(),
                        self.own.path().display()
                    );
                    self.use_own = true;
                }
            }
        }
        self.own.contents()
    }
}

pub struct MountsSource {
    table: MountTable,
    /// statfs paths are `host_root` + mountpoint (a container sees the host's `/` there).
    host_root: PathBuf,
    fs_types: HashSet<String>,
    prober: statfs::Prober,
    /// Keyed by mountpoint + fstype + device.
    mounts: Tracked<[SeriesId; 6]>,
    key: Vec<u8>,
    visible: Vec<Mount>,
    paths: Vec<String>,
    /// Mountpoints whose statfs failed once (permissions): said once at debug level.
    reported: HashSet<String>,
    first: bool,
    /// Said once while every helper allowed is stuck.
    paused: bool,
}

impl MountsSource {
    pub fn new(procfs_root: &Path, host_root: &Path, fs_types: &[String]) -> Self {
        let mut prober = statfs::Prober::new();
        // Started now so that it is ready by the first collection; a failure to start
        // is reported by that collection.
        let _ = prober.start();
        MountsSource {
            table: MountTable {
                host: ProcFile::new(procfs_root.join("1/mountinfo")),
                own: ProcFile::new(procfs_root.join("self/mountinfo")),
                use_own: false,
            },
            host_root: host_root.to_path_buf(),
            fs_types: fs_types.iter().cloned().collect(),
            prober,
            mounts: Tracked::default(),
            key: Vec::new(),
            visible: Vec::new(),
            paths: Vec::new(),
            reported: HashSet::new(),
            first: true,
            paused: false,
        }
    }
}

impl Source for MountsSource {
    fn name(&self) -> &'static str {
        "proc_mounts"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let mut visible = std::mem::take(&mut self.visible);
        visible.clear();
        let buf = self.table.read()?;
        let fs_types = &self.fs_types;
        let report = parse(buf, |m| {
            if fs_types.contains(&m.fstype) {
                visible.push(m);
            }
        });
        report.report_to(out);
        visible_only(&mut visible);
        self.paths.clear();
        for m in &visible {
            let rel = m.mountpoint.trim_start_matches('/');
            self.paths.push(self.host_root.join(rel).to_string_lossy().into_owned());
        }
        let (mounts, key, reported) = (&mut self.mounts, &mut self.key, &mut self.reported);
        let mut answered = vec![false; visible.len()];
        let wait = if std::mem::take(&mut self.first) { FIRST_WAIT } else { STATFS_WAIT };
        let events = self.prober.stat_all(&self.paths, wait, |idx, answer| {
            let Some(m) = visible.get(idx) else { return };
            answered[idx] = true;
            let st = match answer {
                Ok(st) => st,
                // A mountpoint we cannot stat (permissions, gone since the read) is skipped.
                Err(errno) => {
                    // Bounded: mountpoints come and go (a pod's volumes), the set must not grow forever.
                    if reported.len() >= 1024 {
                        reported.clear();
                    }
                    if reported.insert(m.mountpoint.clone()) {
                        tracing::debug!(
                            source = "proc_mounts",
                            mountpoint = %m.mountpoint,
                            "statfs failed ({}); skipped",
                            std::io::Error::from_raw_os_error(errno)
                        );
                    }
                    return;
                }
            };
            let ts = now_ms();
            mount_key(key, m);
            let ids = mounts.entry(key, || {
                let labels: Vec<(&str, &str)> =
                    LABELS.iter().copied().zip([m.mountpoint.as_str(), m.fstype.as_str(), m.device.as_str()]).collect();
                [&SIZE, &FREE, &AVAIL, &FILES, &FILES_FREE, &READONLY].map(|d| out.series(d, &labels))
            });
            let frsize = st.frsize as f64;
            let values = [
                st.blocks as f64 * frsize,
                st.bfree as f64 * frsize,
                st.bavail as f64 * frsize,
                st.files as f64,
                st.ffree as f64,
                if m.readonly { 1.0 } else { 0.0 },
            ];
            for (id, v) in ids.iter().zip(values) {
                out.push(*id, ts, v);
            }
        });
        self.visible = visible;
        let events = events.map_err(|e| SourceError::read(Path::new("statfs helper (/proc/self/exe)"), e))?;
        for path in &events.stuck {
            warn!(
                source = "proc_mounts",
                "statfs on {path} did not answer within {} ms: skipped until it does (lsvmi_source_errors_total{{reason=\"timeout\"}})",
                wait.as_millis()
            );
        }
        if events.paused && !self.paused {
            warn!(
                source = "proc_mounts",
                "{} filesystems do not answer statfs: statfs paused for all mounts until one answers",
                statfs::MAX_STUCK
            );
        }
        self.paused = events.paused;
        for path in &events.recovered {
            info!(source = "proc_mounts", "statfs on {path} answers again");
        }
        out.timed_out(events.stuck.len() as u64);
        // A mount still listed but not answered this round (stuck, or not asked) keeps its
        // series: its values are unknown, not gone.
        for (m, _) in self.visible.iter().zip(&answered).filter(|(_, a)| !**a) {
            mount_key(&mut self.key, m);
            self.mounts.touch(&self.key);
        }
        self.mounts.sweep(out, now_ms());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_optional_fields_and_escapes() {
        let text = "36 35 98:0 / /mnt/my\\040disk rw,noatime master:1 shared:2 - ext4 /dev/sda1 rw\n\
                    22 27 0:21 / /proc ro,relatime - proc proc rw\nbroken line\n40 1 0:1 / /x rw\n";
        let mut got = Vec::new();
        let r = parse(text.as_bytes(), |m| got.push(m));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].mountpoint, "/mnt/my disk");
        assert_eq!(got[0].fstype, "ext4");
        assert!(!got[0].readonly && got[1].readonly);
        assert_eq!(r.bad_lines, 2);
        assert_eq!(unescape(b"a\\").unwrap(), "a\\");
        assert_eq!(unescape(b"a\\04").unwrap(), "a\\04");
        assert_eq!(unescape(b"a\\134b").unwrap(), "a\\b");
        assert!(unescape(b"a\\777b").is_err());
        assert!(unescape(b"\\400").is_err());
    }

    #[test]
    fn only_the_top_mount_of_a_stack_is_visible() {
        // Two tmpfs stacked on /dev/shm (30 on 25), and a mount below it (40 under 30)
        // that is not stacked: 25 is hidden, the rest stay.
        let text = "24 1 0:6 / /dev rw - devtmpfs udev rw\n\
                    25 24 0:23 / /dev/shm rw - tmpfs tmpfs rw\n\
                    30 25 0:27 / /dev/shm rw - tmpfs tmpfs rw\n\
                    40 30 0:28 / /dev/shm/x rw - tmpfs tmpfs rw\n";
        let mut mounts = Vec::new();
        parse(text.as_bytes(), |m| mounts.push(m));
        visible_only(&mut mounts);
        assert_eq!(mounts.iter().map(|m| m.id).collect::<Vec<_>>(), [24, 30, 40]);
    }

    #[test]
    fn an_escape_above_377_is_one_bad_line() {
        let text = "36 35 98:0 / /mnt/x\\777 rw - ext4 /dev/sda1 rw\n37 35 98:0 / /y rw - ext4 /dev/sda2 rw\n";
        let mut got = Vec::new();
        let r = parse(text.as_bytes(), |m| got.push(m.mountpoint));
        assert_eq!(got, ["/y"]);
        assert_eq!(r.bad_lines, 1);
    }
}
