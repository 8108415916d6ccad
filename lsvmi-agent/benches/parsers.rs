//! One benchmark per /proc parser, on the files captured from the reference machine
//! (`testdata/proc/debian12-6.18-2cpu`), next to the `procfs-core` parser of the same
//! file where that crate has one: the evidence for hand-parsing (or not) each file.
//! A second group times each whole source's cycle (read + parse + series lookup +
//! change filter) on the same tree, which is what a 100 ms tick really costs.
//!
//! A third group runs the per-CPU sources' cycle on a 256-CPU host, where their cost
//! grows with the CPUs (the files bench-scale's CPU axis reads).
//!
//! Run: `cargo bench -p lsvmi-agent --bench parsers`. Figures: docs/performance.md.

use std::{hint::black_box, path::Path};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lsvmi::{
    config::DEFAULT_FULL_REFRESH_EVERY,
    model::{Registry, Sample},
    sources::{
        ChangeFilter, Collector, Source, cpu_table, diskstats, host::HostSource, interrupts::InterruptsSource, keyed,
        loadavg, meminfo, mounts, net_dev, net_snmp, pressure, proc_stat, processes, softirqs, softnet, text, vmstat,
    },
};
use procfs_core::FromRead as _;

const TREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/proc/debian12-6.18-2cpu");

fn file(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(TREE).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn bench_parsers(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");

    let stat = file("1/stat");
    g.throughput(Throughput::Bytes(stat.len() as u64));
    g.bench_function("pid_stat/lsvmi", |b| b.iter(|| processes::parse::parse_stat(black_box(&stat))));
    g.bench_function("pid_stat/procfs-core", |b| {
        b.iter(|| procfs_core::process::Stat::from_read(black_box(&stat[..])).map(|s| s.utime))
    });

    let status = file("1/status");
    g.throughput(Throughput::Bytes(status.len() as u64));
    g.bench_function("pid_status/lsvmi", |b| b.iter(|| processes::parse::parse_status(black_box(&status))));
    g.bench_function("pid_status/procfs-core", |b| {
        b.iter(|| procfs_core::process::Status::from_read(black_box(&status[..])).map(|s| s.vmrss))
    });

    let dev = file("net/dev");
    g.throughput(Throughput::Bytes(dev.len() as u64));
    g.bench_function("net_dev/lsvmi", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            net_dev::parse(black_box(&dev), |_, v| sum = sum.wrapping_add(v[0]));
            sum
        })
    });
    g.bench_function("net_dev/procfs-core", |b| {
        b.iter(|| procfs_core::net::InterfaceDeviceStatus::from_read(black_box(&dev[..])).map(|d| d.0.len()))
    });

    let disks = file("diskstats");
    g.throughput(Throughput::Bytes(disks.len() as u64));
    g.bench_function("diskstats/lsvmi", |b| {
        b.iter(|| {
            let mut n = 0;
            diskstats::parse(black_box(&disks), |_, _, c| n += c);
            n
        })
    });
    g.bench_function("diskstats/procfs-core", |b| {
        b.iter(|| procfs_core::DiskStats::from_read(black_box(&disks[..])).map(|d| d.0.len()))
    });

    let mem = file("meminfo");
    g.throughput(Throughput::Bytes(mem.len() as u64));
    g.bench_function("meminfo/lsvmi", |b| {
        b.iter(|| {
            let mut sum = 0.0;
            for line in black_box(&mem).split(|&c| c == b'\n') {
                if let Some((_, v, _)) = keyed::split_line(line) {
                    sum += text::parse_int(v).unwrap_or(0.0);
                }
            }
            sum
        })
    });
    g.bench_function("meminfo/procfs-core", |b| {
        b.iter(|| procfs_core::Meminfo::from_read(black_box(&mem[..])).map(|m| m.mem_total))
    });

    let load = file("loadavg");
    // lsvmi parses loadavg through procfs-core; this times it as the source calls it.
    g.bench_function("loadavg/procfs-core", |b| b.iter(|| loadavg::parse(black_box(&load)).map(|v| v[0])));

    let mountinfo = file("self/mountinfo");
    g.throughput(Throughput::Bytes(mountinfo.len() as u64));
    g.bench_function("mountinfo/lsvmi", |b| {
        b.iter(|| {
            let mut n = 0;
            mounts::parse(black_box(&mountinfo), |_| n += 1);
            n
        })
    });
    g.bench_function("mountinfo/procfs-core", |b| {
        b.iter(|| procfs_core::process::MountInfos::from_read(black_box(&mountinfo[..])).map(|m| m.0.len()))
    });

    // Files procfs-core has no parser for (or none comparable).
    let interrupts = file("interrupts");
    g.throughput(Throughput::Bytes(interrupts.len() as u64));
    let mut table = cpu_table::CpuTable::default();
    g.bench_function("interrupts/lsvmi", |b| {
        b.iter(|| {
            let mut n = 0;
            cpu_table::parse(black_box(&interrupts), &mut table, |r| n += r.values.len());
            n
        })
    });
    let softirqs_file = file("softirqs");
    g.throughput(Throughput::Bytes(softirqs_file.len() as u64));
    g.bench_function("softirqs/lsvmi", |b| {
        b.iter(|| {
            let mut n = 0;
            cpu_table::parse(black_box(&softirqs_file), &mut table, |r| n += r.values.len());
            n
        })
    });
    let netstat = file("net/netstat");
    g.throughput(Throughput::Bytes(netstat.len() as u64));
    g.bench_function("netstat/lsvmi", |b| {
        b.iter(|| {
            let mut sum = 0.0;
            net_snmp::parse(black_box(&netstat), |_, _, v| sum += v);
            sum
        })
    });
    let softnet_file = file("net/softnet_stat");
    g.throughput(Throughput::Bytes(softnet_file.len() as u64));
    g.bench_function("softnet_stat/lsvmi", |b| {
        b.iter(|| {
            let mut n = 0;
            softnet::parse(black_box(&softnet_file), |_, c, _| n += c[0]);
            n
        })
    });
    let psi = file("pressure/cpu");
    g.throughput(Throughput::Bytes(psi.len() as u64));
    g.bench_function("pressure/lsvmi", |b| b.iter(|| pressure::parse(black_box(&psi)).0.map(|l| l.total_us)));
    g.finish();
}

/// Each source's whole cycle over the captured tree, in steady state (series registered).
fn bench_sources(c: &mut Criterion) {
    let root = Path::new(TREE);
    let sys = root.join("sys"); // not a real /sys: host_cpus is left out, the rest runs
    let sources: Vec<Box<dyn Source>> = vec![
        Box::new(proc_stat::ProcStatSource::new(root, 100)),
        Box::new(softirqs::SoftirqsSource::new(root, std::path::Path::new("/sys"))),
        Box::new(net_dev::NetDevSource::new(root)),
        Box::new(diskstats::DiskstatsSource::new(root)),
        Box::new(pressure::PressureSource::new(root)),
        Box::new(InterruptsSource::new(root)),
        Box::new(net_snmp::snmp(root)),
        Box::new(net_snmp::netstat(root)),
        Box::new(softnet::SoftnetSource::new(root)),
        Box::new(meminfo::source(root)),
        Box::new(vmstat::source(root)),
        Box::new(loadavg::LoadavgSource::new(root)),
        Box::new(processes::ProcessesSource::new(root, true, 100)),
        Box::new(HostSource::new(root, &sys, &root.join("os-release"))),
    ];
    let mut g = c.benchmark_group("source_cycle");
    for mut source in sources {
        let mut cycles = Cycles::new();
        g.bench_function(source.name(), |b| b.iter(|| cycles.run(&mut *source)));
    }
    g.finish();
}

/// A source's cycles as the sampler runs them: series registered once, the change
/// filter at the default refresh schedule, the cycle count going up.
struct Cycles {
    registry: Registry,
    filter: ChangeFilter,
    samples: Vec<Sample>,
    cycle: u64,
}

impl Cycles {
    fn new() -> Self {
        Cycles {
            registry: Registry::new([("instance".to_string(), "bench".to_string())]),
            filter: ChangeFilter::default(),
            samples: Vec::new(),
            cycle: 0,
        }
    }

    /// One cycle; the samples it sent.
    fn run(&mut self, source: &mut dyn Source) -> usize {
        self.samples.clear();
        let mut out = Collector::change_only(
            &mut self.registry,
            &mut self.samples,
            &mut self.filter,
            self.cycle,
            DEFAULT_FULL_REFRESH_EVERY,
        );
        let _ = source.collect(&mut out);
        self.cycle += 1;
        self.samples.len()
    }
}

/// /proc/stat, /proc/softirqs and /proc/interrupts of a 256-CPU host in two versions,
/// as two consecutive 100 ms reads of a busy host differ: every CPU's idle time, its
/// TIMER, SCHED and RCU softirqs and its local timer interrupts advanced, the rest as
/// it was. Each cycle reads the other version (written outside the timed part).
fn bench_wide_host(c: &mut Criterion) {
    const CPUS: usize = 256;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let version = |v: u64| {
        let mut stat = String::from("cpu  1 2 3 4 5 6 7 8 0 0\n");
        for cpu in 0..CPUS {
            stat += &format!("cpu{cpu} 123456 789 45678 {} 1234 0 5678 0 0 0\n", 98_765_432 + v);
        }
        stat += "intr 123456789 0 9 0 0 0\nctxt 987654321\nbtime 1700000000\nprocesses 123456\n\
                 procs_running 3\nprocs_blocked 0\nsoftirq 1 2 3 4 5 6 7 8 9 10 11\n";
        let header: String = (0..CPUS).map(|c| format!("{:>11}", format!("CPU{c}"))).collect();
        let row = |name: &str, value: u64, description: &str| {
            let counts: String = (0..CPUS).map(|_| format!(" {value:>10}")).collect();
            format!("{name:>5}:{counts}  {description}\n")
        };
        let mut softirqs = format!("{header}\n");
        for name in ["HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU"] {
            let ticking = matches!(name, "TIMER" | "SCHED" | "RCU");
            softirqs += &row(name, if ticking { 4_567_890 + v } else { 12_345 }, "");
        }
        let mut interrupts = format!("{header}\n");
        for irq in 0..32 {
            interrupts +=
                &row(&irq.to_string(), 321, &format!("IR-PCI-MSIX-0000:00:04.0 {irq}-edge virtio0-input.{irq}"));
        }
        interrupts += &row("LOC", 7_654_321 + v, "Local timer interrupts");
        interrupts += &row("RES", 4_321, "Rescheduling interrupts");
        [("stat", stat), ("softirqs", softirqs), ("interrupts", interrupts)]
    };
    let versions = [version(0), version(1)];
    let write = |v: usize| {
        for (name, text) in &versions[v] {
            std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    };
    let sys = dir.path().join("sys");
    std::fs::create_dir_all(sys.join("devices/system/cpu")).unwrap_or_else(|e| panic!("sys: {e}"));
    std::fs::write(sys.join("devices/system/cpu/online"), format!("0-{}\n", CPUS - 1))
        .unwrap_or_else(|e| panic!("online: {e}"));
    write(0);
    let make = |i: usize| -> Box<dyn Source> {
        match i {
            0 => Box::new(proc_stat::ProcStatSource::new(dir.path(), 100)),
            1 => Box::new(softirqs::SoftirqsSource::new(dir.path(), &sys)),
            _ => Box::new(InterruptsSource::new(dir.path())),
        }
    };
    // The agent runs a cycle every 100 ms, after the host has used the caches for other
    // work: `cold` runs each cycle after walking 32 MiB (more than this machine's
    // caches), as a tick meets its data; `warm` right after the previous cycle, as a
    // loop does.
    let mut evict = vec![0u8; 32 << 20];
    let mut g = c.benchmark_group("source_cycle_256cpu");
    for (i, cold) in (0..3).flat_map(|i| [(i, false), (i, true)]) {
        let mut source = make(i);
        let mut cycles = Cycles::new();
        let mut next = 0usize;
        let name = format!("{}/{}", source.name(), if cold { "cold" } else { "warm" });
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    write(next % 2);
                    next += 1;
                    if cold {
                        for at in (0..evict.len()).step_by(64) {
                            evict[at] = evict[at].wrapping_add(1);
                        }
                        black_box(&evict);
                    }
                },
                |()| cycles.run(&mut *source),
                criterion::BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_parsers, bench_sources, bench_wide_host);
criterion_main!(benches);
