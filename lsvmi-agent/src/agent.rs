//! Wiring: sources → sampler → batcher → outbox (memory, spool) → sender per
//! destination, and an orderly stop.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use crate::{
    bpf,
    config::{Config, DeliveryMode, SpoolSettings},
    encode::{remote_write::Encoder, text::TextWriter},
    model::Registry,
    sampler::Sampler,
    sampler::Schedule,
    send::{
        batcher::{Batcher, Output},
        http::{self, HttpSender},
        outbox::Outbox,
        spool::{Spool, SpoolConfig},
    },
    sources::{
        Source,
        diskstats::DiskstatsSource,
        host::HostSource,
        interrupts::InterruptsSource,
        loadavg::LoadavgSource,
        meminfo,
        mounts::MountsSource,
        net_dev::NetDevSource,
        net_events::NetEventsSource,
        net_snmp, net_snmp6,
        pressure::PressureSource,
        proc_stat::ProcStatSource,
        processes::ProcessesSource,
        sched::{SchedSource, tasks::SchedTasksSource},
        self_metrics::SelfMetrics,
        softirq_time::SoftirqTimeSource,
        softirqs::SoftirqsSource,
        softnet::SoftnetSource,
        vmstat,
    },
    stats::{DropReason, EndpointStats, Stats},
};

/// Cycles' worth of sample vectors the sampler may get ahead of the batcher.
const SAMPLER_CHANNEL_CAPACITY: usize = 64;

/// Run until SIGINT/SIGTERM or `config.duration`, then flush and return.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // rustls needs one process-wide crypto provider; ring keeps the build free of cmake.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let registry = Registry::new(config.host_labels.clone()).shared();
    let mut sources = procfs_sources(&config);
    // Held until the end: dropping it detaches the programs.
    let _bpf = if config.bpf && BPF_SOURCES.iter().any(|s| config.enabled(s)) {
        start_bpf(&mut sources, &config)
    } else {
        None
    };
    if !config.bpf {
        info!("eBPF off (--no-bpf or `bpf: false`): procfs sources only");
    }
    let names: Vec<&'static str> = sources.iter().map(|s| s.name()).chain(["lsvmi"]).collect();
    let stats = Arc::new(Stats::new(names.iter().copied()));
    if config.enabled("lsvmi") {
        sources.push(Box::new(SelfMetrics::new(stats.clone())));
    }
    let scheduled: Vec<(Box<dyn Source>, Schedule)> = sources
        .into_iter()
        .map(|s| {
            let schedule = config
                .source(s.name())
                .map(|c| Schedule { every_ticks: c.every_ticks, full_refresh_every: c.full_refresh_every })
                .unwrap_or_default();
            (s, schedule)
        })
        .collect();

    let (tx, rx) = mpsc::channel(SAMPLER_CHANNEL_CAPACITY);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (abort_tx, abort_rx) = watch::channel(false);

    let (output, senders, outboxes) = if config.dry_run {
        (Output::Text(TextWriter::new()), Vec::new(), Vec::new())
    } else {
        let (outboxes, senders) = start_delivery(&config, &stats, &abort_rx)?;
        (Output::Remote { encoder: Box::new(Encoder::new()), outboxes: outboxes.clone() }, senders, outboxes)
    };
    let batcher = Batcher {
        registry: registry.clone(),
        stats: stats.clone(),
        output,
        interval: config.batch_interval,
        max_samples: config.max_batch_samples,
        max_bytes: config.max_batch_bytes,
    };
    let batcher = tokio::spawn(batcher.run(rx));
    let sampler = tokio::spawn(Sampler::new(scheduled, config.interval, registry, stats.clone()).run(tx, stop_rx));

    info!(
        sources = ?names,
        endpoints = %if config.dry_run {
            "stdout (--dry-run)".to_string()
        } else {
            config.endpoints.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", ")
        },
        mode = ?config.mode,
        interval_ms = config.interval.as_millis() as u64,
        instance = %config.host_labels.get("instance").map(String::as_str).unwrap_or(""),
        "lsvmi started"
    );
    wait_for_stop(config.duration).await?;

    info!("stopping: flushing collected samples");
    let _ = stop_tx.send(true);
    sampler.await.context("sampler task")?;
    batcher.await.context("batcher task")?;
    // Deliver what is queued within the shutdown deadline; then park the rest in the
    // spool for the next run (or count it lost without one).
    let all_sent = async {
        for s in senders {
            let _ = s.await;
        }
    };
    if tokio::time::timeout(config.shutdown_timeout, all_sent).await.is_err() {
        let _ = abort_tx.send(true);
    }
    for outbox in outboxes {
        http::park(outbox, &stats).await;
    }
    // Every loss by reason, so the last line of a run accounts for every sample.
    let by_reason: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| stats.dropped_total(**r) > 0)
        .map(|r| format!("{}:{}", r.as_str(), stats.dropped_total(*r)))
        .collect();
    info!(
        collected = stats.samples_collected.load(std::sync::atomic::Ordering::Relaxed),
        sent = stats.samples_sent.load(std::sync::atomic::Ordering::Relaxed),
        dropped = DropReason::ALL.iter().map(|r| stats.dropped_total(*r)).sum::<u64>(),
        dropped_by_reason = %if by_reason.is_empty() { "none".to_string() } else { by_reason.join(",") },
        "lsvmi stopped"
    );
    Ok(())
}

/// The enabled /proc sources, in poll order (public for the source-level fuzz test).
pub fn procfs_sources(config: &Config) -> Vec<Box<dyn Source>> {
    let root = config.procfs_root.as_path();
    let hz = user_hz();
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    for spec in crate::sources::specs() {
        if !config.enabled(spec.name) {
            continue;
        }
        let source: Box<dyn Source> = match spec.name {
            "proc_stat" => Box::new(ProcStatSource::new(root, hz)),
            "proc_softirqs" => Box::new(SoftirqsSource::new(root)),
            "proc_net_dev" => Box::new(NetDevSource::new(root)),
            "proc_diskstats" => Box::new(DiskstatsSource::new(root)),
            "proc_pressure" => Box::new(PressureSource::new(root)),
            "proc_interrupts" => Box::new(InterruptsSource::new(root)),
            "proc_net_snmp" => Box::new(net_snmp::snmp(root)),
            "proc_net_snmp6" => Box::new(net_snmp6::source(root)),
            "proc_net_netstat" => Box::new(net_snmp::netstat(root)),
            "proc_net_softnet" => Box::new(SoftnetSource::new(root)),
            "proc_meminfo" => Box::new(meminfo::source(root)),
            "proc_vmstat" => Box::new(vmstat::source(root)),
            "proc_loadavg" => Box::new(LoadavgSource::new(root)),
            "proc_pid" => Box::new(ProcessesSource::new(root, config.threads, hz)),
            "qdisc" => Box::new(crate::sources::qdisc::QdiscSource::new()),
            "proc_mounts" => Box::new(MountsSource::new(root, &config.host_root, &config.fs_types)),
            "host" => Box::new(HostSource::new(root, &config.sysfs_root, &config.os_release)),
            // sched (BPF) and lsvmi (self) are built elsewhere.
            _ => continue,
        };
        sources.push(source);
    }
    sources
}

/// One outbox per destination (one in failover mode, one per endpoint in replicate
/// mode), each with its spool directory and its sender task.
type Delivery = (Vec<Arc<Outbox>>, Vec<tokio::task::JoinHandle<()>>);

fn start_delivery(config: &Config, stats: &Arc<Stats>, abort: &watch::Receiver<bool>) -> anyhow::Result<Delivery> {
    let groups: Vec<(String, Vec<reqwest::Url>)> = match config.mode {
        DeliveryMode::Failover => vec![("failover".to_string(), config.endpoints.clone())],
        DeliveryMode::Replicate => config
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("replica-{i}-{}", spool_name(u)), vec![u.clone()]))
            .collect(),
    };
    let auth = crate::send::auth::AuthHeader::default();
    // Checked when the config was read; read again here for the current value.
    auth.set(config.credentials.header().map_err(|e| anyhow::anyhow!("credentials: {e}"))?);
    if config.credentials != crate::send::auth::Credentials::None {
        crate::send::auth::reload_on_sighup(config.credentials.clone(), auth.clone())
            .context("installing the SIGHUP handler")?;
    }
    let settings = http::ClientSettings {
        timeout: config.http_timeout,
        tls: config.tls.clone(),
        headers: config.headers.clone(),
        auth,
        limit: config.rate_limit.map(|(rate, burst)| Arc::new(crate::send::ratelimit::RateLimit::new(rate, burst))),
    };
    let mut all_endpoint_stats = Vec::new();
    let (mut outboxes, mut senders) = (Vec::new(), Vec::new());
    for (name, urls) in groups {
        let spool = config.spool.as_ref().map(|s| open_spool(s, &name, stats)).transpose()?;
        let outbox = Outbox::new(config.max_queued_bytes, spool, stats.clone());
        let clients = urls.iter().map(|u| HttpSender::new(u.clone(), &settings)).collect::<anyhow::Result<Vec<_>>>()?;
        let endpoint_stats: Vec<Arc<EndpointStats>> =
            urls.iter().map(|u| Arc::new(EndpointStats::new(u.to_string()))).collect();
        all_endpoint_stats.extend(endpoint_stats.iter().cloned());
        senders.push(tokio::spawn(http::run(clients, outbox.clone(), stats.clone(), endpoint_stats, abort.clone())));
        outboxes.push(outbox);
    }
    let _ = stats.endpoints.set(all_endpoint_stats);
    Ok((outboxes, senders))
}

/// A directory name for an endpoint: host, port and path, other characters as `_`.
fn spool_name(url: &reqwest::Url) -> String {
    let raw =
        format!("{}_{}{}", url.host_str().unwrap_or("host"), url.port_or_known_default().unwrap_or(0), url.path());
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
}

/// Open `<dir>/<name>`, locked against a second agent on the same directory. A spool that
/// cannot be used at start-up is a configuration error: running on with memory-only
/// buffering would silently drop the durability the operator asked for, and a second
/// agent on the same directory would push the same host twice. (A spool that fails
/// later, a full disk, degrades to memory and is counted; see `send/outbox.rs`.)
fn open_spool(settings: &SpoolSettings, name: &str, stats: &Stats) -> Result<Spool, crate::config::ConfigError> {
    let dir = settings.dir.join(name);
    let cfg = SpoolConfig {
        dir: dir.clone(),
        max_bytes: settings.max_bytes,
        max_age: settings.max_age,
        fsync: settings.fsync,
        segment_bytes: (settings.max_bytes / 8).clamp(4 << 10, 16 << 20),
    };
    match Spool::open(cfg) {
        Ok((spool, lost)) => {
            stats.spool_corrupt_records.fetch_add(lost.corrupt_records, std::sync::atomic::Ordering::Relaxed);
            let waiting = spool.pending_samples();
            if waiting > 0 {
                info!(spool = %dir.display(), samples = waiting, "spool holds samples from an earlier run: replaying them first");
            }
            Ok(spool)
        }
        Err(e) => Err(crate::config::ConfigError::Invalid {
            key: "spool.dir",
            reason: format!(
                "{}: {e} (choose another --spool-dir, or `spool: {{enabled: false}}` for memory-only buffering)",
                dir.display()
            ),
        }),
    }
}

/// The sources that run BPF programs.
const BPF_SOURCES: [&str; 4] = ["sched", "sched_tasks", "softirq_time", "net_events"];

/// Load the BPF object and attach each enabled source's programs; failures are one
/// warning line each, and the other sources go on.
fn start_bpf(sources: &mut Vec<Box<dyn Source>>, config: &Config) -> Option<aya::Ebpf> {
    let options = bpf::LoadOptions { task_stats: config.enabled("sched_tasks") && config.enabled("sched") };
    let mut loaded = match bpf::load(options) {
        Ok(b) => b,
        Err(e) => {
            warn!("eBPF disabled: {e}; continuing with procfs sources");
            return None;
        }
    };
    let disabled = &config.bpf_disable;
    let mut sched_running = false;
    if config.enabled("sched") {
        match SchedSource::attach(&mut loaded, disabled) {
            Ok(s) => {
                sched_running = true;
                sources.push(Box::new(s));
            }
            Err(e) => warn!("eBPF source sched disabled: {e}; other sources continue"),
        }
    }
    if options.task_stats && sched_running {
        match SchedTasksSource::attach(&mut loaded) {
            Ok(s) => sources.push(Box::new(s)),
            Err(e) => warn!("eBPF source sched_tasks disabled: {e}; other sources continue"),
        }
    } else if config.enabled("sched_tasks") {
        warn!("eBPF source sched_tasks needs source sched and its sched_switch program; it stays off");
    }
    if config.enabled("softirq_time") {
        match SoftirqTimeSource::attach(&mut loaded, disabled) {
            Ok(s) => sources.push(Box::new(s)),
            Err(e) => warn!("eBPF source softirq_time disabled: {e}; other sources continue"),
        }
    }
    if config.enabled("net_events") {
        match NetEventsSource::attach(&mut loaded, disabled) {
            Ok(s) => sources.push(Box::new(s)),
            Err(e) => warn!("eBPF source net_events disabled: {e}; other sources continue"),
        }
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        bpf::forward_program_logs(&mut loaded.ebpf);
    }
    Some(loaded.finish_loading())
}

async fn wait_for_stop(duration: Option<Duration>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let timer = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
        _ = timer => info!("--duration reached"),
    }
    Ok(())
}

/// USER_HZ, the unit of /proc/stat's CPU columns (100 on every mainstream build).
fn user_hz() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}
