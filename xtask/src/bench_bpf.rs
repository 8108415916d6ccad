//! `cargo xtask bench-bpf`: what each BPF program costs per event, measured by the kernel.
//!
//! With `kernel.bpf_stats_enabled=1` the kernel times every program run (`run_time_ns`,
//! `run_cnt`, shown by `bpftool prog show`). This starts the release agent (`--dry-run`:
//! no sink needed), drives scheduler load (`perf bench sched pipe`, or a socket
//! ping-pong when perf is missing, plus a loopback TCP stream and direct 4 KiB writes to a
//! loop device), and prints ns per event
//! for each lsvmi program from the difference of two snapshots. The sysctl is restored
//! afterwards. Timing adds a little to each run itself, so these are upper bounds.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cargo, status, workspace_root};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// Names of lsvmi's programs (bpftool shows the full name from BTF).
const PROGRAMS: &[&str] = &[
    "sched_switch",
    "sched_migrate_task",
    "softirq_entry",
    "softirq_exit",
    "tcp_retransmit_skb",
    "tcp_send_reset",
    "tcp_receive_reset",
    "inet_sock_set_state",
    "tcp_probe",
    "kfree_skb",
    // Deep-tracing sessions (`lsvmi trace start --profile sched|irq`), loaded only then.
    "trace_sched_waking",
    "trace_sched_wakeup_new",
    "trace_sched_switch",
    "trace_sched_migrate",
    "trace_irq_handler_entry",
    "trace_irq_handler_exit",
    "trace_softirq_raise",
    "trace_softirq_entry",
    "trace_softirq_exit",
    "trace_block_rq_insert",
    "trace_block_rq_issue",
    "trace_block_rq_complete",
];
/// Programs that run because tasks switch or move: their sum per switch is the cost of
/// the scheduler path.
const SCHED_PATH: &[&str] = &["sched_switch", "sched_migrate_task"];

/// (run_time_ns, run_cnt) per program name.
type Snapshot = BTreeMap<String, (u64, u64)>;

pub fn run(seconds: u64) -> anyhow::Result<()> {
    crate::setup::ensure()?;
    if Command::new("bpftool").arg("version").stdout(Stdio::null()).status().is_err() {
        bail!("bpftool not found: apt-get install bpftool");
    }
    status(cargo().args(["build", "--release", "-p", "lsvmi-agent"]))?;
    let before_sysctl = std::fs::read_to_string(STATS_SYSCTL).context("reading bpf_stats_enabled (root?)")?;
    std::fs::write(STATS_SYSCTL, "1").context("enabling kernel.bpf_stats_enabled (root?)")?;
    let tasks_config = workspace_root().join("target/bench-bpf-sched-tasks.yaml");
    std::fs::write(&tasks_config, "sources:\n  sched_tasks: {enabled: true}\n").context("writing the config")?;
    println!("\n### Default programs");
    let result = measure(seconds, None, None).and_then(|()| {
        println!("\n### With per-task times on (`sources: {{sched_tasks: {{enabled: true}}}}`)");
        measure(seconds, Some(tasks_config.to_str().unwrap_or_default()), None)?;
        for profile in ["sched", "irq", "block"] {
            println!("\n### During a `{profile}` trace session (`lsvmi trace start --profile {profile}`)");
            measure(seconds, None, Some(profile))?;
        }
        Ok(())
    });
    let _ = std::fs::write(STATS_SYSCTL, before_sysctl.trim());
    result
}

fn measure(seconds: u64, config: Option<&str>, session: Option<&str>) -> anyhow::Result<()> {
    let agent = workspace_root().join("target/release/lsvmi");
    let socket = workspace_root().join("target/bench-bpf-control.sock");
    let socket = socket.to_str().unwrap_or_default();
    let mut args = vec!["--dry-run", "--cpus", "all", "--control-socket", socket];
    args.extend(config.iter().flat_map(|c| ["--config", c]));
    let mut child = Command::new(&agent)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(File::create(workspace_root().join("target/bench-bpf-agent.log"))?)
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    std::thread::sleep(Duration::from_secs(2));
    if let Some(profile) = session {
        // Started before the load (its cost projection then fits) with room to run.
        let duration = format!("{}s", (seconds + 10).min(120));
        status(
            Command::new(&agent).args(["--control-socket", socket, "trace", "start", "--profile", profile]).args([
                "--duration",
                &duration,
                "--budget",
                "100%",
            ]),
        )?;
    }
    let first = snapshot()?;
    let t0 = Instant::now();
    drive_load(Duration::from_secs(seconds));
    let elapsed = t0.elapsed().as_secs_f64();
    let second = snapshot()?;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();

    println!("\n| program | events | events/s | ns/event |");
    println!("|---|---|---|---|");
    let mut any = false;
    let (mut path_ns, mut switches) = (0, 0);
    for name in PROGRAMS {
        // bpftool leaves run_time_ns out while it is 0: a program missing from a
        // snapshot has not run yet.
        let zero = (0, 0);
        let (a, b) = (first.get(*name).unwrap_or(&zero), second.get(*name).unwrap_or(&zero));
        let (ns, cnt) = (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1));
        if SCHED_PATH.contains(name) {
            path_ns += ns;
        }
        if *name == "sched_switch" {
            switches = cnt;
        }
        if cnt == 0 {
            println!("| {name} | 0 | 0 | - |");
            continue;
        }
        any = true;
        println!("| {name} | {cnt} | {:.0} | {:.1} |", cnt as f64 / elapsed, ns as f64 / cnt as f64);
    }
    if !any {
        bail!("no lsvmi program ran; see target/bench-bpf-agent.log");
    }
    if switches > 0 {
        println!(
            "\nScheduler path (sched_switch + sched_migrate_task) per context switch: {:.1} ns",
            path_ns as f64 / switches as f64
        );
    }
    Ok(())
}

/// `bpftool prog show`: the plain-text form has `name X` and `run_time_ns N run_cnt M`.
fn snapshot() -> anyhow::Result<Snapshot> {
    let out = Command::new("bpftool").args(["prog", "show"]).output().context("running bpftool")?;
    // Lines look like `1097: tracing  name sched_switch  tag … run_time_ns 123 run_cnt 4`.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut snap = Snapshot::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let field = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).copied();
        let (Some(name), Some(ns), Some(cnt)) = (field("name"), field("run_time_ns"), field("run_cnt")) else {
            continue;
        };
        if let (Ok(ns), Ok(cnt)) = (ns.parse::<u64>(), cnt.parse::<u64>()) {
            let e = snap.entry(name.to_string()).or_insert((0, 0));
            e.0 += ns;
            e.1 += cnt;
        }
    }
    Ok(snap)
}

/// Scheduler load (perf's pipe benchmark, or a socket ping-pong), a loopback TCP stream,
/// and block requests.
fn drive_load(dur: Duration) {
    let tcp = std::thread::spawn(move || tcp_stream(dur));
    let io = std::thread::spawn(move || direct_writes(dur));
    let refused = std::thread::spawn(move || refused_connects(dur));
    let perf = Command::new("perf")
        .args(["bench", "sched", "pipe", "-l", "100000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match perf {
        Ok(mut p) => {
            std::thread::sleep(dur);
            let _ = p.kill();
            let _ = p.wait();
        }
        Err(_) => ping_pong(dur),
    }
    let _ = tcp.join();
    let _ = refused.join();
    let _ = io.join();
}

/// Direct 4 KiB writes to a loop device over a file under target/ (each one a block
/// request, whatever the file system below), for `dur`. Without losetup, none.
fn direct_writes(dur: Duration) {
    let img = workspace_root().join("target/bench-bpf-disk.img");
    if File::create(&img).and_then(|f| f.set_len(64 << 20)).is_err() {
        return;
    }
    let Ok(out) = Command::new("losetup").args(["-f", "--show"]).arg(&img).output() else { return };
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || dev.is_empty() {
        return;
    }
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        let _ = Command::new("dd")
            .args(["if=/dev/zero", &format!("of={dev}"), "bs=4k", "count=2000", "oflag=direct"])
            .stderr(Stdio::null())
            .status();
    }
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    let _ = std::fs::remove_file(&img);
}

/// About 1000 refused connections a second: resets sent and received, and a NO_SOCKET
/// drop each, at a rate a busy server could see.
fn refused_connects(dur: Duration) {
    let Ok(closed) = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) else { return };
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        let _ = TcpStream::connect(closed);
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ping_pong(dur: Duration) {
    let Ok((mut a, mut b)) = std::os::unix::net::UnixStream::pair() else { return };
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while b.read_exact(&mut byte).is_ok() && b.write_all(&byte).is_ok() {}
    });
    let t0 = Instant::now();
    let mut byte = [1u8; 1];
    while t0.elapsed() < dur && a.write_all(&byte).is_ok() && a.read_exact(&mut byte).is_ok() {}
    drop(a);
    let _ = echo.join();
}

fn tcp_stream(dur: Duration) {
    let Ok(listener) = TcpListener::bind("127.0.0.1:0") else { return };
    let Ok(addr) = listener.local_addr() else { return };
    let sink = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    if let Ok(mut s) = TcpStream::connect(addr) {
        let buf = vec![0u8; 64 * 1024];
        let t0 = Instant::now();
        while t0.elapsed() < dur && s.write_all(&buf).is_ok() {}
    }
    let _ = sink.join();
}
