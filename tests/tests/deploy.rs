//! Deploying the agent as operators do: its systemd unit, its notify protocol and
//! watchdog, least privilege, and `lsvmi check-config`.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lsvmi_tests::{agent_bin, is_root, run_command, testdata};

fn workspace_root() -> std::path::PathBuf {
    testdata().parent().expect("repo").to_path_buf()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The repo's unit, its ExecStart pointed at the binary under test.
fn unit_for_test(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(workspace_root().join("packaging/lsvmi.service")).expect("unit");
    let unit = unit.replace("ExecStart=/usr/bin/lsvmi", &format!("ExecStart={}", agent_bin().display()));
    let path = dir.join("lsvmi.service");
    std::fs::write(&path, unit).expect("write unit");
    path
}

#[test]
fn the_unit_verifies_cleanly_and_scores_ok_on_exposure() {
    if Command::new("systemd-analyze").arg("--version").stdout(Stdio::null()).status().is_err() {
        eprintln!("skipping: no systemd-analyze");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let unit = unit_for_test(dir.path());
    let out = run_command(Command::new("systemd-analyze").arg("verify").arg(&unit), Duration::from_secs(60));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let out = run_command(
        Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(&unit),
        Duration::from_secs(60),
    );
    let said = text(&out.stdout);
    let score: f64 = said
        .lines()
        .find_map(|l| l.split("exposure level for lsvmi.service: ").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {said}{}", text(&out.stderr)));
    eprintln!("exposure {score}");
    assert!(score <= 3.0, "exposure {score} above 3.0 (OK)");
    // The capability names are ones capsh knows.
    let unit = std::fs::read_to_string(&unit).expect("unit");
    let caps = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("bounding set");
    for cap in caps.split_whitespace() {
        let out = run_command(
            Command::new("capsh").arg(format!("--supports={}", cap.to_lowercase())),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "capsh does not know {cap}: {}", text(&out.stderr));
    }
}

/// A NOTIFY_SOCKET for the agent, and what arrives on it.
struct Notify {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl Notify {
    fn new(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("notify socket");
        socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        Notify { socket, path }
    }

    /// Messages for `for_` (each datagram's lines).
    fn collect(&self, for_: Duration) -> Vec<(Instant, String)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + for_;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                for line in text(&buf[..n]).lines() {
                    got.push((Instant::now(), line.to_string()));
                }
            }
        }
        got
    }
}

#[test]
fn ready_once_collecting_and_the_watchdog_follows_the_tick() {
    let dir = tempfile::tempdir().expect("dir");
    let notify = Notify::new(dir.path());
    // A /proc tree of the test's own (a captured one), so it can make a read hang.
    let root = dir.path().join("proc");
    let st = Command::new("cp").arg("-r").arg(testdata().join("proc/debian12-6.18-2cpu")).arg(&root).status();
    assert!(st.is_ok_and(|s| s.success()), "copying the fixture tree");
    let mut agent = Command::new(agent_bin())
        // Bounded, should an assertion fail before the kill below.
        .args(["--dry-run", "--no-bpf", "--duration", "30", "--procfs-root"])
        .arg(&root)
        .arg("--control-socket")
        .arg(dir.path().join("control.sock"))
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let got = notify.collect(Duration::from_secs(3));
    let ready = got.iter().position(|(_, m)| m == "READY=1");
    assert!(ready.is_some(), "no READY=1: {got:?}");
    let pings = got.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    assert!(pings >= 8, "{pings} watchdog pings in 3 s (every 200 ms expected): {got:?}");
    // A process appears whose stat is a FIFO nobody writes: the next read of it (the
    // per-process source, every second) blocks in open(2), and the tick with it.
    let pid = root.join("424242");
    std::fs::create_dir(&pid).expect("pid dir");
    let fifo = std::ffi::CString::new(pid.join("stat").to_str().expect("utf-8")).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    // What was sent before the tick reached the FIFO is let through first.
    notify.collect(Duration::from_millis(1500));
    let after = notify.collect(Duration::from_secs(2));
    let _ = agent.kill();
    let _ = agent.wait();
    let pings = after.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    assert_eq!(pings, 0, "watchdog pings went on with the tick stopped: {after:?}");
}

#[test]
fn check_config_names_each_error_with_its_line_or_prints_the_settings() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "interval: 100ms\nendpointz: http://x/\nlabels:\n  a: b\nbpf: maybe\n").expect("write");
    let out = run_command(Command::new(agent_bin()).arg("check-config").arg(&bad), Duration::from_secs(20));
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("bad.yaml:2: unknown field `endpointz`"), "{said}");
    assert!(said.contains("bad.yaml:5: "), "{said}");
    let url = dir.path().join("url.yaml");
    std::fs::write(&url, "interval: 100ms\n\nendpoint: 'http://'\n").expect("write");
    let out = run_command(Command::new(agent_bin()).arg("check-config").arg(&url), Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).contains("url.yaml:3: invalid endpoint"), "{}", text(&out.stdout));
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "endpoint: http://127.0.0.1:8428/api/v1/write\ninterval: 200ms\n").expect("write");
    let out = run_command(Command::new(agent_bin()).arg("check-config").arg(&good), Duration::from_secs(20));
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("good. Effective settings") && said.contains("interval: 200ms"), "{said}");
}

#[test]
fn started_as_root_it_keeps_four_capabilities() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let mut agent = Command::new(agent_bin())
        .args(["--dry-run", "--duration", "30"])
        .arg("--control-socket")
        .arg(dir.path().join("control.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let status = format!("/proc/{}/status", agent.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    // Dropped once the BPF object is loaded.
    let mut decoded = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let s = std::fs::read_to_string(&status).unwrap_or_default();
        let eff = s.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap_or("").trim().to_string();
        let out = run_command(Command::new("capsh").arg(format!("--decode={eff}")), Duration::from_secs(10));
        decoded = text(&out.stdout);
        if !decoded.contains("cap_sys_admin") {
            break;
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();
    for cap in ["cap_bpf", "cap_perfmon", "cap_dac_read_search", "cap_sys_ptrace"] {
        assert!(decoded.contains(cap), "{cap} not kept: {decoded}");
    }
    assert!(!decoded.contains("cap_sys_admin") && !decoded.contains("cap_dac_override"), "more kept: {decoded}");
}

/// The unit's capabilities, as setpriv takes them.
const UNIT_CAPS: &str = "+bpf,+perfmon,+dac_read_search,+sys_ptrace";

/// Run the agent for 6 s as uid 65534 with `caps` (ambient), sending to `vm`; its stderr.
fn run_unprivileged(vm: &lsvmi_tests::Vm, caps: &str) -> String {
    let dir = tempfile::tempdir().expect("dir");
    let own = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().expect("utf-8")).expect("path");
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::chown(c.as_ptr(), 65534, 65534) };
    };
    own(dir.path());
    let bounding = format!("--bounding-set=-all,{caps}");
    let out = run_command(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg(bounding)
            .arg("--")
            .arg(agent_bin())
            .args(["--endpoint", &vm.write_url(), "--duration", "6", "--spool-dir"])
            .arg(dir.path().join("spool"))
            .arg("--control-socket")
            .arg(dir.path().join("control.sock")),
        Duration::from_secs(60),
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn as_an_unprivileged_user_with_the_units_capabilities_every_family_arrives() {
    if !is_root() || Command::new("setpriv").arg("--version").stdout(Stdio::null()).status().is_err() {
        eprintln!("skipping: needs root and setpriv");
        return;
    }
    // A process of another user: its /proc/<pid>/io needs the two DAC/ptrace capabilities.
    let mut other = Command::new("setpriv")
        .args(["--reuid=4242", "--regid=4242", "--clear-groups", "sleep", "60"])
        .spawn()
        .expect("another user's process");
    let other_pid = other.id().to_string();
    let vm = lsvmi_tests::Vm::start();
    let err = run_unprivileged(&vm, UNIT_CAPS);
    assert!(!err.contains("without CAP_"), "a capability was missing: {err}");
    vm.force_flush();
    for family in [
        "proc_stat_cpu_seconds_total",
        "proc_net_dev_receive_bytes_total",
        "qdisc_bytes_total",
        "sched_context_switches_total",
        "sched_runq_latency_seconds_bucket",
        "softirq_time_seconds_total",
        "net_tcp_srtt_seconds_count",
        "proc_pid_cpu_seconds_total",
        "lsvmi_samples_collected_total",
    ] {
        assert!(!vm.export(family).is_empty(), "{family} did not arrive from the unprivileged agent: {err}");
    }
    let io = vm.export(&format!(r#"proc_pid_io_bytes_total{{pid="{other_pid}"}}"#));
    assert!(!io.is_empty(), "another user's /proc/{other_pid}/io was not read");

    // Without CAP_SYS_PTRACE: one line says what goes, and the rest carries on.
    let vm2 = lsvmi_tests::Vm::start();
    let err = run_unprivileged(&vm2, "+bpf,+perfmon,+dac_read_search");
    let said: Vec<&str> = err.lines().filter(|l| l.contains("without CAP_SYS_PTRACE")).collect();
    assert_eq!(said.len(), 1, "{err}");
    vm2.force_flush();
    assert!(
        vm2.export(&format!(r#"proc_pid_io_bytes_total{{pid="{other_pid}"}}"#)).is_empty(),
        "io read without ptrace"
    );
    assert!(!vm2.export("sched_context_switches_total").is_empty(), "BPF stopped without CAP_SYS_PTRACE");
    let _ = other.kill();
    let _ = other.wait();
}

/// `vmauth` in front of `backends`, authenticating a bearer token; killed when dropped.
struct VmAuth(std::process::Child, u16);

impl VmAuth {
    fn start(dir: &Path, backends: &[&lsvmi_tests::Vm], token: &str) -> Option<VmAuth> {
        let config = dir.join("auth.yaml");
        let urls: String = backends.iter().map(|vm| format!("      - http://127.0.0.1:{}\n", vm.port)).collect();
        std::fs::write(&config, format!("users:\n  - bearer_token: \"{token}\"\n    url_prefix:\n{urls}")).ok()?;
        let port = lsvmi_tests::free_port();
        let child = Command::new("vmauth")
            .arg(format!("-auth.config={}", config.display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(VmAuth(child, port))
    }
}

impl Drop for VmAuth {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Samples stored in `vm` (every series, every point, staleness markers included).
fn stored(vm: &lsvmi_tests::Vm) -> usize {
    vm.export(r#"{__name__!=""}"#).iter().map(|s| s.timestamps.len()).sum()
}

#[test]
fn behind_vmauth_balancing_two_victoriametrics_every_sample_lands_once() {
    if Command::new("vmauth").arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        eprintln!("skipping: no vmauth");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let (a, b) = (lsvmi_tests::Vm::start(), lsvmi_tests::Vm::start());
    let Some(lb) = VmAuth::start(dir.path(), &[&a, &b], "fleet-token") else { panic!("vmauth did not start") };
    let token = dir.path().join("token");
    std::fs::write(&token, "fleet-token\n").expect("token");
    let config = dir.path().join("lsvmi.yaml");
    std::fs::write(
        &config,
        format!(
            "endpoint: http://127.0.0.1:{}/api/v1/write\nauth: {{bearer_token_file: {}}}\nbatch_interval: 200ms\n",
            lb.1,
            token.display()
        ),
    )
    .expect("config");
    let out = lsvmi_tests::run_agent(
        &["--config", config.to_str().expect("utf-8"), "--no-bpf", "--duration", "5"],
        Duration::from_secs(60),
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let sent: usize = err
        .lines()
        .find_map(|l| l.split(" sent=").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no stop line: {err}"));
    a.force_flush();
    b.force_flush();
    let (on_a, on_b) = (stored(&a), stored(&b));
    eprintln!("sent {sent}: {on_a} on one VictoriaMetrics, {on_b} on the other");
    assert!(on_a > 0 && on_b > 0, "vmauth did not balance: {on_a} and {on_b}");
    assert_eq!(on_a + on_b, sent, "every sample once: {on_a} + {on_b} stored, {sent} sent");
}

#[test]
fn under_journald_lines_carry_no_timestamp_of_their_own() {
    let out = lsvmi_tests::run_agent(&["--dry-run", "--no-bpf", "--duration", "0.3"], Duration::from_secs(30));
    let plain = text(&out.stderr);
    let stamped = |l: &str| l.len() > 20 && l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'T';
    assert!(plain.lines().next().is_some_and(stamped), "no timestamp on a terminal/file: {plain}");
    let dir = tempfile::tempdir().expect("dir");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--dry-run", "--no-bpf", "--duration", "0.3", "--control-socket"])
        .arg(dir.path().join("c.sock"))
        .env("JOURNAL_STREAM", "8:12345");
    let out = run_command(&mut cmd, Duration::from_secs(30));
    let journal = text(&out.stderr);
    assert!(out.status.success(), "{journal}");
    assert!(journal.lines().all(|l| !stamped(l)), "a timestamp under journald: {journal}");
    assert!(journal.contains("INFO") && journal.contains("lsvmi started"), "{journal}");
}

#[test]
fn ready_arrives_on_an_abstract_notify_socket_too() {
    use std::os::linux::net::SocketAddrExt as _;
    let name = format!("lsvmi-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let socket = UnixDatagram::bind_addr(&addr).expect("abstract socket");
    socket.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let dir = tempfile::tempdir().expect("dir");
    let mut agent = Command::new(agent_bin())
        .args(["--dry-run", "--no-bpf", "--duration", "5", "--control-socket"])
        .arg(dir.path().join("c.sock"))
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let mut buf = [0u8; 512];
    let got = socket.recv(&mut buf).map(|n| text(&buf[..n]));
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(got.as_deref().is_ok_and(|m| m.starts_with("READY=1\n")), "{got:?}");
}
