//! Criterion benchmarks of the hot paths, each next to the crate alternative it replaces:
//! - /proc/stat parsing (every 100 ms): ours vs procfs-core's `KernelStats`;
//! - remote-write encoding (every second): ours (cached label bytes) vs building prost
//!   structs, both followed by the same snappy compression;
//! - the disk spool: appending 64 KiB batches (what an outage costs per batch) and
//!   replaying them (peek + acknowledge, what recovery costs).
//!
//! Run: `cargo bench -p lsvmi-agent --bench hot_paths`; figures in docs/performance.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lsvmi::{
    encode::{proto, remote_write::Encoder},
    model::{MetricDesc, MetricKind, Registry, Sample},
    sources::proc_stat::parse::{ProcStat, parse},
};
use procfs_core::{ExplicitSystemInfo, FromReadSI, KernelStats};
use prost::Message as _;

const CAPTURED: &str = include_str!("../../testdata/proc/debian12-6.18-2cpu/stat");

/// The captured 2-CPU file, and the same with its cpu1 line repeated as cpu0..cpuN-1 (a
/// production-sized host; the intr/softirq lines stay as captured).
fn proc_stat_with_cpus(n: usize) -> String {
    if n <= 2 {
        return CAPTURED.to_string();
    }
    let cpu1 = CAPTURED.lines().find(|l| l.starts_with("cpu1 ")).unwrap_or("cpu1 1 2 3 4 5 6 7 8 9 10");
    let mut out = String::new();
    for line in CAPTURED.lines() {
        if line.starts_with("cpu0 ") {
            for i in 0..n {
                out.push_str(&cpu1.replacen("cpu1", &format!("cpu{i}"), 1));
                out.push('\n');
            }
        } else if !line.starts_with("cpu1 ") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn bench_proc_stat(c: &mut Criterion) {
    let info = ExplicitSystemInfo { boot_time_secs: 0, ticks_per_second: 100, page_size: 4096, is_little_endian: true };
    let mut group = c.benchmark_group("proc_stat_parse");
    for cpus in [2usize, 64] {
        let text = proc_stat_with_cpus(cpus);
        group.throughput(Throughput::Bytes(text.len() as u64));
        let mut out = ProcStat::default();
        group.bench_with_input(BenchmarkId::new("lsvmi", cpus), &text, |b, t| {
            b.iter(|| black_box(parse(black_box(t.as_bytes()), &mut out)))
        });
        group.bench_with_input(BenchmarkId::new("procfs-core", cpus), &text, |b, t| {
            b.iter(|| black_box(KernelStats::from_read(black_box(t.as_bytes()), &info).ok()))
        });
    }
    group.finish();
}

static DESC: MetricDesc = MetricDesc {
    name: "proc_stat_cpu_seconds_total",
    kind: MetricKind::Counter,
    unit: "seconds",
    help: "",
    labels: &["cpu", "mode"],
    source: "bench",
};

/// One second of a 64-CPU host's CPU series: 640 series × 10 samples.
fn one_second_of_samples() -> (Registry, Vec<Sample>) {
    let mut reg = Registry::new([("instance".to_string(), "md-host-017.example".to_string())]);
    let modes = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice"];
    let ids: Vec<_> = (0..64)
        .flat_map(|cpu| modes.map(|m| (cpu, m)))
        .map(|(cpu, m)| reg.register(&DESC, &[("cpu", &cpu.to_string()), ("mode", m)]))
        .collect();
    let mut samples = Vec::new();
    for tick in 0..10i64 {
        for (i, id) in ids.iter().enumerate() {
            samples.push(Sample {
                series: *id,
                ts_ms: 1_795_000_000_000 + tick * 100,
                value: (i as f64) * 12.34 + tick as f64,
            });
        }
    }
    (reg, samples)
}

fn with_prost(reg: &Registry, samples: &[Sample]) -> Vec<u8> {
    let mut sorted = samples.to_vec();
    sorted.sort_by_key(|s| s.series);
    let timeseries = sorted
        .chunk_by(|a, b| a.series == b.series)
        .map(|run| proto::TimeSeries {
            labels: reg
                .get(run[0].series)
                .map(|s| {
                    reg.labels(s)
                        .map(|(name, value)| proto::Label { name: name.to_string(), value: value.to_string() })
                        .collect()
                })
                .unwrap_or_default(),
            samples: run.iter().map(|s| proto::Sample { value: s.value, timestamp: s.ts_ms }).collect(),
        })
        .collect();
    proto::WriteRequest { timeseries }.encode_to_vec()
}

fn bench_encode(c: &mut Criterion) {
    let (reg, samples) = one_second_of_samples();
    let mut group = c.benchmark_group("remote_write_encode");
    group.throughput(Throughput::Elements(samples.len() as u64));
    let mut enc = Encoder::new();
    let mut work = samples.clone();
    group.bench_function("lsvmi_protobuf", |b| {
        b.iter(|| {
            work.copy_from_slice(&samples);
            black_box(enc.encode_protobuf(&reg, &mut work).len())
        })
    });
    group.bench_function("prost_protobuf", |b| b.iter(|| black_box(with_prost(&reg, black_box(&samples)).len())));
    group.bench_function("lsvmi_protobuf_and_snappy", |b| {
        b.iter(|| {
            work.copy_from_slice(&samples);
            black_box(enc.encode(&reg, &mut work).map(|b| b.body.len()).ok())
        })
    });
    group.finish();
}

fn bench_spool(c: &mut Criterion) {
    use lsvmi::{
        encode::remote_write::EncodedBatch,
        send::spool::{Fsync, Spool, SpoolConfig},
    };
    const BATCH: usize = 64 << 10;
    const PER_ROUND: usize = 64;
    let batch = EncodedBatch {
        body: bytes::Bytes::from((0..BATCH).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>()),
        samples: 20_000,
        series: 2_000,
        uncompressed_len: 4 * BATCH,
    };
    let mut group = c.benchmark_group("spool");
    group.throughput(Throughput::Bytes((BATCH * PER_ROUND) as u64));
    group.sample_size(10);
    for fsync in [Fsync::Never, Fsync::Interval, Fsync::Always] {
        let Ok(dir) = tempfile::tempdir() else {
            eprintln!("spool bench skipped: no temporary directory");
            return;
        };
        let cfg = SpoolConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: 1 << 30,
            max_age: std::time::Duration::from_secs(3600),
            fsync,
            segment_bytes: 16 << 20,
        };
        let Ok((mut spool, _)) = Spool::open(cfg) else {
            eprintln!("spool bench skipped: cannot open a spool in {}", dir.path().display());
            return;
        };
        group.bench_function(BenchmarkId::new("append_then_replay_64KiB", format!("{fsync:?}")), |b| {
            b.iter(|| {
                for _ in 0..PER_ROUND {
                    black_box(spool.append(&batch).is_ok());
                }
                while let Ok(Some(b)) = spool.peek() {
                    black_box(b.body.len());
                    black_box(spool.ack().is_ok());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_proc_stat, bench_encode, bench_spool);
criterion_main!(benches);
