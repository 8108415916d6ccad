//! Degraded hosts and bad input: the agent says what is wrong in one line, keeps what
//! works running, and exits with the documented code.

use std::{process::Command, time::Duration};

use lsvmi_tests::{agent_bin, free_port, is_root, run_agent, run_command, testdata};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn unknown_config_key_is_one_line_naming_it_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lsvmi.yaml");
    std::fs::write(&cfg, "endpoint: http://127.0.0.1:1/api/v1/write\nbatch_intervall: 1s\n").unwrap();
    let out = run_agent(&["--config", cfg.to_str().unwrap(), "--dry-run"], Duration::from_secs(10));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("batch_intervall"), "{err}");
}

#[test]
fn bad_value_and_bad_flag_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lsvmi.yaml");
    std::fs::write(&cfg, "interval: 1ms\n").unwrap();
    let out = run_agent(&["--config", cfg.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid interval"), "{}", text(&out.stderr));

    let out = run_agent(&["--no-such-flag"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--no-such-flag"));

    let out = run_agent(&["--config", "/nonexistent/lsvmi.yaml"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/lsvmi.yaml"));
}

#[test]
fn unreachable_endpoint_backs_off_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lsvmi.yaml");
    std::fs::write(&cfg, "shutdown_timeout: 1s\n").unwrap();
    let url = format!("http://127.0.0.1:{}/api/v1/write", free_port());
    let out = run_agent(
        &["--endpoint", &url, "--config", cfg.to_str().unwrap(), "--duration", "3", "--no-bpf"],
        Duration::from_secs(30),
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let failures: Vec<&str> = err.lines().filter(|l| l.contains("remote write failed")).collect();
    assert!(!failures.is_empty(), "{err}");
    // Back-off: far fewer attempts than batches (one per second) times the 10 Hz tick.
    assert!(failures.len() < 10, "{} attempts in 3 s: no back-off?\n{err}", failures.len());
    assert!(failures[0].contains("retry_in_ms"), "{}", failures[0]);
    assert!(err.contains("kept in the spool for the next run"), "{err}");

    // Without a spool, what is left at the deadline is dropped, and said so.
    std::fs::write(&cfg, "shutdown_timeout: 1s\nspool: {enabled: false}\n").unwrap();
    let out = run_agent(
        &["--endpoint", &url, "--config", cfg.to_str().unwrap(), "--duration", "2", "--no-bpf"],
        Duration::from_secs(30),
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("undelivered samples dropped"), "{err}");
}

#[test]
fn missing_proc_file_is_reported_once_and_the_rest_continue() {
    let root = testdata().join("proc/empty");
    let out = run_agent(
        &["--procfs-root", root.to_str().unwrap(), "--dry-run", "--no-bpf", "--duration", "1.5"],
        Duration::from_secs(20),
    );
    let err = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{err}");
    // Every source finds its file missing; each says so once, in one line.
    let reports: Vec<&str> = err.lines().filter(|l| l.contains("source failed")).collect();
    let stat: Vec<&&str> =
        reports.iter().filter(|l| l.contains("source=\"proc_stat\"") || l.contains("source=proc_stat ")).collect();
    assert_eq!(stat.len(), 1, "{err}");
    assert!(stat[0].contains("empty/stat"), "{}", stat[0]);
    let mut sources: Vec<&str> =
        reports.iter().filter_map(|l| l.split("source=").nth(1)?.split_whitespace().next()).collect();
    let n = sources.len();
    sources.dedup();
    assert_eq!(sources.len(), n, "a source reported its failure more than once:\n{err}");
    // The agent's own metrics still flow, and count the failures.
    let errors = stdout
        .lines()
        .filter(|l| l.starts_with("lsvmi_source_errors_total{") && l.contains("source=\"proc_stat\""))
        .filter_map(|l| l.split(' ').nth(1)?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(errors >= 5.0, "lsvmi_source_errors_total{{source=\"proc_stat\"}} = {errors}\n{stdout}");
}

#[test]
fn without_bpf_privilege_one_warning_and_procfs_continues() {
    if !is_root() {
        eprintln!("skipping: needs root to drop to an unprivileged user");
        return;
    }
    // As `nobody` the kernel refuses BPF; /proc/stat stays readable.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(agent_bin())
        .args(["--dry-run", "--duration", "1"]);
    let out = run_command(&mut cmd, Duration::from_secs(20));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("eBPF")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("eBPF disabled") && warnings[0].contains("not permitted"), "{}", warnings[0]);
    assert!(text(&out.stdout).contains("proc_stat_cpu_seconds_total{cpu=\"0\""));
}
