//! A VictoriaMetrics from Debian's package, on loopback, for `cargo xtask run`.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub struct VictoriaMetrics {
    child: Child,
    port: u16,
}

impl VictoriaMetrics {
    /// Start on `preferred_port`, or on a free port if that one is taken.
    pub fn start(dir: &Path, preferred_port: u16) -> anyhow::Result<Self> {
        let port = if TcpListener::bind(("127.0.0.1", preferred_port)).is_ok() {
            preferred_port
        } else {
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("finding a free port")?.port()
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log =
            std::fs::File::create(dir.join("victoria-metrics.log")).context("creating the VictoriaMetrics log")?;
        let mut cmd = Command::new("victoria-metrics");
        // Its own process group: Ctrl-C in the terminal reaches only xtask and the agent, so
        // VictoriaMetrics is still up while the agent flushes its last batch; Drop stops it
        // afterwards. PDEATHSIG stops it too if xtask itself is killed.
        cmd.process_group(0);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", dir.join("victoria-metrics-data").display()))
            .arg("-retentionPeriod=100y")
            .arg("-search.latencyOffset=1s")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting victoria-metrics (installed by `cargo xtask setup`)")?;
        let vm = VictoriaMetrics { child, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if http_get(port, "/health").is_ok_and(|b| b.trim() == "OK") {
                return Ok(vm);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("VictoriaMetrics did not become healthy in 15 s; see {}", dir.join("victoria-metrics.log").display())
    }

    /// GET `path` on this VictoriaMetrics; the body.
    pub fn get(&self, path: &str) -> std::io::Result<String> {
        http_get(self.port, path)
    }

    /// All values of label `name` (`/api/v1/label/<name>/values`).
    pub fn label_values(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let body = self.get(&format!("/api/v1/label/{name}/values"))?;
        // {"status":"success","data":["/","/dev/shm"]}: the strings after "data".
        let data = body.split_once("\"data\":[").map(|(_, d)| d).context("no data in label values")?;
        let list = data.split_once(']').map(|(l, _)| l).unwrap_or_default();
        Ok(list.split(',').map(|v| v.trim().trim_matches('"').replace("\\/", "/")).filter(|v| !v.is_empty()).collect())
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.0 GET on loopback (a dependency-free health check).
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

extern "C" fn ignore(_: libc::c_int) {}

/// Ctrl-C reaches the whole foreground process group: the agent stops by itself (after a
/// final flush). xtask must survive it to wait for the agent and then stop VictoriaMetrics,
/// so it catches SIGINT with an empty handler (a handler, not SIG_IGN, which children
/// would inherit).
pub fn forward_sigint_to_children() {
    // SAFETY: installing a handler that does nothing is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, ignore as extern "C" fn(libc::c_int) as libc::sighandler_t) };
}
