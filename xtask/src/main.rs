//! `cargo xtask <command>`: the project's own set-up, run and test driver.
//!
//! - `setup` installs what the build and tests need (Debian packages, bpf-linker),
//!   idempotently; when everything is present it takes well under a second.
//! - `run` does set-up, builds the agent, starts a VictoriaMetrics on 127.0.0.1 and
//!   runs the agent against it until Ctrl-C.
//! - `test` does set-up and runs every test (unit, fixture, BPF-in-kernel, end-to-end).
//! - `bench-bpf` measures each BPF program's ns per event (see `bench_bpf.rs`).
//! - `bench-overhead` measures the agent's CPU and memory against the floor of only
//!   reading the same files (see `bench_overhead.rs`).

mod bench_bpf;
mod bench_overhead;
mod bench_scale;
mod dashboards;
mod setup;
mod vm;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set up, run and test lsvmi")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages and bpf-linker the build and the tests need (idempotent)
    Setup,
    /// Set up, build, start a local VictoriaMetrics and run the agent against it (Ctrl-C stops both)
    Run {
        /// Extra flags for the agent, after `--` (e.g. `cargo xtask run -- --no-bpf`)
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Set up, then run every test of the workspace
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Generate the Grafana dashboard and provisioning files (dashboards/grafana/) and the
    /// static page (target/dashboards/lsvmi.html) from dashboards/panels.yaml
    Dashboards {
        /// Only check that the committed files match the spec (exit 1 if not)
        #[arg(long)]
        check: bool,
    },
    /// Build the .deb (cargo-deb): the binary, its systemd unit, a commented config, the
    /// docs; then lintian. Written to target/debian/
    Package,
    /// Measure the agent's CPU % and RSS at default settings against a local
    /// VictoriaMetrics, next to the floor (only reading the same files), and print the ratio
    BenchOverhead {
        /// Measurement time for each of the two runs
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Agent and floor in turn this many times (the ratio is over all of them)
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// Measure this agent binary instead of this tree's release build (an A/B against
        /// an older main: build it in a worktree, then run this command with each)
        #[arg(long)]
        agent_bin: Option<std::path::PathBuf>,
        /// Extra flags for the agent, after `--`
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Measure ns per event of each BPF program under scheduler and TCP load
    /// (kernel.bpf_stats_enabled, bpftool), and print them
    BenchBpf {
        /// Load time
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// (internal) the floor loop of bench-overhead
    #[command(hide = true)]
    FloorLoop {
        #[arg(long)]
        seconds: u64,
        /// A mountpoint to statfs every 5 s (repeatable)
        #[arg(long = "mount")]
        mounts: Vec<String>,
        /// The /proc tree to read
        #[arg(long, default_value = "/proc")]
        root: std::path::PathBuf,
    },
    /// Measure agent and floor as hosts grow: 100, 1 000, 10 000 extra threads, and /proc
    /// trees of 64 and 256 CPUs; CPU per task, bytes per task and per series
    BenchScale {
        /// Measurement time of each run
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// (internal) bench-scale's thread load
    #[command(hide = true)]
    ScaleLoad {
        #[arg(long)]
        threads: u32,
    },
    /// (internal) bench-scale's /proc and /sys trees of `cpus` CPUs under `dir`, ticking
    /// until killed: for profiling the agent against a large host by hand
    #[command(hide = true)]
    ScaleTree {
        #[arg(long)]
        cpus: u32,
        #[arg(long)]
        dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Cmd::Setup => setup::ensure(),
        Cmd::Run { agent_args } => run(&agent_args),
        Cmd::Test { cargo_args } => test(&cargo_args),
        Cmd::Package => package().map(|_| ()),
        Cmd::Dashboards { check } => dashboards::run(check),
        Cmd::BenchOverhead { seconds, rounds, agent_bin, agent_args } => {
            bench_overhead::run(seconds, rounds, agent_bin.as_deref(), &agent_args)
        }
        Cmd::BenchBpf { seconds } => bench_bpf::run(seconds),
        Cmd::FloorLoop { seconds, mounts, root } => bench_overhead::floor_loop(seconds, &mounts, &root),
        Cmd::BenchScale { seconds } => bench_scale::run(seconds),
        Cmd::ScaleLoad { threads } => bench_scale::load(threads),
        Cmd::ScaleTree { cpus, dir } => bench_scale::tree(cpus, &dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    // `cargo run` describes xtask's own package in the environment (CARGO_PKG_NAME, …).
    // Passed on, build scripts that watch such variables (ring's does) would see a
    // different environment than a plain `cargo build` and rebuild every time.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_PACKAGE"]
            .iter()
            .any(|p| key.starts_with(p))
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

pub fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn run(agent_args: &[String]) -> anyhow::Result<()> {
    setup::ensure()?;
    status(cargo().args(["build", "--release", "-p", "lsvmi-agent"]))?;
    let run_dir = workspace_root().join("target").join("lsvmi-run");
    let vm = vm::VictoriaMetrics::start(&run_dir, 8428)?;
    let query = "rate(proc_stat_cpu_seconds_total{mode!=\"idle\"}[1s])";
    println!("\nVictoriaMetrics: {} (data in {})", vm.base_url(), run_dir.display());
    // Debian's VictoriaMetrics has no VMUI: the static dashboard page is the view.
    match dashboards::load().and_then(|spec| dashboards::static_page(&spec)) {
        Ok(page) => println!("  dashboards:    file://{}?vm={}&minutes=5", page.display(), vm.base_url()),
        Err(e) => println!("  dashboards:    not built ({e:#}); Grafana's are in dashboards/grafana/"),
    }
    println!("  example query: {query}");
    println!(
        "  or:            curl -s {}/api/v1/query --data-urlencode 'query=sum(rate(sched_context_switches_total[5s]))'",
        vm.base_url()
    );
    println!("Ctrl-C stops the agent and VictoriaMetrics.\n");

    vm::forward_sigint_to_children();
    let agent = workspace_root().join("target/release/lsvmi");
    let mut child = Command::new(&agent)
        .arg("--endpoint")
        .arg(format!("{}/api/v1/write", vm.base_url()))
        // Beside the VictoriaMetrics data it belongs to, not in /var/lib/lsvmi.
        .arg("--spool-dir")
        .arg(workspace_root().join("target/lsvmi-run/spool"))
        .args(agent_args)
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    let st = child.wait().context("waiting for the agent")?;
    drop(vm); // stops VictoriaMetrics (SIGTERM, then waits)
    println!("agent exited ({st}); VictoriaMetrics stopped. Data stays in {}", run_dir.display());
    if !st.success() && st.code().is_some() {
        bail!("the agent failed ({st})");
    }
    Ok(())
}

/// `cargo deb` into target/debian/, then lintian (an error fails); the .deb's path.
fn package() -> anyhow::Result<std::path::PathBuf> {
    setup::ensure()?;
    let out = workspace_root().join("target/debian");
    let _ = std::fs::remove_dir_all(&out);
    status(cargo().args(["deb", "-p", "lsvmi-agent", "--strip", "--output"]).arg(&out))?;
    let deb = std::fs::read_dir(&out)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("cargo deb wrote no .deb")?;
    let lint = Command::new("lintian").arg(&deb).output().context("running lintian")?;
    let said = String::from_utf8_lossy(&lint.stdout);
    print!("{said}");
    if said.lines().any(|l| l.starts_with("E: ")) {
        bail!("lintian found errors in {}", deb.display());
    }
    println!("xtask package: {}", deb.display());
    Ok(deb)
}

fn test(cargo_args: &[String]) -> anyhow::Result<()> {
    setup::ensure()?;
    // The end-to-end tests run the agent binary; build it first (cargo only builds a
    // package's own binaries for its integration tests).
    status(cargo().args(["build", "-p", "lsvmi-agent", "--bin", "lsvmi"]))?;
    // The package tests install the .deb (tests/tests/package.rs).
    package()?;
    // --all-targets: the criterion benches run once each in test mode, so they cannot rot.
    status(cargo().args(["test", "--workspace", "--all-targets"]).args(cargo_args))?;
    println!("xtask test: all tests passed");
    Ok(())
}
