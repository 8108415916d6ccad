//! Triggered tracing with hindsight: a condition on the 100 ms data starts a session by
//! itself, and the session file holds what the always-on programs kept from before.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lsvmi_tests::{
    now_ms,
    session::{bpf_daemon, last_values, pin_to, text, timeline, trace},
};

/// Threads named `name` pinned to `cpu`: spinning (a hog) or sleeping 1 ms at a time.
fn on_cpu(name: &str, cpu: usize, spin: bool, stop: &Arc<AtomicBool>) -> JoinHandle<()> {
    let stop = stop.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            pin_to(cpu);
            while !stop.load(Relaxed) {
                if spin {
                    std::hint::spin_loop();
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
        .expect("thread")
}

/// Hogs on `cpu` until dropped.
struct Burst(Arc<AtomicBool>, Vec<JoinHandle<()>>);

impl Burst {
    fn on(cpu: usize) -> Burst {
        let stop = Arc::new(AtomicBool::new(false));
        // Three: each waits two slices of the others, well past the tests' 2 ms threshold
        // (two alone sit near it).
        let hogs = (0..3).map(|_| on_cpu("hog", cpu, true, &stop)).collect();
        Burst(stop, hogs)
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
        self.1.drain(..).for_each(|t| drop(t.join()));
    }
}

/// The id of the session `trace status` names, if a trigger started it.
fn triggered_session(socket: &std::path::Path) -> Option<String> {
    let status = text(&trace(socket, &["status"]).stdout);
    if !status.contains("started by trigger") {
        return None;
    }
    status.split("session ").nth(1)?.split_whitespace().next().map(str::to_string)
}

/// A daemon whose config has `trace:` lines `trace_yaml` (its session files in a
/// directory of the test's own), once its triggers are armed. None when the test cannot
/// run here (not root, fewer than two CPUs: the bursts need a CPU of their own).
struct Armed {
    vm: lsvmi_tests::Vm,
    socket: std::path::PathBuf,
    _daemon: lsvmi_tests::session::Daemon,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    _turn: std::sync::MutexGuard<'static, ()>,
}

fn armed(trace_yaml: &str) -> Option<Armed> {
    if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) < 2 {
        eprintln!("skipping: needs two CPUs");
        return None;
    }
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("lsvmi.yaml");
    let trace_dir = dir.path().join("trace");
    std::fs::write(&config, format!("trace:\n  dir: {}\n{trace_yaml}", trace_dir.display())).expect("config");
    let (turn, vm, tdir, daemon) = bpf_daemon(&["--config", config.to_str().expect("utf-8")])?;
    let socket = tdir.path().join("control.sock");
    // Past the triggers' warm-up (2 s from the start of collection).
    std::thread::sleep(Duration::from_millis(2500));
    Some(Armed { vm, socket, _daemon: daemon, _dirs: (dir, tdir), _turn: turn })
}

#[test]
fn a_burst_starts_a_session_with_the_seconds_before_and_a_second_burst_is_cooled_down() {
    let yaml = "  default_duration: 2s\n  triggers:\n    - {name: runq, metric: runq_latency, above: 2ms, for: 3}\n";
    let Some(a) = armed(yaml) else { return };
    let (vm, socket) = (&a.vm, a.socket.as_path());
    // A latency-sensitive thread on CPU 1.
    let stop = Arc::new(AtomicBool::new(false));
    let victim = on_cpu("feed", 1, false, &stop);
    std::thread::sleep(Duration::from_millis(300));
    let quiet = text(&trace(socket, &["status"]).stdout);
    assert_eq!(triggered_session(socket), None, "a session started before the burst: {quiet}");

    let burst_at = now_ms();
    let burst = Burst::on(1);
    let deadline = Instant::now() + Duration::from_secs(3);
    let id = loop {
        if let Some(id) = triggered_session(socket) {
            break id;
        }
        assert!(Instant::now() < deadline, "no session started within 3 s of the burst");
        std::thread::sleep(Duration::from_millis(20));
    };
    let started_ms: i64 = id.rsplit('-').next().and_then(|n| n.parse().ok()).expect("id");
    let status = text(&trace(socket, &["status"]).stdout);
    eprintln!("session {id} started {} ms after the burst began: {status}", started_ms - burst_at);
    assert!(id.starts_with("sched-"), "{id}");
    assert!((0..=400).contains(&(started_ms - burst_at)), "started {} ms after the burst", started_ms - burst_at);
    drop(burst);

    // Its file: which trigger and when, and hindsight records from before, naming a hog.
    let doc = timeline(socket);
    assert_eq!(doc["metadata"]["trigger"]["name"], "runq", "{}", doc["metadata"]);
    let fired_ms = doc["metadata"]["trigger"]["fired_ms"].as_i64().expect("fired_ms");
    let status = text(&trace(socket, &["status"]).stdout);
    let path = status.split("timeline: ").nth(1).map(str::trim).expect("timeline");
    let jsonl = std::fs::read_to_string(path.replace(".trace.json", ".events.jsonl")).expect("jsonl");
    let before: Vec<serde_json::Value> = jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["hindsight"] == true && l["before_trigger"] == true)
        .collect();
    let naming_hog = before.iter().filter(|l| l["comm"] == "hog" || l["held_by_comm"] == "hog").count();
    eprintln!("{} hindsight records before the trigger, {naming_hog} naming a hog", before.len());
    assert!(naming_hog > 0, "no hindsight record before the trigger names the hog: {:?}", before.first());
    assert!(
        before.iter().all(|l| l["ts_ns"].as_u64().is_some_and(|t| (t / 1_000_000) as i64 <= fired_ms + 1)),
        "a record marked before the trigger is dated after it"
    );

    // A second burst within the cooldown starts nothing, and is counted.
    let burst = Burst::on(1);
    std::thread::sleep(Duration::from_millis(1500));
    drop(burst);
    std::thread::sleep(Duration::from_millis(1500));
    let status = text(&trace(socket, &["status"]).stdout);
    assert!(status.contains(&format!("the last: session {id} ")), "a second session started: {status}");
    stop.store(true, Relaxed);
    victim.join().expect("victim");
    let outcome = |o: &str| -> f64 {
        last_values(vm, &format!(r#"lsvmi_trace_triggers_total{{trigger="runq",outcome="{o}"}}"#), "outcome")
            .iter()
            .map(|(_, v)| v)
            .sum()
    };
    // The count goes out with the next second's samples: wait for it to arrive.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        vm.force_flush();
        if outcome("cooldown") >= 1.0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (cooled, started) = (outcome("cooldown"), outcome("started"));
    assert_eq!(started, 1.0, "started");
    let all = last_values(vm, "lsvmi_trace_triggers_total", "outcome");
    assert!(cooled >= 1.0, "the second burst was not counted as cooled down ({cooled}); outcomes: {all:?}");
    let stamped = vm.export(&format!(r#"trace_session_trigger_timestamp_seconds{{session="{id}",trigger="runq"}}"#));
    assert!(!stamped.is_empty(), "no series says which trigger started {id}");

    // By hand: `lsvmi trace dump` writes the ring as it is now, the bursts' waits in it.
    let out = trace(socket, &["dump"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    let path = said.split("written to ").nth(1).map(str::trim).unwrap_or_else(|| panic!("{said}"));
    let jsonl = std::fs::read_to_string(path.replace(".trace.json", ".events.jsonl")).expect("dump jsonl");
    let hog_waits = jsonl.lines().filter(|l| l.contains("\"runqueue wait\"") && l.contains("\"hog\"")).count();
    assert!(hog_waits > 0, "the dump holds no wait of the hogs: {said}");
    serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).expect("dump")).expect("trace-event JSON");
}

/// Voluntary context switches of every thread of process `pid` (each one a sleep that
/// ended in a wake-up).
fn wakeups(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| s.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")?.trim().parse::<u64>().ok()))
        .sum()
}

#[test]
fn with_no_trigger_firing_nothing_reads_the_ring_and_the_agent_wakes_at_its_tick_rate() {
    // Records on every wait of a microsecond or more: the ring is written all the time.
    let yaml = "  hindsight: {runq_wait: 1us}\n  triggers:\n    - {name: never, metric: runq_latency, above: 10s}\n";
    let Some(a) = armed(yaml) else { return };
    let (vm, pid) = (&a.vm, a._daemon.0.id());
    let rate = |secs: u64, load: bool| {
        let (w0, t0) = (wakeups(pid), Instant::now());
        let deadline = t0 + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if load {
                lsvmi_tests::load::ping_pong(20_000);
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        (wakeups(pid) - w0) as f64 / t0.elapsed().as_secs_f64()
    };
    let quiet = rate(10, false);
    let busy = rate(50, true);
    vm.force_flush();
    let last =
        |name: &str| -> f64 { vm.export(name).iter().filter_map(|s| s.values.iter().flatten().last().copied()).sum() };
    let (records, dumps) = (last("trace_hindsight_records_total"), last("trace_hindsight_dumps_total"));
    eprintln!("agent wake-ups/s: {quiet:.1} quiet, {busy:.1} while the ring took {records} records; dumps {dumps}");
    assert!(records > 10_000.0, "the ring was hardly written ({records} records): the test set-up is off");
    assert_eq!(dumps, 0.0, "the ring was read with no trigger firing");
    // No reader, so no wake-up per record: the agent wakes for its own ticks only.
    assert!(busy <= quiet * 1.25 + 5.0, "{busy:.1} wake-ups/s with the ring busy vs {quiet:.1} quiet");
}

#[test]
fn a_triggered_session_its_budget_refuses_still_keeps_the_seconds_before() {
    // A budget no session fits in.
    let yaml = "  budget_percent: 0.00001\n  triggers:\n    - {name: runq, metric: runq_latency, above: 2ms, for: 3}\n";
    let Some(a) = armed(yaml) else { return };
    let (vm, socket) = (&a.vm, a.socket.as_path());
    let burst = Burst::on(1);
    std::thread::sleep(Duration::from_millis(1500));
    drop(burst);
    let status = text(&trace(socket, &["status"]).stdout);
    assert!(status.contains("ended (failed:") && status.contains("started by trigger runq"), "{status}");
    let doc = timeline(socket);
    assert_eq!(doc["metadata"]["trigger"]["name"], "runq", "{}", doc["metadata"]);
    assert!(doc["metadata"]["hindsight_records"].as_u64().is_some_and(|n| n > 0), "{}", doc["metadata"]);
    std::thread::sleep(Duration::from_millis(1200));
    vm.force_flush();
    let failed: f64 =
        last_values(vm, r#"lsvmi_trace_triggers_total{outcome="failed"}"#, "trigger").iter().map(|(_, v)| v).sum();
    assert!(failed >= 1.0, "the refused start was not counted as failed");
}
