//! Harness for the end-to-end tests: a real VictoriaMetrics (Debian's package) on a free
//! loopback port with a temporary data dir, the real agent binary, and helpers to read
//! the data back the way VictoriaMetrics documents it (force_flush, then export
//! with explicit start/end).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Deserialize;

pub mod fuse;
pub mod session;

/// The agent binary built by `cargo xtask test` (or `cargo build -p lsvmi-agent`).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LSVMI_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/lsvmi");
    assert!(bin.exists(), "{} missing: run `cargo xtask test` (it builds the agent first)", bin.display());
    bin
}

/// The repository's `testdata/` folder.
pub fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

/// A VictoriaMetrics process, stopped (by pid) when dropped.
pub struct Vm {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Vm {
    pub fn start() -> Vm {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut vm = Vm { child: None, port, _dir: dir };
        vm.restart();
        vm
    }

    /// Start (again) on the same port and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let dir = self._dir.path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("vm.log")).expect("vm log");
        let child = Command::new("victoria-metrics")
            .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg(format!("-storageDataPath={}", dir.join("data").display()))
            .args(["-retentionPeriod=100y", "-search.latencyOffset=1s", "-search.disableCache"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("victoria-metrics not installed: run `cargo xtask setup`");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.get("/health").is_ok_and(|b| b.trim() == "OK") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("VictoriaMetrics on port {} did not become healthy", self.port);
    }

    /// Stop it the way an operator would (SIGTERM: it flushes what it accepted).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    pub fn get(&self, path_and_query: &str) -> std::io::Result<String> {
        http_get(self.port, path_and_query)
    }

    pub fn force_flush(&self) {
        self.get("/internal/force_flush").expect("force_flush");
    }

    /// All series matching `selector`, from the beginning of time to tomorrow.
    pub fn export(&self, selector: &str) -> Vec<Exported> {
        let end = now_ms() / 1000 + 86_400;
        let body = self
            .get(&format!("/api/v1/export?match[]={}&start=0&end={end}", percent_encode(selector)))
            .expect("export");
        // A series holding only a staleness marker is exported as a bare `NaN` (not JSON).
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.replace("[NaN", "[null").replace(",NaN", ",null"))
            .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("export line {l}: {e}")))
            .collect()
    }

    /// The first value of an instant query at `time_s`, if the result is not empty.
    pub fn query(&self, promql: &str, time_s: i64) -> Option<f64> {
        let body = self.get(&format!("/api/v1/query?query={}&time={time_s}", percent_encode(promql))).ok()?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Sum of all lines of `/metrics` for `name` whose labels contain `label_filter`.
    pub fn self_metric(&self, name: &str, label_filter: &str) -> f64 {
        let text = self.get("/metrics").expect("/metrics");
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(label_filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One line of `/api/v1/export`. `values` holds `None` for staleness markers.
#[derive(Debug, Deserialize)]
pub struct Exported {
    pub metric: BTreeMap<String, String>,
    pub values: Vec<Option<f64>>,
    pub timestamps: Vec<i64>,
}

impl Exported {
    pub fn label(&self, name: &str) -> &str {
        self.metric.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A config file in a temp dir (kept alive by the returned guard).
pub fn write_config(yaml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lsvmi.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let p = path.to_str().expect("utf-8 path").to_string();
    (dir, p)
}

/// Run the agent with `args`; kill it if it has not exited after `timeout`.
///
/// Unless `args` name one, the agent gets a spool directory and a control socket of its
/// own for this run, so tests never share (or replay into each other) the default
/// /var/lib/lsvmi/spool, nor fight over /run/lsvmi/control.sock.
pub fn run_agent(args: &[&str], timeout: Duration) -> Output {
    let spool = tempfile::tempdir().expect("spool dir");
    let mut cmd = Command::new(agent_bin());
    cmd.args(args);
    if !args.contains(&"--spool-dir") {
        cmd.arg("--spool-dir").arg(spool.path());
    }
    // Likewise a control socket of its own (the default is one per host).
    if !args.contains(&"--control-socket") && !args.contains(&"trace") {
        cmd.arg("--control-socket").arg(spool.path().join("control.sock"));
    }
    run_command(&mut cmd, timeout)
}

pub fn run_command(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
            panic!("agent did not exit within {timeout:?} ({st}); stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out_t.join().unwrap_or_default(), stderr: err_t.join().unwrap_or_default() }
}

/// /proc/stat's per-CPU ticks, as the test sees them: cpu number → 10 columns.
pub fn read_proc_stat_cpus() -> BTreeMap<u32, Vec<u64>> {
    let text = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu: u32 = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            Some((cpu, f.map(|v| v.parse().expect("tick")).collect()))
        })
        .collect()
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 2") && !head.starts_with("HTTP/1.0 2") {
        return Err(std::io::Error::other(format!("GET {path}: {}", head.lines().next().unwrap_or(""))));
    }
    Ok(body.to_string())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Known load for the BPF tests: each function causes a known minimum of kernel events.
pub mod load {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
        os::unix::net::UnixStream,
        process::Command,
        time::Duration,
    };

    /// N round trips between two threads over a socket pair: each side blocks on every
    /// read, so each round trip is at least two voluntary switches.
    pub fn ping_pong(n: usize) {
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

    /// Run `f` on a thread in a new network namespace (only that thread moves) with lo up;
    /// commands it spawns run in the namespace too.
    pub fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: unshare has no memory-safety preconditions; it moves this thread only.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            sh("ip", &["link", "set", "lo", "up"]);
            f()
        })
        .join()
        .expect("netns thread")
    }

    pub fn sh(cmd: &str, args: &[&str]) {
        let st = Command::new(cmd)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("{cmd}: {e} (cargo xtask setup installs it)"));
        assert!(st.success(), "{cmd} {args:?}: {st}");
    }

    /// K loopback connections, a refused one, then one whose packets an nftables rule drops for 1.5 s:
    /// the sender retransmits until the rule goes, then the data arrives.
    pub fn tcp_load(k: usize) {
        in_new_netns(move || {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            for _ in 0..k {
                let mut c = TcpStream::connect(addr).expect("connect");
                let (mut s, _) = listener.accept().expect("accept");
                c.write_all(b"ping").expect("write");
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).expect("read");
            }
            // A closed port answers with a reset, counted as sent, received and as a
            // NO_SOCKET drop of the SYN.
            let closed = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
            assert!(TcpStream::connect(closed).is_err(), "nothing listens on {closed}");
            let mut client = TcpStream::connect(addr).expect("connect");
            let (mut server, _) = listener.accept().expect("accept");
            let port = addr.port().to_string();
            sh("nft", &["add", "table", "inet", "lsvmi_test"]);
            sh("nft", &["add chain inet lsvmi_test input { type filter hook input priority 0 ; }"]);
            sh("nft", &["add", "rule", "inet", "lsvmi_test", "input", "tcp", "dport", &port, "drop"]);
            client.write_all(&[1u8; 1000]).expect("write");
            std::thread::sleep(Duration::from_millis(1500));
            sh("nft", &["delete", "table", "inet", "lsvmi_test"]);
            server.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut buf = [0u8; 1000];
            server.read_exact(&mut buf).expect("the data arrives once the rule is gone");
        });
    }
}

/// One HTTP/1.1 request read off a kept-alive connection: the head (lower-cased) and the
/// body (by Content-Length). `buf` carries bytes read past this request to the next call.
/// `None` when the peer closed or the read failed. For the tests' own receivers.
pub fn read_request(conn: &mut impl std::io::Read, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 8192];
    let mut fill = |buf: &mut Vec<u8>| match conn.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    };
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(buf) {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok())).unwrap_or(0);
    while buf.len() < end + len {
        if !fill(buf) {
            return None;
        }
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    Some((head, body))
}
