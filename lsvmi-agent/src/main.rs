//! The `lsvmi` binary: flags, logging, runtime; everything else is in the library.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use lsvmi::{
    agent,
    cli::{Cli, Command, TraceAction},
    config::Config,
    trace::{self, Request, Response, SessionInfo, StartRequest},
};
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
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact();
    // Under systemd the journal stamps every line: a second timestamp is noise.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().init();
    } else {
        fmt.init();
    }

    match &cli.command {
        Some(Command::Trace { action }) => return trace_client(&cli, action),
        Some(Command::CheckConfig { file }) => {
            let (report, good) = lsvmi::check_config::check(file);
            print!("{report}");
            return if good { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
        None => {}
    }
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
    lsvmi::memory::one_heap();
    // One runtime thread beside the sampler's: one batch and one HTTP request per
    // second need no more.
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

/// `lsvmi trace …`: one request to the running daemon, its answer printed. Exit 0 when
/// done, 1 when the daemon is not there or refuses, 2 for a bad flag or config.
fn trace_client(cli: &Cli, action: &TraceAction) -> ExitCode {
    let socket = match (&cli.control_socket, &cli.config) {
        (Some(path), _) => path.clone(),
        // The socket the daemon reads from the same config file.
        (None, Some(_)) => match Config::from_cli(cli) {
            Ok(c) => c.trace.socket,
            Err(e) => {
                eprintln!("lsvmi: error: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => trace::DEFAULT_SOCKET.into(),
    };
    let req = match action {
        TraceAction::Start { profile, duration, pid, comm, cpus, budget, threshold, .. } => {
            Request::Start(StartRequest {
                profile: *profile,
                duration_ms: duration.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                pid: *pid,
                comm: comm.clone(),
                cpus: cpus.clone(),
                budget_percent: *budget,
                threshold_ns: threshold.map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            })
        }
        TraceAction::Status => Request::Status,
        TraceAction::Stop => Request::Stop,
        TraceAction::Dump => Request::Dump,
    };
    let follow = matches!(action, TraceAction::Start { follow: true, .. });
    match trace::control::call(&socket, &req) {
        Ok(Response::Session { session }) => {
            println!("{}", describe(&session));
            if follow {
                return follow_session(&socket);
            }
            ExitCode::SUCCESS
        }
        Ok(Response::Events { session, .. }) => {
            println!("{}", describe(&session));
            ExitCode::SUCCESS
        }
        Ok(Response::Idle { last }) => {
            match last {
                Some(s) => println!("no trace session running; the last: {}", describe(&s)),
                None => println!("no trace session running"),
            }
            ExitCode::SUCCESS
        }
        Ok(Response::Dumped { path, records }) => {
            println!("hindsight ring: {records} records written to {path}");
            ExitCode::SUCCESS
        }
        Ok(Response::Error { message }) => {
            eprintln!("lsvmi: error: {message}");
            ExitCode::FAILURE
        }
        Err(message) => {
            eprintln!("lsvmi: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `--follow`: the session's events as a table, every half second, until it ends. A
/// closed stdout (`| head`) ends the following, quietly.
fn follow_session(socket: &std::path::Path) -> ExitCode {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let header = format!(
        "{:<12} {:>4} {:>8} {:>8} {:<16} {:>10} {:<9} ENDED BY",
        "TIME", "CPU", "PID", "TID", "COMM", "WAIT", "CAUSE"
    );
    if writeln!(out, "{header}").is_err() {
        return ExitCode::SUCCESS;
    }
    let mut since = 0;
    loop {
        match trace::control::call(socket, &Request::Events { since }) {
            Ok(Response::Events { events, next, .. }) => {
                for e in &events {
                    let num = |k: &str| e[k].as_u64().unwrap_or(0);
                    let text = |k: &str| e[k].as_str().unwrap_or("").to_string();
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(num("end_ns"));
                    let time = humantime::format_rfc3339_millis(at).to_string();
                    let line = format!(
                        "{:<12} {:>4} {:>8} {:>8} {:<16} {:>8.3}ms {:<9} {} ({})",
                        time.get(11..23).unwrap_or(&time),
                        num("cpu"),
                        num("pid"),
                        num("tid"),
                        text("comm"),
                        num("wait_ns") as f64 / 1e6,
                        text("cause"),
                        text("ended_by_comm"),
                        num("ended_by_tid"),
                    );
                    if writeln!(out, "{line}").is_err() {
                        return ExitCode::SUCCESS;
                    }
                }
                since = next;
            }
            Ok(Response::Idle { last }) => {
                if let Some(s) = last {
                    let _ = writeln!(out, "{}", describe(&s));
                }
                return ExitCode::SUCCESS;
            }
            Ok(Response::Error { message }) | Err(message) => {
                eprintln!("lsvmi: error: {message}");
                return ExitCode::FAILURE;
            }
            Ok(Response::Session { .. } | Response::Dumped { .. }) => {}
        }
        let _ = out.flush();
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn describe(s: &SessionInfo) -> String {
    let at = |ms: i64| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
    };
    let state = match &s.ended {
        None => format!("runs until {}", at(s.until_ms)),
        Some(why) => format!("ended ({why})"),
    };
    let mut filters = Vec::new();
    if let Some(p) = s.pid {
        filters.push(format!("pid {p}"));
    }
    if let Some(c) = &s.comm {
        filters.push(format!("comm {c}"));
    }
    if let Some(c) = &s.cpus {
        filters.push(format!("cpus {c}"));
    }
    let filters = if filters.is_empty() { String::new() } else { format!(", {}", filters.join(", ")) };
    let mut measured = match (s.events_per_s, s.cost_percent) {
        (Some(e), Some(c)) => {
            let how = if s.cost_from.as_deref() == Some("estimate") { " (estimated)" } else { "" };
            format!("; {e:.0} program runs/s costing {c:.3}% of a CPU{how}")
        }
        _ => String::new(),
    };
    let dropped: Vec<String> = s.dropped.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r} {n}")).collect();
    if s.ended.is_some() || !dropped.is_empty() {
        let what = if dropped.is_empty() { "none".to_string() } else { dropped.join(", ") };
        if !s.dropped.is_empty() {
            measured.push_str(&format!("; events dropped: {what}"));
        }
    }
    for step in &s.steps {
        measured.push_str(&format!("; budget step: {step}"));
    }
    if let Some(t) = &s.trigger {
        measured.push_str(&format!("; started by trigger {} (fired {})", t.what, at(t.fired_ms)));
    }
    // Last: scripts take the path from here to the end of the line.
    if let Some(t) = &s.timeline {
        measured.push_str(&format!("; timeline: {t}"));
    }
    format!(
        "session {} (profile {}{filters}, budget {}%) started {}, {state}{measured}",
        s.id,
        s.profile.as_str(),
        s.budget_percent,
        at(s.started_ms)
    )
}
