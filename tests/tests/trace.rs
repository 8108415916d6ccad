//! Deep-tracing sessions driven like an operator would: `lsvmi trace …` against a running
//! daemon over its control socket.

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use lsvmi_tests::{agent_bin, is_root, run_command};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `lsvmi --control-socket <socket> trace <args…>`
fn trace(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--control-socket").arg(socket).arg("trace").args(args);
    run_command(&mut cmd, Duration::from_secs(30))
}

/// A daemon with a control socket in `dir`, sending nowhere; killed when dropped.
struct Daemon(Child);

impl Daemon {
    fn start(dir: &Path, extra: &[&str]) -> Daemon {
        let socket = dir.join("control.sock");
        let child = Command::new(agent_bin())
            .args(["--dry-run", "--no-bpf", "--control-socket"])
            .arg(&socket)
            .arg("--spool-dir")
            .arg(dir.join("spool"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(socket.exists(), "the daemon never opened its control socket");
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn without_a_daemon_one_clear_line_and_exit_1() {
    let dir = tempfile::tempdir().expect("dir");
    let out = trace(&dir.path().join("nobody-here.sock"), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no lsvmi daemon answers on"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn one_session_at_a_time_capped_stoppable_and_reported() {
    let dir = tempfile::tempdir().expect("dir");
    let _daemon = Daemon::start(dir.path(), &[]);
    let socket = dir.path().join("control.sock");
    let mode = std::fs::metadata(&socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let out = trace(&socket, &["status"]);
    assert!(out.status.success() && text(&out.stdout).contains("no trace session running"), "{out:?}");
    let out = trace(&socket, &["start", "--profile", "sched", "--duration", "30s"]);
    let started = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(started.contains("session sched-") && started.contains("runs until"), "{started}");
    let id = started.split_whitespace().nth(1).expect("id").to_string();

    // A second start says which session runs and until when.
    let out = trace(&socket, &["start", "--profile", "irq"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&id) && err.contains("runs until"), "{err}");

    let out = trace(&socket, &["status"]);
    assert!(text(&out.stdout).contains(&id), "{out:?}");
    let out = trace(&socket, &["stop"]);
    assert!(text(&out.stdout).contains("ended (stopped)"), "{out:?}");
    let out = trace(&socket, &["status"]);
    assert!(text(&out.stdout).contains("no trace session running; the last: session"), "{out:?}");

    // Above the cap: refused, naming the cap.
    let out = trace(&socket, &["start", "--duration", "5m"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cap of 2m"), "{}", text(&out.stderr));
    // A session ends by itself at its deadline.
    let out = trace(&socket, &["start", "--duration", "1s"]);
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let out = trace(&socket, &["status"]);
    assert!(text(&out.stdout).contains("ended (deadline)"), "{out:?}");
}

#[test]
fn a_caller_that_is_neither_root_nor_the_daemons_user_is_refused() {
    if !is_root() {
        eprintln!("skipping: needs root to run the client as another user");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let _daemon = Daemon::start(dir.path(), &[]);
    let socket = dir.path().join("control.sock");
    let as_nobody = |socket: &Path| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(agent_bin())
            .arg("--control-socket")
            .arg(socket)
            .args(["trace", "start"]);
        run_command(&mut cmd, Duration::from_secs(20))
    };
    // The directory and the socket keep others out…
    let _ = std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755));
    let out = as_nobody(&socket);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("permission denied"), "{}", text(&out.stderr));
    // …and were the socket opened to all, the daemon checks the caller itself.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).expect("chmod");
    let out = as_nobody(&socket);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not permitted"), "{}", text(&out.stderr));
}
