//! The whole agent against captured and hand-made /proc trees (`testdata/proc/`), with
//! `--dry-run`: what it would send is compared with what the files say.

use std::time::Duration;

use lsvmi_tests::{run_agent, testdata};

/// Run once over a fixture tree; returns (stdout, stderr).
fn dry_run(tree: &str) -> (String, String) {
    let root = testdata().join("proc").join(tree);
    let out = run_agent(
        &["--procfs-root", root.to_str().unwrap(), "--dry-run", "--no-bpf", "--duration", "0.25", "--instance", "fx"],
        Duration::from_secs(20),
    );
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}

/// The value of the first line starting with `series` (labels included, exactly).
fn value(stdout: &str, series: &str) -> Option<f64> {
    stdout.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

#[test]
fn captured_debian12_tree() {
    let (out, err) = dry_run("debian12-6.18-2cpu");
    assert!(!err.contains("malformed"), "{err}");
    assert_eq!(value(&out, r#"proc_stat_cpu_seconds_total{cpu="0",instance="fx",mode="user"}"#), Some(241.19));
    assert_eq!(value(&out, r#"proc_stat_cpu_seconds_total{cpu="1",instance="fx",mode="steal"}"#), Some(3.45));
    assert_eq!(value(&out, r#"proc_stat_context_switches_total{instance="fx"}"#), Some(662186.0));
    assert_eq!(value(&out, r#"proc_stat_interrupts_total{instance="fx"}"#), Some(549419.0));
    assert_eq!(value(&out, r#"proc_stat_boot_time_seconds{instance="fx"}"#), Some(1795368945.0));
    assert!(!out.contains(r#"cpu="2""#));
}

#[test]
fn malformed_tree_skips_bad_lines_and_keeps_the_rest() {
    let (out, err) = dry_run("malformed");
    // Reported once, with where the first bad line is.
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("malformed lines skipped")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("line 3") && warnings[0].contains("cpu1"), "{}", warnings[0]);
    assert_eq!(value(&out, r#"proc_stat_cpu_seconds_total{cpu="0",instance="fx",mode="idle"}"#), Some(25.0));
    assert!(!out.contains(r#"cpu="1""#), "the bad cpu1 line must be skipped");
    assert!(!out.contains(r#"cpu="4""#), "the torn cpu4 line must be skipped");
    assert_eq!(
        value(&out, r#"proc_stat_cpu_seconds_total{cpu="3",instance="fx",mode="user"}"#),
        Some(u64::MAX as f64 / 100.0)
    );
    assert_eq!(value(&out, r#"proc_stat_forks_total{instance="fx"}"#), Some(99999.0));
    assert_eq!(value(&out, r#"proc_stat_interrupts_total{instance="fx"}"#), None);
    // And counted in the self-metric (3 bad lines per cycle).
    let parse_errors = out
        .lines()
        .filter(|l| l.starts_with(r#"lsvmi_source_parse_errors_total{instance="fx",source="proc_stat"}"#))
        .filter_map(|l| l.split(' ').nth(1)?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(parse_errors >= 3.0, "{parse_errors}");
}
