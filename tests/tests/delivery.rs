//! Delivery under real failures: a VictoriaMetrics that goes away and comes back, an
//! agent killed while spooling, a full spool, a receiver that fails on purpose, and two
//! endpoints. The agent's own counters are compared with what the sinks hold.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lsvmi_tests::{Exported, Vm, agent_bin, free_port, now_ms, read_request, run_agent, write_config};

/// `key=value` of the agent's last "lsvmi stopped" line.
fn stopped(stderr: &str, key: &str) -> u64 {
    let line =
        stderr.lines().rev().find(|l| l.contains("lsvmi stopped")).unwrap_or_else(|| panic!("no stop line:\n{stderr}"));
    let needle = format!("{key}=");
    let at = line.find(&needle).unwrap_or_else(|| panic!("{key} missing: {line}")) + needle.len();
    line[at..].split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

/// Few sources, so exports stay small: the 100 ms CPU table, the agent's own metrics.
const LEAN: &str = "sources:\n  proc_pid: {enabled: false}\n  proc_mounts: {enabled: false}\n  proc_interrupts: {enabled: false}\n  proc_vmstat: {enabled: false}\n  proc_net_netstat: {enabled: false}\n  proc_net_snmp6: {enabled: false}\n  qdisc: {enabled: false}\n";

/// Every value of every series, and a check that no series has a timestamp twice.
fn all_values(vm: &Vm) -> (Vec<Exported>, usize) {
    vm.force_flush();
    let series = vm.export(r#"{__name__=~".+"}"#);
    let mut total = 0;
    for s in &series {
        let unique: BTreeSet<i64> = s.timestamps.iter().copied().collect();
        assert_eq!(unique.len(), s.timestamps.len(), "a sample stored twice in {:?}", s.metric);
        total += s.timestamps.len();
    }
    (series, total)
}

#[test]
fn victoriametrics_down_for_30_s_loses_nothing_and_duplicates_nothing() {
    let mut vm = Vm::start();
    let (_cfg_dir, config) = write_config(LEAN);
    let url = vm.write_url();
    let agent = std::thread::spawn(move || {
        run_agent(&["--endpoint", &url, "--config", &config, "--no-bpf", "--duration", "45"], Duration::from_secs(90))
    });
    std::thread::sleep(Duration::from_secs(5));
    vm.stop();
    std::thread::sleep(Duration::from_secs(30));
    vm.restart();
    let out = agent.join().expect("agent thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let (collected, sent, dropped) =
        (stopped(&stderr, "collected"), stopped(&stderr, "sent"), stopped(&stderr, "dropped"));
    assert_eq!(dropped, 0, "{stderr}");
    assert_eq!(sent, collected, "{stderr}");
    assert!(stderr.contains("remote write failed"), "the outage was not noticed:\n{stderr}");
    let (_, stored) = all_values(&vm);
    assert_eq!(stored as u64, collected, "VictoriaMetrics holds {stored} samples, the agent collected {collected}");
}

#[test]
fn killed_while_spooling_then_restarted_delivers_every_spooled_sample() {
    let spool = tempfile::tempdir().expect("spool");
    let spool_dir = spool.path().to_str().expect("utf-8").to_string();
    let (_cfg_dir, config) = write_config(LEAN);
    let mut child = spool_into_nowhere(&config, &spool_dir);
    std::thread::sleep(Duration::from_secs(5));
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // A torn write at the end of the newest segment, as a kill in mid-write leaves it.
    let segments: Vec<_> =
        walk(spool.path()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "seg")).collect();
    let newest = segments.iter().max().expect("a spool segment");
    std::fs::OpenOptions::new().append(true).open(newest).unwrap().write_all(b"LSV1\x40\x00\x00\x00torn").unwrap();

    let vm = Vm::start();
    let restart_ms = now_ms();
    let out = run_agent(
        &["--endpoint", &vm.write_url(), "--config", &config, "--no-bpf", "--spool-dir", &spool_dir, "--duration", "3"],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("the rest of this segment is skipped"), "torn record not reported:\n{stderr}");
    let line = stderr.lines().find(|l| l.contains("replaying them first")).unwrap_or_else(|| panic!("{stderr}"));
    let spooled: usize =
        line.split("samples=").nth(1).and_then(|v| v.split_whitespace().next()?.parse().ok()).expect(line);
    assert!(spooled > 0);
    let (series, _) = all_values(&vm);
    let before_restart: usize = series.iter().map(|s| s.timestamps.iter().filter(|t| **t < restart_ms).count()).sum();
    assert_eq!(before_restart, spooled, "spooled {spooled}, delivered {before_restart} from the first run");
}

/// An agent whose endpoint nothing listens on: everything goes to the spool.
fn spool_into_nowhere(config: &str, spool_dir: &str) -> std::process::Child {
    let dead = format!("http://127.0.0.1:{}/api/v1/write", free_port());
    Command::new(agent_bin())
        .args(["--endpoint", &dead, "--config", config, "--no-bpf", "--spool-dir", spool_dir])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent")
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_full_spool_drops_the_oldest_counts_them_and_the_agent_runs_on() {
    let (_cfg_dir, config) = write_config("spool: {max_bytes: 65536}\nshutdown_timeout: 1s\n");
    let dead = format!("http://127.0.0.1:{}/api/v1/write", free_port());
    let out =
        run_agent(&["--endpoint", &dead, "--config", &config, "--no-bpf", "--duration", "6"], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("spool full"), "{stderr}");
    assert!(stopped(&stderr, "dropped") > 0, "{stderr}");
}

/// A remote-write receiver of our own: answers each request with the next scripted
/// status (then 204), after `delay`, and records what it got.
struct Receiver {
    port: u16,
    log: Arc<RequestLog>,
}

/// (status answered, body, when) per request.
type RequestLog = Mutex<Vec<(u16, Vec<u8>, Instant)>>;

impl Receiver {
    fn start(script: Vec<u16>, delay: Duration) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let l = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (l, script) = (l.clone(), script.clone());
                std::thread::spawn(move || serve(conn, &l, &script, delay));
            }
        });
        Receiver { port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }
}

type Script = Mutex<std::vec::IntoIter<u16>>;

fn serve(mut conn: TcpStream, log: &RequestLog, script: &Script, delay: Duration) {
    let mut buf = Vec::new();
    while let Some((_, body)) = read_request(&mut conn, &mut buf) {
        let status = script.lock().unwrap().next().unwrap_or(204);
        std::thread::sleep(delay);
        log.lock().unwrap().push((status, body, Instant::now()));
        let text = if status == 204 { "" } else { "scripted failure" };
        let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{text}", text.len());
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn a_500_is_retried_after_back_off_and_the_batch_arrives_once() {
    let rx = Receiver::start(vec![500], Duration::ZERO);
    let out = run_agent(&["--endpoint", &rx.url(), "--no-bpf", "--duration", "2.5"], Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = rx.log.lock().unwrap();
    assert!(log.len() >= 3, "{} requests", log.len());
    assert_eq!(log[0].0, 500);
    assert_eq!(log[1].1, log[0].1, "the failed batch is retried first");
    assert!(log[1].2 - log[0].2 >= Duration::from_millis(100), "retried without back-off");
    let accepted: Vec<&Vec<u8>> = log.iter().filter(|r| r.0 == 204).map(|r| &r.1).collect();
    let unique: BTreeSet<&Vec<u8>> = accepted.iter().copied().collect();
    assert_eq!(unique.len(), accepted.len(), "a batch accepted twice");
}

#[test]
fn a_400_is_not_retried() {
    let rx = Receiver::start(vec![400], Duration::ZERO);
    let out = run_agent(&["--endpoint", &rx.url(), "--no-bpf", "--duration", "2.5"], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("rejected the batch"), "{stderr}");
    let log = rx.log.lock().unwrap();
    assert!(log.len() >= 2);
    assert_eq!(log[0].0, 400);
    assert!(log[1..].iter().all(|r| r.1 != log[0].1), "the rejected batch was sent again");
    assert!(stopped(&stderr, "dropped") > 0);
}

#[test]
fn a_slow_receiver_keeps_memory_bounded() {
    let rx = Receiver::start(Vec::new(), Duration::from_secs(3));
    let spool = tempfile::tempdir().expect("spool");
    let (_cfg_dir, config) = write_config("http_timeout: 1s\nmax_queued_bytes: 65536\n");
    let mut child = Command::new(agent_bin())
        .args(["--endpoint", &rx.url(), "--config", &config, "--spool-dir", spool.path().to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let status = format!("/proc/{}/status", child.id());
    let rss_kb = || -> u64 {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
    };
    std::thread::sleep(Duration::from_secs(3));
    let early = rss_kb();
    std::thread::sleep(Duration::from_secs(8));
    let late = rss_kb();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    eprintln!("RSS {early} kB after 3 s, {late} kB after 11 s");
    assert!(late < early + 8 * 1024, "memory grew from {early} to {late} kB while the receiver was slow");
}

/// Samples per series (by its labels) → (timestamp, value) pairs.
fn by_series(series: &[Exported]) -> BTreeMap<String, Vec<(i64, Option<f64>)>> {
    series
        .iter()
        .map(|s| (format!("{:?}", s.metric), s.timestamps.iter().copied().zip(s.values.iter().copied()).collect()))
        .collect()
}

#[test]
fn failover_to_the_second_endpoint_loses_nothing_and_returns_to_the_first() {
    let mut a = Vm::start();
    let b = Vm::start();
    let (_cfg_dir, config) = write_config(&format!("{LEAN}endpoints: [{}, {}]\n", a.write_url(), b.write_url()));
    let agent = std::thread::spawn(move || {
        run_agent(&["--config", &config, "--no-bpf", "--duration", "12"], Duration::from_secs(60))
    });
    std::thread::sleep(Duration::from_secs(3));
    a.stop();
    std::thread::sleep(Duration::from_secs(3));
    a.restart();
    let back_ms = now_ms();
    let out = agent.join().expect("agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let (collected, dropped) = (stopped(&stderr, "collected"), stopped(&stderr, "dropped"));
    assert_eq!(dropped, 0, "{stderr}");
    let (in_a_series, in_a) = all_values(&a);
    let (_, in_b) = all_values(&b);
    assert!(in_a > 0 && in_b > 0, "a: {in_a}, b: {in_b}");
    assert_eq!((in_a + in_b) as u64, collected, "a {in_a} + b {in_b} != collected {collected}\n{stderr}");
    // Health checks found the first endpoint again and failover went back to it.
    let after: usize = in_a_series.iter().map(|s| s.timestamps.iter().filter(|t| **t > back_ms + 3000).count()).sum();
    assert!(after > 0, "nothing went to the first endpoint after it came back\n{stderr}");
}

#[test]
fn replicate_mode_gives_both_endpoints_identical_data() {
    let a = Vm::start();
    let b = Vm::start();
    let yaml = format!("{LEAN}mode: replicate\nendpoints: [{}, {}]\n", a.write_url(), b.write_url());
    let (_cfg_dir, config) = write_config(&yaml);
    let out = run_agent(&["--config", &config, "--no-bpf", "--duration", "3"], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let (sa, na) = all_values(&a);
    let (sb, nb) = all_values(&b);
    assert!(na > 0);
    assert_eq!(na, nb);
    assert_eq!(by_series(&sa), by_series(&sb), "the replicas differ");
}

#[test]
fn two_blackholed_endpoints_do_not_hold_back_failover_to_a_third() {
    // Listening sockets that never accept: connections complete in the kernel's backlog
    // and every request (data or health check) waits for its timeout.
    let holes: Vec<TcpListener> = (0..2).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let urls: Vec<String> =
        holes.iter().map(|l| format!("http://{}/api/v1/write", l.local_addr().expect("addr"))).collect();
    let vm = Vm::start();
    let (_cfg_dir, config) = write_config(&format!(
        "{LEAN}http_timeout: 1s\nshutdown_timeout: 3s\nendpoints: [{}, {}, {}]\n",
        urls[0],
        urls[1],
        vm.write_url()
    ));
    let out = run_agent(&["--config", &config, "--no-bpf", "--duration", "20"], Duration::from_secs(60));
    drop(holes);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Health checks of the two dead endpoints (2 s each, every 2 s) run beside delivery,
    // not in its way: the third endpoint keeps up, nothing is left for the spool.
    let (collected, sent) = (stopped(&stderr, "collected"), stopped(&stderr, "sent"));
    assert_eq!(sent, collected, "{stderr}");
    assert!(!stderr.contains("kept in the spool"), "{stderr}");
    let (_, stored) = all_values(&vm);
    assert_eq!(stored as u64, collected);
}

#[test]
fn a_spool_segment_corrupted_under_a_running_agent_is_counted_and_later_batches_deliver() {
    let mut vm = Vm::start();
    vm.stop(); // the endpoint is down: batches go to the spool
    let spool = tempfile::tempdir().expect("spool");
    let spool_dir = spool.path().to_str().expect("utf-8").to_string();
    let (_cfg_dir, config) = write_config(LEAN);
    let url = vm.write_url();
    let agent = std::thread::spawn(move || {
        run_agent(
            &["--endpoint", &url, "--config", &config, "--no-bpf", "--spool-dir", &spool_dir, "--duration", "14"],
            Duration::from_secs(60),
        )
    });
    std::thread::sleep(Duration::from_secs(5));
    // Flip a byte two thirds into the segment: a record the agent wrote and has not read.
    let segment = walk(spool.path()).into_iter().find(|p| p.extension().is_some_and(|e| e == "seg")).expect("segment");
    let mut bytes = std::fs::read(&segment).expect("segment");
    let at = bytes.len() * 2 / 3;
    bytes[at] ^= 0x5a;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|mut f| {
            use std::io::{Seek as _, SeekFrom};
            f.seek(SeekFrom::Start(at as u64))?;
            f.write_all(&bytes[at..=at])
        })
        .expect("corrupt a byte");
    std::thread::sleep(Duration::from_secs(1));
    vm.restart();
    let back_ms = now_ms();
    let out = agent.join().expect("agent thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("spool_corrupt"), "the loss was not reported:\n{stderr}");
    let stop_line = stderr.lines().rev().find(|l| l.contains("lsvmi stopped")).unwrap_or("");
    assert!(stop_line.contains("dropped_by_reason=spool_corrupt:"), "{stop_line}");
    let (collected, sent, dropped) =
        (stopped(&stderr, "collected"), stopped(&stderr, "sent"), stopped(&stderr, "dropped"));
    assert!(dropped > 0, "{stderr}");
    assert_eq!(sent + dropped, collected, "every sample delivered or counted:\n{stderr}");
    let (series, stored) = all_values(&vm);
    assert_eq!(stored as u64, sent);
    let after: usize = series.iter().map(|s| s.timestamps.iter().filter(|t| **t > back_ms).count()).sum();
    assert!(after > 0, "nothing collected after the damage was delivered");
}

#[test]
fn a_sigkill_during_an_outage_loses_at_most_the_cycle_being_collected() {
    let spool = tempfile::tempdir().expect("spool");
    let spool_dir = spool.path().to_str().expect("utf-8").to_string();
    // Every value every cycle: the last one spooled shows how much the kill took.
    let (_cfg_dir, config) = write_config(&format!("{LEAN}  proc_stat: {{full_refresh_every: 0}}\n"));
    let mut child = spool_into_nowhere(&config, &spool_dir);
    std::thread::sleep(Duration::from_secs(4));
    let kill_ms = now_ms();
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let vm = Vm::start();
    let out = run_agent(
        &["--endpoint", &vm.write_url(), "--config", &config, "--no-bpf", "--spool-dir", &spool_dir, "--duration", "2"],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    vm.force_flush();
    let cpu0 = vm.export(r#"proc_stat_cpu_seconds_total{cpu="0",mode="idle"}"#);
    let last_before_kill = cpu0.iter().flat_map(|s| s.timestamps.iter().copied()).filter(|t| *t < kill_ms).max();
    let last = last_before_kill.expect("samples from before the kill were spooled and replayed");
    // A 100 ms tick: the cycle in progress at the kill (and the one just handed over, if
    // the kill came mid-write) at most; before, up to the whole 1 s batch was lost.
    assert!(kill_ms - last <= 300, "the last sample before the kill is {} ms older than the kill", kill_ms - last);
}
