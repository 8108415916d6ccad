//! Command-line flags. Flags win over the config file.

use std::path::PathBuf;

use clap::Parser;

const ABOUT: &str = "Linux stats at 100 ms and kernel scheduler events, pushed to VictoriaMetrics";

const LONG_ABOUT: &str = "\
lsvmi samples /proc every 100 ms and reads counters kept by its eBPF programs on the same
tick, timestamps every value at the instant it was read, and pushes them to a Prometheus
remote-write endpoint (VictoriaMetrics by default) as snappy-compressed protobuf, in
batches of at most one second.

With no flags it sends to a VictoriaMetrics on this host (http://127.0.0.1:8428/api/v1/write)
and labels every series with instance=<hostname>. eBPF needs root (or CAP_BPF and
CAP_PERFMON) and a kernel with BTF; without them lsvmi says why in one line and carries on
with /proc only.";

const EXAMPLES: &str = "\
Examples:
  lsvmi                                   push to the local VictoriaMetrics
  lsvmi --endpoint http://vm:8428/api/v1/write
  lsvmi --dry-run --duration 1            print one second of samples, send nothing
  lsvmi --config /etc/lsvmi.yaml          settings from a file (see docs/configuration.md)

Exit codes: 0 done, 1 runtime failure, 2 bad flag or configuration.
Logs go to stderr; RUST_LOG (e.g. RUST_LOG=lsvmi=debug) overrides --log-level.";

#[derive(Debug, Parser)]
#[command(name = "lsvmi", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Remote-write URL; repeat for several (failover in the given order, or every one
    /// with `mode: replicate` in the config) [default: http://127.0.0.1:8428/api/v1/write]
    #[arg(long, value_name = "URL")]
    pub endpoint: Vec<String>,

    /// Disk spool for batches no endpoint takes [default: /var/lib/lsvmi/spool]
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// YAML config file; unknown keys are an error
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Run this many seconds, flush what was collected, and exit 0
    #[arg(long, value_name = "SECS", value_parser = positive_seconds)]
    pub duration: Option<f64>,

    /// Print what would be sent to stdout (Prometheus text with timestamps); send nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Do not load eBPF programs (procfs sources only)
    #[arg(long)]
    pub no_bpf: bool,

    /// Value of the `instance` label on every series [default: the hostname]
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,

    /// Read /proc from here (a host's /proc mounted in a container, or a captured tree)
    #[arg(long, value_name = "DIR")]
    pub procfs_root: Option<PathBuf>,

    /// The host's `/` as the agent sees it, for statfs of the host's mounts (e.g. `/host`
    /// in a container that mounts the host's root there) [default: /]
    #[arg(long, value_name = "DIR")]
    pub host_root: Option<PathBuf>,

    /// Read /sys from here (CPU lists for pinning and host info)
    #[arg(long, value_name = "DIR")]
    pub sysfs_root: Option<PathBuf>,

    /// CPUs the agent may run on: `housekeeping` (default: online CPUs that are neither
    /// isolated nor nohz_full, so the agent never lands on a core a busy-polling thread
    /// owns), `all`, or a list such as `0-1,8`
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,

    /// Log level: error, warn, info, debug, trace
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}
