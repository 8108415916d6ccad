//! `lsvmi check-config FILE`: is this file one the agent would run with? Every error is
//! said with its line, then (when there is none) the effective settings, as `promtool
//! check config` and `vmagent -dryRun` do. Exit 0 when it is good, 2 when not. Nothing is
//! started, loaded or sent, and no secret is printed (credentials are files; only their
//! paths are shown).

use std::{fmt::Write as _, path::Path};

use clap::Parser as _;

use crate::{
    cli::Cli,
    config::{Config, ConfigError},
};

/// Parse errors found before giving up (each one's key is set aside to find the next).
const MAX_ERRORS: usize = 20;

/// The report and whether the file is good.
pub fn check(path: &Path) -> (String, bool) {
    let mut out = String::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return (format!("{}: {e}\n", path.display()), false),
    };
    let errors = parse_errors(&text);
    if !errors.is_empty() {
        for (line, message) in &errors {
            let _ = writeln!(out, "{}:{line}: {message}", path.display());
        }
        let _ = writeln!(out, "{} error(s): not a configuration lsvmi would start with", errors.len());
        return (out, false);
    }
    let cli = Cli::parse_from([std::ffi::OsStr::new("lsvmi"), "--config".as_ref(), path.as_os_str()]);
    match Config::from_cli(&cli) {
        Ok(config) => {
            let _ = writeln!(out, "{}: good. Effective settings:", path.display());
            out.push_str(&effective(&config));
            (out, true)
        }
        Err(e) => {
            let line = match &e {
                ConfigError::Invalid { key, .. } => line_of(&text, key),
                _ => None,
            };
            let at = line.map(|l| format!(":{l}")).unwrap_or_default();
            let _ = writeln!(out, "{}{at}: {e}", path.display());
            let _ = writeln!(out, "1 error(s): not a configuration lsvmi would start with");
            (out, false)
        }
    }
}

/// Every schema error with its line: after each, the offending key's block is set aside
/// and the rest parsed again.
fn parse_errors(text: &str) -> Vec<(usize, String)> {
    let mut lines: Vec<Option<&str>> = text.lines().map(Some).collect();
    let mut errors = Vec::new();
    while errors.len() < MAX_ERRORS {
        let current: String = lines.iter().map(|l| l.unwrap_or("")).collect::<Vec<_>>().join("\n");
        if current.trim().is_empty() {
            break;
        }
        let Err(e) = serde_yaml::from_str::<crate::config::FileConfig>(&current) else { break };
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message).replace('\n', " ");
        let Some(loc) = e.location() else {
            errors.push((0, message));
            break;
        };
        let line = loc.line();
        errors.push((line, message));
        if !blank_block(&mut lines, line.saturating_sub(1)) {
            break;
        }
    }
    errors
}

/// Blank line `i` and the lines indented under it; false when there is nothing to blank
/// (the error cannot be set aside).
fn blank_block(lines: &mut [Option<&str>], i: usize) -> bool {
    let Some(Some(first)) = lines.get(i).copied() else { return false };
    let indent = first.len() - first.trim_start().len();
    lines[i] = None;
    for l in lines.iter_mut().skip(i + 1) {
        match l {
            Some(t) if t.trim().is_empty() || t.len() - t.trim_start().len() > indent => *l = None,
            _ => break,
        }
    }
    true
}

/// The line where `key` (its last dotted part) is set, if it is.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let name = key.rsplit('.').next().unwrap_or(key);
    let lead = format!("{name}:");
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&lead) || t.contains(&format!("{{{lead}")) || t.contains(&format!(", {lead}"))
        })
        .map(|i| i + 1)
}

/// The settings the agent would run with, one per line.
pub fn effective(c: &Config) -> String {
    let mut s = String::new();
    let ms = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let _ = writeln!(
        s,
        "  endpoints: {} (mode {:?})",
        c.endpoints.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", "),
        c.mode
    );
    let _ = writeln!(
        s,
        "  spool: {}",
        c.spool.as_ref().map_or("none (memory only)".to_string(), |sp| format!(
            "{} (at most {} bytes, {})",
            sp.dir.display(),
            sp.max_bytes,
            ms(sp.max_age)
        ))
    );
    let creds = match &c.credentials {
        crate::send::auth::Credentials::None => "none".to_string(),
        crate::send::auth::Credentials::Basic { username, password_file } => {
            format!("basic, user {username}, password from {}", password_file.display())
        }
        crate::send::auth::Credentials::Bearer { token_file } => format!("bearer token from {}", token_file.display()),
    };
    let _ = writeln!(s, "  credentials: {creds}");
    let labels: Vec<String> = c.host_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(s, "  labels: {}", labels.join(", "));
    let _ = writeln!(s, "  interval: {}, batches every {}", ms(c.interval), ms(c.batch_interval));
    let _ = writeln!(s, "  procfs root: {}, eBPF: {}", c.procfs_root.display(), if c.bpf { "on" } else { "off" });
    let on: Vec<String> = c
        .sources
        .iter()
        .filter(|src| src.enabled)
        .map(|src| format!("{} every {}", src.name, ms(src.interval)))
        .collect();
    let off: Vec<&str> = c.sources.iter().filter(|src| !src.enabled).map(|src| src.name).collect();
    let _ = writeln!(s, "  sources on: {}", on.join(", "));
    let _ = writeln!(s, "  sources off: {}", if off.is_empty() { "none".to_string() } else { off.join(", ") });
    let t = &c.trace;
    let _ = writeln!(
        s,
        "  trace: socket {}, files in {}, sessions {} (at most {}), budget {}%",
        t.socket.display(),
        t.dir.display(),
        ms(t.default_duration),
        ms(t.max_duration),
        t.default_budget_percent
    );
    let _ = writeln!(
        s,
        "  hindsight: run-queue waits from {}, softirq runs from {}, network events {}",
        ms(t.hindsight.runq_wait),
        ms(t.hindsight.softirq_run),
        if t.hindsight.net { "on" } else { "off" }
    );
    if t.triggers.is_empty() {
        let _ = writeln!(s, "  triggers: none");
    }
    for tr in &t.triggers {
        let _ = writeln!(
            s,
            "  trigger {}: {:?} above {} for {} interval(s)",
            tr.name, tr.metric, tr.above, tr.for_intervals
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(yaml: &str) -> (String, bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        check(&path)
    }

    #[test]
    fn every_schema_error_with_its_line() {
        let (out, good) = report("interval: 100ms\nendpointz: http://x/\nlabels:\n  a: b\nbpf: maybe\n");
        assert!(!good);
        assert!(out.contains(":2: unknown field `endpointz`"), "{out}");
        assert!(out.contains(":5: bpf: invalid type") || out.contains(":5:"), "{out}");
        assert!(out.contains("2 error(s)"), "{out}");
    }

    #[test]
    fn a_bad_value_is_placed_on_its_line_and_a_good_file_shows_its_settings() {
        let (out, good) = report("interval: 100ms\nendpoint: 'ftp://x/'\n");
        assert!(!good);
        assert!(out.contains(":2: invalid endpoint"), "{out}");
        let (out, good) = report("endpoint: http://127.0.0.1:8428/api/v1/write\ninterval: 200ms\n");
        assert!(good, "{out}");
        assert!(out.contains("interval: 200ms"), "{out}");
        assert!(out.contains("sources on: proc_stat every 200ms"), "{out}");
    }
}
