//! Where metrics are born: one module per source of data. Each source declares its
//! metrics ([`MetricDesc`]) next to its reader, registers series once, and pushes
//! `(series, timestamp, value)` into a [`Collector`] on every cycle.

/// Declare a metric: `metric!(IDENT, "name", Counter|Gauge, "unit", [labels], SOURCE, "help")`.
macro_rules! metric {
    ($ident:ident, $name:literal, $kind:ident, $unit:literal, [$($label:literal),*], $source:expr, $help:literal) => {
        pub static $ident: $crate::model::MetricDesc = $crate::model::MetricDesc {
            name: $name,
            kind: $crate::model::MetricKind::$kind,
            unit: $unit,
            help: $help,
            labels: &[$($label),*],
            source: $source,
        };
    };
}

#[macro_use]
pub mod histogram;

pub mod cpu_table;
pub mod diskstats;
pub mod host;
pub mod interrupts;
pub mod keyed;
pub mod loadavg;
pub mod meminfo;
pub mod mounts;
pub mod net_dev;
pub mod net_events;
pub mod net_snmp;
pub mod net_snmp6;
pub mod pressure;
pub mod proc_stat;
pub mod processes;
pub mod procfs_file;
pub mod qdisc;
pub mod sched;
pub mod self_metrics;
pub mod softirq_time;
pub mod softirqs;
pub mod softnet;
pub mod text;
pub mod vmstat;

use std::{fmt, sync::RwLock, time::Duration};

use crate::{
    bpf::BpfSource,
    config::Config,
    model::{MetricDesc, Registry, STALE_NAN_BITS, Sample, SeriesId},
};

/// A source as config, docs and wiring know it: one declaration per source, which the
/// agent walks. There is no list of names elsewhere to keep in step, so a source that is
/// declared is built, and one that is not cannot be configured.
pub struct SourceSpec {
    /// The key under `sources:` in the config file, and the `source` label of self-metrics.
    pub name: &'static str,
    /// Section title in docs/metrics.md.
    pub title: &'static str,
    pub default_interval: Duration,
    /// Off unless the config turns it on (costly or high-cardinality sources).
    pub default_enabled: bool,
    pub metrics: &'static [&'static MetricDesc],
    pub build: Build,
}

/// How a source comes to be.
#[derive(Clone, Copy)]
pub enum Build {
    /// From the configuration alone: files under /proc and /sys, netlink, statfs.
    Config(fn(&Config) -> Box<dyn Source>),
    /// From the loaded BPF object: its programs attached, its maps taken. The BPF loader
    /// walks these (`bpf::start`).
    Bpf(&'static BpfSource),
    /// The agent's own counters, built by the agent, which owns them.
    SelfMetrics,
}

const fn spec(
    name: &'static str,
    title: &'static str,
    ms: u64,
    metrics: &'static [&'static MetricDesc],
    build: Build,
) -> SourceSpec {
    SourceSpec { name, title, default_interval: Duration::from_millis(ms), default_enabled: true, metrics, build }
}

const fn spec_off(
    name: &'static str,
    title: &'static str,
    ms: u64,
    metrics: &'static [&'static MetricDesc],
    build: Build,
) -> SourceSpec {
    SourceSpec { default_enabled: false, ..spec(name, title, ms, metrics, build) }
}

/// Every source, in the order they are polled within a tick. Default intervals: what
/// moves fast and matters at 100 ms (CPU, softirqs, NIC and disk counters, pressure)
/// every tick; the rest every second; filesystems and host identity every 5 s.
pub fn specs() -> [SourceSpec; 27] {
    use Build::{Bpf, Config as Cfg, SelfMetrics};
    [
        spec(
            "proc_stat",
            "/proc/stat",
            100,
            proc_stat::METRICS,
            Cfg(|c| Box::new(proc_stat::ProcStatSource::new(&c.procfs_root, user_hz()))),
        ),
        spec(
            "proc_softirqs",
            "/proc/softirqs",
            100,
            softirqs::METRICS,
            Cfg(|c| Box::new(softirqs::SoftirqsSource::new(&c.procfs_root, &c.sysfs_root))),
        ),
        spec(
            "proc_net_dev",
            "/proc/net/dev",
            100,
            net_dev::METRICS,
            Cfg(|c| Box::new(net_dev::NetDevSource::new(&c.procfs_root))),
        ),
        spec(
            "proc_diskstats",
            "/proc/diskstats",
            100,
            diskstats::METRICS,
            Cfg(|c| Box::new(diskstats::DiskstatsSource::new(&c.procfs_root))),
        ),
        spec(
            "proc_pressure",
            "/proc/pressure (PSI)",
            100,
            pressure::METRICS,
            Cfg(|c| Box::new(pressure::PressureSource::new(&c.procfs_root))),
        ),
        spec("sched", "Scheduler (eBPF)", 100, sched::METRICS, Bpf(&sched::BPF)),
        spec("softirq_time", "Softirq time (eBPF)", 100, softirq_time::METRICS, Bpf(&softirq_time::BPF)),
        spec(
            "net_events",
            "TCP and packet drops (eBPF; counters read every 10th cycle, the event ring every cycle)",
            100,
            net_events::METRICS,
            Bpf(&net_events::BPF),
        ),
        spec(
            "trace_sched",
            "Deep-tracing sessions, sched profile (eBPF, only while a session runs)",
            1000,
            crate::trace::sched::METRICS,
            Bpf(&crate::trace::sched::BPF),
        ),
        spec(
            "trace_irq",
            "Deep-tracing sessions, irq profile (eBPF, only while a session runs)",
            1000,
            crate::trace::irq::METRICS,
            Bpf(&crate::trace::irq::BPF),
        ),
        spec(
            "trace_net",
            "Deep-tracing sessions, net profile (records of net_events, only while a session runs)",
            1000,
            crate::trace::net::METRICS,
            Bpf(&crate::trace::net::BPF),
        ),
        spec(
            "hindsight",
            "Hindsight ring: the events before a trigger (eBPF, read only when a trigger fires)",
            1000,
            crate::trace::hindsight::METRICS,
            Bpf(&crate::trace::hindsight::BPF),
        ),
        spec(
            "trace_block",
            "Deep-tracing sessions, block profile (eBPF, only while a session runs)",
            1000,
            crate::trace::block::METRICS,
            Bpf(&crate::trace::block::BPF),
        ),
        spec_off(
            "sched_tasks",
            "Per-thread scheduler times (eBPF, off by default)",
            1000,
            sched::tasks::METRICS,
            Bpf(&sched::tasks::BPF),
        ),
        spec(
            "proc_interrupts",
            "/proc/interrupts",
            1000,
            interrupts::METRICS,
            Cfg(|c| Box::new(interrupts::InterruptsSource::new(&c.procfs_root))),
        ),
        spec(
            "proc_net_snmp",
            "/proc/net/snmp",
            1000,
            net_snmp::SNMP_METRICS,
            Cfg(|c| Box::new(net_snmp::snmp(&c.procfs_root))),
        ),
        spec(
            "proc_net_snmp6",
            "/proc/net/snmp6",
            1000,
            net_snmp6::METRICS,
            Cfg(|c| Box::new(net_snmp6::source(&c.procfs_root))),
        ),
        spec(
            "proc_net_netstat",
            "/proc/net/netstat",
            1000,
            net_snmp::NETSTAT_METRICS,
            Cfg(|c| Box::new(net_snmp::netstat(&c.procfs_root))),
        ),
        spec(
            "proc_net_softnet",
            "/proc/net/softnet_stat",
            1000,
            softnet::METRICS,
            Cfg(|c| Box::new(softnet::SoftnetSource::new(&c.procfs_root))),
        ),
        spec(
            "proc_meminfo",
            "/proc/meminfo",
            1000,
            meminfo::METRICS,
            Cfg(|c| Box::new(meminfo::source(&c.procfs_root))),
        ),
        spec("proc_vmstat", "/proc/vmstat", 1000, vmstat::METRICS, Cfg(|c| Box::new(vmstat::source(&c.procfs_root)))),
        spec(
            "proc_loadavg",
            "/proc/loadavg",
            1000,
            loadavg::METRICS,
            Cfg(|c| Box::new(loadavg::LoadavgSource::new(&c.procfs_root))),
        ),
        spec(
            "proc_pid",
            "Processes and threads",
            1000,
            processes::METRICS,
            Cfg(|c| Box::new(processes::ProcessesSource::new(&c.procfs_root, c.threads, user_hz()))),
        ),
        spec(
            "qdisc",
            "Queueing disciplines (netlink)",
            1000,
            qdisc::METRICS,
            Cfg(|_| Box::new(qdisc::QdiscSource::new())),
        ),
        spec(
            "proc_mounts",
            "Mounted filesystems",
            5000,
            mounts::METRICS,
            Cfg(|c| Box::new(mounts::MountsSource::new(&c.procfs_root, &c.host_root, &c.fs_types))),
        ),
        spec(
            "host",
            "Host",
            5000,
            host::METRICS,
            Cfg(|c| Box::new(host::HostSource::new(&c.procfs_root, &c.sysfs_root, &c.os_release))),
        ),
        spec(self_metrics::NAME, "The agent itself", 1000, self_metrics::METRICS, SelfMetrics),
    ]
}

/// Every BPF program name, for `bpf_disable` (checked when the config is read).
pub fn bpf_program_names() -> Vec<&'static str> {
    specs()
        .iter()
        .filter_map(|s| match s.build {
            Build::Bpf(b) => Some(b.programs.iter().map(|(name, _)| *name)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// USER_HZ, the unit of /proc/stat's and /proc/<pid>/stat's CPU columns (100 on every
/// mainstream build).
fn user_hz() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// One source of data, polled by the sampler on its tick.
pub trait Source: Send {
    /// Short name used in logs, config (`sources.<name>`) and `lsvmi_*` self-metrics.
    fn name(&self) -> &'static str;

    /// Read the source once and push its samples. An `Err` means nothing could be read
    /// this cycle (the file is gone, the map cannot be read); malformed parts of what was
    /// read are reported through [`Collector::parse_errors`] instead.
    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError>;
}

/// Why a source produced nothing this cycle.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The outside world did not answer within the source's bound (a netlink dump).
    #[error("{what} did not answer within {limit_ms} ms")]
    Timeout { what: &'static str, limit_ms: u64 },
    /// A BPF map could not be read.
    #[error("cannot read BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The source panicked (a bug): the sampler turns it off and the others go on.
    #[error("panicked: {0}")]
    Panicked(String),
}

impl SourceError {
    /// A file could not be read.
    pub fn read(path: &std::path::Path, source: std::io::Error) -> Self {
        SourceError::Read { path: path.display().to_string(), source }
    }
}

/// A malformed part of a source's input: where it is and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number in the file.
    pub line: usize,
    /// The line's key or field that could not be parsed.
    pub field: String,
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, field {:?}: {}", self.line, self.field, self.reason)
    }
}

/// Change-only output (LSVMI's `full_metrics_factor`): a sample is sent when its
/// value differs from the last one sent for its series, and every series is sent
/// anyway once every `refresh_every` cycles of its source so that queries over any
/// window find it. Refresh phases are spread by series id, so a cycle never sends
/// everything at once.
#[derive(Debug, Default)]
pub struct ChangeFilter {
    /// Bits of the last value sent, indexed by series id; `UNSENT` before the first.
    last: Vec<u64>,
}

/// A NaN payload no source produces: "nothing sent yet".
const UNSENT: u64 = 0x7ff8_0000_dead_0001;

/// One cycle of a source's refresh schedule: key `k` (a series id, or a source's own
/// key such as a pid) is due when `(cycle + k) % every == 0` (every cycle when `every`
/// is 0), that is when `k % every == phase`. The remainder is taken by two
/// multiplications (Lemire's "fastmod", exact for 32-bit operands) instead of a
/// division: it is asked for every unchanged value of every cycle — 2 300 times a tick
/// for /proc/stat at 256 CPUs — and a division costs ~25 cycles.
#[derive(Clone, Copy, Debug)]
struct Refresh {
    every: u32,
    phase: u32,
    /// `2^64 / every`, rounded up.
    magic: u64,
}

impl Refresh {
    fn new(cycle: u64, every: u32) -> Self {
        let e = u64::from(every.max(1));
        // Both fit in u32: they are remainders of a division by a u32.
        let phase = u32::try_from((e - cycle % e) % e).unwrap_or(0);
        Refresh { every, phase, magic: (u64::MAX / e).wrapping_add(1) }
    }

    #[inline]
    fn due(&self, key: u32) -> bool {
        if self.every == 0 {
            return true;
        }
        let low = self.magic.wrapping_mul(u64::from(key));
        let rem = (u128::from(low) * u128::from(self.every)) >> 64;
        rem == u128::from(self.phase)
    }
}

impl ChangeFilter {
    fn pass(&mut self, id: SeriesId, value: f64, refresh: &Refresh) -> bool {
        let i = id.index();
        if self.last.len() <= i {
            self.last.resize(i + 1, UNSENT);
        }
        let bits = value.to_bits();
        // The compare first: a changed value passes without asking the schedule.
        if self.last[i] != bits || refresh.due(id.0) {
            self.last[i] = bits;
            true
        } else {
            false
        }
    }

    /// For a series whose value is known not to have changed (its row's bytes are those
    /// it was last parsed from): the last value sent when this cycle is its refresh,
    /// `Err(true)` when it is not (left out, as `pass` would), `Err(false)` when nothing
    /// was ever sent for it.
    fn repeat(&self, id: SeriesId, refresh: &Refresh) -> Result<f64, bool> {
        match self.last.get(id.index()) {
            None | Some(&UNSENT) => Err(false),
            Some(&bits) if refresh.due(id.0) => Ok(f64::from_bits(bits)),
            Some(_) => Err(true),
        }
    }

    fn remember(&mut self, id: SeriesId, value: f64) {
        let i = id.index();
        if self.last.len() <= i {
            self.last.resize(i + 1, UNSENT);
        }
        self.last[i] = value.to_bits();
    }

    /// Forget the series; returns whether a value of it was ever sent.
    fn forget(&mut self, id: SeriesId) -> bool {
        match self.last.get_mut(id.index()) {
            Some(slot) => std::mem::replace(slot, UNSENT) != UNSENT,
            None => false,
        }
    }
}

/// Where a collector registers and retires series.
pub enum RegistryAccess<'a> {
    /// A registry of the caller's own (tests, benchmarks, one-shot reads).
    Own(&'a mut Registry),
    /// The agent's registry, which the batcher reads while it encodes a batch (a 64 KiB
    /// block at a time): locked for writing only while a series is registered or
    /// retired, not for a source's whole cycle, so that a tick that meets an encode
    /// waits only when it has a new series to add.
    Shared(&'a RwLock<Registry>),
}

impl<'a> From<&'a mut Registry> for RegistryAccess<'a> {
    fn from(r: &'a mut Registry) -> Self {
        RegistryAccess::Own(r)
    }
}

impl<'a> From<&'a RwLock<Registry>> for RegistryAccess<'a> {
    fn from(r: &'a RwLock<Registry>) -> Self {
        RegistryAccess::Shared(r)
    }
}

impl RegistryAccess<'_> {
    fn write<R>(&mut self, f: impl FnOnce(&mut Registry) -> R) -> R {
        match self {
            RegistryAccess::Own(r) => f(r),
            // Poisoned only by a panic mid-registration, which leaves the table consistent.
            RegistryAccess::Shared(lock) => f(&mut lock.write().unwrap_or_else(|p| p.into_inner())),
        }
    }

    fn read<R>(&self, f: impl FnOnce(&Registry) -> R) -> R {
        match self {
            RegistryAccess::Own(r) => f(r),
            RegistryAccess::Shared(lock) => f(&lock.read().unwrap_or_else(|p| p.into_inner())),
        }
    }
}

/// What a source writes into during one cycle.
pub struct Collector<'a> {
    registry: RegistryAccess<'a>,
    samples: &'a mut Vec<Sample>,
    filter: Option<(&'a mut ChangeFilter, Refresh)>,
    /// Whether sources may skip rows whose bytes did not change ([`Collector::repeats`]).
    repeat: bool,
    unchanged: u64,
    parse_errors: u64,
    first_parse_error: Option<ParseError>,
    timeouts: u64,
}

impl<'a> Collector<'a> {
    /// A collector that keeps every sample (tests, one-shot reads).
    pub fn new(registry: impl Into<RegistryAccess<'a>>, samples: &'a mut Vec<Sample>) -> Self {
        Collector {
            registry: registry.into(),
            samples,
            filter: None,
            repeat: true,
            unchanged: 0,
            parse_errors: 0,
            first_parse_error: None,
            timeouts: 0,
        }
    }

    /// A collector that drops unchanged values except on each series' refresh cycle
    /// (`cycle` counts this source's cycles; `refresh_every` 0 keeps everything).
    pub fn change_only(
        registry: impl Into<RegistryAccess<'a>>,
        samples: &'a mut Vec<Sample>,
        filter: &'a mut ChangeFilter,
        cycle: u64,
        refresh_every: u32,
    ) -> Self {
        Collector { filter: Some((filter, Refresh::new(cycle, refresh_every))), ..Collector::new(registry, samples) }
    }

    /// Register (or look up) a series; sources call this once per series, not per cycle.
    pub fn series(&mut self, desc: &'static MetricDesc, labels: &[(&'static str, &str)]) -> SeriesId {
        self.registry.write(|r| r.register(desc, labels))
    }

    /// Number of live series (all sources).
    pub fn series_count(&self) -> usize {
        self.registry.read(Registry::live)
    }

    #[inline]
    pub fn push(&mut self, series: SeriesId, ts_ms: i64, value: f64) {
        if let Some((filter, refresh)) = &mut self.filter
            && !filter.pass(series, value, refresh)
        {
            self.unchanged += 1;
            return;
        }
        self.samples.push(Sample { series, ts_ms, value });
    }

    /// Whether a source may skip parsing a row whose bytes are those it last parsed and
    /// call [`Collector::repeat`] for its series instead: only under a change filter with
    /// a refresh schedule, where an unchanged value is sent only on its refresh cycle,
    /// and the filter's last value sent for a series is always the last value read (a
    /// change always passes). Without a filter every value is sent, so rows are parsed.
    pub fn repeats(&self) -> bool {
        self.repeat && matches!(&self.filter, Some((_, r)) if r.every > 0)
    }

    /// The series' value is the one last read (see [`Collector::repeats`]): send it
    /// again, with this cycle's timestamp, if this is its refresh cycle.
    #[inline]
    pub fn repeat(&mut self, series: SeriesId, ts_ms: i64) {
        let Some((filter, refresh)) = &self.filter else { return };
        match filter.repeat(series, refresh) {
            Ok(value) => self.samples.push(Sample { series, ts_ms, value }),
            Err(true) => self.unchanged += 1,
            Err(false) => {}
        }
    }

    /// A collector whose sources parse every row (tests compare it with one that skips).
    #[cfg(test)]
    pub fn parsing_every_row(mut self) -> Self {
        self.repeat = false;
        self
    }

    /// Send regardless of the change filter (and remember the value as sent): for sources
    /// that run their own refresh schedule, such as processes spread by pid.
    #[inline]
    pub fn push_refresh(&mut self, series: SeriesId, ts_ms: i64, value: f64) {
        if let Some((filter, _)) = &mut self.filter {
            filter.remember(series, value);
        }
        self.samples.push(Sample { series, ts_ms, value });
    }

    /// Whether this cycle is `key`'s refresh cycle, on the schedule the change filter
    /// keeps for series ids (always without a filter): for sources that spread their
    /// refreshes by a key of their own, such as processes by pid.
    pub fn refresh_due(&self, key: u32) -> bool {
        self.filter.as_ref().is_none_or(|(_, r)| r.due(key))
    }

    /// The series has ended (its process, interface, disk or mount is gone): send one
    /// staleness marker so queries stop showing the last value for five minutes, and
    /// retire the series id.
    pub fn end_series(&mut self, series: SeriesId, ts_ms: i64) {
        // A series that never got a value (a kernel thread has no memory figures) has
        // nothing to mark stale.
        let sent = match &mut self.filter {
            Some((filter, _)) => filter.forget(series),
            None => true,
        };
        if sent {
            self.samples.push(Sample { series, ts_ms, value: f64::from_bits(STALE_NAN_BITS) });
        }
        self.registry.write(|r| r.retire(series));
    }

    /// Samples left out this cycle because their value had not changed.
    pub fn unchanged(&self) -> u64 {
        self.unchanged
    }

    /// Report `count` malformed lines (skipped; the rest of the input still counts).
    pub fn parse_errors(&mut self, count: u64, first: Option<ParseError>) {
        self.parse_errors += count;
        if self.first_parse_error.is_none() {
            self.first_parse_error = first;
        }
    }

    /// Report `count` parts of the source that did not answer in time and were skipped
    /// (counted in `lsvmi_source_errors_total{reason="timeout"}`).
    pub fn timed_out(&mut self, count: u64) {
        self.timeouts += count;
    }

    /// Parts that timed out this cycle.
    pub fn timeouts(&self) -> u64 {
        self.timeouts
    }

    /// Malformed lines reported this cycle, and the first of them.
    pub fn take_parse_errors(&mut self) -> (u64, Option<ParseError>) {
        (std::mem::take(&mut self.parse_errors), self.first_parse_error.take())
    }
}

/// For sources that skip unchanged rows: run `skipping` and `parsing` (two sources over
/// the same file) through the same sequence of file contents (`write` puts each in
/// place), under a change filter with a short refresh, and check that they send the
/// same samples: skipping a row must never change what leaves the host.
#[cfg(test)]
pub fn assert_skipping_sends_what_parsing_sends(
    mut skipping: impl Source,
    mut parsing: impl Source,
    write: impl Fn(&str),
    contents: &[impl AsRef<str>],
) {
    let (mut reg_a, mut reg_b) = (Registry::new([]), Registry::new([]));
    let (mut filter_a, mut filter_b) = (ChangeFilter::default(), ChangeFilter::default());
    let described = |reg: &Registry, samples: &[Sample]| -> Vec<(Vec<(String, String)>, u64)> {
        let mut v: Vec<_> = samples
            .iter()
            .map(|s| {
                let series = reg.get(s.series).expect("registered");
                let labels = reg.labels(series).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
                (labels, s.value.to_bits())
            })
            .collect();
        v.sort();
        v
    };
    let mut skipped = 0;
    // Twice round, so that every row is unchanged on some cycles of each refresh phase.
    for (cycle, text) in contents.iter().chain(contents).enumerate() {
        let text = text.as_ref();
        write(text);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut out = Collector::change_only(&mut reg_a, &mut a, &mut filter_a, cycle as u64, 3);
        skipping.collect(&mut out).unwrap();
        let unchanged_a = out.unchanged();
        let mut out = Collector::change_only(&mut reg_b, &mut b, &mut filter_b, cycle as u64, 3).parsing_every_row();
        parsing.collect(&mut out).unwrap();
        assert_eq!(out.unchanged(), unchanged_a, "cycle {cycle}: samples counted unchanged");
        assert!(a.iter().all(|s| s.ts_ms > 0));
        assert_eq!(described(&reg_a, &a), described(&reg_b, &b), "cycle {cycle}, file:\n{text}");
        skipped += unchanged_a;
    }
    assert!(skipped > 0, "nothing was ever unchanged: the test proves nothing");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refresh_schedule_is_the_remainder_of_cycle_plus_key() {
        let ids = (0..300u32).chain([u32::MAX - 1, u32::MAX, 1 << 31, 0x9e37_79b9]);
        for every in [0, 1, 2, 3, 7, 10, 15, 16, 255, 1000, u32::MAX] {
            for cycle in [0, 1, 2, 14, 15, 16, 999, u64::from(u32::MAX) + 5, u64::MAX - 3] {
                let r = super::Refresh::new(cycle, every);
                for i in ids.clone() {
                    let want = every == 0 || (u128::from(cycle) + u128::from(i)) % u128::from(every) == 0;
                    assert_eq!(r.due(i), want, "every {every} cycle {cycle} key {i}");
                }
            }
        }
    }

    use super::*;
    use crate::model::MetricKind;

    static DESC: MetricDesc =
        MetricDesc { name: "g", kind: MetricKind::Gauge, unit: "", help: "", labels: &["k"], source: "t" };

    #[test]
    fn the_declarations_are_consistent() {
        let specs = specs();
        let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "{n} declared twice");
        }
        assert_eq!(specs.iter().filter(|s| matches!(s.build, Build::SelfMetrics)).count(), 1);
        for (i, spec) in specs.iter().enumerate() {
            if let Build::Bpf(b) = spec.build {
                for need in b.needs {
                    let earlier = specs[..i].iter().any(|s| s.name == *need && matches!(s.build, Build::Bpf(_)));
                    assert!(earlier, "{} needs {need}, which must be a BPF source declared before it", spec.name);
                }
            }
        }
        let programs = bpf_program_names();
        for (i, p) in programs.iter().enumerate() {
            assert!(!programs[..i].contains(p), "program {p} attached by two sources");
        }
    }

    #[test]
    fn change_only_sends_changes_and_a_spread_full_refresh() {
        let mut reg = Registry::new([]);
        let mut filter = ChangeFilter::default();
        let ids: Vec<SeriesId> = ["a", "b", "c"].iter().map(|k| reg.register(&DESC, &[("k", k)])).collect();
        let mut sent_per_cycle = Vec::new();
        for cycle in 0..6u64 {
            let mut samples = Vec::new();
            let mut out = Collector::change_only(&mut reg, &mut samples, &mut filter, cycle, 3);
            for (i, id) in ids.iter().enumerate() {
                // Series "c" changes every cycle; "a" and "b" are constant.
                let v = if i == 2 { cycle as f64 } else { 1.0 };
                out.push(*id, cycle as i64, v);
            }
            sent_per_cycle.push(samples.len());
        }
        // Cycle 0: everything is new. Then "c" every cycle, "a"/"b" once per 3 cycles each,
        // on different cycles.
        assert_eq!(sent_per_cycle, [3, 1, 2, 2, 1, 2]);
    }

    #[test]
    fn refresh_zero_keeps_everything_and_ended_series_get_a_stale_marker() {
        let mut reg = Registry::new([]);
        let mut filter = ChangeFilter::default();
        let id = reg.register(&DESC, &[("k", "a")]);
        let mut samples = Vec::new();
        let mut out = Collector::change_only(&mut reg, &mut samples, &mut filter, 0, 0);
        out.push(id, 1, 5.0);
        out.push(id, 2, 5.0);
        out.end_series(id, 3);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[2].value.to_bits(), STALE_NAN_BITS);
        assert_eq!(reg.live(), 0);
    }
}
