//! The BPF programs in this kernel, under known load: the counters must move by at least
//! what the load causes. Needs root (skipped otherwise, with a line saying so).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    time::Duration,
};

use lsvmi_tests::{is_root, run_agent};

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
