//! Deep-tracing sessions driven like an operator would: `lsvmi trace …` against a running
//! daemon over its control socket.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lsvmi_tests::{
    agent_bin, is_root, run_command,
    session::{Daemon, KERNEL, bpf_daemon, gettid, last_values, phase, pin_to, text, timeline, trace},
};

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
fn without_ebpf_a_start_says_tracing_needs_it() {
    let dir = tempfile::tempdir().expect("dir");
    let _daemon = Daemon::start(dir.path(), &["--dry-run", "--no-bpf"]);
    let out = trace(&dir.path().join("control.sock"), &["start"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("deep tracing needs eBPF: eBPF is off (--no-bpf)"), "{out:?}");
}

#[test]
fn one_session_at_a_time_capped_stoppable_and_reported() {
    if !is_root() {
        eprintln!("skipping: tracing sessions need root for BPF");
        return;
    }
    let _turn = KERNEL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("dir");
    let _daemon = Daemon::start(dir.path(), &["--dry-run"]);
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
    let _daemon = Daemon::start(dir.path(), &["--dry-run", "--no-bpf"]);
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

/// Time thread `tid` of this process spent waiting on a runqueue (schedstat, ns).
fn run_delay(tid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).expect("schedstat");
    text.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("run_delay")
}

#[test]
fn sched_session_sees_a_victims_wait_as_schedstat_does_and_names_the_culprits() {
    let Some((_turn, vm, dir, _daemon)) = bpf_daemon(&[]) else { return };
    let socket = dir.path().join("control.sock");
    // CPU 1 if there is one: the agent keeps to housekeeping CPUs, both here.
    let cpu = usize::from(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) > 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spin = |stop: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        std::thread::spawn(move || {
            pin_to(cpu);
            let tid = gettid();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
            tid
        })
    };
    let busy = [spin(stop.clone()), spin(stop.clone())];
    let (tx, rx) = std::sync::mpsc::channel();
    let victim = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            pin_to(cpu);
            tx.send(gettid()).expect("tid");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(200) {
                    std::hint::spin_loop();
                }
            }
        })
    };
    let victim_tid = rx.recv().expect("victim tid");
    std::thread::sleep(Duration::from_millis(300));

    let pid = std::process::id().to_string();
    let out = trace(&socket, &["start", "--profile", "sched", "--pid", &pid, "--duration", "20s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = run_delay(victim_tid);
    std::thread::sleep(Duration::from_secs(3));
    let after = run_delay(victim_tid);
    let out = trace(&socket, &["stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let busy_tids: Vec<String> = busy.into_iter().map(|t| t.join().expect("busy").to_string()).collect();
    victim.join().expect("victim");

    // The session's last values go out on the source's next second, then its series end.
    std::thread::sleep(Duration::from_millis(2500));
    vm.force_flush();
    let tid = victim_tid.to_string();
    let waited: f64 = last_values(&vm, &format!(r#"trace_sched_wait_seconds_total{{tid="{tid}"}}"#), "cause")
        .iter()
        .map(|(_, v)| v)
        .sum();
    let schedstat = (after - before) as f64 / 1e9;
    assert!(schedstat > 0.1, "the victim hardly waited ({schedstat} s): the test set-up is off");
    // Its histogram holds the same waits.
    let hist_sum = last_values(&vm, &format!(r#"trace_sched_wait_latency_seconds_sum{{tid="{tid}"}}"#), "tid");
    assert!(hist_sum.first().is_some_and(|(_, v)| (v - waited).abs() < 1e-6), "{hist_sum:?} vs {waited}");
    let ratio = waited / schedstat;
    eprintln!("victim waited {waited:.3} s traced, {schedstat:.3} s by schedstat (ratio {ratio:.3})");
    assert!((0.9..=1.1).contains(&ratio), "traced wait {waited:.3} s vs schedstat run_delay {schedstat:.3} s");
    let culprits = last_values(&vm, "trace_sched_culprit_seconds_total", "tid");
    for b in &busy_tids {
        assert!(
            culprits.iter().any(|(t, v)| t == b && *v > 0.0),
            "busy thread {b} not among the culprits: {culprits:?}"
        );
    }

    // The timeline: trace-event JSON with the victim's waits on its track and on the
    // CPU's, ended by the busy threads, and the raw records beside it.
    let doc = timeline(&socket);
    let events = doc["traceEvents"].as_array().expect("traceEvents");
    let victim_slices: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["ph"] == "X" && e["tid"] == victim_tid && e["pid"] != -1).collect();
    assert!(!victim_slices.is_empty(), "no wait of the victim on its track");
    assert!(victim_slices.iter().all(|e| e["dur"].as_f64().is_some_and(|d| d >= 100.0)), "a slice under 100 µs");
    let ended_by_busy = victim_slices
        .iter()
        .filter(|e| {
            busy_tids.iter().any(|b| e["args"]["ended_by"].as_str().is_some_and(|x| x.contains(&format!("({b})"))))
        })
        .count();
    assert!(ended_by_busy > 0, "no wait ended by a busy thread: {:?}", victim_slices.first());
    assert!(
        events.iter().any(|e| e["ph"] == "M" && e["args"]["name"] == format!("CPU {cpu}")),
        "no track of CPU {cpu}"
    );
}

/// (run time, migrations) of thread `tid` of this process, by the kernel
/// (`/proc/<tid>/schedstat`, `/proc/<tid>/sched`).
fn run_and_migrations(tid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).expect("schedstat");
    let run = stat.split_whitespace().next().and_then(|v| v.parse().ok()).expect("run time");
    let sched = std::fs::read_to_string(format!("/proc/self/task/{tid}/sched")).expect("sched");
    let migrations = sched
        .lines()
        .find_map(|l| l.strip_prefix("se.nr_migrations")?.split(':').nth(1)?.trim().parse().ok())
        .expect("se.nr_migrations");
    (run, migrations)
}

#[test]
fn sched_session_splits_a_threads_time_off_cpu_and_counts_its_migrations() {
    let Some((_turn, vm, dir, _daemon)) = bpf_daemon(&[]) else { return };
    if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) < 2 {
        eprintln!("skipping: migrations need two CPUs");
        return;
    }
    let socket = dir.path().join("control.sock");
    let pid = std::process::id().to_string();
    let out = trace(&socket, &["start", "--profile", "sched", "--pid", &pid, "--duration", "20s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(300));
    // A thread that sleeps a millisecond at a time and moves between CPU 0 and 1 every
    // 20 sleeps, for 2 s; the kernel's own figures read from inside it.
    let (tid, lived, run, migrations) = std::thread::spawn(|| {
        let tid = gettid();
        let (run0, mig0) = run_and_migrations(tid);
        let t0 = Instant::now();
        let mut i = 0usize;
        while t0.elapsed() < Duration::from_secs(2) {
            if i.is_multiple_of(20) {
                pin_to((i / 20) % 2);
            }
            std::thread::sleep(Duration::from_millis(1));
            i += 1;
        }
        let (run1, mig1) = run_and_migrations(tid);
        (tid, t0.elapsed(), run1 - run0, mig1 - mig0)
    })
    .join()
    .expect("thread");
    std::thread::sleep(Duration::from_millis(300));
    assert!(trace(&socket, &["stop"]).status.success());
    std::thread::sleep(Duration::from_millis(2500));
    vm.force_flush();
    let one = |metric: &str| -> f64 {
        last_values(&vm, &format!(r#"{metric}{{tid="{tid}"}}"#), "tid").iter().map(|(_, v)| v).sum()
    };
    let slept = one("trace_sched_sleep_seconds_total");
    let waited = one("trace_sched_wait_seconds_total");
    let moved = one("trace_sched_migrations_total");
    let lived = lived.as_secs_f64();
    let accounted = slept + waited + run as f64 / 1e9;
    eprintln!(
        "lived {lived:.3} s: slept {slept:.3} + waited {waited:.4} + ran {:.4} = {accounted:.3} s; migrations {moved} traced, {migrations} by the kernel",
        run as f64 / 1e9
    );
    // Slept, waited and ran: its whole life (the session saw all of it).
    assert!((0.9..=1.1).contains(&(accounted / lived)), "accounted {accounted:.3} s of {lived:.3} s");
    assert!(slept > 0.5 * lived, "slept {slept:.3} s of {lived:.3} s");
    assert!(migrations >= 40, "the kernel counted {migrations} migrations for ~100 moves");
    assert!(
        (0.9..=1.1).contains(&(moved / migrations as f64)),
        "traced {moved} migrations vs the kernel's {migrations}"
    );
}

#[test]
fn a_session_of_many_threads_keeps_the_top_ten_and_folds_the_rest() {
    let Some((_turn, vm, dir, _daemon)) = bpf_daemon(&[]) else { return };
    let socket = dir.path().join("control.sock");
    let pid = std::process::id().to_string();
    let out = trace(&socket, &["start", "--profile", "sched", "--pid", &pid, "--duration", "20s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // 30 threads that each wake up 500 times.
    let threads: Vec<_> = (0..30)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..500 {
                    std::thread::sleep(Duration::from_micros(500));
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().expect("thread"));
    assert!(trace(&socket, &["stop"]).status.success());
    std::thread::sleep(Duration::from_millis(2500));
    vm.force_flush();
    for selector in [
        r#"trace_sched_waits_total{cause="woken"}"#,
        "trace_sched_sleep_seconds_total",
        r#"trace_sched_wait_latency_seconds_bucket{le="+Inf"}"#,
        "trace_sched_culprit_seconds_total",
    ] {
        let series = vm.export(selector);
        let other = series.iter().filter(|s| s.label("comm") == "_other").count();
        eprintln!("{selector}: {} series, {other} _other", series.len());
        assert!(series.len() <= 11, "{selector}: {} series (at most 10 + _other)", series.len());
        assert_eq!(other, 1, "{selector}: the rest folded into one _other series");
    }
}

/// Names of the session programs loaded in the kernel now (names are cut at 15 bytes).
fn session_programs_loaded() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| n.starts_with("trace_sched"))
        .collect()
}

#[test]
fn a_daemon_killed_mid_session_leaves_no_program_behind() {
    let Some((_turn, _vm, dir, mut daemon)) = bpf_daemon(&[]) else { return };
    let out = trace(&dir.path().join("control.sock"), &["start", "--duration", "60s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(session_programs_loaded().len(), 4, "the session's programs are not loaded");
    daemon.0.kill().expect("SIGKILL");
    let _ = daemon.0.wait();
    // The kernel releases programs with their last file descriptor; nothing was pinned.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !session_programs_loaded().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(session_programs_loaded(), Vec::<String>::new());
}

#[test]
fn a_session_over_its_budget_is_stopped_and_the_always_on_series_go_on() {
    // Every value every cycle, so a gap in cpu0's series could only be a stalled tick.
    let (_cfg_dir, config) = lsvmi_tests::write_config("sources: {proc_stat: {full_refresh_every: 0}}\n");
    let Some((_turn, vm, dir, _daemon)) = bpf_daemon(&["--config", &config]) else { return };
    let socket = dir.path().join("control.sock");
    let out = trace(&socket, &["start", "--budget", "0.1%", "--duration", "60s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let from = lsvmi_tests::now_ms();
    // Tens of thousands of switches a second: far over 0.1 % of a CPU.
    let load = std::thread::spawn(|| lsvmi_tests::load::ping_pong(100_000));
    let load_started = Instant::now();
    let (mut stepped, mut ended) = (None, None);
    while load_started.elapsed() < Duration::from_secs(10) {
        let status = text(&trace(&socket, &["status"]).stdout);
        if stepped.is_none() && status.contains("budget step:") {
            stepped = Some(load_started.elapsed());
        }
        if status.contains("ended (budget") {
            ended = Some((load_started.elapsed(), status));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (took, status) = ended.expect("the session was not stopped for its budget");
    eprintln!("stepped down {stepped:?} and stopped {took:?} after the load began: {status}");
    // Steps down first (thresholds, then one thread), and says so in its summary.
    let stepped = stepped.unwrap_or(took);
    assert!(stepped < Duration::from_secs(1), "first step {stepped:?} after the load began: {status}");
    assert!(status.contains("budget step: ") && status.contains("counting only waits of 10 µs"), "{status}");
    // Its summary says what it could not record.
    assert!(status.contains("events dropped: "), "{status}");
    assert!(took < Duration::from_secs(3), "stopped {took:?} after the load began: {status}");
    load.join().expect("load");
    let to = lsvmi_tests::now_ms();
    std::thread::sleep(Duration::from_millis(1500));
    vm.force_flush();
    let mut ts: Vec<i64> = vm
        .export(r#"proc_stat_cpu_seconds_total{cpu="0",mode="idle"}"#)
        .iter()
        .flat_map(|s| s.timestamps.iter().copied())
        .filter(|t| (from..to).contains(t))
        .collect();
    ts.sort_unstable();
    let worst = ts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(i64::MAX);
    assert!(worst <= 300, "a {worst} ms gap in the always-on series during the session");
}

/// `n` small writes over a loopback TCP connection, each read back by a peer thread.
fn loopback_stream(n: usize) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        for _ in 0..n {
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf[..1]).expect("ack");
        }
    });
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    let mut ack = [0u8; 1];
    for _ in 0..n {
        c.write_all(&[7u8; 64]).expect("write");
        c.read_exact(&mut ack).expect("ack");
    }
    reader.join().expect("reader");
}

/// /proc/softirqs: each vector's runs summed over CPUs.
fn softirq_totals() -> std::collections::BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/softirqs").expect("/proc/softirqs");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let (name, counts) = l.trim_start().split_once(':')?;
            Some((name.to_string(), counts.split_whitespace().filter_map(|c| c.parse::<u64>().ok()).sum()))
        })
        .collect()
}

#[test]
fn irq_session_counts_softirq_runs_as_proc_softirqs_does() {
    let Some((_turn, vm, dir, _daemon)) = bpf_daemon(&[]) else { return };
    let socket = dir.path().join("control.sock");
    // A budget that leaves the whole host traced: this compares counts, not cost.
    let out =
        trace(&socket, &["start", "--profile", "irq", "--duration", "20s", "--budget", "10%", "--threshold", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = softirq_totals();
    // Network receive work on loopback (NET_RX), and scheduler work (SCHED).
    loopback_stream(20_000);
    lsvmi_tests::load::ping_pong(20_000);
    std::thread::sleep(Duration::from_secs(1));
    let after = softirq_totals();
    let out = trace(&socket, &["stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(2500));
    vm.force_flush();
    let traced: std::collections::BTreeMap<String, f64> =
        last_values(&vm, "trace_softirq_runs_total", "vector").into_iter().collect();
    let mut compared = 0;
    for (vector, after_n) in &after {
        let grew = after_n - before.get(vector).copied().unwrap_or(0);
        if grew < 200 {
            continue; // too few to compare a window's edges against
        }
        let seen = traced.get(vector).copied().unwrap_or(0.0);
        let ratio = seen / grew as f64;
        eprintln!("{vector}: /proc/softirqs +{grew}, traced {seen}");
        // The session is active over a little more than the window between the reads.
        assert!((0.9..=1.1).contains(&ratio), "{vector}: traced {seen} vs /proc/softirqs {grew}");
        compared += 1;
    }
    assert!(compared >= 1, "no softirq vector ran enough to compare: {after:?}");
    // Per vector, a histogram that counts every run.
    let net_rx_count = last_values(&vm, r#"trace_softirq_run_duration_seconds_count{vector="NET_RX"}"#, "vector");
    assert_eq!(net_rx_count.first().map(|(_, v)| *v), traced.get("NET_RX").copied(), "histogram count");
    let inf = last_values(&vm, r#"trace_softirq_run_duration_seconds_bucket{vector="NET_RX",le="+Inf"}"#, "le");
    assert_eq!(inf.first().map(|(_, v)| *v), traced.get("NET_RX").copied(), "+Inf bucket");
    // The timeline (every run, --threshold 0s): NET_RX runs on the CPU tracks.
    let doc = timeline(&socket);
    let net_rx = phase(&doc, "X").into_iter().filter(|e| e["name"] == "NET_RX" && e["pid"] == -1).count();
    assert!(net_rx > 0, "no NET_RX slice on a CPU track");
    assert!(phase(&doc, "M").iter().any(|e| e["args"]["name"] == "CPU 0"), "no track of CPU 0");
}

#[test]
fn cpu_narrows_a_sched_session_to_waits_ending_there() {
    if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) < 2 {
        eprintln!("skipping: needs two CPUs");
        return;
    }
    let Some((_turn, vm, dir, _daemon)) = bpf_daemon(&[]) else { return };
    let socket = dir.path().join("control.sock");
    // A thread that keeps waking up on CPU 1 beside a spinner there…
    let load = Contention::on(1);
    let sleeper_tid = load.sleeper.to_string();
    // …traced on CPU 0 only: none of its waits is counted.
    let pid = std::process::id().to_string();
    let out = trace(&socket, &["start", "--pid", &pid, "--cpu", "0", "--duration", "20s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_secs(2));
    assert!(trace(&socket, &["stop"]).status.success());
    drop(load);
    std::thread::sleep(Duration::from_millis(2500));
    vm.force_flush();
    let waits = vm.export(&format!(r#"trace_sched_waits_total{{tid="{sleeper_tid}"}}"#));
    // (It may have a series for its sleeps, which --cpu does not narrow: with no wait.)
    let counted = waits.iter().flat_map(|s| s.values.iter().flatten()).any(|v| *v > 0.0);
    assert!(!counted, "waits on CPU 1 counted in a CPU 0 session: {waits:?}");
    // An out-of-range CPU is refused in one line.
    let out = trace(&socket, &["start", "--cpu", "64"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("CPUs 0-63"), "{}", text(&out.stderr));
}

/// A spinner and a thread that sleeps 1 ms at a time, both pinned to one CPU: the sleeper
/// waits behind the spinner at every wake-up. Stopped when dropped.
struct Contention {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    sleeper: u32,
}

impl Contention {
    fn on(cpu: usize) -> Contention {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let spin = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin_to(cpu);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let sleep = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin_to(cpu);
                tx.send(gettid()).expect("tid");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let sleeper = rx.recv().expect("sleeper tid");
        Contention { stop, threads: vec![spin, sleep], sleeper }
    }
}

impl Drop for Contention {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn follow_prints_the_sessions_waits_as_a_table_until_it_ends() {
    let Some((_turn, _vm, dir, _daemon)) = bpf_daemon(&[]) else { return };
    let load = Contention::on(usize::from(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) > 1));
    let pid = std::process::id().to_string();
    // Every wait (--threshold 0s): how long the sleeper waits behind the spinner varies.
    let args = ["start", "--pid", &pid, "--duration", "2s", "--threshold", "0s", "--follow"];
    let out = trace(&dir.path().join("control.sock"), &args);
    drop(load);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.get(1).is_some_and(|l| l.starts_with("TIME") && l.contains("ENDED BY")), "{table}");
    assert!(first_row_tid(&table) > 0, "no wait printed:\n{table}");
    assert!(lines.last().is_some_and(|l| l.contains("ended (deadline)")), "{table}");
}

/// The TID column of the first event row of a `--follow` table.
fn first_row_tid(table: &str) -> u64 {
    table.lines().skip(2).find_map(|l| l.split_whitespace().nth(3)?.parse().ok()).unwrap_or(0)
}

/// /proc/net/snmp's Tcp counter `name`.
fn tcp_counter(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").expect("/proc/net/snmp");
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else { panic!("no Tcp lines") };
    let at = names.split_whitespace().position(|n| n == name).expect(name);
    values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).expect("value")
}

#[test]
fn net_session_counts_resets_per_connection_as_proc_net_snmp_does() {
    let Some((_turn, vm, dir, _daemon)) = bpf_daemon(&[]) else { return };
    let socket = dir.path().join("control.sock");
    let out = trace(&socket, &["start", "--profile", "net", "--duration", "20s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The ring is drained on the 100 ms tick: let the session see its first one.
    std::thread::sleep(Duration::from_millis(300));
    let before = tcp_counter("OutRsts");
    // Connections to a closed port: each answered by a reset. All from one client port,
    // so the 300 resets are one connection's and its row tops the session's, whatever
    // else this host (and the tests running beside this one) sends: only the top rows
    // get series of their own, and 300 one-reset connections could all be folded.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
    let client = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
    for _ in 0..300 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        s.set_reuse_address(true).expect("SO_REUSEADDR");
        s.bind(&client.into()).expect("bind the client port");
        assert!(s.connect(&closed.into()).is_err());
    }
    std::thread::sleep(Duration::from_millis(300));
    let sent = tcp_counter("OutRsts") - before;
    let out = trace(&socket, &["stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(2500));
    vm.force_flush();
    let series = vm.export(r#"trace_net_events_total{event="send_reset"}"#);
    let traced: f64 = series.iter().filter_map(|s| s.values.iter().flatten().last().copied()).sum();
    let to_closed = series.iter().any(|s| {
        s.label("src").ends_with(&format!(":{}", closed.port()))
            || s.label("dst").ends_with(&format!(":{}", closed.port()))
    });
    eprintln!("OutRsts +{sent}, traced send_reset {traced}");
    assert!(sent >= 300, "the kernel sent {sent} resets for 300 refused connections");
    let ratio = traced / sent as f64;
    assert!((0.9..=1.1).contains(&ratio), "traced {traced} resets vs /proc/net/snmp OutRsts +{sent}");
    assert!(to_closed, "no series names the closed port: {series:?}");
    // The timeline: an instant per reset, on the tracks of the connections to the port.
    let doc = timeline(&socket);
    let resets = phase(&doc, "i").into_iter().filter(|e| e["name"] == "send_reset").count();
    assert!(resets as u64 >= 300, "{resets} reset instants on the timeline");
    let port = format!(":{}", closed.port());
    assert!(
        phase(&doc, "M").iter().any(|e| e["args"]["name"].as_str().is_some_and(|n| n.contains(&port))),
        "no connection track names the closed port"
    );
}

/// A loop device over a file of the test's own; detached when dropped.
struct Loop(String);

impl Loop {
    fn new(dir: &Path) -> Option<Loop> {
        let img = dir.join("disk.img");
        std::fs::File::create(&img).and_then(|f| f.set_len(64 << 20)).ok()?;
        let out = Command::new("losetup").args(["-f", "--show"]).arg(&img).output().ok()?;
        out.status.success().then(|| Loop(text(&out.stdout).trim().to_string()))
    }

    /// Writes and reads completed (/proc/diskstats).
    fn completed(&self) -> u64 {
        let name = self.0.trim_start_matches("/dev/");
        let text = std::fs::read_to_string("/proc/diskstats").expect("/proc/diskstats");
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&name))
            .map(|f| f[3].parse::<u64>().unwrap_or(0) + f[7].parse::<u64>().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn block_session_counts_requests_as_proc_diskstats_does() {
    let Some((_turn, vm, dir, _daemon)) = bpf_daemon(&[]) else { return };
    let Some(disk) = Loop::new(dir.path()) else {
        eprintln!("skipping: no loop device could be set up here");
        return;
    };
    let socket = dir.path().join("control.sock");
    let out = trace(&socket, &["start", "--profile", "block", "--duration", "20s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = disk.completed();
    // Direct I/O: every 4 KiB write is one request to the loop device.
    let st = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", disk.0), "bs=4k", "count=500", "oflag=direct"])
        .stderr(Stdio::null())
        .status()
        .expect("dd");
    assert!(st.success());
    let done = disk.completed() - before;
    assert!(trace(&socket, &["stop"]).status.success());
    std::thread::sleep(Duration::from_millis(2500));
    vm.force_flush();
    let device = disk.0.trim_start_matches("/dev/");
    let traced: f64 = last_values(&vm, &format!(r#"trace_block_requests_total{{device="{device}"}}"#), "comm")
        .iter()
        .map(|(_, v)| v)
        .sum();
    eprintln!("{device}: /proc/diskstats +{done}, traced {traced}");
    assert!(done >= 500, "{done} requests completed for 500 direct writes");
    let ratio = traced / done as f64;
    assert!((0.9..=1.1).contains(&ratio), "traced {traced} requests vs /proc/diskstats +{done}");
    let by_dd = last_values(&vm, &format!(r#"trace_block_requests_total{{device="{device}",comm="dd"}}"#), "pid");
    assert!(!by_dd.is_empty(), "the requests were not put on dd");
    let hist = last_values(&vm, &format!(r#"trace_block_device_latency_seconds_count{{device="{device}"}}"#), "comm");
    assert_eq!(hist.iter().map(|(_, v)| v).sum::<f64>(), traced, "the device-time histograms count every request");
    // The timeline: each of dd's requests at the device, as an async slice.
    let doc = timeline(&socket);
    let at_device = phase(&doc, "b").into_iter().filter(|e| e["name"] == "dd at device" && e["cat"] == device).count();
    assert!(at_device >= 500, "{at_device} of dd's requests on the timeline");
}
