//! A session's timeline on disk: the Chrome trace-event JSON format (opens in the
//! Perfetto UI and chrome://tracing) and the raw records as JSON lines, one pair of files
//! per session, the newest [`KEEP_SESSIONS`] kept. Written on the blocking pool.
//!
//! Tracks: one per thread (its runqueue waits as slices, named by cause), one per CPU
//! (the waits that ended there, named by who waited), so "who waited" and "where" read
//! side by side.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use std::os::fd::{AsFd as _, OwnedFd};

use aya::maps::{Map, MapData, RingBuf};
use lsvmi_common::trace_sched::{PREEMPTED, WaitRecord};
use serde_json::{Value, json};

/// Sessions whose files are kept; older ones are deleted when a new one is written.
pub const KEEP_SESSIONS: usize = 20;

/// Timeline records kept per session (~5 MB of JSON); beyond, they are counted.
pub const MAX_RECORDS: usize = 50_000;

/// A session's timeline records as drained from its program's ring buffer (on the
/// source's tick: the programs never wake the agent), bounded by [`MAX_RECORDS`].
///
/// The ring is mapped into the agent only from a session's start to its end: a mapped
/// ring holds its data pages twice in RSS (the kernel maps them twice for wrap-around),
/// 128–256 KiB per profile otherwise held for sessions that may never run.
pub struct Records<R> {
    /// The ring map as the object made it, kept open for good: the session programs,
    /// loaded later, name the map by this descriptor.
    map: MapData,
    ring: Option<RingBuf<MapData>>,
    pub records: Vec<R>,
    /// Records there was no room for.
    pub dropped: u64,
}

impl<R: aya::Pod> Records<R> {
    /// From the ring map as taken from the object; it is mapped only from
    /// [`Records::clear`] (a session's start) to [`Records::take`] (its end).
    pub fn new(name: &str, map: Map) -> Result<Self, crate::bpf::BpfError> {
        let Map::RingBuf(map) = map else {
            return Err(crate::bpf::BpfError::Kernel { what: name.into(), cause: "not a ring buffer".into() });
        };
        Ok(Records { map, ring: None, records: Vec::new(), dropped: 0 })
    }

    /// A mapping of the ring, through a second descriptor of the same map.
    fn map_ring(&self) -> Result<RingBuf<MapData>, String> {
        let fd: OwnedFd = self.map.fd().as_fd().try_clone_to_owned().map_err(|e| e.to_string())?;
        let data = MapData::from_fd(fd).map_err(|e| e.to_string())?;
        RingBuf::try_from(Map::RingBuf(data)).map_err(|e| e.to_string())
    }

    /// Move what the ring holds to the records.
    pub fn drain(&mut self) {
        let Some(ring) = self.ring.as_mut() else { return };
        while let Some(item) = ring.next() {
            if item.len() < size_of::<R>() {
                continue;
            }
            if self.records.len() >= MAX_RECORDS {
                self.dropped += 1;
                continue;
            }
            // SAFETY: R is Pod (any bytes are a valid R) and the length is
            // checked; read_unaligned copes with the ring's 8-byte alignment.
            let r = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<R>()) };
            self.records.push(r);
        }
    }

    /// Map the ring and empty it and the records (before a session).
    pub fn clear(&mut self) {
        if self.ring.is_none() {
            match self.map_ring() {
                Ok(ring) => self.ring = Some(ring),
                Err(e) => tracing::warn!("the session's timeline ring cannot be mapped ({e}): no timeline"),
            }
        }
        self.drain();
        self.records.clear();
        self.dropped = 0;
    }

    /// The session's records and the count of those dropped, leaving none; the ring is
    /// unmapped until the next session.
    pub fn take(&mut self) -> (Vec<R>, u64) {
        self.ring = None;
        (std::mem::take(&mut self.records), std::mem::take(&mut self.dropped))
    }
}

/// The pid of the CPU tracks (no process has it: pids are positive).
pub const CPU_TRACKS: i64 = -1;

/// CLOCK_REALTIME − CLOCK_MONOTONIC in ns: turns the programs' timestamps into wall time.
pub fn realtime_offset_ns() -> i128 {
    let mono = i128::from(crate::bpf::monotonic_ns());
    let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    real - mono
}

/// A trace-event document being built: slices and instants on tracks named by
/// (pid, tid), times given on the programs' clock (`bpf_ktime_get_ns`).
pub struct Doc {
    events: Vec<Value>,
    processes: BTreeMap<i64, String>,
    threads: BTreeMap<(i64, i64), String>,
    offset: i128,
}

impl Default for Doc {
    fn default() -> Self {
        Doc { events: Vec::new(), processes: BTreeMap::new(), threads: BTreeMap::new(), offset: realtime_offset_ns() }
    }
}

impl Doc {
    fn us(&self, mono_ns: u64) -> f64 {
        (i128::from(mono_ns) + self.offset) as f64 / 1e3
    }

    /// A slice of `dur_ns` from `start_ns` on track (pid, tid).
    pub fn slice(&mut self, track: (i64, i64), name: String, cat: &str, start_ns: u64, dur_ns: u64, args: Value) {
        let ts = self.us(start_ns);
        self.events.push(json!({
            "ph": "X", "name": name, "cat": cat, "pid": track.0, "tid": track.1,
            "ts": ts, "dur": dur_ns as f64 / 1e3, "args": args,
        }));
    }

    /// A slice that may overlap others of its track (an async event pair): the viewer
    /// gives overlapping ones rows of their own under `track` of process `pid`.
    #[allow(clippy::too_many_arguments, reason = "the parts of one trace event")]
    pub fn async_slice(
        &mut self,
        pid: i64,
        track: &str,
        name: String,
        id: usize,
        start_ns: u64,
        dur_ns: u64,
        args: Value,
    ) {
        let (begin, end) = (self.us(start_ns), self.us(start_ns + dur_ns));
        self.events.push(json!({
            "ph": "b", "cat": track, "name": name, "id": id, "pid": pid, "ts": begin, "args": args,
        }));
        self.events.push(json!({ "ph": "e", "cat": track, "name": name, "id": id, "pid": pid, "ts": end }));
    }

    /// A point in time on track (pid, tid).
    pub fn instant(&mut self, track: (i64, i64), name: String, cat: &str, at_ns: u64, args: Value) {
        let ts = self.us(at_ns);
        self.events.push(json!({
            "ph": "i", "s": "t", "name": name, "cat": cat, "pid": track.0, "tid": track.1, "ts": ts, "args": args,
        }));
    }

    /// Name a process's group of tracks (first name kept).
    pub fn process(&mut self, pid: i64, name: impl Into<String>) {
        self.processes.entry(pid).or_insert_with(|| name.into());
    }

    /// Name a track (first name kept).
    pub fn thread(&mut self, track: (i64, i64), name: impl Into<String>) {
        self.threads.entry(track).or_insert_with(|| name.into());
    }

    /// Name CPU `cpu`'s track under the CPUs process.
    pub fn cpu(&mut self, cpu: u32) -> (i64, i64) {
        let track = (CPU_TRACKS, i64::from(cpu));
        self.process(CPU_TRACKS, "CPUs");
        self.thread(track, format!("CPU {cpu}"));
        track
    }

    /// The document, with the session's id and record counts as metadata.
    pub fn finish(mut self, session_id: &str, records: usize, dropped: u64) -> Value {
        for (pid, name) in std::mem::take(&mut self.processes) {
            self.events.push(json!({ "ph": "M", "name": "process_name", "pid": pid, "args": { "name": name } }));
        }
        for ((pid, tid), name) in std::mem::take(&mut self.threads) {
            self.events
                .push(json!({ "ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": { "name": name } }));
        }
        json!({
            "displayTimeUnit": "ns",
            "metadata": { "session": session_id, "records": records, "records_dropped": dropped },
            "traceEvents": self.events,
        })
    }
}

/// The sched profile's document: a track per thread (its waits, named by cause) and a
/// track per CPU (the waits that ended there, named by who waited; each slice says which
/// thread left the CPU to it).
pub fn chrome_trace(session_id: &str, records: &[WaitRecord], dropped: u64) -> Value {
    let mut doc = Doc::default();
    for r in records {
        let start = r.end_ns.saturating_sub(r.wait_ns);
        let cause = if r.how == PREEMPTED { "preempted" } else { "woken" };
        let comm = crate::sources::text::comm(&r.comm);
        let culprit = if r.culprit_tid == 0 {
            "idle".to_string()
        } else {
            format!("{} ({})", crate::sources::text::comm(&r.culprit_comm), r.culprit_tid)
        };
        let args = json!({ "cpu": r.cpu, "cause": cause, "ended_by": culprit });
        let thread = (i64::from(r.tgid), i64::from(r.tid));
        doc.thread(thread, comm.clone());
        doc.slice(thread, format!("runqueue wait ({cause})"), cause, start, r.wait_ns, args.clone());
        let cpu = doc.cpu(r.cpu);
        doc.slice(cpu, format!("{comm} waited"), cause, start, r.wait_ns, args);
    }
    doc.finish(session_id, records.len(), dropped)
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

/// A session's files to write once it ended: the document and the raw records.
pub struct Files {
    pub doc: Value,
    pub lines: Vec<Value>,
    pub records: usize,
    pub dropped: u64,
}

/// Write the session's files on the blocking pool, then tell `sessions` where they are.
pub fn write_later(
    sessions: Option<&super::Sessions>,
    session_id: &str,
    make: impl FnOnce() -> Files + Send + 'static,
) {
    let Some(sessions) = sessions.cloned() else { return };
    let (dir, id) = (sessions.settings().dir.clone(), session_id.to_string());
    tokio::task::spawn_blocking(move || {
        let mut files = make();
        let (trigger, kept) = sessions.take_hindsight(&id);
        add_trigger(&mut files, trigger, kept);
        let (records, dropped) = (files.records, files.dropped);
        match write(&dir, &id, &files) {
            Ok(path) => {
                tracing::info!(session = %id, records, dropped, "trace timeline written to {}", path.display());
                sessions.timeline_written(&id, &path);
            }
            Err(e) => tracing::warn!(session = %id, "trace timeline not written to {}: {e}", dir.display()),
        }
    });
}

/// A triggered session's files say which trigger started it and when, and hold the
/// hindsight records from before it fired (marked `before_trigger`).
fn add_trigger(
    files: &mut Files,
    trigger: Option<super::TriggerInfo>,
    kept: Option<(Vec<super::hindsight::Kept>, u64)>,
) {
    if let Some(t) = trigger {
        files.doc["metadata"]["trigger"] = json!({ "name": t.name, "fired_ms": t.fired_ms, "what": t.what });
    }
    let Some((kept, fired_ns)) = kept else { return };
    let mut doc = Doc::default();
    super::hindsight::add_to(&mut doc, &kept);
    let extra = doc.finish("", 0, 0);
    if let (Some(events), Some(more)) = (files.doc["traceEvents"].as_array_mut(), extra["traceEvents"].as_array()) {
        events.extend(more.iter().cloned());
    }
    files.doc["metadata"]["hindsight_records"] = json!(kept.len());
    files.lines.extend(super::hindsight::lines(&kept, Some(fired_ns)));
}

/// Write `<dir>/<id>.trace.json` and `<dir>/<id>.events.jsonl`, then drop the files of
/// all but the newest sessions. Returns the trace file's path.
pub fn write(dir: &Path, session_id: &str, files: &Files) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let trace = dir.join(format!("{session_id}.trace.json"));
    let tmp = dir.join(format!("{session_id}.trace.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&files.doc)?)?;
    std::fs::rename(&tmp, &trace)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{session_id}.events.jsonl")))?);
    for line in &files.lines {
        serde_json::to_writer(&mut out, line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    rotate(dir);
    Ok(trace)
}

/// The sched profile's files.
pub fn sched_files(session_id: &str, records: &[WaitRecord], dropped: u64) -> Files {
    let offset = realtime_offset_ns();
    Files {
        doc: chrome_trace(session_id, records, dropped),
        lines: records.iter().map(|r| record_json(r, offset)).collect(),
        records: records.len(),
        dropped,
    }
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
            let id = format!("sched-{ms}");
            write(dir.path(), &id, &sched_files(&id, &[rec(8, 0, 0)], 0)).unwrap();
        }
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, KEEP_SESSIONS * 2);
        assert!(!dir.path().join("sched-0.trace.json").exists());
        let text = std::fs::read_to_string(dir.path().join("sched-22.events.jsonl")).unwrap();
        let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["cause"], "woken");
    }
}
