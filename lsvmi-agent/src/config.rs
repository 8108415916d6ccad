//! Configuration: a YAML file (every key optional, unknown keys are an error) with
//! command-line flags on top. Resolved once into [`Config`], checked before anything runs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::cli::Cli;

/// The embedded default: a VictoriaMetrics single node on this host (what
/// `cargo xtask run` starts).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8428/api/v1/write";

/// Why the configuration cannot be used. Each message names the file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML for this schema (serde names the key and line).
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    /// A value is out of range or malformed.
    #[error("invalid {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The YAML file. See docs/configuration.md for every key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub endpoint: Option<String>,
    /// Several endpoints (with `endpoint`, that one comes first).
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub mode: Option<DeliveryMode>,
    pub spool: Option<SpoolFileConfig>,
    pub max_batch_bytes: Option<usize>,
    pub tls: Option<TlsFileConfig>,
    pub auth: Option<AuthFileConfig>,
    /// Extra request headers (a tenant header for vmauth, say); the protocol's cannot be set.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub rate_limit: Option<RateLimitFileConfig>,
    pub trace: Option<TraceFileConfig>,
    pub instance: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub batch_interval: Option<Duration>,
    pub max_batch_samples: Option<usize>,
    pub max_queued_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub http_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
    pub procfs_root: Option<PathBuf>,
    pub sysfs_root: Option<PathBuf>,
    pub host_root: Option<PathBuf>,
    pub os_release: Option<PathBuf>,
    pub bpf: Option<bool>,
    /// BPF programs not to load, by name (`sched_migrate_task`).
    #[serde(default)]
    pub bpf_disable: Vec<String>,
    pub cpus: Option<String>,
    pub full_refresh_every: Option<u32>,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceFileConfig>,
}

/// How batches are spread over several endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Every batch to the first healthy endpoint, in the order given.
    #[default]
    Failover,
    /// Every batch to every endpoint, each with its own queue and spool.
    Replicate,
}

/// `spool:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolFileConfig {
    pub enabled: Option<bool>,
    pub dir: Option<PathBuf>,
    pub max_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    pub fsync: Option<crate::send::spool::Fsync>,
}

/// `tls:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFileConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `auth:` in the file: basic (username + password_file) or bearer_token_file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFileConfig {
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub bearer_token_file: Option<PathBuf>,
}

/// `trace:` in the file: deep-tracing sessions (docs/tracing.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceFileConfig {
    pub socket: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub default_duration: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_duration: Option<Duration>,
    /// Percent of one CPU.
    pub budget_percent: Option<f64>,
    pub hindsight: Option<HindsightFileConfig>,
    /// Conditions that start a session by themselves (none by default).
    #[serde(default)]
    pub triggers: Vec<crate::trace::triggers::TriggerConfig>,
    #[serde(default, with = "humantime_serde")]
    pub trigger_cooldown: Option<Duration>,
    pub triggered_sessions_per_hour: Option<u32>,
}

/// `trace.hindsight:` in the file: what the always-on programs keep (0s / false: none).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HindsightFileConfig {
    #[serde(default, with = "humantime_serde")]
    pub runq_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub softirq_run: Option<Duration>,
    pub net: Option<bool>,
}

/// `rate_limit:` in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFileConfig {
    pub bytes_per_second: u64,
    pub burst_bytes: Option<u64>,
}

/// The spool, resolved.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub fsync: crate::send::spool::Fsync,
}

pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/lsvmi/spool";

/// `sources.<name>` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFileConfig {
    pub enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    pub full_refresh_every: Option<u32>,
    /// proc_pid only: also collect per-thread series.
    pub threads: Option<bool>,
    /// proc_mounts only: filesystem types to statfs (replaces the default allowlist of
    /// local types).
    pub fs_types: Option<Vec<String>>,
}

/// One source's schedule, resolved.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub name: &'static str,
    pub enabled: bool,
    pub interval: Duration,
    /// `interval` in base ticks.
    pub every_ticks: u32,
    /// Send unchanged values only every this many cycles (0: send every value).
    pub full_refresh_every: u32,
}

/// Which CPUs the agent's threads may run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuChoice {
    /// The housekeeping CPUs: online, not isolated, not nohz_full.
    Housekeeping,
    /// No pinning.
    All,
    List(Vec<u32>),
}

/// Everything the agent needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Remote-write URLs, in failover order (at least one).
    pub endpoints: Vec<reqwest::Url>,
    pub mode: DeliveryMode,
    /// None: memory only.
    pub spool: Option<SpoolSettings>,
    /// A batch goes out early when its compressed size reaches about this.
    pub max_batch_bytes: usize,
    pub tls: crate::send::auth::Tls,
    pub credentials: crate::send::auth::Credentials,
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    /// (bytes per second, burst bytes)
    pub rate_limit: Option<(u64, u64)>,
    /// Host labels put on every series (`instance` always among them).
    pub host_labels: BTreeMap<String, String>,
    pub interval: Duration,
    pub batch_interval: Duration,
    pub max_batch_samples: usize,
    pub max_queued_bytes: usize,
    pub http_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub procfs_root: PathBuf,
    pub sysfs_root: PathBuf,
    /// Where the host's `/` is seen (statfs of its mounts): `/`, or e.g. `/host` in a
    /// container that mounts it there.
    pub host_root: PathBuf,
    pub os_release: PathBuf,
    pub bpf: bool,
    /// BPF programs not to load.
    pub bpf_disable: Vec<String>,
    pub cpus: CpuChoice,
    /// Every source, enabled or not, in poll order.
    pub sources: Vec<SourceSettings>,
    pub threads: bool,
    pub fs_types: Vec<String>,
    pub dry_run: bool,
    pub duration: Option<Duration>,
    pub trace: crate::trace::TraceSettings,
}

/// Default of `full_refresh_every` (LSVMI's `full_metrics_factor`).
pub const DEFAULT_FULL_REFRESH_EVERY: u32 = 15;

impl Config {
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(cli, file)
    }

    fn resolve(cli: &Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let texts: Vec<String> = if !cli.endpoint.is_empty() {
            cli.endpoint.clone()
        } else {
            file.endpoint.iter().cloned().chain(file.endpoints.iter().cloned()).collect()
        };
        let texts = if texts.is_empty() { vec![DEFAULT_ENDPOINT.to_string()] } else { texts };
        let mut endpoints = Vec::new();
        for raw in &texts {
            // Errors quote the URL; a password in it must not reach the terminal or a log.
            let text = &redact_userinfo(raw);
            let url = reqwest::Url::parse(raw)
                .map_err(|e| ConfigError::Invalid { key: "endpoint", reason: format!("{text:?}: {e}") })?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(ConfigError::Invalid {
                    key: "endpoint",
                    reason: format!(
                        "{text:?}: credentials in the URL would end up in logs, labels and the spool; \
                         use auth.username + auth.password_file or auth.bearer_token_file instead"
                    ),
                });
            }
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::Invalid {
                    key: "endpoint",
                    reason: format!("{text:?}: scheme must be http or https"),
                });
            }
            if endpoints.contains(&url) {
                return Err(ConfigError::Invalid { key: "endpoints", reason: format!("{text:?} given twice") });
            }
            endpoints.push(url);
        }
        let spool_file = file.spool.unwrap_or_default();
        let spool = if spool_file.enabled == Some(false) {
            None
        } else {
            let max_bytes = spool_file.max_bytes.unwrap_or(1 << 30);
            if max_bytes < 64 << 10 {
                return Err(ConfigError::Invalid { key: "spool.max_bytes", reason: "must be at least 65536".into() });
            }
            Some(SpoolSettings {
                dir: cli.spool_dir.clone().or(spool_file.dir).unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR)),
                max_bytes,
                max_age: spool_file.max_age.unwrap_or(Duration::from_secs(24 * 3600)),
                fsync: spool_file.fsync.unwrap_or(crate::send::spool::Fsync::Interval),
            })
        };
        let tls_file = file.tls.unwrap_or_default();
        let tls = crate::send::auth::Tls {
            ca_file: tls_file.ca_file,
            cert_file: tls_file.cert_file,
            key_file: tls_file.key_file,
        };
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(ConfigError::Invalid { key: "tls", reason: "cert_file and key_file go together".into() });
        }
        use crate::send::auth::Credentials;
        let credentials = match file.auth.unwrap_or_default() {
            AuthFileConfig { username: None, password_file: None, bearer_token_file: None } => Credentials::None,
            AuthFileConfig {
                username: Some(username),
                password_file: Some(password_file),
                bearer_token_file: None,
            } => Credentials::Basic { username, password_file },
            AuthFileConfig { username: None, password_file: None, bearer_token_file: Some(token_file) } => {
                Credentials::Bearer { token_file }
            }
            _ => {
                return Err(ConfigError::Invalid {
                    key: "auth",
                    reason: "give username and password_file (basic), or bearer_token_file alone".into(),
                });
            }
        };
        // Read once now, so a missing or empty file stops the agent at start, not later.
        if let Err(reason) = credentials.header() {
            return Err(ConfigError::Invalid { key: "auth", reason });
        }
        let headers = crate::send::auth::extra_headers(&file.headers)
            .map_err(|reason| ConfigError::Invalid { key: "headers", reason })?;
        let rate_limit = match file.rate_limit {
            None => None,
            Some(r) if r.bytes_per_second < 1024 => {
                return Err(ConfigError::Invalid {
                    key: "rate_limit",
                    reason: "bytes_per_second must be at least 1024".into(),
                });
            }
            Some(r) => Some((r.bytes_per_second, r.burst_bytes.unwrap_or(r.bytes_per_second.saturating_mul(4)))),
        };
        let max_batch_bytes = file.max_batch_bytes.unwrap_or(64 << 10);
        if max_batch_bytes < 1024 {
            return Err(ConfigError::Invalid { key: "max_batch_bytes", reason: "must be at least 1024".into() });
        }
        let instance = match cli.instance.clone().or(file.instance) {
            Some(i) => i,
            None => gethostname::gethostname().to_string_lossy().into_owned(),
        };
        if instance.is_empty() {
            return Err(ConfigError::Invalid { key: "instance", reason: "must not be empty".into() });
        }
        let mut host_labels = file.labels;
        for name in host_labels.keys() {
            if !valid_label_name(name) || name == "instance" {
                return Err(ConfigError::Invalid {
                    key: "labels",
                    reason: format!(
                        "{name:?}: label names match [a-zA-Z_][a-zA-Z0-9_]*, do not start with __, and `instance` is set with `instance:`"
                    ),
                });
            }
        }
        host_labels.insert("instance".into(), instance);

        let interval = file.interval.unwrap_or(Duration::from_millis(100));
        if interval < Duration::from_millis(10) {
            return Err(ConfigError::Invalid {
                key: "interval",
                reason: format!("{interval:?} is below the 10ms minimum"),
            });
        }
        let batch_interval = file.batch_interval.unwrap_or(Duration::from_secs(1));
        if batch_interval < interval {
            return Err(ConfigError::Invalid {
                key: "batch_interval",
                reason: format!("{batch_interval:?} is shorter than interval {interval:?}"),
            });
        }
        let max_batch_samples = file.max_batch_samples.unwrap_or(50_000);
        if max_batch_samples == 0 {
            return Err(ConfigError::Invalid { key: "max_batch_samples", reason: "must be at least 1".into() });
        }
        let max_queued_bytes = file.max_queued_bytes.unwrap_or(64 << 20);
        if max_queued_bytes < 64 << 10 {
            return Err(ConfigError::Invalid { key: "max_queued_bytes", reason: "must be at least 65536".into() });
        }
        // clap has checked it is positive and finite.
        let duration = cli.duration.map(Duration::from_secs_f64);
        let cpus = match cli.cpus.clone().or(file.cpus).as_deref().map(str::trim) {
            None | Some("housekeeping") => CpuChoice::Housekeeping,
            Some("all") => CpuChoice::All,
            Some(list) => match crate::sources::host::parse_cpu_list(list) {
                Some(l) if !l.is_empty() => CpuChoice::List(l),
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "cpus",
                        reason: format!("{list:?}: expected housekeeping, all, or a list such as 0-3,8"),
                    });
                }
            },
        };
        let default_refresh = file.full_refresh_every.unwrap_or(DEFAULT_FULL_REFRESH_EVERY);
        let programs = crate::sources::bpf_program_names();
        if let Some(bad) = file.bpf_disable.iter().find(|p| !programs.contains(&p.as_str())) {
            return Err(ConfigError::Invalid {
                key: "bpf_disable",
                reason: format!("unknown program {bad:?}; known: {}", programs.join(", ")),
            });
        }
        let trace = resolve_trace(cli, file.trace.unwrap_or_default())?;
        let (sources, threads, fs_types) = resolve_sources(file.sources, interval, default_refresh)?;
        Ok(Config {
            endpoints,
            mode: file.mode.unwrap_or_default(),
            spool,
            max_batch_bytes,
            tls,
            credentials,
            headers,
            rate_limit,
            host_labels,
            interval,
            batch_interval,
            max_batch_samples,
            max_queued_bytes,
            http_timeout: file.http_timeout.unwrap_or(Duration::from_secs(10)),
            shutdown_timeout: file.shutdown_timeout.unwrap_or(Duration::from_secs(5)),
            procfs_root: cli.procfs_root.clone().or(file.procfs_root).unwrap_or_else(|| PathBuf::from("/proc")),
            sysfs_root: cli.sysfs_root.clone().or(file.sysfs_root).unwrap_or_else(|| PathBuf::from("/sys")),
            host_root: cli.host_root.clone().or(file.host_root).unwrap_or_else(|| PathBuf::from("/")),
            os_release: file.os_release.unwrap_or_else(|| PathBuf::from("/etc/os-release")),
            bpf: !cli.no_bpf && file.bpf.unwrap_or(true),
            bpf_disable: file.bpf_disable,
            cpus,
            sources,
            threads,
            fs_types,
            dry_run: cli.dry_run,
            duration,
            trace,
        })
    }
}

impl Config {
    /// The settings of source `name` (every known source has one).
    pub fn source(&self, name: &str) -> Option<&SourceSettings> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// True when source `name` is enabled.
    pub fn enabled(&self, name: &str) -> bool {
        self.source(name).is_some_and(|s| s.enabled)
    }
}

type ResolvedSources = (Vec<SourceSettings>, bool, Vec<String>);

fn resolve_sources(
    mut file: BTreeMap<String, SourceFileConfig>,
    base: Duration,
    default_refresh: u32,
) -> Result<ResolvedSources, ConfigError> {
    let specs = crate::sources::specs();
    if let Some(unknown) = file.keys().find(|k| !specs.iter().any(|s| s.name == k.as_str())) {
        let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
        return Err(ConfigError::Invalid {
            key: "sources",
            reason: format!("unknown source {unknown:?}; known: {}", known.join(", ")),
        });
    }
    let mut threads = true;
    let mut fs_types: Vec<String> = crate::sources::mounts::DEFAULT_FS_TYPES.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    for spec in specs {
        let c = file.remove(spec.name).unwrap_or_default();
        let bad = |reason: String| ConfigError::Invalid { key: "sources", reason: format!("{}: {reason}", spec.name) };
        if c.threads.is_some() && spec.name != "proc_pid" {
            return Err(bad("`threads` applies to proc_pid only".into()));
        }
        if c.fs_types.is_some() && spec.name != "proc_mounts" {
            return Err(bad("`fs_types` applies to proc_mounts only".into()));
        }
        threads &= c.threads.unwrap_or(true);
        if let Some(list) = c.fs_types {
            fs_types = list;
        }
        if let Some(given) = c.interval
            && given < base
        {
            return Err(bad(format!("interval {given:?} is below the base interval {base:?}")));
        }
        // The default intervals assume the 100 ms base tick; a slower base stretches them.
        let interval = c.interval.unwrap_or(spec.default_interval).max(base);
        let ratio = interval.as_nanos() / base.as_nanos().max(1);
        if !interval.as_nanos().is_multiple_of(base.as_nanos().max(1)) && c.interval.is_some() {
            return Err(bad(format!("interval {interval:?} is not a multiple of the base interval {base:?}")));
        }
        out.push(SourceSettings {
            name: spec.name,
            enabled: c.enabled.unwrap_or(spec.default_enabled),
            interval,
            every_ticks: u32::try_from(ratio.max(1)).unwrap_or(u32::MAX),
            full_refresh_every: c.full_refresh_every.unwrap_or(default_refresh),
        });
    }
    Ok((out, threads, fs_types))
}

fn resolve_trace(cli: &Cli, file: TraceFileConfig) -> Result<crate::trace::TraceSettings, ConfigError> {
    let d = crate::trace::TraceSettings::default();
    let t = crate::trace::TraceSettings {
        socket: cli.control_socket.clone().or(file.socket).unwrap_or(d.socket),
        dir: file.dir.unwrap_or(d.dir),
        default_duration: file.default_duration.unwrap_or(d.default_duration),
        max_duration: file.max_duration.unwrap_or(d.max_duration),
        default_budget_percent: file.budget_percent.unwrap_or(d.default_budget_percent),
        hindsight: {
            let h = file.hindsight.unwrap_or_default();
            crate::trace::hindsight::HindsightSettings {
                runq_wait: h.runq_wait.unwrap_or(d.hindsight.runq_wait),
                softirq_run: h.softirq_run.unwrap_or(d.hindsight.softirq_run),
                net: h.net.unwrap_or(d.hindsight.net),
            }
        },
        triggers: file
            .triggers
            .iter()
            .map(|t| t.check())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| ConfigError::Invalid { key: "trace.triggers", reason })?,
        limits: crate::trace::triggers::Limits {
            cooldown: file.trigger_cooldown.unwrap_or(d.limits.cooldown),
            per_hour: file.triggered_sessions_per_hour.unwrap_or(d.limits.per_hour),
        },
    };
    let bad = |reason: String| ConfigError::Invalid { key: "trace", reason };
    let mut names: Vec<&str> = t.triggers.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(ConfigError::Invalid {
            key: "trace.triggers",
            reason: format!("trigger name {:?} given twice", w[0]),
        });
    }
    if t.max_duration.is_zero() || t.default_duration.is_zero() || t.default_duration > t.max_duration {
        return Err(bad(format!(
            "default_duration {:?} must be above 0 and at most max_duration {:?}",
            t.default_duration, t.max_duration
        )));
    }
    if !(t.default_budget_percent > 0.0 && t.default_budget_percent <= 100.0) {
        return Err(bad(format!("budget_percent {} must be above 0 and at most 100", t.default_budget_percent)));
    }
    Ok(t)
}

/// `scheme://user:pass@host/…` → `scheme://***@host/…`; anything else unchanged.
fn redact_userinfo(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else { return text.to_string() };
    let authority_end = text[start..].find(['/', '?', '#']).map_or(text.len(), |i| start + i);
    match text[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_string(),
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: display.clone(), source })?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_yaml::from_str(&text)
        .map_err(|e| ConfigError::Parse { path: display, message: e.to_string().replace('\n', " ") })
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("lsvmi").chain(args.iter().copied())).unwrap()
    }

    fn from_yaml(args: &[&str], yaml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut args: Vec<&str> = args.to_vec();
        let p = path.to_str().unwrap().to_string();
        args.extend(["--config", &p]);
        Config::from_cli(&cli(&args))
    }

    #[test]
    fn defaults_are_the_embedded_local_victoriametrics() {
        let c = Config::from_cli(&cli(&[])).unwrap();
        assert_eq!(c.endpoints[0].as_str(), DEFAULT_ENDPOINT);
        assert_eq!(c.mode, DeliveryMode::Failover);
        assert_eq!(c.spool.as_ref().map(|s| s.dir.clone()), Some(PathBuf::from(DEFAULT_SPOOL_DIR)));
        assert_eq!(c.interval, Duration::from_millis(100));
        assert_eq!(c.batch_interval, Duration::from_secs(1));
        assert!(c.bpf && !c.dry_run);
        assert!(!c.host_labels["instance"].is_empty());
    }

    #[test]
    fn flags_override_the_file() {
        let c = from_yaml(
            &["--endpoint", "http://10.0.0.1:1/w", "--instance", "cli", "--no-bpf"],
            "endpoint: http://x:1/\ninstance: file\ninterval: 250ms\nlabels: {dc: ny4}\nbpf: true\n",
        )
        .unwrap();
        assert_eq!(c.endpoints[0].as_str(), "http://10.0.0.1:1/w");
        assert_eq!(c.host_labels["instance"], "cli");
        assert_eq!(c.host_labels["dc"], "ny4");
        assert_eq!(c.interval, Duration::from_millis(250));
        assert!(!c.bpf);
    }

    #[test]
    fn per_source_schedules() {
        let c = from_yaml(
            &["--cpus", "all"],
            "full_refresh_every: 4\nsources: {proc_stat: {full_refresh_every: 0}, proc_mounts: {interval: 2s, \
             fs_types: [tmpfs]}, proc_pid: {threads: false, enabled: false}}\n",
        )
        .unwrap();
        let stat = c.source("proc_stat").unwrap();
        assert_eq!((stat.every_ticks, stat.full_refresh_every), (1, 0));
        let mounts = c.source("proc_mounts").unwrap();
        assert_eq!((mounts.every_ticks, mounts.full_refresh_every), (20, 4));
        assert_eq!(c.source("proc_interrupts").unwrap().every_ticks, 10);
        assert!(!c.enabled("proc_pid") && !c.threads);
        assert_eq!(c.fs_types, ["tmpfs"]);
        assert_eq!(c.cpus, CpuChoice::All);
        let d = Config::from_cli(&cli(&[])).unwrap();
        assert_eq!(d.cpus, CpuChoice::Housekeeping);
        assert_eq!(d.source("host").unwrap().every_ticks, 50);
        assert_eq!(d.source("proc_stat").unwrap().full_refresh_every, DEFAULT_FULL_REFRESH_EVERY);
    }

    #[test]
    fn several_endpoints_and_the_spool() {
        let yaml = "endpoint: http://a:1/w\nendpoints: [http://b:2/w]\nmode: replicate\n\
                    spool: {dir: /tmp/s, max_bytes: 2097152, max_age: 1h, fsync: always}\n";
        let c = from_yaml(&[], yaml).unwrap();
        assert_eq!(c.endpoints.iter().map(|u| u.as_str()).collect::<Vec<_>>(), ["http://a:1/w", "http://b:2/w"]);
        assert_eq!(c.mode, DeliveryMode::Replicate);
        let s = c.spool.unwrap();
        assert_eq!((s.dir, s.max_bytes, s.max_age), (PathBuf::from("/tmp/s"), 2 << 20, Duration::from_secs(3600)));
        assert_eq!(s.fsync, crate::send::spool::Fsync::Always);
        let c =
            from_yaml(&["--endpoint", "http://c/w", "--endpoint", "http://d/w", "--spool-dir", "/x"], yaml).unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[0].as_str(), "http://c/w");
        assert_eq!(c.spool.unwrap().dir, PathBuf::from("/x"));
        assert!(from_yaml(&[], "spool: {enabled: false}\n").unwrap().spool.is_none());
    }

    #[test]
    fn credentials_in_an_endpoint_url_are_refused_without_echoing_them() {
        for url in ["http://user:s3cr3t@vm:8428/api/v1/write", "https://s3cr3t@vm/w", "http://u:s3cr3t@vm:99999/w"] {
            let e = from_yaml(&["--endpoint", url], "").unwrap_err().to_string();
            assert!(e.contains("endpoint") && e.contains("***@vm"), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
        assert_eq!(redact_userinfo("http://vm/a@b"), "http://vm/a@b");
    }

    #[test]
    fn unknown_key_is_named_in_one_line() {
        let e = from_yaml(&[], "endpoint: http://x/\nintervall: 1s\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `intervall`"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (yaml, key) in [
            ("interval: 1ms\n", "interval"),
            ("interval: fast\n", "interval"),
            ("endpoint: 'ftp://x/'\n", "endpoint"),
            ("labels: {'a-b': x}\n", "labels"),
            ("labels: {instance: x}\n", "labels"),
            ("batch_interval: 50ms\n", "batch_interval"),
            ("sources: {proc_nope: {}}\n", "sources"),
            ("sources: {proc_stat: {interval: 150ms}}\n", "proc_stat"),
            ("sources: {proc_stat: {interval: 0s}}\n", "below the base interval"),
            ("sources: {proc_mounts: {interval: 50ms}}\n", "proc_mounts: interval 50ms"),
            ("sources: {proc_stat: {threads: false}}\n", "proc_pid only"),
            ("sources: {proc_stat: {intervl: 1s}}\n", "intervl"),
            ("cpus: 3-1\n", "cpus"),
            ("bpf_disable: [sched_nope]\n", "bpf_disable"),
            ("endpoints: [http://a/w, http://a/w]\n", "endpoints"),
            ("mode: broadcast\n", "mode"),
            ("spool: {max_bytes: 10}\n", "spool.max_bytes"),
            ("spool: {fsync: sometimes}\n", "fsync"),
            ("max_batch_bytes: 10\n", "max_batch_bytes"),
            ("headers: {Content-Type: text/plain}\n", "headers"),
            ("auth: {username: u}\n", "auth"),
            ("auth: {bearer_token_file: /nonexistent/token}\n", "/nonexistent/token"),
            ("tls: {cert_file: /x.pem}\n", "tls"),
            ("rate_limit: {bytes_per_second: 10}\n", "rate_limit"),
            ("trace: {max_duration: 5s}\n", "trace"),
            ("trace: {budget_percent: 0}\n", "trace"),
            ("trace: {triggers: [{name: a, metric: runq_p99, above: 1}]}\n", "runq_p99"),
            ("trace: {triggers: [{name: a, metric: softirq_percent, above: lots}]}\n", "must be a number"),
            (
                "trace: {triggers: [{name: a, metric: runq_latency, above: 1ms}, {name: a, metric: runq_latency, above: 2ms}]}\n",
                "given twice",
            ),
            ("trace: {hindsight: {runq_wait: soon}}\n", "runq_wait"),
        ] {
            let e = from_yaml(&[], yaml).unwrap_err().to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
        for bad in ["--duration=-1", "--duration=0", "--duration=inf", "--duration=x"] {
            let e = Cli::try_parse_from(["lsvmi", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("--duration"), "{e}");
        }
    }
}
