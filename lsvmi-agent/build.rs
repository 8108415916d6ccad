//! Builds the BPF programs in `../lsvmi-ebpf` for `bpfel-unknown-none` and leaves the
//! object in `$OUT_DIR/lsvmi-ebpf.o`, which the agent embeds.
//!
//! Why not `aya-build`: it runs `rustup run <toolchain> cargo`, which needs a rustup
//! toolchain with a BPF `core`. This machine kind has none; Debian's `rustc-web` ships a
//! prebuilt one instead (see docs/architecture.md, "Building the BPF programs"). So this
//! script calls Debian's cargo directly with the flags aya-build would pass.
//!
//! `LSVMI_NO_BPF_BUILD=1` builds an agent without BPF programs (it then runs procfs only).
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const BPF_TARGET: &str = "bpfel-unknown-none";
const SETUP_HINT: &str = "run `cargo xtask setup` once (installs Debian's rustc-web and bpf-linker), or build without BPF with LSVMI_NO_BPF_BUILD=1";

fn main() -> ExitCode {
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: cannot build the BPF programs: {msg}; {SETUP_HINT}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<(), String> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    let object = out_dir.join("lsvmi-ebpf.o");
    println!("cargo:rerun-if-env-changed=LSVMI_NO_BPF_BUILD");
    if env::var("LSVMI_NO_BPF_BUILD").is_ok_and(|v| !v.is_empty() && v != "0") {
        println!("cargo:warning=LSVMI_NO_BPF_BUILD is set: this agent has no BPF programs");
        return std::fs::write(&object, b"").map_err(|e| format!("write {}: {e}", object.display()));
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir.parent().ok_or("lsvmi-agent has no parent folder")?;
    let ebpf_dir = workspace.join("lsvmi-ebpf");
    for p in [
        "lsvmi-ebpf/src",
        "lsvmi-ebpf/Cargo.toml",
        "lsvmi-ebpf/Cargo.lock",
        "lsvmi-common/src",
        "lsvmi-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }

    let linker_dir = find_bpf_linker().ok_or("bpf-linker not found on PATH or in $CARGO_HOME/bin")?;
    if !Path::new(DEBIAN_CARGO).exists() || !Path::new(DEBIAN_RUSTC).exists() {
        return Err(format!("{DEBIAN_CARGO} or {DEBIAN_RUSTC} missing (Debian package cargo-web/rustc-web)"));
    }
    if !Path::new("/usr/lib/rustlib").join(BPF_TARGET).exists() {
        return Err(format!("no prebuilt core for {BPF_TARGET} (Debian package libstd-rust-web-dev-bpf)"));
    }

    // A target dir of its own beside the workspace's: sharing the outer one would make
    // cargo wait on its own lock, and a fixed place keeps the build incremental across
    // the dev/test/release profiles of the outer build.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("lsvmi-ebpf");
    let path =
        env::join_paths(std::iter::once(linker_dir).chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())))
            .map_err(|e| format!("PATH: {e}"))?;

    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(&ebpf_dir)
        .args(["build", "--bins", "--release", "--target", BPF_TARGET, "--target-dir"])
        .arg(&target_dir)
        .env("PATH", path)
        .env("RUSTC", DEBIAN_RUSTC)
        // aya-ebpf uses #![feature(asm_experimental_arch)]; this value unlocks unstable
        // features for that one crate only, on a stable compiler.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        // BTF in the object (`--btf`) needs debug info; flags are passed here, not in a
        // .cargo/config.toml, which cargo would ignore when not run from that folder.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\x1f-Clink-arg=--btf");
    // The outer build's settings are for the host target and the rustup toolchain.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().map_err(|e| format!("spawn {DEBIAN_CARGO}: {e}"))?;
    if !status.success() {
        return Err(format!("`{DEBIAN_CARGO} build` of lsvmi-ebpf failed ({status}); its errors are above"));
    }
    let built = target_dir.join(BPF_TARGET).join("release").join("lsvmi");
    std::fs::copy(&built, &object).map_err(|e| format!("copy {} to {}: {e}", built.display(), object.display()))?;
    Ok(())
}

/// The folder holding `bpf-linker`: PATH first, then `$CARGO_HOME/bin` (where
/// `cargo install` puts it, and which is not always on PATH in CI shells).
fn find_bpf_linker() -> Option<PathBuf> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .chain(cargo_home.map(|h| h.join("bin")))
        .find(|dir| dir.join("bpf-linker").is_file())
}
