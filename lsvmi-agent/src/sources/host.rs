//! The host itself: kernel and OS identity (an info series), uptime and CPU counts.
//! Read from `<procfs_root>` and `<sysfs_root>` so a captured tree or a host's /proc
//! mounted in a container describes that host, not the one the agent runs on.

use std::path::{Path, PathBuf};

use super::{
    Collector, Source, SourceError,
    procfs_file::ProcFile,
    text::{ParseReport, fields, parse_decimal},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

metric!(
    INFO,
    "host_info",
    Gauge,
    "",
    ["kernel_release", "kernel_version", "os_id", "os_version_id", "os_name"],
    "/proc/sys/kernel/{osrelease,version}, os-release",
    "Always 1: the running kernel and the OS (from os-release: ID, VERSION_ID, PRETTY_NAME)."
);
metric!(UPTIME, "host_uptime_seconds", Gauge, "seconds", [], "/proc/uptime", "Time since boot.");
metric!(
    CPUS,
    "host_cpus",
    Gauge,
    "",
    ["state"],
    "/sys/devices/system/cpu/{online,possible,isolated,nohz_full}",
    "CPUs by state: online, possible, isolated (isolcpus=), nohz_full; the agent stays off isolated and \
     nohz_full CPUs by default."
);

pub static METRICS: &[&MetricDesc] = &[&INFO, &UPTIME, &CPUS];

const CPU_STATES: [&str; 4] = ["online", "possible", "isolated", "nohz_full"];

/// `0-3,8,10-11` → the CPU numbers. Empty text is the empty list.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let n = part.trim().parse::<u32>().ok()?;
                (n, n)
            }
        };
        if b < a || b - a > 1 << 16 {
            return None;
        }
        cpus.extend(a..=b);
    }
    Some(cpus)
}

/// `KEY="value"` lines of os-release.
fn os_release_value(text: &str, key: &str) -> String {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .unwrap_or_default()
}

pub struct HostSource {
    procfs_root: PathBuf,
    sysfs_root: PathBuf,
    os_release: PathBuf,
    uptime: ProcFile,
    info: Option<(Vec<String>, SeriesId)>,
    uptime_id: Option<SeriesId>,
    cpu_ids: Option<[SeriesId; 4]>,
}

impl HostSource {
    pub fn new(procfs_root: &Path, sysfs_root: &Path, os_release: &Path) -> Self {
        HostSource {
            procfs_root: procfs_root.to_path_buf(),
            sysfs_root: sysfs_root.to_path_buf(),
            os_release: os_release.to_path_buf(),
            uptime: ProcFile::new(procfs_root.join("uptime")),
            info: None,
            uptime_id: None,
            cpu_ids: None,
        }
    }

    fn read_text(&self, path: &Path) -> String {
        std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
    }
}

impl Source for HostSource {
    fn name(&self) -> &'static str {
        "host"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let buf = self.uptime.contents()?;
        let ts = now_ms();
        match fields(buf).next().and_then(parse_decimal) {
            Some(up) => {
                let id = *self.uptime_id.get_or_insert_with(|| out.series(&UPTIME, &[]));
                out.push(id, ts, up);
            }
            None => {
                let mut r = ParseReport::default();
                r.bad(1, buf, "expected seconds since boot");
                r.report_to(out);
            }
        }

        let os = self.read_text(&self.os_release);
        let values = vec![
            self.read_text(&self.procfs_root.join("sys/kernel/osrelease")),
            self.read_text(&self.procfs_root.join("sys/kernel/version")),
            os_release_value(&os, "ID"),
            os_release_value(&os, "VERSION_ID"),
            os_release_value(&os, "PRETTY_NAME"),
        ];
        if self.info.as_ref().is_none_or(|(v, _)| *v != values) {
            if let Some((_, old)) = self.info.take() {
                out.end_series(old, ts);
            }
            let labels: Vec<(&str, &str)> =
                INFO.labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
            let id = out.series(&INFO, &labels);
            self.info = Some((values, id));
        }
        if let Some((_, id)) = &self.info {
            out.push(*id, ts, 1.0);
        }

        let ids = *self.cpu_ids.get_or_insert_with(|| CPU_STATES.map(|s| out.series(&CPUS, &[("state", s)])));
        for (id, state) in ids.iter().zip(CPU_STATES) {
            let path = self.sysfs_root.join("devices/system/cpu").join(state);
            // isolated and nohz_full are absent on kernels built without them: zero CPUs.
            let text = self.read_text(&path);
            if let Some(list) = parse_cpu_list(&text) {
                out.push(*id, ts, list.len() as f64);
            }
        }
        Ok(())
    }
}

/// Which CPUs are online, for the per-CPU maps and /proc/softirqs: both hold a value for
/// every *possible* CPU, and a VM with 240 hot-plug slots and 8 CPUs online must not
/// send 30× the series. Re-read from sysfs every 5 s (CPUs come and go); a CPU never
/// online gets no series, one that goes offline stops being sent.
pub struct OnlineCpus {
    online: Vec<bool>,
    read: Option<std::time::Instant>,
    path: PathBuf,
    /// Whether the last refresh found another set than the one before.
    changed: bool,
}

impl OnlineCpus {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    /// The running host's (`/sys`).
    pub fn new() -> Self {
        Self::at(Path::new("/sys"))
    }

    /// From `<sysfs_root>/devices/system/cpu/online`.
    pub fn at(sysfs_root: &Path) -> Self {
        OnlineCpus { online: Vec::new(), read: None, path: sysfs_root.join("devices/system/cpu/online"), changed: true }
    }

    /// From a cpulist (`0-7,9`); every CPU when it cannot be read.
    pub fn from_list(text: Option<&str>) -> Self {
        let mut online = Vec::new();
        for cpu in text.and_then(parse_cpu_list).unwrap_or_default() {
            let i = cpu as usize;
            if i >= crate::sources::text::MAX_CPUS as usize {
                continue;
            }
            if online.len() <= i {
                online.resize(i + 1, false);
            }
            online[i] = true;
        }
        OnlineCpus { online, read: Some(std::time::Instant::now()), path: PathBuf::new(), changed: true }
    }

    /// Re-read the list if it is 5 s old; call once per cycle, then ask
    /// [`is_online`](Self::is_online) (which reads no clock: it is asked per CPU per row).
    pub fn refresh(&mut self) -> &Self {
        if self.read.is_none_or(|t| t.elapsed() >= Self::EVERY) {
            let text = std::fs::read_to_string(&self.path).ok();
            let path = std::mem::take(&mut self.path);
            let first = self.read.is_none();
            let old = std::mem::take(&mut self.online);
            *self = OnlineCpus { path, ..OnlineCpus::from_list(text.as_deref()) };
            self.changed = first || old != self.online;
        } else {
            self.changed = false;
        }
        self
    }

    /// Whether the last [`refresh`](Self::refresh) found a set other than the one before
    /// (true at the first).
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Whether `cpu` was online at the last [`refresh`](Self::refresh). Unknown (sysfs
    /// unreadable): every CPU is taken as online.
    pub fn is_online(&self, cpu: usize) -> bool {
        self.online.is_empty() || self.online.get(cpu).copied().unwrap_or(false)
    }
}

impl Default for OnlineCpus {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list("0-4294967295"), None);
    }

    #[test]
    fn os_release() {
        let t = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";
        assert_eq!(os_release_value(t, "ID"), "debian");
        assert_eq!(os_release_value(t, "VERSION_ID"), "12");
        assert_eq!(os_release_value(t, "PRETTY_NAME"), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(os_release_value(t, "NOPE"), "");
    }

    #[test]
    fn only_online_cpus_of_the_possible_ones_count() {
        // 240 hot-plug slots, 8 online (and one more brought up later).
        let cpus = OnlineCpus::from_list(Some("0-7,12\n"));
        let online: Vec<usize> = (0..240).filter(|c| cpus.is_online(*c)).collect();
        assert_eq!(online, vec![0, 1, 2, 3, 4, 5, 6, 7, 12]);
        // Unreadable or garbled: every CPU counts (nothing is silently lost).
        let unknown = OnlineCpus::from_list(None);
        assert!(unknown.is_online(200));
        let garbled = OnlineCpus::from_list(Some("x-y"));
        assert!(garbled.is_online(3));
    }
}
