//! The whole agent against captured and hand-made /proc trees (`testdata/proc/`), with
//! `--dry-run`: what it would send is compared with what the files say.

use std::time::Duration;

use lsvmi_tests::{run_agent, testdata};

/// Run once over a fixture tree (with its sysfs, `testdata/sysfs/<tree>`, where there is
/// one); returns (stdout, stderr).
fn dry_run(tree: &str) -> (String, String) {
    let root = testdata().join("proc").join(tree);
    let sys = testdata().join("sysfs").join(tree);
    let mut args = vec![
        "--procfs-root",
        root.to_str().unwrap(),
        "--dry-run",
        "--no-bpf",
        "--duration",
        "0.25",
        "--instance",
        "fx",
    ];
    if sys.is_dir() {
        args.extend(["--sysfs-root", sys.to_str().unwrap()]);
    }
    let out = run_agent(&args, Duration::from_secs(20));
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
    // Every family in the captured tree (values from the captured files).
    for family in [
        "proc_interrupts_total{",
        "proc_interrupts_info{",
        "proc_softirqs_total{",
        "proc_net_dev_receive_bytes_total{",
        "proc_net_snmp_total{",
        "proc_net_snmp6_total{",
        "proc_net_netstat_total{",
        "proc_net_softnet_processed_total{",
        "proc_diskstats_reads_completed_total{",
        "proc_meminfo_bytes{",
        "proc_vmstat_total{",
        "proc_vmstat{",
        "proc_loadavg_load1{",
        "proc_pressure_stalled_seconds_total{",
        "proc_pid_cpu_seconds_total{",
        "proc_pid_info{",
        "proc_tid_cpu_seconds_total{",
        "proc_mount_size_bytes{",
        "host_info{",
        "host_uptime_seconds{",
    ] {
        assert!(out.lines().any(|l| l.starts_with(family)), "{family} missing from the dry run\n{err}");
    }
    assert_eq!(
        value(&out, r#"proc_pid_cpu_seconds_total{comm="process_api",instance="fx",mode="user",pid="1"}"#),
        Some(2.0)
    );
    assert_eq!(value(&out, r#"proc_pid_threads{comm="process_api",instance="fx",pid="1"}"#), Some(11.0));
    assert!(out.contains(r#"kernel_release="6.18.44-fc-v782""#), "host_info lacks the captured kernel");
    assert_eq!(value(&out, r#"host_uptime_seconds{instance="fx"}"#), Some(16400.53));
}

/// Hand-made edge cases: CPU hot-plug gaps, values at u64::MAX, torn and garbage lines,
/// old kernel layouts. Bad lines are skipped and counted; the rest comes through.
#[test]
fn edge_tree_keeps_what_is_good() {
    let (out, err) = dry_run("edge");
    // interrupts: CPU0 and CPU2 only; a total-only row has no cpu label.
    assert_eq!(value(&out, r#"proc_interrupts_total{cpu="2",instance="fx",irq="0"}"#), Some(7.0));
    assert_eq!(value(&out, r#"proc_interrupts_total{cpu="0",instance="fx",irq="LOC"}"#), Some(u64::MAX as f64));
    assert_eq!(value(&out, r#"proc_interrupts_total{instance="fx",irq="ERR"}"#), Some(9.0));
    // softirqs: NET_RX's bad CPU2 column is dropped, its CPU0 value kept. CPU1 is
    // possible (a column) but offline (sysfs says 0,2): no series.
    assert_eq!(value(&out, r#"proc_softirqs_total{cpu="0",instance="fx",type="NET_RX"}"#), Some(100.0));
    assert_eq!(value(&out, r#"proc_softirqs_total{cpu="2",instance="fx",type="NET_TX"}"#), Some(4.0));
    assert!(!out.contains(r#"proc_softirqs_total{cpu="1""#), "an offline CPU's column was sent");
    // net/dev: u64::MAX passes through, the short eth0 line is skipped.
    assert_eq!(value(&out, r#"proc_net_dev_receive_bytes_total{instance="fx",interface="lo"}"#), Some(u64::MAX as f64));
    assert_eq!(value(&out, r#"proc_net_dev_receive_drop_total{instance="fx",interface="eth1"}"#), Some(1.0));
    assert!(!out.lines().any(|l| l.starts_with("proc_net_dev") && l.contains(r#"interface="eth0""#)));
    // diskstats: an 11-column (old kernel) line, a full one with bytes and seconds.
    assert_eq!(value(&out, r#"proc_diskstats_reads_completed_total{device="sda",instance="fx"}"#), Some(1.0));
    assert_eq!(value(&out, r#"proc_diskstats_read_bytes_total{device="nvme0n1",instance="fx"}"#), Some(2048.0));
    assert_eq!(value(&out, r#"proc_diskstats_read_time_seconds_total{device="nvme0n1",instance="fx"}"#), Some(1.0));
    assert_eq!(value(&out, r#"proc_diskstats_flush_time_seconds_total{device="nvme0n1",instance="fx"}"#), Some(0.017));
    assert!(!out.contains(r#"device="sda1""#));
    assert!(
        !out.contains(r#"device="sda",instance="fx"} "#)
            || !out.contains("proc_diskstats_flushes_total{device=\"sda\"")
    );
    // snmp: u64 counters beyond i64, gauges apart from counters; a lone header is reported.
    assert_eq!(
        value(&out, r#"proc_net_snmp_total{field="RetransSegs",instance="fx",protocol="Tcp"}"#),
        Some(u64::MAX as f64)
    );
    assert_eq!(value(&out, r#"proc_net_snmp{field="CurrEstab",instance="fx",protocol="Tcp"}"#), Some(3.0));
    // softnet: the old 3-column layout, CPU from the line number.
    assert_eq!(value(&out, r#"proc_net_softnet_time_squeeze_total{cpu="0",instance="fx"}"#), Some(2.0));
    // meminfo, pressure: good lines kept.
    assert_eq!(value(&out, r#"proc_meminfo_bytes{field="MemTotal",instance="fx"}"#), Some(1_024_000.0));
    assert_eq!(value(&out, r#"proc_meminfo_pages{field="HugePages_Total",instance="fx"}"#), Some(4.0));
    assert_eq!(
        value(&out, r#"proc_pressure_stalled_seconds_total{instance="fx",kind="some",resource="cpu"}"#),
        Some(2.5)
    );
    assert_eq!(
        value(&out, r#"proc_pressure_stalled_ratio{instance="fx",kind="some",resource="cpu",window="10s"}"#),
        Some(0.01)
    );
    // Nothing panicked, and each source with bad lines said so once.
    for source in [
        "proc_interrupts",
        "proc_softirqs",
        "proc_net_dev",
        "proc_diskstats",
        "proc_net_snmp",
        "proc_meminfo",
        "proc_pressure",
        "proc_loadavg",
        "proc_net_softnet",
    ] {
        let n = err
            .lines()
            .filter(|l| {
                l.contains("malformed lines skipped") && l.contains(&format!("source={source}\""))
                    || l.contains("malformed lines skipped") && l.contains(&format!("source=\"{source}\""))
            })
            .count();
        assert_eq!(n, 1, "{source}: {n} warnings\n{err}");
    }
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
