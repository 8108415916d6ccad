//! The process's limit on open files (RLIMIT_NOFILE), read and set in one place: the
//! process source raises the soft limit to keep task files open
//! (`sources::processes`), and the BPF loader lowers it for one call at start-up
//! (`bpf::loader_without_kernel_btf`).

/// The soft and hard limits on open files, or None when they cannot be read.
pub fn open_files() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// Set the limits on open files (a soft limit above the hard one is refused).
pub fn set_open_files(lim: &libc::rlimit) -> std::io::Result<()> {
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, lim) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
