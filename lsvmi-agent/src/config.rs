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
    pub bpf: Option<bool>,
}

/// Everything the agent needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub endpoint: reqwest::Url,
    /// Host labels put on every series (`instance` always among them).
    pub host_labels: BTreeMap<String, String>,
    pub interval: Duration,
    pub batch_interval: Duration,
    pub max_batch_samples: usize,
    pub max_queued_bytes: usize,
    pub http_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub procfs_root: PathBuf,
    pub bpf: bool,
    pub dry_run: bool,
    pub duration: Option<Duration>,
}

impl Config {
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(cli, file)
    }

    fn resolve(cli: &Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let endpoint_text = cli.endpoint.clone().or(file.endpoint).unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let endpoint = reqwest::Url::parse(&endpoint_text)
            .map_err(|e| ConfigError::Invalid { key: "endpoint", reason: format!("{endpoint_text:?}: {e}") })?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(ConfigError::Invalid {
                key: "endpoint",
                reason: format!("{endpoint_text:?}: scheme must be http or https"),
            });
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
        Ok(Config {
            endpoint,
            host_labels,
            interval,
            batch_interval,
            max_batch_samples,
            max_queued_bytes,
            http_timeout: file.http_timeout.unwrap_or(Duration::from_secs(10)),
            shutdown_timeout: file.shutdown_timeout.unwrap_or(Duration::from_secs(5)),
            procfs_root: cli.procfs_root.clone().or(file.procfs_root).unwrap_or_else(|| PathBuf::from("/proc")),
            bpf: !cli.no_bpf && file.bpf.unwrap_or(true),
            dry_run: cli.dry_run,
            duration,
        })
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
        assert_eq!(c.endpoint.as_str(), DEFAULT_ENDPOINT);
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
        assert_eq!(c.endpoint.as_str(), "http://10.0.0.1:1/w");
        assert_eq!(c.host_labels["instance"], "cli");
        assert_eq!(c.host_labels["dc"], "ny4");
        assert_eq!(c.interval, Duration::from_millis(250));
        assert!(!c.bpf);
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
