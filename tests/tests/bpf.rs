//! The BPF programs in this kernel, under known load: the counters must move by at least
//! what the load causes. Needs root (skipped otherwise, with a line saying so).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lsvmi_tests::{agent_bin, is_root, run_agent, write_config};

/// Per series (the full line before the value), the first and last value printed.
fn first_last(stdout: &str, metric: &str) -> BTreeMap<String, (f64, f64)> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in stdout.lines().filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{')) {
        let mut parts = line.rsplitn(3, ' ');
        let (_ts, value, series) = (parts.next(), parts.next(), parts.next());
        let (Some(value), Some(series)) = (value.and_then(|v| v.parse::<f64>().ok()), series) else { continue };
        out.entry(series.to_string()).and_modify(|e| e.1 = value).or_insert((value, value));
    }
    out
}

/// N round trips between two threads over a socket pair: each side blocks on every
/// read, so each round trip is at least two voluntary switches.
fn ping_pong(n: usize) {
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        for _ in 0..n {
            b.read_exact(&mut byte).expect("read");
            b.write_all(&byte).expect("write");
        }
    });
    let mut byte = [7u8; 1];
    for _ in 0..n {
        a.write_all(&byte).expect("write");
        a.read_exact(&mut byte).expect("read");
    }
    echo.join().expect("echo thread");
}

#[test]
fn pipe_ping_pong_moves_the_switch_counters() {
    if !is_root() {
        eprintln!("skipping: BPF needs root");
        return;
    }
    const N: usize = 5000;
    // Load starts once the programs are attached and the first samples are taken.
    let load = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(1000));
        ping_pong(N);
    });
    let out = run_agent(&["--dry-run", "--duration", "3", "--cpus", "all"], Duration::from_secs(30));
    load.join().expect("load thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("eBPF disabled") && !stderr.contains("disabled:"), "a program did not load:\n{stderr}");

    let growth = |metric: &str, filter: &str| -> f64 {
        first_last(&stdout, metric).iter().filter(|(k, _)| k.contains(filter)).map(|(_, (a, b))| b - a).sum()
    };
    let all = growth("sched_context_switches_total", "");
    let voluntary = growth("sched_task_switches_total", "kind=\"voluntary\"");
    assert!(all >= 2.0 * N as f64, "context switches grew by {all}, want >= {}", 2 * N);
    assert!(voluntary >= 2.0 * N as f64, "voluntary switches grew by {voluntary}, want >= {}", 2 * N);
    assert!(!first_last(&stdout, "sched_migrations_total").is_empty(), "no migration counters\n{stderr}");
}

/// Voluntary context switches of all of `pid`'s threads so far: its wake-ups. (Being
/// preempted by the load is not the agent's doing, so involuntary ones are left out.)
fn task_switches(pid: u32) -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir").flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// Host-wide context switches so far (/proc/stat ctxt).
fn host_switches() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    text.lines().find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok()).expect("ctxt")
}

/// (agent switches/s, host switches/s) over `f`.
fn rates(pid: u32, f: impl FnOnce()) -> (f64, f64) {
    let (a0, h0, t0) = (task_switches(pid), host_switches(), Instant::now());
    f();
    let secs = t0.elapsed().as_secs_f64();
    ((task_switches(pid) - a0) as f64 / secs, (host_switches() - h0) as f64 / secs)
}

/// The toolchain notes' trap: a reader woken per event causes switches that are events.
/// The agent reads per-CPU maps on its tick, so its own switches follow its tick, not
/// the host's switch rate: a hundredfold more switches on the host leave it unchanged.
#[test]
fn the_agent_does_not_feed_on_the_switches_it_counts() {
    if !is_root() {
        eprintln!("skipping: BPF needs root");
        return;
    }
    let mut child = Command::new(agent_bin())
        .args(["--dry-run", "--cpus", "all"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(1500));
    let (agent_idle, host_idle) = rates(pid, || std::thread::sleep(Duration::from_secs(2)));
    let (agent_busy, host_busy) = rates(pid, || ping_pong(40_000));
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "agent {agent_idle:.1}/s idle, {agent_busy:.1}/s busy; host {host_idle:.0}/s idle, {host_busy:.0}/s busy"
    );
    assert!(host_busy > 5.0 * host_idle, "the load did not raise the host's switch rate: {host_idle} → {host_busy}");
    // A 100 ms tick wakes the agent ~10 times a second, plus the 1 s batch and stdout.
    assert!(agent_idle < 60.0, "agent switches {agent_idle}/s on an idle host");
    assert!(agent_busy < 2.0 * agent_idle + 20.0, "agent switches follow the host's: {agent_idle}/s → {agent_busy}/s");
}

#[test]
fn a_program_can_be_turned_off_in_config() {
    if !is_root() {
        eprintln!("skipping: BPF needs root");
        return;
    }
    let (_dir, config) = write_config("bpf_disable: [sched_migrate_task]\n");
    let out = run_agent(&["--dry-run", "--duration", "0.5", "--config", &config], Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("sched_context_switches_total{"), "sched_switch should still run");
    assert!(!stdout.contains("sched_migrations_total{"), "sched_migrate_task was disabled");
}
