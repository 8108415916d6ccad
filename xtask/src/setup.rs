//! Idempotent machine set-up. Checks first, installs only what is missing.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

/// Debian packages: Debian's rustc/cargo with a prebuilt BPF core, LLVM 22 for
/// bpf-linker, the real sinks the tests and `xtask run` start, iproute2 and nftables for
/// the BPF tests' network namespace with a drop rule, and openssl and curl for the TLS
/// tests (certificates, and reading back from a TLS-only VictoriaMetrics); systemd
/// (`systemd-analyze` checks the unit), libcap2-bin (`capsh`) and util-linux (`setpriv`)
/// for the deployment tests.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "victoria-metrics",
    "iproute2",
    "nftables",
    "openssl",
    "curl",
    "systemd",
    "libcap2-bin",
    "util-linux",
    "lintian",
    // The dashboards' static page, drawn by the tests.
    "chromium",
    "fonts-dejavu-core",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Builds the .deb (`cargo xtask package`).
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn ensure() -> anyhow::Result<()> {
    let start = Instant::now();
    let missing = missing_packages()?;
    if !missing.is_empty() {
        install_packages(&missing)?;
    }
    let linker = ensure_bpf_linker()?;
    let deb = ensure_cargo_deb()?;
    eprintln!(
        "xtask setup: packages, bpf-linker {BPF_LINKER_VERSION} and cargo-deb {CARGO_DEB_VERSION} present{} ({:.1}s)",
        if missing.is_empty() && !linker && !deb { "" } else { " (installed what was missing)" },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn missing_packages() -> anyhow::Result<Vec<&'static str>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\\n"])
        .args(PACKAGES)
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query (is this a Debian machine?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(PACKAGES
        .iter()
        .copied()
        .filter(|p| !text.lines().any(|l| l.split_whitespace().next() == Some(p) && l.contains(" ii")))
        .collect())
}

fn install_packages(missing: &[&str]) -> anyhow::Result<()> {
    let cmd = format!("apt-get install -y --no-install-recommends {}", missing.join(" "));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("missing Debian packages; as root run: apt-get update && {cmd}");
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let st = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .context("running apt-get")?;
        if !st.success() {
            bail!("apt-get {} failed ({st})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(missing);
    apt(&args)
}

/// `cargo install` puts binaries here; it is not always on PATH in CI shells.
pub fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// `cargo install` of `tool` at `version` unless `tool --version` already says it;
/// true when it had to install.
fn ensure_tool(tool: &str, version: &str, extra: &[&str], env: &[(&str, &str)], why: &str) -> anyhow::Result<bool> {
    let bin = cargo_bin_dir().join(tool);
    let have =
        Command::new(&bin).arg("--version").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if have.as_deref().is_some_and(|v| v.contains(version)) {
        return Ok(false);
    }
    eprintln!("xtask setup: building {tool} {version}{why} (about a minute)");
    let st = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", tool, "--version", version, "--locked"])
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running cargo install {tool}"))?;
    if !st.success() {
        bail!("cargo install {tool} failed ({st})");
    }
    Ok(true)
}

fn ensure_cargo_deb() -> anyhow::Result<bool> {
    ensure_tool("cargo-deb", CARGO_DEB_VERSION, &[], &[], "")
}

fn ensure_bpf_linker() -> anyhow::Result<bool> {
    // bpf-linker finds LLVM through LLVM_PREFIX (Debian names llvm-config llvm-config-22).
    ensure_tool(
        "bpf-linker",
        BPF_LINKER_VERSION,
        &["--no-default-features", "--features", "llvm-22"],
        &[("LLVM_PREFIX", "/usr/lib/llvm-22")],
        " against LLVM 22",
    )
}
