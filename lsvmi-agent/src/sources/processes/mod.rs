//! Processes and threads: `/proc/[pid]/{stat,status,io,schedstat,cmdline,cgroup}` and
//! `/proc/[pid]/task/[tid]/{stat,status,schedstat}`.
//!
//! Cost control, as LSVMI does it: `stat` is read for every task each cycle (it says
//! whether the task used CPU); the other files only for tasks that did, plus every
//! task once per `full_refresh_every` cycles (phases spread by pid). A process that
//! used no CPU has threads that used none, so its task directory is not even listed.
//! A task that exits between listing and reading is simply gone, not an error. pid
//! reuse is detected by start time, and an exec by a new comm: both end the old series.

pub mod parse;

use std::{
    io,
    path::{Path, PathBuf},
};

use self::parse::{IO_FIELDS, STATUS_MEMORY, Stat};
use super::{
    Collector, Source, SourceError,
    procfs_file::{pread_record, read_into, read_record},
    text::{ParseReport, SeriesIds, Tracked, parse_u64},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

const PID: &str = "/proc/[pid]/*";
const TID: &str = "/proc/[pid]/task/[tid]/*";

metric!(
    P_CPU,
    "proc_pid_cpu_seconds_total",
    Counter,
    "seconds",
    ["pid", "comm", "mode"],
    PID,
    "CPU time of the process (all its threads), mode=user or system. From stat, in USER_HZ ticks."
);
metric!(P_MINFLT, "proc_pid_minor_faults_total", Counter, "", ["pid", "comm"], PID, "Page faults served without I/O.");
metric!(
    P_MAJFLT,
    "proc_pid_major_faults_total",
    Counter,
    "",
    ["pid", "comm"],
    PID,
    "Page faults that needed I/O: a latency hazard."
);
metric!(P_THREADS, "proc_pid_threads", Gauge, "", ["pid", "comm"], PID, "Threads in the process.");
metric!(
    P_MEMORY,
    "proc_pid_memory_bytes",
    Gauge,
    "bytes",
    ["pid", "comm", "kind"],
    PID,
    "Memory from status: kind=virtual, resident, resident_peak, resident_anon, resident_file, swap."
);
metric!(
    P_CTX,
    "proc_pid_context_switches_total",
    Counter,
    "",
    ["pid", "comm", "kind"],
    PID,
    "Context switches of the process's main thread, kind=voluntary (it blocked) or involuntary (it was preempted)."
);
metric!(
    P_IO_BYTES,
    "proc_pid_io_bytes_total",
    Counter,
    "bytes",
    ["pid", "comm", "kind"],
    PID,
    "I/O from io: kind=rchar, wchar (all read/write syscalls), read_bytes, write_bytes (storage), cancelled_write_bytes."
);
metric!(
    P_IO_CALLS,
    "proc_pid_io_syscalls_total",
    Counter,
    "",
    ["pid", "comm", "kind"],
    PID,
    "Read (kind=read) and write (kind=write) syscalls."
);
metric!(
    P_RUN,
    "proc_pid_run_seconds_total",
    Counter,
    "seconds",
    ["pid", "comm"],
    PID,
    "Time on a CPU, from schedstat (ns precision, unlike stat's ticks)."
);
metric!(
    P_WAIT,
    "proc_pid_wait_seconds_total",
    Counter,
    "seconds",
    ["pid", "comm"],
    PID,
    "Time runnable but waiting for a CPU (run-queue wait), from schedstat."
);
metric!(
    P_SLICES,
    "proc_pid_timeslices_total",
    Counter,
    "",
    ["pid", "comm"],
    PID,
    "Timeslices run on a CPU, from schedstat."
);
metric!(
    P_LAST_CPU,
    "proc_pid_last_cpu",
    Gauge,
    "",
    ["pid", "comm"],
    PID,
    "CPU the main thread last ran on (check pinning)."
);
metric!(
    P_INFO,
    "proc_pid_info",
    Gauge,
    "",
    ["pid", "comm", "ppid", "cmdline", "cgroup"],
    PID,
    "Always 1: the process's parent, command line (first 256 bytes) and cgroup."
);
metric!(
    T_CPU,
    "proc_tid_cpu_seconds_total",
    Counter,
    "seconds",
    ["pid", "tid", "comm", "mode"],
    TID,
    "CPU time of the thread, mode=user or system."
);
metric!(
    T_CTX,
    "proc_tid_context_switches_total",
    Counter,
    "",
    ["pid", "tid", "comm", "kind"],
    TID,
    "Context switches of the thread, kind=voluntary or involuntary (preempted: a busy-polling thread should have none)."
);
metric!(
    T_RUN,
    "proc_tid_run_seconds_total",
    Counter,
    "seconds",
    ["pid", "tid", "comm"],
    TID,
    "Time the thread spent on a CPU (schedstat)."
);
metric!(
    T_WAIT,
    "proc_tid_wait_seconds_total",
    Counter,
    "seconds",
    ["pid", "tid", "comm"],
    TID,
    "Time the thread was runnable but waited for a CPU (schedstat)."
);
metric!(
    T_SLICES,
    "proc_tid_timeslices_total",
    Counter,
    "",
    ["pid", "tid", "comm"],
    TID,
    "Timeslices the thread ran (schedstat)."
);
metric!(T_LAST_CPU, "proc_tid_last_cpu", Gauge, "", ["pid", "tid", "comm"], TID, "CPU the thread last ran on.");
metric!(
    COUNT,
    "proc_tasks",
    Gauge,
    "",
    ["kind"],
    "/proc",
    "Processes (kind=process) and threads (kind=thread) seen in the last cycle."
);
metric!(
    CREATED,
    "proc_tasks_created_total",
    Counter,
    "",
    ["kind"],
    "/proc",
    "Processes and threads first seen since the agent started."
);
metric!(
    EXITED,
    "proc_tasks_exited_total",
    Counter,
    "",
    ["kind"],
    "/proc",
    "Processes and threads gone since the agent started."
);

pub static METRICS: &[&MetricDesc] = &[
    &P_CPU,
    &P_MINFLT,
    &P_MAJFLT,
    &P_THREADS,
    &P_MEMORY,
    &P_CTX,
    &P_IO_BYTES,
    &P_IO_CALLS,
    &P_RUN,
    &P_WAIT,
    &P_SLICES,
    &P_LAST_CPU,
    &P_INFO,
    &T_CPU,
    &T_CTX,
    &T_RUN,
    &T_WAIT,
    &T_SLICES,
    &T_LAST_CPU,
    &COUNT,
    &CREATED,
    &EXITED,
];

/// Bytes of cmdline kept in the info label.
const CMDLINE_MAX: usize = 256;

/// Series of one process, in a fixed order (see `register_process`).
struct Proc {
    starttime: u64,
    comm: String,
    cpu_ticks: Option<u64>,
    ids: Vec<SeriesId>,
    threads: Tracked<Thread>,
    /// Its `stat`, kept open while the process lives.
    stat: Option<std::fs::File>,
}

/// A thread's state, kept small: a host may have tens of thousands.
struct Thread {
    starttime: u64,
    /// Hash of its comm, to see a rename (the comm itself is in its series' labels).
    comm: u64,
    /// utime + stime at the last read; `u64::MAX` before the first.
    cpu_ticks: u64,
    ids: [SeriesId; 8],
    /// Its `stat`, kept open while the thread lives (see `read_stat`).
    stat: Option<std::fs::File>,
}

fn comm_hash(comm: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    comm.hash(&mut h);
    h.finish()
}

impl SeriesIds for Proc {
    fn for_each_id(&self, f: &mut dyn FnMut(SeriesId)) {
        self.ids.for_each_id(f);
        self.threads.for_each(|t| t.ids.for_each_id(f));
    }
}

impl SeriesIds for Thread {
    fn for_each_id(&self, f: &mut dyn FnMut(SeriesId)) {
        self.ids.for_each_id(f);
    }
}

// Offsets into Proc::ids.
const I_CPU: usize = 0; // user, system
const I_FLT: usize = 2; // minor, major
const I_THREADS: usize = 4;
const I_MEM: usize = 5; // 6 kinds
const I_CTX: usize = 11; // voluntary, involuntary
const I_IO: usize = 13; // 7 fields of io, in IO_FIELDS order
const I_SCHED: usize = 20; // run, wait, slices
const I_LAST_CPU: usize = 23;
const I_INFO: usize = 24;

pub struct ProcessesSource {
    root: PathBuf,
    threads: bool,
    user_hz: f64,
    tasks: Tracked<Proc>,
    buf: Vec<u8>,
    path: PathBuf,
    key: Vec<u8>,
    first_cycle: bool,
    baseline: [u64; 2],
    counts: Option<[SeriesId; 6]>,
    thread_churn: [u64; 2],
    /// Tasks' `stat` descriptors are kept open only when numbered below this.
    fd_limit: i32,
    /// Directory listings: buffers and paths reused every cycle (see [`list_tasks`]).
    scratch: Listing,
}

/// What listing /proc and the task directories reuses from cycle to cycle.
#[derive(Default)]
struct Listing {
    /// getdents64 buffer, for /proc and then each process's `task` directory (a
    /// listing is read whole before the next one starts).
    buf: Vec<u8>,
    /// The pids in /proc, and the tids of the process being read.
    pids: Vec<u32>,
    tids: Vec<u32>,
    /// `<root>/<pid>`, `<root>/<pid>/task` and `<root>/<pid>/task/<tid>`.
    task_dir: PathBuf,
    threads_dir: PathBuf,
    thread_dir: PathBuf,
}

/// The entries of `dir` named by a number (pids, tids), in the kernel's order, read
/// with getdents64 into `buf` (kept between calls). `read_dir` allocated a `DirEntry`
/// and a name for every entry, and a path when asked: three allocations for every
/// process each second, and for every thread of each process that ran.
fn list_tasks(dir: &Path, buf: &mut Vec<u8>, out: &mut Vec<u32>) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags, RawDir};
    out.clear();
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    buf.clear();
    buf.reserve(16 * 1024);
    let mut entries = RawDir::new(fd, buf.spare_capacity_mut());
    while let Some(entry) = entries.next() {
        let entry = entry?;
        if let Some(n) = parse_u64(entry.file_name().to_bytes()).and_then(|n| u32::try_from(n).ok()) {
            out.push(n);
        }
    }
    Ok(())
}

/// Descriptors left for everything else (sockets, the spool, /proc files kept open).
const FD_RESERVE: u64 = 512;

/// Raise this process's soft limit on open files to its hard limit (as Go's runtime
/// does); descriptors numbered below the returned one may be kept open by this source.
/// The kernel hands out the lowest free number, so kept descriptors never take the
/// `FD_RESERVE` numbers at the top, and whatever else the agent opens finds room there.
fn kept_fd_limit() -> i32 {
    let Some(mut lim) = crate::limits::open_files() else { return 0 };
    if lim.rlim_cur < lim.rlim_max
        && crate::limits::set_open_files(&libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max }).is_ok()
    {
        lim.rlim_cur = lim.rlim_max;
    }
    i32::try_from(lim.rlim_cur.saturating_sub(FD_RESERVE).min(1 << 20)).unwrap_or(0)
}

/// A task's `stat` into `buf`: through `kept`, its descriptor from an earlier cycle
/// (one pread a cycle instead of open + read + close), or opened afresh. Returns the
/// descriptor to keep (`None` past the limit), or `None` when the task is gone.
fn read_stat(
    kept: Option<std::fs::File>,
    dir: impl FnOnce() -> PathBuf,
    path: &mut PathBuf,
    buf: &mut Vec<u8>,
    fd_limit: i32,
) -> Option<Option<std::fs::File>> {
    use std::os::fd::AsRawFd as _;
    // A kept one fails once its task exited (ESRCH): a new task may have its id, so
    // open afresh.
    if let Some(f) = kept
        && pread_record(&f, buf).is_ok()
        && !buf.is_empty()
    {
        return Some(Some(f));
    }
    path.clear();
    path.push(dir());
    path.push("stat");
    let f = std::fs::File::open(&*path).ok()?;
    if pread_record(&f, buf).is_err() || buf.is_empty() {
        return None;
    }
    Some((f.as_raw_fd() < fd_limit).then_some(f))
}

impl ProcessesSource {
    pub fn new(procfs_root: &Path, threads: bool, user_hz: u64) -> Self {
        ProcessesSource {
            root: procfs_root.to_path_buf(),
            threads,
            user_hz: user_hz.max(1) as f64,
            tasks: Tracked::default(),
            buf: Vec::with_capacity(4096),
            path: PathBuf::new(),
            key: Vec::new(),
            first_cycle: true,
            baseline: [0, 0],
            counts: None,
            thread_churn: [0, 0],
            fd_limit: kept_fd_limit(),
            scratch: Listing::default(),
        }
    }
}

/// Push through the change filter, or past it on the task's refresh cycle.
fn put(out: &mut Collector<'_>, refresh: bool, id: SeriesId, ts: i64, v: f64) {
    if refresh { out.push_refresh(id, ts, v) } else { out.push(id, ts, v) }
}

/// Read `<dir>/<name>` into `buf`; `Ok(false)` when the task is gone. Every task file
/// read here but cmdline is one record (see `pread_record`).
fn read_task_file(path: &mut PathBuf, dir: &Path, name: &str, buf: &mut Vec<u8>) -> io::Result<bool> {
    path.clear();
    path.push(dir);
    path.push(name);
    let read = if name == "cmdline" { read_into(path, buf) } else { read_record(path, buf) };
    match read {
        Ok(()) => Ok(true),
        // ENOENT: exited; ESRCH: exiting (reads of a zombie's files).
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

fn register_process(out: &mut Collector<'_>, pid: &str, st: &Stat, cmdline: &str, cgroup: &str) -> Vec<SeriesId> {
    let base = [("pid", pid), ("comm", st.comm.as_str())];
    let with = |extra: (&'static str, &'static str)| [base[0], base[1], extra];
    let mut ids = Vec::with_capacity(I_INFO + 1);
    ids.extend(["user", "system"].map(|m| out.series(&P_CPU, &with(("mode", m)))));
    ids.push(out.series(&P_MINFLT, &base));
    ids.push(out.series(&P_MAJFLT, &base));
    ids.push(out.series(&P_THREADS, &base));
    ids.extend(STATUS_MEMORY.map(|(_, k)| out.series(&P_MEMORY, &with(("kind", k)))));
    ids.extend(["voluntary", "involuntary"].map(|k| out.series(&P_CTX, &with(("kind", k)))));
    for (_, k) in IO_FIELDS {
        let id = match k {
            "syscr" => out.series(&P_IO_CALLS, &with(("kind", "read"))),
            "syscw" => out.series(&P_IO_CALLS, &with(("kind", "write"))),
            _ => out.series(&P_IO_BYTES, &with(("kind", k))),
        };
        ids.push(id);
    }
    ids.push(out.series(&P_RUN, &base));
    ids.push(out.series(&P_WAIT, &base));
    ids.push(out.series(&P_SLICES, &base));
    ids.push(out.series(&P_LAST_CPU, &base));
    let ppid = st.ppid.to_string();
    ids.push(out.series(&P_INFO, &[base[0], base[1], ("ppid", &ppid), ("cmdline", cmdline), ("cgroup", cgroup)]));
    ids
}

fn register_thread(out: &mut Collector<'_>, pid: &str, tid: &str, comm: &str) -> [SeriesId; 8] {
    let base = [("pid", pid), ("tid", tid), ("comm", comm)];
    let with = |extra: (&'static str, &'static str)| [base[0], base[1], base[2], extra];
    [
        out.series(&T_CPU, &with(("mode", "user"))),
        out.series(&T_CPU, &with(("mode", "system"))),
        out.series(&T_CTX, &with(("kind", "voluntary"))),
        out.series(&T_CTX, &with(("kind", "involuntary"))),
        out.series(&T_RUN, &base),
        out.series(&T_WAIT, &base),
        out.series(&T_SLICES, &base),
        out.series(&T_LAST_CPU, &base),
    ]
}

impl Source for ProcessesSource {
    fn name(&self) -> &'static str {
        "proc_pid"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let Listing { buf, pids, task_dir, .. } = &mut self.scratch;
        list_tasks(&self.root, buf, pids).map_err(|e| SourceError::read(&self.root, e))?;
        let pids = std::mem::take(pids);
        let mut task_dir = std::mem::take(task_dir);
        let mut report = ParseReport::default();
        let mut thread_count = 0u64;
        let mut digits = itoa::Buffer::new();
        for &pid in &pids {
            let pid_text = digits.format(pid);
            task_dir.clear();
            task_dir.push(&self.root);
            task_dir.push(pid_text);
            let task_dir = &task_dir;
            self.key.clear();
            self.key.extend_from_slice(pid_text.as_bytes());
            let kept = self.tasks.get_mut(&self.key).and_then(|p| p.stat.take());
            let Some(stat) = read_stat(kept, || task_dir.clone(), &mut self.path, &mut self.buf, self.fd_limit) else {
                continue;
            };
            let ts = now_ms();
            let Some(st) = parse::parse_stat(&self.buf) else {
                report.bad(1, format!("{pid_text}/stat").as_bytes(), "malformed stat");
                continue;
            };
            let proc = self.tasks.entry(&self.key, || Proc {
                starttime: st.starttime,
                comm: String::new(),
                cpu_ticks: None,
                ids: Vec::new(),
                threads: Tracked::default(),
                stat: None,
            });
            if proc.ids.is_empty() || proc.starttime != st.starttime || proc.comm != st.comm {
                // New, a reused pid, or an exec: (re)register with fresh info.
                proc.for_each_id(&mut |id| out.end_series(id, ts));
                let cmdline = read_task_file(&mut self.path, task_dir, "cmdline", &mut self.buf)
                    .ok()
                    .filter(|ok| *ok)
                    .map(|_| parse::parse_cmdline(&self.buf, CMDLINE_MAX))
                    .unwrap_or_default();
                let cgroup = read_task_file(&mut self.path, task_dir, "cgroup", &mut self.buf)
                    .ok()
                    .filter(|ok| *ok)
                    .map(|_| parse::parse_cgroup(&self.buf))
                    .unwrap_or_default();
                *proc = Proc {
                    starttime: st.starttime,
                    comm: st.comm.clone(),
                    cpu_ticks: None,
                    ids: register_process(out, pid_text, &st, &cmdline, &cgroup),
                    threads: Tracked::default(),
                    stat: None,
                };
            }
            proc.stat = stat;
            let ticks = st.utime.saturating_add(st.stime);
            let refresh = out.refresh_due(pid);
            let active = proc.cpu_ticks != Some(ticks);
            proc.cpu_ticks = Some(ticks);
            if !active && !refresh {
                thread_count += proc.threads.len() as u64;
                continue;
            }
            let ids = &proc.ids;
            let hz = self.user_hz;
            put(out, refresh, ids[I_CPU], ts, st.utime as f64 / hz);
            put(out, refresh, ids[I_CPU + 1], ts, st.stime as f64 / hz);
            put(out, refresh, ids[I_FLT], ts, st.minflt as f64);
            put(out, refresh, ids[I_FLT + 1], ts, st.majflt as f64);
            put(out, refresh, ids[I_THREADS], ts, st.num_threads as f64);
            put(out, refresh, ids[I_LAST_CPU], ts, st.processor as f64);
            put(out, refresh, ids[I_INFO], ts, 1.0);
            if let Ok(true) = read_task_file(&mut self.path, task_dir, "status", &mut self.buf) {
                let status = parse::parse_status(&self.buf);
                for (i, v) in status.memory.iter().enumerate() {
                    if let Some(v) = v {
                        put(out, refresh, ids[I_MEM + i], ts, *v as f64);
                    }
                }
                for (i, v) in [status.voluntary, status.involuntary].into_iter().enumerate() {
                    if let Some(v) = v {
                        put(out, refresh, ids[I_CTX + i], ts, v as f64);
                    }
                }
            }
            // io needs ptrace access (root has it); without it, it is left out.
            if let Ok(true) = read_task_file(&mut self.path, task_dir, "io", &mut self.buf) {
                for (i, v) in parse::parse_io(&self.buf).iter().enumerate() {
                    if let Some(v) = v {
                        put(out, refresh, ids[I_IO + i], ts, *v as f64);
                    }
                }
            }
            if let Ok(true) = read_task_file(&mut self.path, task_dir, "schedstat", &mut self.buf)
                && let Some([run, wait, slices]) = parse::parse_schedstat(&self.buf)
            {
                put(out, refresh, ids[I_SCHED], ts, run as f64 / 1e9);
                put(out, refresh, ids[I_SCHED + 1], ts, wait as f64 / 1e9);
                put(out, refresh, ids[I_SCHED + 2], ts, slices as f64);
            }
            if self.threads {
                let before = (proc.threads.appeared, proc.threads.ended);
                collect_threads(
                    out,
                    proc,
                    pid_text,
                    task_dir,
                    refresh,
                    hz,
                    &mut self.path,
                    &mut self.buf,
                    &mut report,
                    self.fd_limit,
                    &mut self.scratch,
                );
                self.thread_churn[0] += proc.threads.appeared - before.0;
                self.thread_churn[1] += proc.threads.ended - before.1;
                thread_count += proc.threads.len() as u64;
            }
        }
        self.scratch.pids = pids;
        self.scratch.task_dir = task_dir;
        let ts = now_ms();
        self.tasks.sweep(out, ts);
        report.report_to(out);
        if self.first_cycle {
            // What existed at start-up was not created while we watched.
            self.baseline = [self.tasks.appeared, self.thread_churn[0]];
            self.first_cycle = false;
        }
        let counts = *self.counts.get_or_insert_with(|| {
            let ids = [&COUNT, &CREATED, &EXITED]
                .map(|d| [out.series(d, &[("kind", "process")]), out.series(d, &[("kind", "thread")])]);
            [ids[0][0], ids[0][1], ids[1][0], ids[1][1], ids[2][0], ids[2][1]]
        });
        let values = [
            self.tasks.len() as u64,
            thread_count,
            self.tasks.appeared - self.baseline[0],
            self.thread_churn[0] - self.baseline[1],
            self.tasks.ended,
            self.thread_churn[1],
        ];
        for (id, v) in counts.iter().zip(values) {
            out.push(*id, ts, v as f64);
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn collect_threads(
    out: &mut Collector<'_>,
    proc: &mut Proc,
    pid: &str,
    task_dir: &Path,
    proc_refresh: bool,
    hz: f64,
    path: &mut PathBuf,
    buf: &mut Vec<u8>,
    report: &mut ParseReport,
    fd_limit: i32,
    scratch: &mut Listing,
) {
    let Listing { buf: dir_buf, tids, threads_dir, thread_dir, .. } = scratch;
    threads_dir.clear();
    threads_dir.push(task_dir);
    threads_dir.push("task");
    if list_tasks(threads_dir, dir_buf, tids).is_err() {
        return;
    }
    let mut digits = itoa::Buffer::new();
    for &tid in tids.iter() {
        let tid = digits.format(tid);
        thread_dir.clear();
        thread_dir.push(&*threads_dir);
        thread_dir.push(tid);
        let kept = proc.threads.get_mut(tid.as_bytes()).and_then(|t| t.stat.take());
        let Some(stat) = read_stat(kept, || thread_dir.clone(), path, buf, fd_limit) else { continue };
        let ts = now_ms();
        let Some(st) = parse::parse_stat(buf) else {
            report.bad(1, format!("{pid}/task/{tid}/stat").as_bytes(), "malformed stat");
            continue;
        };
        let comm = comm_hash(&st.comm);
        let thread = proc.threads.entry(tid.as_bytes(), || Thread {
            starttime: st.starttime,
            comm,
            cpu_ticks: u64::MAX,
            ids: register_thread(out, pid, tid, &st.comm),
            stat: None,
        });
        if thread.starttime != st.starttime || thread.comm != comm {
            thread.ids.for_each_id(&mut |id| out.end_series(id, ts));
            *thread = Thread {
                starttime: st.starttime,
                comm,
                cpu_ticks: u64::MAX,
                ids: register_thread(out, pid, tid, &st.comm),
                stat: None,
            };
        }
        thread.stat = stat;
        let ticks = st.utime.saturating_add(st.stime).min(u64::MAX - 1);
        if thread.cpu_ticks == ticks && !proc_refresh {
            continue;
        }
        thread.cpu_ticks = ticks;
        let ids = thread.ids;
        let tdir = &*thread_dir;
        put(out, proc_refresh, ids[0], ts, st.utime as f64 / hz);
        put(out, proc_refresh, ids[1], ts, st.stime as f64 / hz);
        put(out, proc_refresh, ids[7], ts, st.processor as f64);
        if let Ok(true) = read_task_file(path, tdir, "status", buf) {
            let status = parse::parse_status(buf);
            for (id, v) in [(ids[2], status.voluntary), (ids[3], status.involuntary)] {
                if let Some(v) = v {
                    put(out, proc_refresh, id, ts, v as f64);
                }
            }
        }
        if let Ok(true) = read_task_file(path, tdir, "schedstat", buf)
            && let Some([run, wait, slices]) = parse::parse_schedstat(buf)
        {
            put(out, proc_refresh, ids[4], ts, run as f64 / 1e9);
            put(out, proc_refresh, ids[5], ts, wait as f64 / 1e9);
            put(out, proc_refresh, ids[6], ts, slices as f64);
        }
    }
    proc.threads.sweep(out, now_ms());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Registry, STALE_NAN_BITS, Sample};

    /// A stat line of task `id` with `utime` ticks (the fields the source reads are real).
    fn stat(id: u32, utime: u64) -> String {
        format!("{id} (load) S 1 {id} {id} 0 -1 4194560 10 0 0 0 {utime} 5 0 0 20 0 2 0 77 1000 100 0 0\n")
    }

    fn write_task(root: &Path, rel: &str, id: u32, utime: u64) {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stat"), stat(id, utime)).unwrap();
    }

    /// The thread cpu (user) values and stale markers of one cycle, by tid.
    fn cycle(src: &mut ProcessesSource, reg: &mut Registry) -> Vec<(String, f64)> {
        let mut samples: Vec<Sample> = Vec::new();
        src.collect(&mut Collector::new(&mut *reg, &mut samples)).unwrap();
        let mut got: Vec<(String, f64)> = samples
            .iter()
            .filter_map(|s| {
                let series = reg.get(s.series)?;
                let labels = |n| reg.label(series, n);
                (labels("__name__") == Some("proc_tid_cpu_seconds_total") && labels("mode") == Some("user"))
                    .then(|| (labels("tid").unwrap_or_default().to_string(), s.value))
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        got
    }

    #[test]
    fn kept_descriptors_see_new_values_and_go_with_their_task() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_task(root, "10", 10, 100);
        write_task(root, "10/task/10", 10, 50);
        write_task(root, "10/task/11", 11, 50);
        let mut src = ProcessesSource::new(root, true, 100);
        let mut reg = Registry::new([]);
        assert_eq!(cycle(&mut src, &mut reg), [("10".into(), 0.5), ("11".into(), 0.5)]);
        // Both threads' stat are kept open now: rewritten in place, they read anew.
        assert!(src.tasks.get_mut(b"10").unwrap().stat.is_some());
        assert!(src.tasks.get_mut(b"10").unwrap().threads.get_mut(b"11").unwrap().stat.is_some());
        write_task(root, "10", 10, 200);
        write_task(root, "10/task/11", 11, 150);
        // (A plain collector refreshes every cycle: the unchanged thread comes too.)
        assert_eq!(cycle(&mut src, &mut reg), [("10".into(), 0.5), ("11".into(), 1.5)]);
        // A thread no longer listed ends (a stale marker), and its descriptor closes with it.
        std::fs::remove_dir_all(root.join("10/task/11")).unwrap();
        write_task(root, "10", 10, 300);
        let got = cycle(&mut src, &mut reg);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0] == ("10".into(), 0.5) && got[1].0 == "11" && got[1].1.to_bits() == STALE_NAN_BITS, "{got:?}");
        assert!(src.tasks.get_mut(b"10").unwrap().threads.get_mut(b"11").is_none());
    }

    #[test]
    fn nothing_is_kept_open_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        write_task(dir.path(), "10", 10, 100);
        write_task(dir.path(), "10/task/10", 10, 100);
        let mut src = ProcessesSource::new(dir.path(), true, 100);
        src.fd_limit = 0;
        let mut reg = Registry::new([]);
        assert_eq!(cycle(&mut src, &mut reg), [("10".into(), 1.0)]);
        assert!(src.tasks.get_mut(b"10").unwrap().stat.is_none());
        // Read afresh each cycle instead.
        write_task(dir.path(), "10", 10, 200);
        write_task(dir.path(), "10/task/10", 10, 200);
        assert_eq!(cycle(&mut src, &mut reg), [("10".into(), 2.0)]);
    }
}
