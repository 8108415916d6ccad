//! Keep the agent off latency-critical CPUs. On hosts that isolate cores for
//! busy-polling threads (`isolcpus=`, `nohz_full=`), a collector waking up on one of
//! those cores is exactly the jitter the user is trying to measure. The agent pins its
//! whole process, before any thread starts (threads inherit the mask), to the
//! housekeeping CPUs or to the list the user gave.

use std::path::Path;

use rustix::thread::{CpuSet, sched_setaffinity};

use crate::{config::CpuChoice, sources::host::parse_cpu_list};

/// Online CPUs that are neither isolated nor nohz_full, from `<sysfs_root>`.
/// `None` when the online list cannot be read.
pub fn housekeeping_cpus(sysfs_root: &Path) -> Option<Vec<u32>> {
    let read = |name: &str| std::fs::read_to_string(sysfs_root.join("devices/system/cpu").join(name)).ok();
    let online = parse_cpu_list(&read("online")?)?;
    // Absent files: the kernel has no such CPUs.
    let isolated = read("isolated").and_then(|t| parse_cpu_list(&t)).unwrap_or_default();
    let nohz = read("nohz_full").and_then(|t| parse_cpu_list(&t)).unwrap_or_default();
    Some(online.into_iter().filter(|c| !isolated.contains(c) && !nohz.contains(c)).collect())
}

/// Pin the calling thread (call before starting others). Returns a line for the log.
pub fn apply(choice: &CpuChoice, sysfs_root: &Path) -> Result<String, String> {
    let (cpus, why) = match choice {
        CpuChoice::All => return Ok("not pinned (cpus: all)".into()),
        CpuChoice::List(l) => (l.clone(), "as configured"),
        CpuChoice::Housekeeping => match housekeeping_cpus(sysfs_root) {
            Some(l) if !l.is_empty() => (l, "housekeeping: online, not isolated, not nohz_full"),
            Some(_) => return Err("every online CPU is isolated or nohz_full; not pinned".into()),
            None => return Err(format!("cannot read {}/devices/system/cpu/online; not pinned", sysfs_root.display())),
        },
    };
    let mut set = CpuSet::new();
    for &cpu in &cpus {
        if (cpu as usize) < CpuSet::MAX_CPU {
            set.set(cpu as usize);
        }
    }
    sched_setaffinity(None, &set).map_err(|e| format!("pinning to CPUs {cpus:?} failed: {e}; not pinned"))?;
    Ok(format!("pinned to CPUs {} ({why})", format_list(&cpus)))
}

/// `[0,1,2,5]` → `0-2,5`.
fn format_list(cpus: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        parts.push(if cpus[i] == start { start.to_string() } else { format!("{start}-{}", cpus[i]) });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn housekeeping_excludes_isolated_and_nohz() {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(cpu.join("online"), "0-7\n").unwrap();
        std::fs::write(cpu.join("isolated"), "2-3\n").unwrap();
        std::fs::write(cpu.join("nohz_full"), "3-4\n").unwrap();
        assert_eq!(housekeeping_cpus(dir.path()).unwrap(), [0, 1, 5, 6, 7]);
        std::fs::remove_file(cpu.join("nohz_full")).unwrap();
        assert_eq!(housekeeping_cpus(dir.path()).unwrap(), [0, 1, 4, 5, 6, 7]);
        assert_eq!(format_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }
}
