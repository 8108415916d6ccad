//! Wiring: sources → sampler → batcher → outbox (memory, spool) → sender per
//! destination, and an orderly stop.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::info;

use crate::{
    bpf,
    config::{Config, DeliveryMode, SpoolSettings},
    encode::{remote_write::Encoder, text::TextWriter},
    model::Registry,
    sampler::Sampler,
    sampler::Schedule,
    send::{
        batcher::{Batcher, Cut, Output},
        http::{self, HttpSender},
        outbox::Outbox,
        spool::{Spool, SpoolConfig},
    },
    sources::{
        Build, Source,
        self_metrics::{self, SelfMetrics},
    },
    stats::{DropReason, EndpointStats, Stats},
};

/// When start-up is surely over (the BPF object loaded, the first batches sent).
const START_UP: std::time::Duration = std::time::Duration::from_secs(10);

/// Batches the sampler may get ahead of the batcher (a second's worth each, a cycle's
/// during an outage).
const SAMPLER_CHANNEL_CAPACITY: usize = 64;

/// Run until SIGINT/SIGTERM or `config.duration`, then flush and return.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // rustls needs one process-wide crypto provider; ring keeps the build free of cmake.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let registry = Registry::new(config.host_labels.clone()).shared();
    let mut sources = procfs_sources(&config);
    // Held until the end: dropping it detaches the programs.
    let wanted = bpf_sources(&config);
    // The hindsight thresholds are load-time constants of the BPF object.
    crate::trace::hindsight::configure(config.trace.hindsight);
    let ebpf = if config.bpf && !wanted.is_empty() {
        bpf::start(&wanted, &config.bpf_disable).map(|(ebpf, started)| {
            sources.extend(started);
            // Shared with the trace sessions, which load and unload their programs in it.
            Arc::new(std::sync::Mutex::new(ebpf))
        })
    } else {
        None
    };
    if !config.bpf {
        info!("eBPF off (--no-bpf or `bpf: false`): procfs sources only");
    }
    // The BPF object is loaded: from here the agent needs four capabilities at most.
    // Nothing but this thread runs yet (the runtime has one thread, its blocking pool
    // starts on first use), so what is dropped here is dropped for the whole process.
    if crate::privileges::threads() > 1 {
        tracing::warn!("capabilities: other threads already run; they keep what they have");
    }
    // Without a loaded BPF object the BPF capabilities are not needed (and its warning
    // already said why it is off).
    for (warn, line) in crate::privileges::reduce(ebpf.is_some()) {
        if warn {
            tracing::warn!("{line}");
        } else {
            info!("{line}");
        }
    }
    // Poll in declaration order (the BPF sources were built after the others).
    let order: Vec<&str> = crate::sources::specs().iter().map(|s| s.name).collect();
    sources.sort_by_key(|s| order.iter().position(|n| *n == s.name()));
    let names: Vec<&'static str> = sources.iter().map(|s| s.name()).chain([self_metrics::NAME]).collect();
    let stats = Arc::new(Stats::new(names.iter().copied()));
    if config.enabled(self_metrics::NAME) {
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
    let cut =
        Arc::new(Cut::new(config.batch_interval, config.max_batch_samples, config.max_batch_bytes, outboxes.clone()));
    let batcher = Batcher { registry: registry.clone(), stats: stats.clone(), output, cut: cut.clone() };
    let (recycle, recycled) = Batcher::recycling();
    let batcher = tokio::spawn(batcher.run(rx, recycle));
    let sessions = crate::trace::Sessions::new(config.trace.clone());
    sessions.set_tracer(match &ebpf {
        Some(e) => crate::trace::Tracers::new(e, &sessions).map(|t| Arc::new(t) as Arc<dyn crate::trace::Tracer>),
        None if !config.bpf => Err("eBPF is off (--no-bpf)".into()),
        None => Err("eBPF did not start (see the warning at start-up)".into()),
    });
    let control = match crate::trace::control::bind(&config.trace.socket) {
        Ok(listener) => Some(tokio::spawn(crate::trace::control::serve(listener, sessions.clone(), stop_rx))),
        Err(e) => {
            tracing::warn!("deep tracing unavailable: {e}; collection continues");
            None
        }
    };
    let mut sampler = Sampler::new(scheduled, config.interval, registry, stats.clone());
    if !config.trace.triggers.is_empty() {
        let (fire_tx, fire_rx) = mpsc::channel(16);
        sampler = sampler.with_triggers(crate::trace::triggers::Engine::new(&config.trace.triggers, fire_tx));
        tokio::spawn(crate::trace::triggers::run(fire_rx, sessions.clone(), config.trace.limits));
        let names: Vec<&str> = config.trace.triggers.iter().map(|t| t.name.as_str()).collect();
        info!(triggers = ?names, "trace triggers armed");
    }
    crate::trace::hindsight::watch(&sessions);
    let sampler = sampler.spawn(tx, cut, recycled).context("starting the sampler thread")?;
    // Start-up is over once the first batches went out: its pages of code and data
    // leave the RSS (see `memory`). The smaps walk and the madvise calls take a few ms:
    // on the blocking pool, off the runtime thread.
    tokio::spawn(async {
        tokio::time::sleep(START_UP).await;
        match tokio::task::spawn_blocking(crate::memory::release_start_up_pages).await {
            Ok(Ok(bytes)) => {
                info!("memory: {:.1} MB of start-up pages (binary, libraries) released", bytes as f64 / 1e6)
            }
            Ok(Err(e)) => tracing::debug!("memory: start-up pages not released: {e}"),
            Err(e) => tracing::debug!("memory: start-up pages not released: {e}"),
        }
    });

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
    crate::systemd::stopping();
    if let Some(s) = sessions.end("shutdown") {
        crate::trace::control::stop_programs(&sessions, s).await;
    }
    let _ = stop_tx.send(true);
    sampler.stop();
    if let Some(c) = control {
        let _ = c.await;
    }
    // The sampler hands over its last batch and ends, which ends the batcher.
    batcher.await.context("batcher task")?;
    tokio::task::spawn_blocking(move || sampler.join()).await.context("sampler thread")??;
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

/// The enabled sources built from the configuration (/proc, /sys, netlink, statfs), in
/// poll order (public for the source-level fuzz test).
pub fn procfs_sources(config: &Config) -> Vec<Box<dyn Source>> {
    crate::sources::specs()
        .into_iter()
        .filter(|spec| config.enabled(spec.name))
        .filter_map(|spec| match spec.build {
            Build::Config(build) => Some(build(config)),
            Build::Bpf(_) | Build::SelfMetrics => None,
        })
        .collect()
}

/// The enabled BPF sources, in poll order, for `bpf::start`.
fn bpf_sources(config: &Config) -> Vec<(&'static str, &'static bpf::BpfSource)> {
    crate::sources::specs()
        .into_iter()
        .filter(|spec| config.enabled(spec.name))
        .filter_map(|spec| match spec.build {
            Build::Bpf(b) => Some((spec.name, b)),
            Build::Config(_) | Build::SelfMetrics => None,
        })
        .collect()
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
