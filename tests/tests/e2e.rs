//! The real agent against a real VictoriaMetrics on loopback: what it collects arrives,
//! with the right labels, timestamps and values.

use std::{collections::BTreeMap, time::Duration};

use lsvmi_tests::{
    Exported, Vm, is_root,
    load::{ping_pong, tcp_load},
    now_ms, read_proc_stat_cpus, run_agent, write_config,
};

const MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];
const USER_HZ: f64 = 100.0;

#[test]
fn samples_reach_victoriametrics_with_collection_timestamps_and_true_values() {
    let vm = Vm::start();
    let ignored_before = vm.self_metric("vm_rows_ignored_total", "");
    let before = read_proc_stat_cpus();
    let t_start = now_ms();

    // Change-only output off: every value on the 100 ms grid, to check the grid itself.
    let (_dir, config) = write_config("full_refresh_every: 0\n");
    let out = run_agent(
        &["--endpoint", &vm.write_url(), "--duration", "3", "--instance", "e2e-host", "--config", &config],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent failed: {}\n{stderr}", out.status);
    let after = read_proc_stat_cpus();
    let t_end = now_ms();

    vm.force_flush();
    let cpu_series = vm.export(r#"{__name__="proc_stat_cpu_seconds_total"}"#);

    // Every CPU the test saw has every mode, labelled with the instance we asked for.
    let mut by_cpu_mode: BTreeMap<(u32, String), &Exported> = BTreeMap::new();
    for s in &cpu_series {
        assert_eq!(s.label("instance"), "e2e-host", "{:?}", s.metric);
        by_cpu_mode.insert((s.label("cpu").parse().expect("cpu label"), s.label("mode").to_string()), s);
    }
    for (&cpu, ticks_before) in &before {
        for (col, mode) in MODES.iter().enumerate() {
            let s = by_cpu_mode
                .get(&(cpu, mode.to_string()))
                .unwrap_or_else(|| panic!("cpu {cpu} mode {mode} missing; have {:?}", by_cpu_mode.keys()));
            check_series(s, t_start, t_end);
            // The values lie between what the test read before and after the run.
            let lo = ticks_before[col] as f64 / USER_HZ;
            let hi = after[&cpu][col] as f64 / USER_HZ;
            let values: Vec<f64> = s.values.iter().map(|v| v.expect("no staleness marker")).collect();
            assert!(
                values[0] >= lo - 1e-9 && *values.last().unwrap() <= hi + 1e-9,
                "cpu {cpu} {mode}: {values:?} outside [{lo}, {hi}]"
            );
            assert!(values.windows(2).all(|w| w[1] >= w[0]), "cpu {cpu} {mode}: counter went down: {values:?}");
        }
    }

    // Per CPU, the modes add up to wall time (jiffies: ±10 ms per mode read, plus guest
    // time counted within user).
    for &cpu in before.keys() {
        let series: Vec<&&Exported> = MODES.iter().map(|m| &by_cpu_mode[&(cpu, m.to_string())]).collect();
        let busy: f64 = series.iter().map(|s| s.values.last().unwrap().unwrap() - s.values[0].unwrap()).sum();
        let ts = &series[0].timestamps;
        let wall = (ts.last().unwrap() - ts[0]) as f64 / 1000.0;
        assert!((busy - wall).abs() <= 0.1 + wall * 0.05, "cpu {cpu}: modes sum to {busy} s over {wall} s");
    }

    if is_root() && !stderr.contains("eBPF disabled") {
        let switches = vm.export(r#"{__name__="sched_context_switches_total"}"#);
        assert!(!switches.is_empty(), "no sched_context_switches_total; agent stderr:\n{stderr}");
        let cpus: Vec<&str> = switches.iter().map(|s| s.label("cpu")).collect();
        for cpu in before.keys() {
            assert!(cpus.contains(&cpu.to_string().as_str()), "cpu {cpu} missing from {cpus:?}");
        }
        for s in &switches {
            check_series(s, t_start, t_end);
            let first = s.values[0].expect("value");
            let last = s.values.last().copied().flatten().expect("value");
            assert!(last > first, "cpu {}: context switches did not increase ({first} → {last})", s.label("cpu"));
        }
    } else {
        eprintln!("skipping: sched_context_switches_total checks need root and BPF (agent said: {stderr})");
    }

    // The agent's own metrics arrive too, and VictoriaMetrics ignored nothing.
    assert!(!vm.export(r#"{__name__="lsvmi_samples_collected_total"}"#).is_empty());
    std::thread::sleep(Duration::from_millis(1500)); // /metrics lags ~1 s
    assert_eq!(vm.self_metric("vm_rows_ignored_total", ""), ignored_before, "VictoriaMetrics ignored rows");
}

/// ≥ 20 samples, strictly increasing timestamps ~100 ms apart, inside the run.
fn check_series(s: &Exported, t_start: i64, t_end: i64) {
    let ts = &s.timestamps;
    assert!(ts.len() >= 20, "{:?}: only {} samples", s.metric, ts.len());
    assert!(ts.windows(2).all(|w| w[1] > w[0]), "{:?}: timestamps not strictly increasing", s.metric);
    assert!(ts[0] >= t_start && *ts.last().unwrap() <= t_end, "{:?}: timestamps outside the run", s.metric);
    let mut gaps: Vec<i64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    assert!((90..=110).contains(&median), "{:?}: median gap {median} ms, want ~100", s.metric);
}

/// Every procfs family arrives with default settings (change-only output on) and its
/// values make sense.
#[test]
fn every_procfs_family_arrives_and_is_sane() {
    let vm = Vm::start();
    let ignored_before = vm.self_metric("vm_rows_ignored_total", "");
    let out = run_agent(&["--endpoint", &vm.write_url(), "--duration", "3", "--no-bpf"], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent failed: {}\n{stderr}", out.status);
    vm.force_flush();

    let families = [
        "proc_stat_cpu_seconds_total",
        "proc_stat_context_switches_total",
        "proc_stat_procs_running",
        "proc_stat_boot_time_seconds",
        "proc_interrupts_total",
        "proc_interrupts_info",
        "proc_softirqs_total",
        "proc_net_dev_receive_bytes_total",
        "proc_net_dev_transmit_packets_total",
        "proc_net_snmp_total",
        "proc_net_snmp",
        "proc_net_netstat_total",
        "proc_net_softnet_processed_total",
        "proc_diskstats_reads_completed_total",
        "proc_diskstats_io_now",
        "proc_mount_size_bytes",
        "proc_mount_avail_bytes",
        "proc_meminfo_bytes",
        "proc_vmstat_total",
        "proc_vmstat",
        "proc_loadavg_load1",
        "proc_pressure_stalled_seconds_total",
        "proc_pid_cpu_seconds_total",
        "proc_pid_memory_bytes",
        "proc_pid_info",
        "proc_tid_cpu_seconds_total",
        "proc_tasks",
        "host_info",
        "host_uptime_seconds",
        "qdisc_bytes_total",
        "qdisc_drops_total",
        "host_cpus",
        "lsvmi_source_busy_seconds_total",
        "lsvmi_send_duration_seconds_bucket",
        "lsvmi_send_duration_seconds_count",
        "lsvmi_endpoint_up",
        "lsvmi_spool_bytes",
    ];
    let mut missing = Vec::new();
    for f in families {
        if vm.export(&format!(r#"{{__name__="{f}"}}"#)).is_empty() {
            missing.push(f);
        }
    }
    if std::path::Path::new("/proc/net/snmp6").exists() && vm.export(r#"{__name__="proc_net_snmp6_total"}"#).is_empty()
    {
        missing.push("proc_net_snmp6_total");
    }
    assert!(missing.is_empty(), "families missing: {missing:?}\nagent stderr:\n{stderr}");

    // Values agree with what the test reads now (slow-moving ones).
    let mem_total = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = mem_total.lines().next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let m = vm.export(r#"{__name__="proc_meminfo_bytes",field="MemTotal"}"#);
    assert_eq!(m[0].values[0], Some(kb * 1024.0));
    let cpus = read_proc_stat_cpus().len() as f64;
    let online = vm.export(r#"{__name__="host_cpus",state="online"}"#);
    assert_eq!(online[0].values[0], Some(cpus));
    // The agent pushes over loopback, so lo's counters grew during the run.
    let lo = vm.export(r#"{__name__="proc_net_dev_transmit_bytes_total",interface="lo"}"#);
    let v: Vec<f64> = lo[0].values.iter().flatten().copied().collect();
    assert!(v.len() >= 2 && v.last() > v.first(), "lo transmit bytes did not grow: {v:?}");
    // The agent sees itself among the processes, and / among the mounts.
    assert!(!vm.export(r#"{__name__="proc_pid_info",comm="lsvmi"}"#).is_empty(), "agent not among processes");
    assert!(!vm.export(r#"{__name__="proc_mount_size_bytes",mountpoint="/"}"#).is_empty());
    let tasks = vm.export(r#"{__name__="proc_tasks",kind="process"}"#);
    assert!(tasks[0].values[0].unwrap() > 5.0, "{tasks:?}");
    // Change-only output left things out, and said so.
    let unchanged = vm.export(r#"{__name__="lsvmi_samples_unchanged_total",source="proc_vmstat"}"#);
    assert!(unchanged.iter().flat_map(|s| s.values.iter().flatten()).any(|v| *v > 0.0), "{unchanged:?}");

    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(vm.self_metric("vm_rows_ignored_total", ""), ignored_before, "VictoriaMetrics ignored rows");
}

/// Every BPF family reaches VictoriaMetrics under known load, and `histogram_quantile`
/// works on the kernel histograms there.
#[test]
fn every_bpf_family_arrives_and_histogram_quantile_works() {
    if !is_root() {
        eprintln!("skipping: BPF needs root");
        return;
    }
    let vm = Vm::start();
    let load = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(1000));
        ping_pong(2000);
        tcp_load(5);
    });
    let (_dir, config) = write_config("sources:\n  sched_tasks: {enabled: true}\n");
    let args = ["--endpoint", &vm.write_url(), "--duration", "5", "--cpus", "all", "--config", &config];
    let out = run_agent(&args, Duration::from_secs(30));
    load.join().expect("load");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent failed: {}\n{stderr}", out.status);
    vm.force_flush();

    let families = [
        "sched_context_switches_total",
        "sched_task_switches_total",
        "sched_migrations_total",
        "sched_cpu_busy_seconds_total",
        "sched_runq_latency_seconds_bucket",
        "sched_runq_latency_seconds_sum",
        "sched_runq_latency_seconds_count",
        "sched_task_runq_wait_seconds_total",
        "sched_task_oncpu_seconds_total",
        "sched_task_evictions_total",
        "sched_tasks_tracked",
        "softirq_time_seconds_total",
        "softirq_runs_total",
        "net_tcp_retransmits_total",
        "net_tcp_resets_sent_total",
        "net_tcp_resets_received_total",
        "net_tcp_state_transitions_total",
        "net_skb_drops_total",
        "net_tcp_srtt_seconds_bucket",
        "net_tcp_srtt_seconds_sum",
        "net_tcp_srtt_seconds_count",
        "net_events_total",
        "net_events_lost_total",
    ];
    let missing: Vec<&str> =
        families.into_iter().filter(|f| vm.export(&format!(r#"{{__name__="{f}"}}"#)).is_empty()).collect();
    assert!(missing.is_empty(), "families missing: {missing:?}\nagent stderr:\n{stderr}");

    // The last sample is at most a second old; query there, over the whole run.
    let at = now_ms() / 1000;
    for (q, what) in [
        (0.5, "sched_runq_latency_seconds_bucket"),
        (0.99, "sched_runq_latency_seconds_bucket"),
        (0.5, "net_tcp_srtt_seconds_bucket"),
    ] {
        let promql = format!("histogram_quantile({q}, sum by (le) (increase({what}[10s])))");
        let v = vm.query(&promql, at).unwrap_or_else(|| panic!("no result for {promql}"));
        eprintln!("{promql} = {v}");
        assert!(v.is_finite() && v > 0.0 && v < 10.0, "{promql} = {v}");
    }
}

/// A thread that renames itself (prctl PR_SET_NAME, as JVMs and thread pools do) gets
/// series under its new name, and those under the old name end.
#[test]
fn a_renamed_thread_gets_series_under_its_new_name() {
    let vm = Vm::start();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("lsvmi-t-old".into())
        .spawn(move || {
            // SAFETY: no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            std::thread::sleep(Duration::from_millis(3000));
            // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
            unsafe { libc::prctl(libc::PR_SET_NAME, c"lsvmi-t-new".as_ptr()) };
            // Busy for a moment, so its CPU time moves under the new name.
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_millis(300) {
                std::hint::spin_loop();
            }
            std::thread::sleep(Duration::from_millis(3000));
        })
        .expect("spawning the worker");
    let tid = tid_rx.recv().expect("the worker's tid").to_string();
    let out = run_agent(&["--endpoint", &vm.write_url(), "--duration", "6", "--no-bpf"], Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = worker.join();
    vm.force_flush();
    let series = vm.export(&format!(r#"{{__name__="proc_tid_cpu_seconds_total",tid="{tid}",mode="user"}}"#));
    let comms: Vec<&str> = series.iter().map(|s| s.label("comm")).collect();
    assert!(comms.contains(&"lsvmi-t-old") && comms.contains(&"lsvmi-t-new"), "{comms:?}");
    let old = series.iter().find(|s| s.label("comm") == "lsvmi-t-old").unwrap();
    assert_eq!(old.values.last(), Some(&None), "the old name's series ends with a staleness marker");
}
