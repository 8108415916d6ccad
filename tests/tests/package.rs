//! The .deb as an operator meets it (`cargo xtask package`, which `cargo xtask test` runs
//! first): it installs where its unit says, and upgrades and removal keep the spool and
//! the configuration.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use lsvmi_tests::{is_root, run_command, testdata};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn dpkg(args: &[&str]) -> String {
    let out =
        run_command(Command::new("dpkg").args(args).env("DEBIAN_FRONTEND", "noninteractive"), Duration::from_secs(120));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "dpkg {args:?}: {said}");
    said
}

fn built_deb() -> PathBuf {
    let dir = testdata().join("../target/debian");
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "deb")))
        .unwrap_or_else(|| panic!("no .deb in {}: run `cargo xtask package` (cargo xtask test does)", dir.display()))
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", "lsvmi"])
        .output()
        .is_ok_and(|o| text(&o.stdout).starts_with("ii"))
}

#[test]
fn the_deb_installs_upgrades_and_is_removed_keeping_spool_and_config() {
    if !is_root() {
        eprintln!("skipping: dpkg needs root");
        return;
    }
    if installed() {
        eprintln!("skipping: lsvmi is installed on this machine; not touching it");
        return;
    }
    let deb = built_deb();
    let deb = deb.to_str().expect("utf-8");
    dpkg(&["-i", deb]);
    // The files are where the unit says.
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/lsvmi.service").expect("unit installed");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let mut parts = exec.split_whitespace();
    let (bin, config) = (parts.next().expect("binary"), parts.nth(1).expect("--config FILE"));
    assert!(Path::new(bin).is_file(), "{bin} missing");
    let out = run_command(Command::new(bin).args(["check-config", config]), Duration::from_secs(20));
    assert!(out.status.success(), "the packaged config does not check: {}", text(&out.stdout));
    let out = run_command(
        Command::new("systemd-analyze").args(["verify", "/usr/lib/systemd/system/lsvmi.service"]),
        Duration::from_secs(60),
    );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "the installed unit: {said}");
    assert!(Path::new("/usr/share/doc/lsvmi/deployment.md").is_file(), "docs not installed");

    // The operator's config and a spool in use survive an upgrade (a reinstall here)…
    let config_text = std::fs::read_to_string(config).expect("config") + "\n# edited by the operator\n";
    std::fs::write(config, &config_text).expect("edit config");
    std::fs::create_dir_all("/var/lib/lsvmi/spool").expect("spool dir");
    let marker = "/var/lib/lsvmi/spool/package-test-segment";
    std::fs::write(marker, b"batch").expect("spool file");
    dpkg(&["--force-confold", "-i", deb]);
    assert_eq!(std::fs::read_to_string(config).expect("config"), config_text, "upgrade replaced the config");
    // …and removal.
    dpkg(&["-r", "lsvmi"]);
    assert!(!Path::new(bin).exists(), "{bin} left after removal");
    assert_eq!(std::fs::read_to_string(config).expect("config kept"), config_text);
    assert!(Path::new(marker).is_file(), "removal took the spool");
    // Clean up what the test made (purge takes the config, as it should).
    dpkg(&["--purge", "lsvmi"]);
    let _ = std::fs::remove_file(marker);
    let _ = std::fs::remove_dir("/var/lib/lsvmi/spool");
    let _ = std::fs::remove_dir("/var/lib/lsvmi");
}
