//! The `lsvmi` binary: flags, logging, runtime; everything else is in the library.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use lsvmi::{agent, cli::Cli, config::Config};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // The agent's own binary doubles as its statfs helper (see sources/mounts/statfs.rs).
    if std::env::args_os().nth(1).is_some_and(|a| a == lsvmi::sources::mounts::statfs::HELPER_FLAG) {
        return lsvmi::sources::mounts::statfs::serve();
    }
    // Bad flags: clap prints one error line plus usage and exits 2.
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("lsvmi={0},warn", cli.log_level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .init();

    let config = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lsvmi: error: {e}");
            return ExitCode::from(2);
        }
    };
    match lsvmi::affinity::apply(&config.cpus, &config.sysfs_root) {
        Ok(line) => tracing::info!("{line}"),
        Err(line) => tracing::warn!("{line}"),
    }
    // One thread: the work is a few file reads and one HTTP request per second, and a
    // single thread keeps the agent off all but one CPU at a time.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lsvmi: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        // A setting found unusable at start-up (a spool directory in use or read-only) is
        // a configuration error like a bad flag: exit 2.
        Err(e) if e.downcast_ref::<lsvmi::config::ConfigError>().is_some() => {
            tracing::error!("{e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
