//! The BPF programs in this kernel, under known load: the counters must move by at least
//! what the load causes. Needs root (skipped otherwise, with a line saying so).

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lsvmi_tests::{
    agent_bin, is_root,
    load::{ping_pong, tcp_load},
    run_agent, write_config,
};

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

/// Growth of the sum of `metric`'s series whose labels contain `filter`.
fn growth(stdout: &str, metric: &str, filter: &str) -> f64 {
    first_last(stdout, metric).iter().filter(|(k, _)| k.contains(filter)).map(|(_, (a, b))| b - a).sum()
}

/// Sum of the last values of `metric`'s series whose labels contain `filter`. The BPF
/// counters start at zero with the agent, and a network series is only created once its
/// count is non-zero, so its last value is everything since the agent started.
fn total(stdout: &str, metric: &str, filter: &str) -> f64 {
    first_last(stdout, metric).iter().filter(|(k, _)| k.contains(filter)).map(|(_, (_, b))| b).sum()
}

/// Every program attached: no "not running" or "disabled" line.
fn assert_all_attached(stderr: &str) {
    for bad in ["eBPF disabled", "disabled:", "not running", "stays off"] {
        assert!(!stderr.contains(bad), "a program did not load ({bad}):\n{stderr}");
    }
}

#[test]
fn pipe_ping_pong_moves_the_scheduler_counters() {
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
    let (_dir, config) = write_config("sources:\n  sched_tasks: {enabled: true}\n");
    let out =
        run_agent(&["--dry-run", "--duration", "3", "--cpus", "all", "--config", &config], Duration::from_secs(30));
    load.join().expect("load thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_all_attached(&stderr);

    let all = growth(&stdout, "sched_context_switches_total", "");
    let voluntary = growth(&stdout, "sched_task_switches_total", "kind=\"voluntary\"");
    assert!(all >= 2.0 * N as f64, "context switches grew by {all}, want >= {}", 2 * N);
    assert!(voluntary >= 2.0 * N as f64, "voluntary switches grew by {voluntary}, want >= {}", 2 * N);
    assert!(!first_last(&stdout, "sched_migrations_total").is_empty(), "no migration counters\n{stderr}");

    // Each round trip wakes both sides: at least N run-queue latency observations.
    let observed = growth(&stdout, "sched_runq_latency_seconds_count", "");
    assert!(observed >= N as f64, "run-queue latency observations grew by {observed}, want >= {N}");
    let inf = growth(&stdout, "sched_runq_latency_seconds_bucket", "le=\"+Inf\"");
    assert_eq!(inf, observed, "the +Inf bucket counts every observation");

    // Busy time: positive, and no more than wall time on every CPU.
    let busy = growth(&stdout, "sched_cpu_busy_seconds_total", "");
    let cpus = first_last(&stdout, "sched_cpu_busy_seconds_total").len() as f64;
    assert!(busy > 0.0 && busy <= 3.5 * cpus, "busy seconds grew by {busy} on {cpus} CPUs in ~3 s");

    // Per-task times: this test process's threads ran and waited.
    let me = format!("pid=\"{}\"", std::process::id());
    let oncpu = growth(&stdout, "sched_task_oncpu_seconds_total", &me);
    assert!(oncpu > 0.0, "no on-CPU time for this process ({me})");
    assert!(
        first_last(&stdout, "sched_task_runq_wait_seconds_total").keys().any(|k| k.contains(&me)),
        "no run-queue wait series for this process"
    );
}

#[test]
fn tcp_connections_and_forced_drops_move_the_network_counters() {
    if !is_root() {
        eprintln!("skipping: BPF needs root");
        return;
    }
    const K: usize = 20;
    let load = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(1000));
        tcp_load(K);
    });
    let out = run_agent(&["--dry-run", "--duration", "5", "--cpus", "all"], Duration::from_secs(30));
    load.join().expect("load thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_all_attached(&stderr);

    // Client (SYN_SENT) and server (SYN_RECV) sides both reach ESTABLISHED.
    let established = total(&stdout, "net_tcp_state_transitions_total", "to=\"ESTABLISHED\"");
    assert!(established >= K as f64, "transitions to ESTABLISHED grew by {established}, want >= {K}");
    let resets = total(&stdout, "net_tcp_resets_sent_total", "");
    assert!(resets >= 1.0, "no reset sent for the refused connection\n{}", grep(&stdout, "net_"));
    assert!(total(&stdout, "net_tcp_resets_received_total", "") >= 1.0, "no reset received");
    let retransmits = total(&stdout, "net_tcp_retransmits_total", "");
    assert!(retransmits >= 1.0, "no retransmit counted while packets were dropped");
    let dropped = total(&stdout, "net_skb_drops_total", "reason=\"NETFILTER_DROP\"");
    assert!(dropped >= 1.0, "no NETFILTER_DROP drop counted\n{}", grep(&stdout, "net_skb_drops_total"));
    let records = total(&stdout, "net_events_total", "event=\"retransmit\"");
    assert!(records >= 1.0, "no retransmit record drained from the ring buffer");
    assert!(total(&stdout, "net_tcp_srtt_seconds_count", "") > 0.0, "no smoothed RTT sampled");
    let net_rx = growth(&stdout, "softirq_time_seconds_total", "type=\"NET_RX\"");
    assert!(net_rx > 0.0, "no NET_RX softirq time under loopback traffic");
    let lost = first_last(&stdout, "net_events_lost_total");
    assert!(lost.values().all(|(_, last)| *last == 0.0), "records lost at this low rate: {lost:?}");
}

fn grep(stdout: &str, metric: &str) -> String {
    stdout.lines().filter(|l| l.starts_with(metric)).collect::<Vec<_>>().join("\n")
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

/// aya-log output of the programs is forwarded only when the agent logs at debug level.
#[test]
fn program_logs_are_forwarded_at_debug_level_only() {
    if !is_root() {
        eprintln!("skipping: BPF needs root");
        return;
    }
    let line = "forwarding BPF program logs";
    let quiet = run_agent(&["--dry-run", "--duration", "0.3"], Duration::from_secs(20));
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains(line), "forwarded at the default level");
    let debug = run_agent(&["--dry-run", "--duration", "0.3", "--log-level", "debug"], Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&debug.stderr);
    assert!(debug.status.success() && stderr.contains(line), "not forwarded at debug level:\n{stderr}");
}

/// A thread spinning on one CPU for 1.5 s, never switching out: that CPU's busy time grows
/// by about as much (the agent adds the running stretch at every read), not by zero.
#[test]
fn a_cpu_busy_without_switching_reads_busy() {
    if !is_root() {
        eprintln!("skipping: BPF needs root");
        return;
    }
    let spin = std::thread::spawn(|| {
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity on this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(1, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        std::thread::sleep(Duration::from_millis(800));
        let start = lsvmi_tests::now_ms();
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(1500) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        start
    });
    let out = run_agent(&["--dry-run", "--duration", "3", "--cpus", "0"], Duration::from_secs(30));
    let start = spin.join().expect("spin");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let busy = growth(&stdout, "sched_cpu_busy_seconds_total", "cpu=\"1\"");
    assert!((1.3..=3.2).contains(&busy), "CPU 1 busy grew by {busy} s while a thread spun on it for 1.5 s");
    // And it grows while the spin lasts, not in one step when the thread finally leaves.
    let inside: Vec<(i64, f64)> = stdout
        .lines()
        .filter(|l| l.starts_with("sched_cpu_busy_seconds_total{") && l.contains("cpu=\"1\""))
        .filter_map(|l| {
            let mut p = l.rsplitn(3, ' ');
            let ts: i64 = p.next()?.parse().ok()?;
            let v: f64 = p.next()?.parse().ok()?;
            Some((ts, v))
        })
        .filter(|(ts, _)| *ts > start + 300 && *ts < start + 1200)
        .collect();
    let (Some(first), Some(last)) = (inside.first(), inside.last()) else { panic!("no samples during the spin") };
    let wall = (last.0 - first.0) as f64 / 1000.0;
    assert!(wall > 0.3 && last.1 - first.1 >= 0.8 * wall, "busy {first:?} → {last:?} during the spin");
}
