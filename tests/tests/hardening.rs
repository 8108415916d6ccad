//! Hostile conditions from issue 10, against the real agent and a real VictoriaMetrics:
//! a filesystem whose statfs never answers, stacked mounts, credentials in an endpoint
//! URL, an unusable or shared spool directory, corrupt input.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lsvmi_tests::{Vm, agent_bin, fuse::HungFs, is_root, run_agent, write_config};

/// SIGTERM the child and wait for it to exit; panics if it does not within `limit`
/// (a liveness bound: a hang would be forever, so the bound is generous).
fn terminate(child: &mut std::process::Child, limit: Duration) -> Duration {
    let started = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    loop {
        if child.try_wait().expect("wait").is_some() {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the agent did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_filesystem_that_never_answers_statfs_stalls_nothing() {
    if !is_root() || !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("skipping: needs root and /dev/fuse to mount a FUSE filesystem");
        return;
    }
    let vm = Vm::start();
    let mnt = tempfile::tempdir().expect("mountpoint");
    let logdir = tempfile::tempdir().expect("log dir");
    let log = logdir.path().join("agent.log");
    // Every value every cycle, so a gap in cpu0's series can only be a stalled tick; the
    // hung filesystem's type allowed so the agent really statfs's it.
    let (_cfg_dir, config) = write_config(&format!(
        "shutdown_timeout: 5s\nsources:\n  proc_stat: {{full_refresh_every: 0}}\n  \
         proc_mounts: {{interval: 1s, fs_types: [{}, ext4, tmpfs]}}\n  proc_pid: {{enabled: false}}\n",
        lsvmi_tests::fuse::FS_TYPE
    ));
    let spool = tempfile::tempdir().expect("spool");
    let mut agent = Command::new(agent_bin())
        .args(["--endpoint", &vm.write_url(), "--config", &config, "--no-bpf"])
        .arg("--spool-dir")
        .arg(spool.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("agent");
    std::thread::sleep(Duration::from_millis(1500));
    let hung = HungFs::mount(mnt.path()).expect("mount the test's FUSE filesystem");
    let from = lsvmi_tests::now_ms();
    std::thread::sleep(Duration::from_secs(5));
    let to = lsvmi_tests::now_ms();
    assert!(hung.statfs_seen.load(std::sync::atomic::Ordering::Relaxed) >= 1, "the agent never asked the hung mount");
    // The helper is stuck in the kernel; the agent must still stop, within its deadline.
    let took = terminate(&mut agent, Duration::from_secs(30));
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    drop(hung);
    let mountpoint = mnt.path().to_str().expect("utf-8");
    assert!(stderr.contains(&format!("statfs on {mountpoint} did not answer")), "{stderr}");
    assert_eq!(stderr.matches("did not answer").count(), 1, "reported once: {stderr}");
    assert!(took < Duration::from_secs(15), "stop took {took:?}");

    vm.force_flush();
    let cpu0 = vm.export(r#"proc_stat_cpu_seconds_total{cpu="0",mode="idle"}"#);
    let mut ts: Vec<i64> =
        cpu0.iter().flat_map(|s| s.timestamps.iter().copied()).filter(|t| (from..to).contains(t)).collect();
    ts.sort_unstable();
    assert!(ts.len() >= 30, "{} cpu0 samples in 5 s", ts.len());
    let worst = ts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(i64::MAX);
    assert!(worst <= 300, "a {worst} ms gap in cpu0's samples while the mount hung");
    let timeouts = vm.export(r#"lsvmi_source_errors_total{source="proc_mounts",reason="timeout"}"#);
    let last = timeouts.iter().filter_map(|s| s.values.iter().flatten().last().copied()).fold(0.0, f64::max);
    assert!(last >= 1.0, "timeout not counted: {timeouts:?}");
    // Every other mount still reported.
    assert!(!vm.export(r#"proc_mount_size_bytes{mountpoint="/"}"#).is_empty());
}

#[test]
fn stacked_mounts_give_one_series_per_mountpoint() {
    if !is_root() {
        eprintln!("skipping: needs root to mount tmpfs");
        return;
    }
    let dir = tempfile::tempdir().expect("mountpoint");
    let target = std::ffi::CString::new(dir.path().to_str().expect("utf-8")).expect("path");
    let mount = |size: &str| {
        let opts = std::ffi::CString::new(format!("size={size}")).expect("opts");
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc =
            unsafe { libc::mount(c"lsvmitest".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, opts.as_ptr().cast()) };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
    };
    mount("1m");
    mount("2m"); // on top: the one a path there reaches
    let out = run_agent(
        &[
            "--dry-run",
            "--no-bpf",
            "--duration",
            "2.5",
            "--config",
            &write_config("sources: {proc_mounts: {interval: 1s}}\n").1,
        ],
        Duration::from_secs(30),
    );
    for _ in 0..2 {
        // SAFETY: as above.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let series = r#"proc_mount_size_bytes{device="lsvmitest",fstype="tmpfs","#;
    let lines: Vec<&str> =
        stdout.lines().filter(|l| l.starts_with(series) && l.contains(dir.path().to_str().unwrap())).collect();
    assert!(!lines.is_empty(), "no sample for the stacked mountpoint");
    let mut stamps: Vec<&str> = lines.iter().filter_map(|l| l.rsplit(' ').next()).collect();
    let n = stamps.len();
    stamps.sort_unstable();
    stamps.dedup();
    assert_eq!(stamps.len(), n, "two samples with one timestamp: {lines:?}");
    assert!(lines.iter().all(|l| l.contains(" 2097152 ")), "not the top mount's size: {lines:?}");
}

#[test]
fn a_password_in_an_endpoint_url_is_refused_and_never_printed() {
    let out =
        run_agent(&["--endpoint", "http://user:s3cr3t@127.0.0.1:1/api/v1/write", "--no-bpf"], Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("credentials in the URL") && stderr.contains("auth.password_file"), "{stderr}");
    assert!(!stderr.contains("s3cr3t") && !String::from_utf8_lossy(&out.stdout).contains("s3cr3t"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn an_unusable_or_shared_spool_directory_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("file");
    let out =
        run_agent(&["--spool-dir", file.to_str().unwrap(), "--no-bpf", "--duration", "1"], Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid spool.dir") && stderr.contains("a-file"), "{stderr}");

    // A second agent on the spool directory of a running one.
    let spool = tempfile::tempdir().expect("spool");
    let spool_dir = spool.path().to_str().expect("utf-8").to_string();
    let mut first = Command::new(agent_bin())
        .args(["--endpoint", "http://127.0.0.1:1/api/v1/write", "--no-bpf", "--spool-dir", &spool_dir])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("first agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !spool.path().join("failover/lock").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run_agent(
        &["--endpoint", "http://127.0.0.1:1/api/v1/write", "--no-bpf", "--spool-dir", &spool_dir, "--duration", "1"],
        Duration::from_secs(20),
    );
    terminate(&mut first, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("in use by another lsvmi process"), "{stderr}");
}

#[test]
fn huge_cpu_numbers_and_bad_escapes_are_one_warning_each_and_the_agent_runs_on() {
    let tree = tempfile::tempdir().expect("tree");
    let st = Command::new("cp")
        .arg("-r")
        .arg(lsvmi_tests::testdata().join("proc/debian12-6.18-2cpu/."))
        .arg(tree.path())
        .status()
        .expect("cp");
    assert!(st.success());
    let edit = |name: &str, f: &dyn Fn(String) -> String| {
        let p = tree.path().join(name);
        let text = std::fs::read_to_string(&p).expect(name);
        std::fs::write(&p, f(text)).expect(name);
    };
    edit("stat", &|t| t.replacen("cpu1 ", "cpu4000000000 ", 1));
    edit("interrupts", &|t| t.replacen("CPU1", "CPU4000000000", 1));
    edit("softirqs", &|t| t.replacen("CPU1", "CPU4000000000", 1));
    edit("self/mountinfo", &|t| format!("{t}99 1 0:99 / /bad\\777name rw - ext4 /dev/x rw\n"));
    let out = run_agent(
        &["--procfs-root", tree.path().to_str().unwrap(), "--dry-run", "--no-bpf", "--duration", "1.5"],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for source in ["proc_stat", "proc_interrupts", "proc_softirqs", "proc_mounts"] {
        let warnings = stderr.lines().filter(|l| l.contains("malformed lines skipped") && l.contains(source)).count();
        assert_eq!(warnings, 1, "{source}: {stderr}");
    }
    // What was well-formed still went out.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#"proc_stat_cpu_seconds_total{cpu="0""#), "{stderr}");
}
