//! The dashboards, checked against real data: every panel of the generated Grafana
//! dashboard has data in a real VictoriaMetrics after a short run, the static page draws
//! every panel in headless Chromium, LSVMI's names come out of vmalert with the shipped
//! rules, and the generated files are current.

// The generator itself (also `cargo xtask dashboards`).
#[allow(dead_code, reason = "the tests use part of the generator")]
#[path = "../../xtask/src/dashboards.rs"]
mod dashboards;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use lsvmi_tests::{
    now_ms,
    session::{bpf_daemon, text, trace},
};

#[test]
fn the_generated_files_are_current() {
    let spec = dashboards::load().expect("dashboards/panels.yaml");
    for (path, text) in dashboards::committed(&spec).expect("generate") {
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(now == text, "{} is stale: run `cargo xtask dashboards` and commit", path.display());
    }
}

/// Traffic every panel has something to show for: a loopback TCP stream, refused
/// connections (resets, drops), and written-out disk blocks.
fn some_traffic(dir: &std::path::Path) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("addr");
    let sink = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = vec![0u8; 65536];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    for _ in 0..2000 {
        let _ = s.write_all(&[7u8; 16384]);
    }
    drop(s);
    let _ = sink.join();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port");
    // Two bursts, further apart than the network counters are read (1 s): a drop
    // reason's series starts at its first burst, and one value alone has no rate. (With
    // one burst, the panel had data only when the host dropped something else earlier.)
    for burst in 0..2 {
        if burst > 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        for _ in 0..50 {
            let _ = std::net::TcpStream::connect(closed);
        }
    }
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", dir.join("blocks").display()))
        .args(["bs=1M", "count=32", "oflag=direct"])
        .stderr(Stdio::null())
        .status();
}

/// `/api/v1/query_range` of `expr` over [from, to] s: the number of series returned.
fn series_in(vm: &lsvmi_tests::Vm, expr: &str, from: i64, to: i64) -> usize {
    let q = format!(
        "/api/v1/query_range?query={}&start={from}&end={to}&step=1s",
        expr.bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect::<String>()
    );
    let body = vm.get(&q).expect("query_range");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"));
    assert_eq!(v["status"], "success", "{expr}: {body}");
    v["data"]["result"].as_array().map_or(0, Vec::len)
}

#[test]
fn every_panel_has_data_and_the_static_page_draws_them_all() {
    let Some((_turn, vm, dir, _daemon)) = bpf_daemon(&["--instance", "dash"]) else { return };
    let from = now_ms() / 1000 - 1;
    // A sched trace session for the deep-tracing panels, traffic for the others.
    let socket = dir.path().join("control.sock");
    let out = trace(&socket, &["start", "--profile", "sched", "--duration", "4s", "--threshold", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    some_traffic(dir.path());
    lsvmi_tests::load::ping_pong(20_000);
    std::thread::sleep(Duration::from_secs(8));
    vm.force_flush();
    let to = now_ms() / 1000 + 1;

    let spec = dashboards::load().expect("spec");
    let mut empty = Vec::new();
    for row in &spec.rows {
        for p in &row.panels {
            let found: usize =
                p.queries.iter().map(|q| series_in(&vm, &q.expr.replace("$instance", "dash"), from, to)).sum();
            if found == 0 {
                empty.push(p.title.clone());
            }
        }
    }
    assert!(empty.is_empty(), "panels with no data: {empty:?}");

    // The static page in headless Chromium, against the same VictoriaMetrics and window.
    let Some(chromium) =
        ["chromium", "chromium-browser"].into_iter().find(|c| Command::new(c).arg("--version").output().is_ok())
    else {
        panic!("no chromium: `cargo xtask setup` installs it");
    };
    let page = dashboards::static_page(&spec).expect("static page (needs the npm registry once)");
    let url = format!("file://{}?vm=http://127.0.0.1:{}&instance=dash&start={from}&end={to}", page.display(), vm.port);
    let common = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000", "--hide-scrollbars"];
    let dom = Command::new(chromium).args(common).arg("--dump-dom").arg(&url).output().expect("chromium");
    let dom = text(&dom.stdout);
    let attr =
        |name: &str| dom.split(&format!("{name}=\"")).nth(1).and_then(|r| r.split('"').next()).map(str::to_string);
    assert_eq!(attr("data-done").as_deref(), Some("1"), "the page did not finish: {}", &dom[..dom.len().min(2000)]);
    assert_eq!(attr("data-error"), None, "the page failed");
    let panels: usize = spec.rows.iter().map(|r| r.panels.len()).sum();
    let drawn: usize = attr("data-panels-with-data").and_then(|n| n.parse().ok()).unwrap_or(0);
    assert_eq!(drawn, panels, "panels drawn with data; empty: {:?}", attr("data-panels-empty"));
    let shot = page.with_extension("png");
    let st = Command::new(chromium)
        .args(common)
        .arg("--window-size=1400,4200")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .stderr(Stdio::null())
        .status()
        .expect("chromium");
    assert!(st.success() && shot.is_file(), "no screenshot");
    eprintln!("screenshot: {}", shot.display());
}

/// vmalert evaluating `rules` against `vm` (reading and writing it); killed when dropped.
struct VmAlert(std::process::Child);

impl Drop for VmAlert {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn lsvmis_names_come_out_of_vmalert_with_the_shipped_rules() {
    if Command::new("vmalert").arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        panic!("no vmalert: Debian's victoria-metrics package has it");
    }
    let vm = lsvmi_tests::Vm::start();
    let agent = std::thread::spawn({
        let url = vm.write_url();
        move || {
            lsvmi_tests::run_agent(
                &["--endpoint", &url, "--no-bpf", "--instance", "lsvmi-compat", "--duration", "12"],
                Duration::from_secs(60),
            )
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/lsvmi/compat.rules.yaml");
    let base = format!("http://127.0.0.1:{}", vm.port);
    let _alert = VmAlert(
        Command::new("vmalert")
            .arg(format!("-rule={}", rules.display()))
            .arg(format!("-datasource.url={base}"))
            .arg(format!("-remoteWrite.url={base}"))
            .args(["-evaluationInterval=1s", "-remoteWrite.flushInterval=500ms"])
            .arg(format!("-httpListenAddr=127.0.0.1:{}", lsvmi_tests::free_port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vmalert"),
    );
    let out = agent.join().expect("agent");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // vmalert keeps evaluating while the last 5 s of the agent's data are in its window,
    // and its results reach VictoriaMetrics with a delay of their own. On a loaded machine
    // fewer of them land by the time the agent exits, so wait for them (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        vm.force_flush();
        let outcome = compat_outcome(&vm);
        if outcome.is_ok() || std::time::Instant::now() > deadline {
            break outcome;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if let Err(why) = outcome {
        panic!("{why}");
    }
}

/// What vmalert's output says about the shipped compat rules: `Err` with the first thing
/// missing or wrong.
fn compat_outcome(vm: &lsvmi_tests::Vm) -> Result<(), String> {
    let names = [
        "proc_stat_cpu_pct",
        "proc_stat_ctxt_delta",
        "proc_stat_processes_delta",
        "proc_stat_procs_running_count",
        "proc_net_dev_rx_kbps",
        "proc_net_dev_tx_pkts_delta",
        "proc_softirqs_delta",
        "proc_diskstats_num_reads_completed_delta",
        "proc_diskstats_io_pct",
    ];
    for name in names {
        let series = vm.export(&format!(r#"{name}{{hostname="lsvmi-compat"}}"#));
        if series.is_empty() {
            return Err(format!("vmalert produced no {name}"));
        }
    }
    // Over all modes, one CPU's %CPU adds up to 100 (LSVMI's meaning), and so does "avg".
    for cpu in ["0", "avg"] {
        let modes = vm.export(&format!(r#"proc_stat_cpu_pct{{hostname="lsvmi-compat",cpu="{cpu}"}}"#));
        // The sum at each instant all modes have a value for.
        let mut by_ts: std::collections::BTreeMap<i64, (usize, f64)> = std::collections::BTreeMap::new();
        for s in &modes {
            for (t, v) in s.timestamps.iter().zip(&s.values) {
                let e = by_ts.entry(*t).or_default();
                e.0 += 1;
                e.1 += v.unwrap_or(0.0);
            }
        }
        let full: Vec<f64> = by_ts.values().filter(|(n, _)| *n == modes.len()).map(|(_, sum)| *sum).collect();
        if full.len() < 3 {
            return Err(format!("cpu {cpu}: too few complete evaluations ({})", full.len()));
        }
        for sum in &full {
            if !(99.5..=100.5).contains(sum) {
                return Err(format!("cpu {cpu}: modes sum to {sum}% (expected 100): {full:?}"));
            }
        }
    }
    Ok(())
}
