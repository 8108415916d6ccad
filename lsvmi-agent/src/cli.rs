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
  lsvmi trace start --profile sched --duration 10s
                                          deep-trace the scheduler for 10 s (see docs/tracing.md)

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

    /// The control socket (`lsvmi trace` talks to the daemon there) [default: /run/lsvmi/control.sock]
    #[arg(long, value_name = "PATH", global = true)]
    pub control_socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Log level: error, warn, info, debug, trace
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check a configuration file without starting anything: every error with its line,
    /// or the effective settings. Exit 0 when good, 2 when not
    CheckConfig {
        /// The YAML file (as given to --config)
        file: PathBuf,
    },
    /// Deep-tracing sessions in the running daemon: per-event programs loaded for a
    /// bounded time within a CPU budget (root or the daemon's user only)
    Trace {
        #[command(subcommand)]
        action: TraceAction,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TraceAction {
    /// Start a session (one at a time); prints its id and when it ends
    Start {
        /// What to trace
        #[arg(long, value_enum, default_value = "sched")]
        profile: crate::trace::Profile,
        /// How long (e.g. 10s, 2m); capped by the daemon's trace.max_duration [default: 10s]
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Only this process (thread group)
        #[arg(long)]
        pid: Option<u32>,
        /// Only threads with this name
        #[arg(long)]
        comm: Option<String>,
        /// Only these CPUs, e.g. 0-3,8
        #[arg(long = "cpu", value_name = "LIST")]
        cpus: Option<String>,
        /// CPU budget for the session's programs, in percent of one CPU, e.g. 0.5%
        #[arg(long, value_parser = percent)]
        budget: Option<f64>,
        /// Put events at least this long on the session's timeline file (sched: waits,
        /// default 100us; irq: handler and softirq runs, 50us; block: requests, 0s)
        #[arg(long, value_parser = humantime::parse_duration)]
        threshold: Option<std::time::Duration>,
        /// Print the session's events as a table while it runs (Ctrl-C stops following,
        /// not the session)
        #[arg(long)]
        follow: bool,
    },
    /// Show the running session (or the last one)
    Status,
    /// Copy the hindsight ring (the always-on programs' record of long waits, long
    /// softirq runs, retransmits, resets and drops, per CPU) into a session file now
    Dump,
    /// End the running session now
    Stop,
}

fn percent(text: &str) -> Result<f64, String> {
    let v: f64 =
        text.trim_end_matches('%').parse().map_err(|_| format!("{text:?} is not a percentage such as 0.5%"))?;
    if v > 0.0 && v <= 100.0 { Ok(v) } else { Err(format!("{text:?} must be above 0% and at most 100%")) }
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}
