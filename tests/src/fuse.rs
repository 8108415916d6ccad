//! A FUSE filesystem of the tests' own, spoken over /dev/fuse directly (no libfuse): it
//! answers INIT and GETATTR and never answers STATFS. The kernel hands the STATFS
//! request to this server and waits, uninterruptibly, for an answer that never comes —
//! the hung network or FUSE filesystem an agent meets in production.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
};

const FUSE_GETATTR: u32 = 3;
const FUSE_STATFS: u32 = 17;
const FUSE_INIT: u32 = 26;
const IN_HEADER: usize = 40;

/// The filesystem type as mountinfo shows it.
pub const FS_TYPE: &str = "fuse.lsvmitest";

/// A mounted never-answering filesystem; unmounted (and its connection aborted, which
/// releases whoever waits on it) when dropped.
pub struct HungFs {
    pub mountpoint: PathBuf,
    stop: Arc<AtomicBool>,
    /// STATFS requests received (and never answered).
    pub statfs_seen: Arc<AtomicU64>,
    server: Option<JoinHandle<()>>,
}

impl HungFs {
    /// Mount at `mountpoint` (an existing empty directory). `None` when FUSE is not
    /// available here (no /dev/fuse, not root).
    pub fn mount(mountpoint: &Path) -> Option<HungFs> {
        let dev = OpenOptions::new().read(true).write(true).open("/dev/fuse").ok()?;
        let opts = CString::new(format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd())).ok()?;
        let target = CString::new(mountpoint.to_str()?).ok()?;
        let fstype = CString::new(FS_TYPE).ok()?;
        let source = CString::new("lsvmitest").ok()?;
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            eprintln!("FUSE mount failed: {}", std::io::Error::last_os_error());
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let statfs_seen = Arc::new(AtomicU64::new(0));
        let server = {
            let (stop, seen) = (stop.clone(), statfs_seen.clone());
            std::thread::spawn(move || serve(dev, &stop, &seen))
        };
        Some(HungFs { mountpoint: mountpoint.to_path_buf(), stop, statfs_seen, server: Some(server) })
    }
}

impl Drop for HungFs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.mountpoint.to_string_lossy().as_bytes()) {
            // SAFETY: a valid path string; MNT_DETACH does not wait for users of the mount.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        // The server closes /dev/fuse on its way out, which aborts the connection: every
        // request still waiting (the stuck statfs) fails with ENOTCONN and its caller wakes.
        self.stop.store(true, Relaxed);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut dev: File, stop: &AtomicBool, statfs_seen: &AtomicU64) {
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Relaxed) {
        let mut fds = [libc::pollfd { fd: dev.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) } <= 0 {
            continue;
        }
        let n = match dev.read(&mut buf) {
            Ok(n) if n >= IN_HEADER => n,
            _ => break, // ENODEV: unmounted
        };
        let req = &buf[..n];
        let opcode = u32::from_le_bytes(req[4..8].try_into().unwrap_or_default());
        let unique = u64::from_le_bytes(req[8..16].try_into().unwrap_or_default());
        let body: Vec<u8> = match opcode {
            FUSE_INIT => {
                // major 7, minor 31, max_write 4096, time_gran 1, the rest 0.
                let mut b = vec![0u8; 64];
                b[0..4].copy_from_slice(&7u32.to_le_bytes());
                b[4..8].copy_from_slice(&31u32.to_le_bytes());
                b[16..20].copy_from_slice(&4096u32.to_le_bytes());
                b[20..24].copy_from_slice(&1u32.to_le_bytes());
                b
            }
            FUSE_GETATTR => {
                // fuse_attr_out: valid 1 s, then the root directory's attributes.
                let mut b = vec![0u8; 104];
                b[0..8].copy_from_slice(&1u64.to_le_bytes());
                b[16..24].copy_from_slice(&1u64.to_le_bytes()); // ino
                b[76..80].copy_from_slice(&(libc::S_IFDIR | 0o755).to_le_bytes()); // mode
                b[80..84].copy_from_slice(&2u32.to_le_bytes()); // nlink
                b
            }
            FUSE_STATFS => {
                statfs_seen.fetch_add(1, Relaxed);
                continue; // never answered
            }
            _ => {
                let _ = reply(&mut dev, unique, -libc::ENOSYS, &[]);
                continue;
            }
        };
        let _ = reply(&mut dev, unique, 0, &body);
    }
}

fn reply(dev: &mut File, unique: u64, error: i32, body: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&((16 + body.len()) as u32).to_le_bytes());
    out.extend_from_slice(&error.to_le_bytes());
    out.extend_from_slice(&unique.to_le_bytes());
    out.extend_from_slice(body);
    dev.write_all(&out)
}
