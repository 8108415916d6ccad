//! What the tests of deep-tracing sessions and triggers share: a daemon with a control
//! socket, `lsvmi trace …` against it, and the session files it writes.

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{Vm, agent_bin, is_root, run_command};

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `lsvmi --control-socket <socket> trace <args…>`
pub fn trace(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--control-socket").arg(socket).arg("trace").args(args);
    run_command(&mut cmd, Duration::from_secs(30))
}

/// A daemon with a control socket in `dir` and `args` (where it sends); killed when
/// dropped.
pub struct Daemon(pub Child);

impl Daemon {
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
        let socket = dir.join("control.sock");
        let child = Command::new(agent_bin())
            .args(args)
            .arg("--control-socket")
            .arg(&socket)
            .arg("--spool-dir")
            .arg(dir.join("spool"))
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

/// Sessions load programs into the one kernel: the tests that run them take turns.
pub static KERNEL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// For a test that runs sessions: its turn on the kernel, a VictoriaMetrics, and a
/// daemon with BPF sending there. None (and said so) when not root.
pub fn bpf_daemon(args: &[&str]) -> Option<(std::sync::MutexGuard<'static, ()>, Vm, tempfile::TempDir, Daemon)> {
    if !is_root() {
        eprintln!("skipping: tracing sessions need root for BPF");
        return None;
    }
    let turn = KERNEL.lock().unwrap_or_else(|p| p.into_inner());
    let vm = Vm::start();
    let dir = tempfile::tempdir().expect("dir");
    let url = vm.write_url();
    // Session files in the test's own directory (unless the caller brings a config).
    let config = dir.path().join("trace.yaml");
    std::fs::write(&config, format!("trace: {{dir: {}}}\n", dir.path().join("trace").display())).expect("config");
    let config = config.to_str().expect("utf-8").to_string();
    let own_config: &[&str] = if args.contains(&"--config") { &[] } else { &["--config", &config] };
    let daemon = Daemon::start(dir.path(), &[&["--endpoint", url.as_str()], args, own_config].concat());
    Some((turn, vm, dir, daemon))
}

pub fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity act on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0);
    }
}

pub fn gettid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// The last value of each series matching `selector`, by `label`.
pub fn last_values(vm: &Vm, selector: &str, label: &str) -> Vec<(String, f64)> {
    vm.export(selector)
        .iter()
        .filter_map(|s| Some((s.label(label).to_string(), s.values.iter().flatten().last().copied()?)))
        .collect()
}

/// The last session's timeline (trace-event JSON), once `status` names it; its raw
/// records beside it parse as JSON lines, as many as the document says it holds.
pub fn timeline(socket: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = text(&trace(socket, &["status"]).stdout);
        if status.contains("timeline: ") || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let path = status.split("timeline: ").nth(1).map(str::trim).unwrap_or_else(|| panic!("no timeline: {status}"));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("timeline")).expect("JSON");
    let jsonl = std::fs::read_to_string(path.replace(".trace.json", ".events.jsonl")).expect("events.jsonl");
    assert!(jsonl.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    let records = doc["metadata"]["records"].as_u64().unwrap_or(0);
    let hindsight = doc["metadata"]["hindsight_records"].as_u64().unwrap_or(0);
    assert_eq!(jsonl.lines().count() as u64, records + hindsight, "{path}");
    doc
}

/// The trace events of `doc` with phase `ph`.
pub fn phase<'a>(doc: &'a serde_json::Value, ph: &str) -> Vec<&'a serde_json::Value> {
    doc["traceEvents"].as_array().expect("traceEvents").iter().filter(|e| e["ph"] == ph).collect()
}
