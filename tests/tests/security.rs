//! TLS with a custom CA, mutual TLS, basic auth and a bearer token read from files (re-read on
//! SIGHUP, never logged), extra headers, and the egress rate limit — against a real
//! VictoriaMetrics where it supports the feature, and a scripted receiver otherwise.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lsvmi_tests::{agent_bin, free_port, read_request, run_agent, write_config};

fn sh(cmd: &mut Command) {
    let st = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().expect("spawn (cargo xtask setup installs it)");
    assert!(st.success(), "{cmd:?}: {st}");
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, plus a client pair.
fn make_certs(dir: &Path) {
    let d = |f: &str| dir.join(f).to_str().expect("utf-8").to_string();
    sh(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lsvmi test CA"])
        .args(["-keyout", &d("ca.key"), "-out", &d("ca.pem")]));
    for who in ["server", "client"] {
        sh(Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={who}")])
            .args(["-keyout", &d(&format!("{who}.key")), "-out", &d(&format!("{who}.csr"))]));
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
        sh(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CA", &d("ca.pem"), "-CAkey", &d("ca.key")])
            .args(["-CAcreateserial", "-in", &d(&format!("{who}.csr")), "-out", &d(&format!("{who}.pem"))])
            .args(["-extfile", &d("san.ext")]));
    }
}

/// A VictoriaMetrics with extra flags, stopped on drop; read back with curl.
struct Sink {
    child: Child,
    base: String,
    curl_args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Sink {
    fn start(scheme: &str, flags: &[String], curl_args: Vec<String>) -> Sink {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new("victoria-metrics")
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", dir.path().join("data").display()))
            .args(["-retentionPeriod=100y", "-search.latencyOffset=1s", "-search.disableCache"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("victoria-metrics");
        let sink = Sink { child, base: format!("{scheme}://127.0.0.1:{port}"), curl_args, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if sink.get("/health").trim() == "OK" {
                return sink;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("VictoriaMetrics ({flags:?}) did not become healthy");
    }

    fn get(&self, path: &str) -> String {
        let out =
            Command::new("curl").args(["-s", "-g"]).args(&self.curl_args).arg(format!("{}{path}", self.base)).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    fn series_count(&self) -> usize {
        self.get("/internal/force_flush");
        self.get("/api/v1/export?match[]={__name__=~\"proc_stat_.*\"}&start=0&end=4000000000").lines().count()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tls_with_a_custom_ca_and_without_it() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    let p = |f: &str| certs.path().join(f).to_str().expect("utf-8").to_string();
    let flags = vec![
        "-tls".to_string(),
        format!("-tlsCertFile={}", p("server.pem")),
        format!("-tlsKeyFile={}", p("server.key")),
    ];
    let vm = Sink::start("https", &flags, vec!["--cacert".into(), p("ca.pem")]);
    let yaml =
        format!("tls: {{ca_file: {}, cert_file: {}, key_file: {}}}\n", p("ca.pem"), p("client.pem"), p("client.key"));
    let (_c, config) = write_config(&yaml);
    let url = format!("{}/api/v1/write", vm.base);
    let out =
        run_agent(&["--endpoint", &url, "--config", &config, "--no-bpf", "--duration", "2"], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("remote write failed"), "{stderr}");
    assert!(vm.series_count() > 0, "nothing arrived over TLS\n{stderr}");

    // Without the CA the server is not trusted: every attempt fails, nothing arrives.
    let vm2 = Sink::start("https", &flags, vec!["--cacert".into(), p("ca.pem")]);
    let url2 = format!("{}/api/v1/write", vm2.base);
    let (_c2, plain) = write_config("shutdown_timeout: 1s\n");
    let out =
        run_agent(&["--endpoint", &url2, "--config", &plain, "--no-bpf", "--duration", "1.5"], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("remote write failed"), "an untrusted server was accepted\n{stderr}");
    assert_eq!(vm2.series_count(), 0);
}

#[test]
fn basic_auth_from_a_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("password");
    std::fs::write(&pw, "Zq7-basic-secret\n").expect("pw");
    let flags = vec!["-httpAuth.username=lsvmi".to_string(), "-httpAuth.password=Zq7-basic-secret".to_string()];
    let vm = Sink::start("http", &flags, vec!["-u".into(), "lsvmi:Zq7-basic-secret".into()]);
    let yaml = format!("auth: {{username: lsvmi, password_file: {}}}\n", pw.display());
    let (_c, config) = write_config(&yaml);
    let url = format!("{}/api/v1/write", vm.base);
    let out = run_agent(
        &["--endpoint", &url, "--config", &config, "--no-bpf", "--duration", "2", "--log-level", "debug"],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("remote write failed"), "{stderr}");
    assert!(!stderr.contains("Zq7-basic-secret"), "the password was logged");
    assert!(vm.series_count() > 0);
}

/// Requests as a receiver saw them: (head, body length).
type Seen = Arc<Mutex<Vec<(String, usize)>>>;

fn receiver() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/api/v1/write", listener.local_addr().expect("addr"));
    let seen: Seen = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = Vec::new();
                while let Some((head, body)) = read_request(&mut conn, &mut buf) {
                    s.lock().unwrap().push((head, body.len()));
                    if conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

#[test]
fn bearer_token_is_re_read_on_sighup_never_logged_and_headers_are_added() {
    let (url, seen) = receiver();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-FIRST-9c1\n").expect("token");
    let yaml = format!("auth: {{bearer_token_file: {}}}\nheaders: {{X-Scope-OrgID: tenant-42}}\n", token.display());
    let (_c, config) = write_config(&yaml);
    let spool = tempfile::tempdir().expect("spool");
    let mut child = Command::new(agent_bin())
        .args(["--endpoint", &url, "--config", &config, "--no-bpf", "--log-level", "debug"])
        .args(["--spool-dir", spool.path().to_str().expect("utf-8")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::write(&token, "tok-SECOND-4e7\n").expect("token");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(2500));
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("SIGHUP: credentials re-read"), "{stderr}");
    assert!(!stderr.contains("tok-FIRST") && !stderr.contains("tok-SECOND"), "a token was logged");
    let seen = seen.lock().unwrap();
    let auth: Vec<&str> =
        seen.iter().filter_map(|(h, _)| h.lines().find(|l| l.starts_with("authorization:"))).collect();
    assert_eq!(auth.len(), seen.len(), "a request without Authorization");
    // Heads come lower-cased from read_request.
    assert!(auth.first().is_some_and(|a| a.ends_with("bearer tok-first-9c1")), "{auth:?}");
    assert!(auth.last().is_some_and(|a| a.ends_with("bearer tok-second-4e7")), "{auth:?}");
    assert!(seen.iter().all(|(h, _)| h.contains("x-scope-orgid: tenant-42")), "extra header missing");
    assert!(seen.iter().all(|(h, _)| h.contains("content-encoding: snappy")), "protocol header missing");
}

#[test]
fn the_egress_rate_limit_caps_bytes_per_second() {
    let (url, seen) = receiver();
    let (_c, config) = write_config("rate_limit: {bytes_per_second: 2048, burst_bytes: 2048}\nshutdown_timeout: 1s\n");
    let out =
        run_agent(&["--endpoint", &url, "--config", &config, "--no-bpf", "--duration", "4"], Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen = seen.lock().unwrap();
    let bytes: usize = seen.iter().map(|(_, l)| l).sum();
    let largest = seen.iter().map(|(_, l)| *l).max().unwrap_or(0);
    // At most a full bucket, the rate over the run and the shutdown deadline, and one
    // batch that may go into debt. Unlimited, this run sends several times more.
    let bound = 2048 + 2048 * 5 + largest;
    assert!(bytes <= bound, "{bytes} bytes in {} requests, bound {bound}", seen.len());
}

/// A TLS server (rustls) that requires a client certificate signed by the test CA and
/// answers every request 204 — VictoriaMetrics' open-source build cannot require one.
/// Returns its port and a counter of requests it answered.
fn mtls_server(dir: &Path) -> (u16, Arc<Mutex<usize>>) {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = CertificateDer::from_pem_file(dir.join("ca.pem")).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().expect("verifier");
    let chain = vec![CertificateDer::from_pem_file(dir.join("server.pem")).expect("cert")];
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("key");
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("config"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let answered = Arc::new(Mutex::new(0));
    let count = answered.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (config, count) = (config.clone(), count.clone());
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else { return };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = Vec::new();
                while read_request(&mut tls, &mut buf).is_some() {
                    *count.lock().unwrap() += 1;
                    let ok = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
                    if tls.write_all(ok).and_then(|()| tls.flush()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, answered)
}

#[test]
fn mutual_tls_presents_the_client_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    let p = |f: &str| certs.path().join(f).to_str().expect("utf-8").to_string();
    let (port, answered) = mtls_server(certs.path());
    let url = format!("https://127.0.0.1:{port}/api/v1/write");
    let run = |yaml: &str| {
        let (_c, config) = write_config(&format!("{yaml}shutdown_timeout: 1s\n"));
        let out = run_agent(
            &["--endpoint", &url, "--config", &config, "--no-bpf", "--duration", "1.5"],
            Duration::from_secs(30),
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let without = run(&format!("tls: {{ca_file: {}}}\n", p("ca.pem")));
    assert!(without.contains("remote write failed"), "accepted without a client certificate:\n{without}");
    assert_eq!(*answered.lock().unwrap(), 0);
    let with_cert = run(&format!(
        "tls: {{ca_file: {}, cert_file: {}, key_file: {}}}\n",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    ));
    assert!(!with_cert.contains("remote write failed"), "{with_cert}");
    assert!(*answered.lock().unwrap() > 0, "nothing accepted with the certificate:\n{with_cert}");
}
