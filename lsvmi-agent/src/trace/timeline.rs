//! A session's timeline on disk: the Chrome trace-event JSON format (opens in the
//! Perfetto UI and chrome://tracing) and the raw records as JSON lines, one pair of files
//! per session, the newest [`KEEP_SESSIONS`] kept. Written on the blocking pool.
//!
//! Tracks: one per thread (its runqueue waits as slices, named by cause), one per CPU
//! (the waits that ended there, named by who waited), so "who waited" and "where" read
//! side by side.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use lsvmi_common::trace_sched::{PREEMPTED, WaitRecord};
use serde_json::{Value, json};

/// Sessions whose files are kept; older ones are deleted when a new one is written.
pub const KEEP_SESSIONS: usize = 20;

/// The pid of the CPU tracks (no process has it: pids are positive).
const CPU_TRACKS: i64 = -1;

/// CLOCK_REALTIME − CLOCK_MONOTONIC in ns: turns the programs' timestamps into wall time.
pub fn realtime_offset_ns() -> i128 {
    let mono = i128::from(crate::bpf::monotonic_ns());
    let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    real - mono
}

/// The trace-event document for `records`.
pub fn chrome_trace(session_id: &str, records: &[WaitRecord], dropped: u64) -> Value {
    let offset = realtime_offset_ns();
    let mut events = Vec::with_capacity(records.len() * 2 + 16);
    let mut named_threads = std::collections::BTreeMap::new();
    let mut cpus = std::collections::BTreeSet::new();
    for r in records {
        let start_us = (i128::from(r.end_ns) - i128::from(r.wait_ns) + offset) as f64 / 1e3;
        let dur_us = r.wait_ns as f64 / 1e3;
        let cause = if r.how == PREEMPTED { "preempted" } else { "woken" };
        let comm = crate::sources::text::comm(&r.comm);
        let culprit = if r.culprit_tid == 0 {
            "idle".to_string()
        } else {
            format!("{} ({})", crate::sources::text::comm(&r.culprit_comm), r.culprit_tid)
        };
        named_threads.insert((r.tgid, r.tid), comm.clone());
        cpus.insert(r.cpu);
        let args = json!({ "cpu": r.cpu, "cause": cause, "ended_by": culprit });
        events.push(json!({
            "ph": "X", "name": format!("runqueue wait ({cause})"), "cat": cause,
            "pid": r.tgid, "tid": r.tid, "ts": start_us, "dur": dur_us, "args": args,
        }));
        events.push(json!({
            "ph": "X", "name": format!("{comm} waited"), "cat": cause,
            "pid": CPU_TRACKS, "tid": r.cpu, "ts": start_us, "dur": dur_us, "args": args,
        }));
    }
    events.push(json!({ "ph": "M", "name": "process_name", "pid": CPU_TRACKS, "args": { "name": "CPUs" } }));
    for cpu in cpus {
        events.push(json!({ "ph": "M", "name": "thread_name", "pid": CPU_TRACKS, "tid": cpu, "args": { "name": format!("CPU {cpu}") } }));
    }
    for ((pid, tid), name) in named_threads {
        events.push(json!({ "ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": { "name": name } }));
    }
    json!({
        "displayTimeUnit": "ns",
        "metadata": { "session": session_id, "records": records.len(), "records_dropped": dropped },
        "traceEvents": events,
    })
}

/// One record as a JSON object (the `.events.jsonl` line and `--follow`'s event), its
/// end on the wall clock (`offset`: [`realtime_offset_ns`]).
pub fn record_json(r: &WaitRecord, offset: i128) -> Value {
    json!({
        "end_ns": (i128::from(r.end_ns) + offset) as u64, "wait_ns": r.wait_ns,
        "pid": r.tgid, "tid": r.tid, "comm": crate::sources::text::comm(&r.comm), "cpu": r.cpu,
        "cause": if r.how == PREEMPTED { "preempted" } else { "woken" },
        "ended_by_tid": r.culprit_tid, "ended_by_comm": crate::sources::text::comm(&r.culprit_comm),
    })
}

/// Write `<dir>/<id>.trace.json` and `<dir>/<id>.events.jsonl`, then drop the files of
/// all but the newest sessions. Returns the trace file's path.
pub fn write(dir: &Path, session_id: &str, records: &[WaitRecord], dropped: u64) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let trace = dir.join(format!("{session_id}.trace.json"));
    let tmp = dir.join(format!("{session_id}.trace.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&chrome_trace(session_id, records, dropped))?)?;
    std::fs::rename(&tmp, &trace)?;
    let mut lines = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{session_id}.events.jsonl")))?);
    let offset = realtime_offset_ns();
    for r in records {
        serde_json::to_writer(&mut lines, &record_json(r, offset))?;
        lines.write_all(b"\n")?;
    }
    lines.flush()?;
    rotate(dir);
    Ok(trace)
}

/// Keep the files of the newest KEEP_SESSIONS sessions (ids end in their start ms).
fn rotate(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut sessions: Vec<(u64, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".trace.json")?.to_string();
            let ms = id.rsplit('-').next()?.parse().ok()?;
            Some((ms, id))
        })
        .collect();
    sessions.sort_unstable();
    let old = sessions.len().saturating_sub(KEEP_SESSIONS);
    for (_, id) in sessions.into_iter().take(old) {
        for suffix in [".trace.json", ".events.jsonl"] {
            let _ = std::fs::remove_file(dir.join(format!("{id}{suffix}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tid: u32, cpu: u32, how: u32) -> WaitRecord {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"victim");
        WaitRecord {
            end_ns: 2_000_000,
            wait_ns: 500_000,
            tid,
            tgid: 7,
            cpu,
            how,
            culprit_tid: 9,
            _pad: 0,
            comm,
            culprit_comm: *b"hog\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn tracks_per_thread_and_per_cpu_and_rotation() {
        let doc = chrome_trace("sched-1", &[rec(8, 1, PREEMPTED), rec(8, 0, 0)], 0);
        let events = doc["traceEvents"].as_array().unwrap();
        let slices: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(slices.len(), 4);
        assert!(slices.iter().any(|e| e["tid"] == 8 && e["name"] == "runqueue wait (preempted)"));
        assert!(slices.iter().any(|e| e["pid"] == CPU_TRACKS && e["tid"] == 1 && e["args"]["ended_by"] == "hog (9)"));
        assert!(events.iter().any(|e| e["ph"] == "M" && e["args"]["name"] == "CPU 0"));
        assert_eq!(slices[0]["dur"], 500.0);

        let dir = tempfile::tempdir().unwrap();
        for ms in 0..(KEEP_SESSIONS as u64 + 3) {
            write(dir.path(), &format!("sched-{ms}"), &[rec(8, 0, 0)], 0).unwrap();
        }
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, KEEP_SESSIONS * 2);
        assert!(!dir.path().join("sched-0.trace.json").exists());
        let text = std::fs::read_to_string(dir.path().join("sched-22.events.jsonl")).unwrap();
        let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["cause"], "woken");
    }
}
