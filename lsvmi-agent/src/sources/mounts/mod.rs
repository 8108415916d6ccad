//! Mounted filesystems: `/proc/self/mountinfo` for what is mounted, statfs(2) for size,
//! free space and inodes. Pseudo and network filesystems are excluded by default (as
//! LSVMI does): pseudo ones have no space to run out of, and statfs on a dead NFS server
//! would block the sampler.

use std::{collections::HashSet, path::Path};

use super::{
    Collector, Source, SourceError,
    procfs_file::ProcFile,
    text::{ParseReport, Tracked, fields, label, numbered_lines},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

const SOURCE: &str = "/proc/self/mountinfo + statfs(2)";
const LABELS: [&str; 3] = ["mountpoint", "fstype", "device"];

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

/// LSVMI's default excludes, plus the other pseudo filesystems of a modern kernel.
pub const DEFAULT_EXCLUDED_FS_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
    "overlay",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "9p",
    "fuse.sshfs",
];

/// One line of mountinfo: what we need of it.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub mountpoint: String,
    pub fstype: String,
    pub device: String,
    pub readonly: bool,
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &[u8]) -> String {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    label(&out)
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
pub fn parse(buf: &[u8], mut f: impl FnMut(Mount)) -> ParseReport {
    let mut report = ParseReport::default();
    for (lineno, line) in numbered_lines(buf) {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut cols = fields(line);
        let (Some(_id), Some(_parent), Some(_devno), Some(_root), Some(mountpoint), Some(options)) =
            (cols.next(), cols.next(), cols.next(), cols.next(), cols.next(), cols.next())
        else {
            report.bad(lineno, line, "fewer than 6 fields before the separator");
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
        f(Mount {
            mountpoint: unescape(mountpoint),
            fstype: label(fstype),
            device: unescape(device),
            readonly: options.split(|&c| c == b',').any(|o| o == b"ro"),
        });
    }
    report
}

pub struct MountsSource {
    file: ProcFile,
    excluded: HashSet<String>,
    /// Keyed by mountpoint + fstype + device; the same mountpoint can be stacked.
    mounts: Tracked<[SeriesId; 6]>,
    key: Vec<u8>,
}

impl MountsSource {
    pub fn new(procfs_root: &Path, excluded_fs_types: &[String]) -> Self {
        MountsSource {
            file: ProcFile::new(procfs_root.join("self/mountinfo")),
            excluded: excluded_fs_types.iter().cloned().collect(),
            mounts: Tracked::default(),
            key: Vec::new(),
        }
    }
}

impl Source for MountsSource {
    fn name(&self) -> &'static str {
        "proc_mounts"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let buf = self.file.contents()?;
        let (mounts, key, excluded) = (&mut self.mounts, &mut self.key, &self.excluded);
        let mut unreadable = 0u64;
        let report = parse(buf, |m| {
            if excluded.contains(&m.fstype) {
                return;
            }
            // A mountpoint we cannot stat (permissions, gone since the read) is skipped.
            let Ok(st) = rustix::fs::statvfs(m.mountpoint.as_str()) else {
                unreadable += 1;
                return;
            };
            let ts = now_ms();
            key.clear();
            for part in [&m.mountpoint, &m.fstype, &m.device] {
                key.extend_from_slice(part.as_bytes());
                key.push(0);
            }
            let ids = mounts.entry(key, || {
                let labels: Vec<(&str, &str)> =
                    LABELS.iter().copied().zip([m.mountpoint.as_str(), m.fstype.as_str(), m.device.as_str()]).collect();
                [&SIZE, &FREE, &AVAIL, &FILES, &FILES_FREE, &READONLY].map(|d| out.series(d, &labels))
            });
            let frsize = st.f_frsize as f64;
            let values = [
                st.f_blocks as f64 * frsize,
                st.f_bfree as f64 * frsize,
                st.f_bavail as f64 * frsize,
                st.f_files as f64,
                st.f_ffree as f64,
                if m.readonly { 1.0 } else { 0.0 },
            ];
            for (id, v) in ids.iter().zip(values) {
                out.push(*id, ts, v);
            }
        });
        report.report_to(out);
        if unreadable > 0 {
            tracing::debug!(source = "proc_mounts", mounts = unreadable, "statfs failed; those mounts skipped");
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
        assert_eq!(unescape(b"a\\"), "a\\");
        assert_eq!(unescape(b"a\\04"), "a\\04");
    }
}
