//! The real agent against a real VictoriaMetrics on loopback: what it collects arrives,
//! with the right labels, timestamps and values.

use std::{collections::BTreeMap, time::Duration};

use lsvmi_tests::{Exported, Vm, is_root, now_ms, read_proc_stat_cpus, run_agent};

const MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];
const USER_HZ: f64 = 100.0;

#[test]
fn samples_reach_victoriametrics_with_collection_timestamps_and_true_values() {
    let vm = Vm::start();
    let ignored_before = vm.self_metric("vm_rows_ignored_total", "");
    let before = read_proc_stat_cpus();
    let t_start = now_ms();

    let out = run_agent(
        &["--endpoint", &vm.write_url(), "--duration", "3", "--instance", "e2e-host"],
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
