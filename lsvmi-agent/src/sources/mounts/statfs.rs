//! statfs(2) in a helper process, so a filesystem that never answers cannot stall the
//! sampling tick or keep the agent from exiting.
//!
//! Why a process and not a thread: a FUSE request that its server has already read
//! waits in uninterruptible sleep until the server answers or dies (`request_wait_answer`
//! in fs/fuse/dev.c). A thread in that state keeps its whole process alive through
//! SIGTERM and SIGKILL; a helper process stuck there is simply left behind (it exits
//! when the filesystem answers, or when it reads end-of-file from the agent).
//!
//! The helper is the agent's own binary (`/proc/self/exe --statfs-helper`): it reads
//! NUL-terminated paths on stdin and answers each with one fixed-size record on stdout.
//! The agent sends one round of paths per collection and waits a bounded time; a helper
//! that has not answered by then is set aside with the path it is stuck on (skipped
//! until that helper answers), and a fresh helper takes the rest.

use std::{
    collections::VecDeque,
    ffi::OsString,
    io::{self, BufRead as _, Read as _, Write as _},
    os::fd::AsFd as _,
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

/// The flag that makes the agent's binary serve as the helper (handled before clap).
pub const HELPER_FLAG: &str = "--statfs-helper";

/// Helpers left stuck at once, at most; past it, stuck paths are not retried until one
/// of them answers (each holds a process and its pipes).
pub const MAX_STUCK: usize = 8;

/// errno (0 on success), then f_blocks, f_bfree, f_bavail, f_files, f_ffree, f_frsize.
const RECORD: usize = 7 * 8;

/// The first word of the record a helper writes once, when it has started: until then
/// no question is sent, so a slow start (exec, a loaded host) is never taken for a
/// hung filesystem.
const READY: u64 = u64::MAX;

/// A helper not ready this long after its start is taken for broken and replaced.
const START_LIMIT: Duration = Duration::from_secs(5);

/// What statfs(2) said of one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub frsize: u64,
}

/// One answer: the numbers, or the errno statfs failed with.
pub type Answer = Result<Stat, i32>;

/// What happened to paths this round beyond their answers.
#[derive(Debug, Default)]
pub struct Events {
    /// Paths that did not answer within the wait: skipped until they do.
    pub stuck: Vec<String>,
    /// Paths that had been stuck and answered.
    pub recovered: Vec<String>,
    /// Paths not asked this round (stuck, or too many helpers stuck already).
    pub skipped: u64,
    /// MAX_STUCK helpers are stuck: no path is asked until one of them answers.
    pub paused: bool,
}

struct Helper {
    started: Instant,
    ready: bool,
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    buf: Vec<u8>,
    /// Paths sent and not answered yet, oldest first.
    pending: VecDeque<String>,
}

struct Stuck {
    path: String,
    helper: Helper,
}

/// The agent's side: one live helper, and the helpers set aside while stuck.
pub struct Prober {
    program: PathBuf,
    args: Vec<OsString>,
    live: Option<Helper>,
    stuck: Vec<Stuck>,
    /// Helpers that answered or died, not reaped yet.
    exited: Vec<Child>,
}

impl Prober {
    /// A prober running the agent's own binary as the helper.
    pub fn new() -> Self {
        Prober::with_command("/proc/self/exe", [HELPER_FLAG])
    }

    /// A prober running another helper program (tests).
    pub fn with_command(program: impl Into<PathBuf>, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        Prober {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            live: None,
            stuck: Vec::new(),
            exited: Vec::new(),
        }
    }

    /// Start the helper now, so that it is ready by the first round.
    pub fn start(&mut self) -> io::Result<()> {
        if self.live.is_none() {
            self.live = Some(self.spawn()?);
        }
        Ok(())
    }

    /// Whether `path` is set aside because its statfs has not answered.
    pub fn is_stuck(&self, path: &str) -> bool {
        self.stuck.iter().any(|s| s.path == path)
    }

    /// statfs each of `paths`, waiting `wait` at most in all, and call `f(index, answer)`
    /// for each answer (a path that was stuck and answered late is answered too).
    pub fn stat_all(
        &mut self,
        paths: &[String],
        wait: Duration,
        mut f: impl FnMut(usize, Answer),
    ) -> io::Result<Events> {
        let deadline = Instant::now() + wait;
        let mut events = Events::default();
        self.exited.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
        // Stuck helpers that answered (or died): their path is asked again from now on.
        let mut i = 0;
        while i < self.stuck.len() {
            let s = &mut self.stuck[i];
            let (answers, alive) = s.helper.read_available();
            if answers.is_empty() && alive {
                i += 1;
                continue;
            }
            let s = self.stuck.swap_remove(i);
            if let (Some(answer), Some(idx)) = (answers.first(), paths.iter().position(|p| *p == s.path)) {
                f(idx, *answer);
            }
            events.recovered.push(s.path);
            self.retire(s.helper);
        }
        let mut queue: VecDeque<usize> = VecDeque::new();
        for (idx, p) in paths.iter().enumerate() {
            if self.is_stuck(p) {
                events.skipped += 1;
            } else {
                queue.push_back(idx);
            }
        }
        while !queue.is_empty() {
            if self.stuck.len() >= MAX_STUCK {
                events.skipped += queue.len() as u64;
                events.paused = true;
                break;
            }
            if self.live.is_none() {
                self.live = Some(self.spawn()?);
            }
            let Some(helper) = self.live.as_mut() else { break };
            if !helper.ready && !helper.wait_ready(deadline) {
                if helper.started.elapsed() > START_LIMIT
                    && let Some(h) = self.live.take()
                {
                    self.retire(h);
                }
                events.skipped += queue.len() as u64;
                break;
            }
            // Send what the pipe takes; the rest waits for answers to make room.
            while let Some(&idx) = queue.front() {
                if !helper.send(&paths[idx])? {
                    break;
                }
                queue.pop_front();
            }
            if helper.pending.is_empty() {
                // Nothing could be sent (the helper's stdin is gone): try again next round.
                events.skipped += queue.len() as u64;
                if let Some(h) = self.live.take() {
                    self.retire(h);
                }
                break;
            }
            let sent: Vec<usize> = helper.pending.iter().filter_map(|p| paths.iter().position(|q| q == p)).collect();
            let mut answered = 0;
            let alive = helper.wait_answers(deadline, |answer| {
                if let Some(&idx) = sent.get(answered) {
                    f(idx, answer);
                }
                answered += 1;
            });
            if !alive {
                // The helper died (killed by someone, out of memory): its unanswered
                // paths wait for the next round, with a new helper.
                if let Some(h) = self.live.take() {
                    events.skipped += h.pending.len() as u64;
                    self.retire(h);
                }
                continue;
            }
            if helper.pending.is_empty() {
                continue; // all answered: send what the pipe could not take yet
            }
            // Out of time with answers missing: the oldest question is the one it is
            // stuck on. Set the helper aside with it; the other paths wait for the next
            // round and a new helper.
            let Some(mut h) = self.live.take() else { break };
            let Some(path) = h.pending.pop_front() else { break };
            events.skipped += (h.pending.len() + queue.len()) as u64;
            h.pending.clear();
            events.stuck.push(path.clone());
            self.stuck.push(Stuck { path, helper: h });
            break;
        }
        Ok(events)
    }

    fn spawn(&self) -> io::Result<Helper> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(io::Error::other("helper started without pipes"));
        };
        rustix::io::ioctl_fionbio(stdin.as_fd(), true)?;
        rustix::io::ioctl_fionbio(stdout.as_fd(), true)?;
        Ok(Helper {
            started: Instant::now(),
            ready: false,
            child,
            stdin,
            stdout,
            buf: Vec::new(),
            pending: VecDeque::new(),
        })
    }

    /// Let a helper go: closing its stdin ends it once it is not stuck in the kernel.
    fn retire(&mut self, helper: Helper) {
        let Helper { mut child, stdin, .. } = helper;
        drop(stdin);
        let _ = child.kill();
        self.exited.push(child);
    }
}

impl Default for Prober {
    fn default() -> Self {
        Prober::new()
    }
}

impl Helper {
    /// Queue one path; false when the pipe is full.
    fn send(&mut self, path: &str) -> io::Result<bool> {
        let mut msg = Vec::with_capacity(path.len() + 1);
        msg.extend_from_slice(path.as_bytes());
        msg.push(0);
        // Messages are far below PIPE_BUF, so a write is whole or refused whole.
        match self.stdin.write(&msg) {
            Ok(_) => {
                self.pending.push_back(path.to_string());
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Read the answers that are there now; false as second value when the helper is gone.
    fn read_available(&mut self) -> (Vec<Answer>, bool) {
        let mut answers = Vec::new();
        let alive = self.fill();
        while let Some(a) = self.take_record() {
            answers.push(a);
        }
        (answers, alive)
    }

    /// Wait until the helper said it is ready, or `deadline`; true when it is.
    fn wait_ready(&mut self, deadline: Instant) -> bool {
        loop {
            let alive = self.fill();
            // Answers come only after questions, so nothing but READY can be here.
            let _ = self.take_record();
            if self.ready || !alive || !self.poll_until(deadline) {
                return self.ready;
            }
        }
    }

    /// Wait until every pending path is answered or `deadline`; false if the helper died.
    fn wait_answers(&mut self, deadline: Instant, mut f: impl FnMut(Answer)) -> bool {
        loop {
            let alive = self.fill();
            while let Some(a) = self.take_record() {
                self.pending.pop_front();
                f(a);
            }
            if !alive {
                return false;
            }
            if self.pending.is_empty() || !self.poll_until(deadline) {
                return true;
            }
        }
    }

    /// Wait for something to read until `deadline`; false once the deadline has passed.
    fn poll_until(&self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let left = deadline - now;
        let timeout =
            rustix::event::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
        let mut fds = [rustix::event::PollFd::new(&self.stdout, rustix::event::PollFlags::IN)];
        // EINTR and the like just loop back to read and re-check the deadline.
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        true
    }

    /// Read what the pipe holds; false at end-of-file or a read error.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stdout.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    /// The next answer in the buffer (the READY record is taken in passing).
    fn take_record(&mut self) -> Option<Answer> {
        while self.buf.len() >= RECORD {
            let rec: Vec<u64> = self.buf[..RECORD]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect();
            self.buf.drain(..RECORD);
            if rec[0] == READY {
                self.ready = true;
                continue;
            }
            return Some(decode(&rec));
        }
        None
    }
}

fn decode(rec: &[u64]) -> Answer {
    match rec {
        [0, blocks, bfree, bavail, files, ffree, frsize] => {
            Ok(Stat { blocks: *blocks, bfree: *bfree, bavail: *bavail, files: *files, ffree: *ffree, frsize: *frsize })
        }
        [errno, ..] => Err(i32::try_from(*errno).unwrap_or(libc::EIO)),
        [] => Err(libc::EIO),
    }
}

fn encode(answer: Answer) -> [u8; RECORD] {
    let words = match answer {
        Ok(s) => [0, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.frsize],
        Err(errno) => [u64::try_from(errno).unwrap_or(libc::EIO as u64).max(1), 0, 0, 0, 0, 0, 0],
    };
    let mut out = [0u8; RECORD];
    for (slot, w) in out.chunks_exact_mut(8).zip(words) {
        slot.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// The helper's side: answer each NUL-terminated path on stdin until end-of-file.
pub fn serve() -> std::process::ExitCode {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut out = io::stdout().lock();
    let mut ready = [0u8; RECORD];
    ready[..8].copy_from_slice(&READY.to_le_bytes());
    if out.write_all(&ready).and_then(|()| out.flush()).is_err() {
        return std::process::ExitCode::SUCCESS;
    }
    let mut path = Vec::new();
    loop {
        path.clear();
        match input.read_until(0, &mut path) {
            Ok(0) | Err(_) => return std::process::ExitCode::SUCCESS,
            Ok(_) => {}
        }
        if path.last() == Some(&0) {
            path.pop();
        }
        let answer = match rustix::fs::statvfs(path.as_slice()) {
            Ok(st) => Ok(Stat {
                blocks: st.f_blocks,
                bfree: st.f_bfree,
                bavail: st.f_bavail,
                files: st.f_files,
                ffree: st.f_ffree,
                frsize: st.f_frsize,
            }),
            Err(e) => Err(e.raw_os_error()),
        };
        if out.write_all(&encode(answer)).and_then(|()| out.flush()).is_err() {
            return std::process::ExitCode::SUCCESS; // the agent is gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let s = Stat { blocks: 1, bfree: 2, bavail: 3, files: 4, ffree: 5, frsize: 4096 };
        for a in [Ok(s), Err(libc::EACCES)] {
            let bytes = encode(a);
            let words: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
            assert_eq!(decode(&words), a);
        }
    }

    #[test]
    fn a_helper_that_never_starts_is_not_taken_for_a_hung_filesystem() {
        // `sleep` never says it is ready: nothing is asked, nothing is called stuck.
        let mut p = Prober::with_command("sleep", ["30"]);
        let paths = vec!["/a".to_string(), "/b".to_string()];
        let started = Instant::now();
        let mut answers = 0;
        let ev = p.stat_all(&paths, Duration::from_millis(50), |_, _| answers += 1).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(answers, 0);
        assert!(ev.stuck.is_empty());
        assert_eq!(ev.skipped, 2);
    }

    #[test]
    fn a_path_without_an_answer_is_set_aside_and_skipped_until_it_answers() {
        // Says it is ready, then answers nothing: the first path asked is the stuck one.
        let script = "printf '\\377\\377\\377\\377\\377\\377\\377\\377'; head -c 48 /dev/zero; exec sleep 30";
        let mut p = Prober::with_command("sh", ["-c", script]);
        let paths = vec!["/a".to_string(), "/b".to_string()];
        let ev = p.stat_all(&paths, Duration::from_secs(2), |_, _| {}).unwrap();
        assert_eq!(ev.stuck.first().map(String::as_str), Some("/a"));
        assert!(p.is_stuck("/a"));
        let ev = p.stat_all(&paths, Duration::from_secs(2), |_, _| {}).unwrap();
        assert!(ev.skipped >= 1, "{ev:?}");
        assert!(!ev.stuck.contains(&"/a".to_string()), "reported once: {ev:?}");
    }

    #[test]
    fn helpers_left_stuck_are_bounded_and_past_the_bound_statfs_pauses() {
        let script = "printf '\\377\\377\\377\\377\\377\\377\\377\\377'; head -c 48 /dev/zero; exec sleep 30";
        let mut p = Prober::with_command("sh", ["-c", script]);
        let paths: Vec<String> = (0..MAX_STUCK + 3).map(|i| format!("/m{i}")).collect();
        let mut last = Events::default();
        for _ in 0..MAX_STUCK + 2 {
            last = p.stat_all(&paths, Duration::from_millis(300), |_, _| {}).unwrap();
        }
        assert_eq!(p.stuck.len(), MAX_STUCK);
        assert!(last.paused, "{last:?}");
        assert_eq!(last.skipped, paths.len() as u64);
    }
}
