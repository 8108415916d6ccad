//! The disk spool: where batches wait while no endpoint takes data, so an outage of the
//! metrics database during an incident leaves no hole.
//!
//! Layout: a directory (mode 0700) of append-only segment files `<id>.seg` (mode 0600)
//! and a `cursor` file naming the first record not yet delivered. Each record is
//!
//! ```text
//! magic u32 "LSV1" | payload length u32 | CRC-32 of payload u32 | payload
//! payload = samples u32 | series u32 | uncompressed length u32 | written at (ms) i64 | body
//! ```
//!
//! all little-endian, the body being the snappy-compressed remote-write request as it
//! would have been sent. Records are read back strictly in order, so per-series order
//! holds across restarts. On open, every segment is scanned: a record that is cut short
//! or fails its checksum (the agent was killed mid-write, or the disk lied) ends that
//! segment — it and anything after it in the segment are skipped and counted, everything
//! before is delivered. Bounded by size and age: whole segments are dropped oldest first,
//! and their samples counted.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Read, Seek, SeekFrom, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bytes::Bytes;

use crate::encode::remote_write::EncodedBatch;

const MAGIC: u32 = u32::from_le_bytes(*b"LSV1");
const HEADER: usize = 12;
const META: usize = 20;
/// A record larger than this is taken for garbage (a batch is at most a few MB).
const MAX_RECORD: u32 = 256 << 20;

/// When spool writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// After every record and cursor update: survives power loss, costs a disk flush each.
    Always,
    /// At most once a second (default): survives a crash of the agent, may lose the last
    /// second on power loss.
    Interval,
    /// Left to the kernel.
    Never,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub fsync: Fsync,
    /// Roll to a new segment past this size (dropping oldest-first works per segment).
    pub segment_bytes: u64,
}

/// What was given up, for the caller to count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// Records found torn or corrupt (their sample counts are unreadable).
    pub corrupt_records: u64,
    /// Samples in segments dropped to stay under max_bytes or max_age.
    pub dropped_samples: u64,
    /// Samples given up because a record written by this run could not be read back
    /// (the rest of its segment with it).
    pub corrupt_samples: u64,
}

struct Segment {
    id: u64,
    /// Bytes of valid records.
    bytes: u64,
    /// Samples in valid records not yet delivered.
    samples: u64,
    /// `written at` of its newest record (ms since the epoch).
    newest_ms: i64,
    /// `written at` of its first undelivered record, or of the last delivered one (which
    /// is at most one batch older): what `lsvmi_spool_oldest_age_seconds` reports.
    oldest_ms: i64,
    /// Nothing more is appended to it (a write failed, or a record in it could not be
    /// read back): the next append starts a new segment, and the reader leaves it at
    /// `bytes` instead of waiting there for the writer.
    sealed: bool,
}

pub struct Spool {
    cfg: SpoolConfig,
    segments: VecDeque<Segment>,
    /// Append handle on the last segment.
    tail: Option<File>,
    /// Read position: segment id and byte offset of the first undelivered record.
    cursor: (u64, u64),
    reader: Option<(u64, BufReader<File>)>,
    /// The record at the cursor, read but not yet acknowledged, and its size on disk.
    head: Option<(EncodedBatch, u64, i64)>,
    last_sync: Instant,
    dirty: bool,
    /// Losses found while reading, for the caller to count ([`Spool::take_lost`]).
    lost: Lost,
    /// An exclusive flock on `<dir>/lock`, held while the spool is open: two agents must
    /// not share a spool (each would replay and delete the other's records).
    _lock: File,
}

fn lock_dir(dir: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd as _;
    let file = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(dir.join("lock"))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::other("in use by another lsvmi process"));
    }
    Ok(file)
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn now_ms() -> i64 {
    crate::model::now_ms()
}

/// Read one record at the reader's position. `Ok(None)` at a clean end; `Err` for a
/// torn or corrupt record.
fn read_record(r: &mut impl Read) -> Result<Option<(EncodedBatch, i64, u64)>, String> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("record header cut short".into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let word = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if word(0) != MAGIC {
        return Err("bad record magic".into());
    }
    let (len, crc) = (word(4), word(8));
    if len > MAX_RECORD || (len as usize) < META {
        return Err(format!("implausible record length {len}"));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|_| "record cut short".to_string())?;
    if crc32fast::hash(&payload) != crc {
        return Err("record checksum mismatch".into());
    }
    let u = |i: usize| u32::from_le_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]]) as usize;
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&payload[12..20]);
    let batch = EncodedBatch {
        samples: u(0),
        series: u(4),
        uncompressed_len: u(8),
        body: Bytes::copy_from_slice(&payload[META..]),
    };
    Ok(Some((batch, i64::from_le_bytes(ts), (HEADER + len as usize) as u64)))
}

fn encode_record(batch: &EncodedBatch, written_ms: i64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(META + batch.body.len());
    payload.extend_from_slice(&(batch.samples as u32).to_le_bytes());
    payload.extend_from_slice(&(batch.series as u32).to_le_bytes());
    payload.extend_from_slice(&(batch.uncompressed_len as u32).to_le_bytes());
    payload.extend_from_slice(&written_ms.to_le_bytes());
    payload.extend_from_slice(&batch.body);
    let mut rec = Vec::with_capacity(HEADER + payload.len());
    rec.extend_from_slice(&MAGIC.to_le_bytes());
    rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    rec.extend_from_slice(&payload);
    rec
}

impl Spool {
    /// Open (creating) the spool, scan what a previous run left, and cut off torn or
    /// corrupt records.
    pub fn open(cfg: SpoolConfig) -> io::Result<(Spool, Lost)> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&cfg.dir)?;
        let lock = lock_dir(&cfg.dir)?;
        let mut ids: Vec<u64> = fs::read_dir(&cfg.dir)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let cursor = fs::read_to_string(cfg.dir.join("cursor"))
            .ok()
            .and_then(|t| {
                let (a, b) = t.trim().split_once(' ')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .unwrap_or((ids.first().copied().unwrap_or(0), 0));
        let mut lost = Lost::default();
        let mut segments = VecDeque::new();
        for id in ids {
            let path = seg_path(&cfg.dir, id);
            if id < cursor.0 {
                // Fully delivered before the last run ended.
                let _ = fs::remove_file(&path);
                continue;
            }
            let start = if id == cursor.0 { cursor.1 } else { 0 };
            let mut seg = Segment { id, bytes: 0, samples: 0, newest_ms: 0, oldest_ms: 0, sealed: false };
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = file.metadata()?.len();
            let mut r = BufReader::new(&mut file);
            r.seek(SeekFrom::Start(0))?;
            let mut at = 0u64;
            let mut good_end = 0u64;
            loop {
                match read_record(&mut r) {
                    Ok(Some((b, ts, size))) => {
                        at += size;
                        good_end = at;
                        seg.bytes += size;
                        if at > start {
                            if seg.samples == 0 {
                                seg.oldest_ms = ts;
                            }
                            seg.samples += b.samples as u64;
                        }
                        seg.newest_ms = seg.newest_ms.max(ts);
                    }
                    Ok(None) => break,
                    Err(why) => {
                        lost.corrupt_records += 1;
                        tracing::warn!(
                            segment = %path.display(),
                            offset = good_end,
                            skipped_bytes = len - good_end,
                            "spool: {why}; the rest of this segment is skipped, everything before it is kept"
                        );
                        break;
                    }
                }
            }
            drop(r);
            if good_end < len {
                file.set_len(good_end)?;
            }
            segments.push_back(seg);
        }
        let mut spool = Spool {
            cfg,
            segments,
            tail: None,
            cursor,
            reader: None,
            head: None,
            last_sync: Instant::now(),
            dirty: false,
            lost: Lost::default(),
            _lock: lock,
        };
        if spool.segments.front().is_some_and(|s| s.id > spool.cursor.0) || spool.segments.is_empty() {
            spool.cursor = (spool.segments.front().map_or(0, |s| s.id), 0);
        }
        Ok((spool, lost))
    }

    pub fn is_empty(&self) -> bool {
        self.pending_samples() == 0 && self.head.is_none()
    }

    /// Samples waiting (not yet acknowledged).
    pub fn pending_samples(&self) -> u64 {
        self.segments.iter().map(|s| s.samples).sum()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Age of the oldest waiting record.
    pub fn oldest_age(&self) -> Option<Duration> {
        let oldest = self.segments.iter().find(|s| s.samples > 0)?;
        Some(Duration::from_millis((now_ms() - oldest.oldest_ms).max(0) as u64))
    }

    /// Append a batch. Returns what had to be dropped to stay within the bounds.
    pub fn append(&mut self, batch: &EncodedBatch) -> io::Result<Lost> {
        let rec = encode_record(batch, now_ms());
        let lost = self.enforce_bounds(rec.len() as u64);
        let roll = match self.segments.back() {
            None => true,
            Some(s) => s.sealed || (s.bytes + rec.len() as u64 > self.cfg.segment_bytes && s.bytes > 0),
        };
        if roll || self.tail.is_none() {
            let id = match (roll, self.segments.back()) {
                (false, Some(s)) => s.id,
                (_, last) => last.map_or(self.cursor.0.max(1), |s| s.id + 1),
            };
            let file = OpenOptions::new().create(true).append(true).mode(0o600).open(seg_path(&self.cfg.dir, id))?;
            if roll {
                self.segments.push_back(Segment {
                    id,
                    bytes: 0,
                    samples: 0,
                    newest_ms: 0,
                    oldest_ms: 0,
                    sealed: false,
                });
                if self.segments.len() == 1 {
                    self.cursor = (id, 0);
                }
            }
            self.tail = Some(file);
        }
        let file = self.tail.as_mut().ok_or_else(|| io::Error::other("no tail segment"))?;
        if let Err(e) = file.write_all(&rec) {
            // A partial write would be a torn record in the middle of the segment: seal
            // it, so the next append starts a fresh segment and the reader stops before
            // the torn bytes.
            self.tail = None;
            if let Some(s) = self.segments.back_mut() {
                s.sealed = true;
            }
            return Err(e);
        }
        if let Some(s) = self.segments.back_mut() {
            let now = now_ms();
            if s.samples == 0 {
                s.oldest_ms = now;
            }
            s.bytes += rec.len() as u64;
            s.samples += batch.samples as u64;
            s.newest_ms = now;
        }
        self.dirty = true;
        self.maybe_sync()?;
        Ok(lost)
    }

    /// Drop whole segments, oldest first, while over max_bytes (counting `incoming`) or
    /// holding records older than max_age. The segment being read is dropped too when it
    /// must be: its undelivered samples are counted.
    fn enforce_bounds(&mut self, incoming: u64) -> Lost {
        let mut lost = Lost::default();
        let oldest_allowed = now_ms() - self.cfg.max_age.as_millis() as i64;
        while self.segments.len() > 1 {
            let over_size = self.bytes() + incoming > self.cfg.max_bytes;
            let too_old = self.segments.front().is_some_and(|s| s.newest_ms < oldest_allowed);
            if !over_size && !too_old {
                break;
            }
            let Some(seg) = self.segments.pop_front() else { break };
            if self.cursor.0 == seg.id {
                // The record read but not yet acknowledged is among the dropped: its
                // samples are still in seg.samples.
                self.head = None;
                self.reader = None;
            }
            lost.dropped_samples += seg.samples;
            let _ = fs::remove_file(seg_path(&self.cfg.dir, seg.id));
            if let Some(next) = self.segments.front()
                && self.cursor.0 <= seg.id
            {
                self.cursor = (next.id, 0);
            }
        }
        if lost.dropped_samples > 0 {
            self.write_cursor();
        }
        lost
    }

    /// The oldest undelivered batch, read from disk once and kept until [`ack`](Self::ack).
    pub fn peek(&mut self) -> io::Result<Option<EncodedBatch>> {
        loop {
            if let Some((b, _, _)) = &self.head {
                return Ok(Some(b.clone()));
            }
            let Some(seg) = self.segments.iter().find(|s| s.id >= self.cursor.0) else { return Ok(None) };
            let id = seg.id;
            let at_end_of_full_segment = self.cursor.1 >= seg.bytes;
            if at_end_of_full_segment {
                if self.segments.back().is_some_and(|s| s.id == id && !s.sealed) {
                    return Ok(None); // caught up with the writer
                }
                // Done with this segment: delete it, move on.
                self.segments.retain(|s| s.id != id);
                let _ = fs::remove_file(seg_path(&self.cfg.dir, id));
                self.reader = None;
                self.cursor = (self.segments.front().map_or(id + 1, |s| s.id), 0);
                self.write_cursor();
                continue;
            }
            if self.reader.as_ref().is_none_or(|(rid, _)| *rid != id) {
                let mut f = File::open(seg_path(&self.cfg.dir, id))?;
                f.seek(SeekFrom::Start(self.cursor.1))?;
                self.reader = Some((id, BufReader::new(f)));
            }
            let Some((_, r)) = self.reader.as_mut() else { return Ok(None) };
            match read_record(r) {
                Ok(Some((b, ts, size))) => {
                    self.head = Some((b, size, ts));
                }
                Ok(None) => return Ok(None),
                Err(why) => {
                    // Written by this run and now unreadable (the disk lied, or someone
                    // wrote into the file): give up the rest of the segment, counted, and
                    // seal it so later batches go to a new one and are read from there.
                    let lost = self.segments.iter().find(|s| s.id == id).map_or(0, |s| s.samples);
                    tracing::warn!(
                        segment = id,
                        offset = self.cursor.1,
                        samples = lost,
                        "spool: {why}; the rest of the segment is skipped and counted \
                         (lsvmi_samples_dropped_total{{reason=\"spool_corrupt\"}})"
                    );
                    if let Some(s) = self.segments.iter_mut().find(|s| s.id == id) {
                        s.bytes = self.cursor.1;
                        s.samples = 0;
                        s.sealed = true;
                    }
                    self.lost.corrupt_records += 1;
                    self.lost.corrupt_samples += lost;
                    if self.segments.back().is_some_and(|s| s.id == id) {
                        self.tail = None;
                    }
                }
            }
        }
    }

    /// Losses found by [`peek`](Self::peek) since the last call.
    pub fn take_lost(&mut self) -> Lost {
        std::mem::take(&mut self.lost)
    }

    /// The batch from [`peek`](Self::peek) was delivered (or rejected): move past it.
    pub fn ack(&mut self) -> io::Result<()> {
        if let Some((b, size, ts)) = self.head.take() {
            self.cursor.1 += size;
            if let Some(s) = self.segments.iter_mut().find(|s| s.id == self.cursor.0) {
                s.samples = s.samples.saturating_sub(b.samples as u64);
                s.oldest_ms = ts;
            }
            self.write_cursor();
            self.maybe_sync()?;
        }
        Ok(())
    }

    fn write_cursor(&mut self) {
        let tmp = self.cfg.dir.join("cursor.tmp");
        let text = format!("{} {}\n", self.cursor.0, self.cursor.1);
        let res = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                if self.cfg.fsync == Fsync::Always {
                    f.sync_data()?;
                }
                Ok(())
            })
            .and_then(|()| fs::rename(&tmp, self.cfg.dir.join("cursor")));
        if let Err(e) = res {
            tracing::warn!("spool: writing the cursor: {e} (after a restart some batches may be sent twice)");
        }
    }

    fn maybe_sync(&mut self) -> io::Result<()> {
        let due = match self.cfg.fsync {
            Fsync::Always => true,
            Fsync::Interval => self.last_sync.elapsed() >= Duration::from_secs(1),
            Fsync::Never => false,
        };
        if due && self.dirty {
            if let Some(f) = &self.tail {
                f.sync_data()?;
            }
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Flush to disk now (shutdown).
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(f) = &self.tail {
            f.sync_data()?;
        }
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn cfg(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
            fsync: Fsync::Never,
            segment_bytes: 300,
        }
    }

    fn batch(n: usize) -> EncodedBatch {
        EncodedBatch { body: Bytes::from(vec![n as u8; 100]), samples: n, series: 1, uncompressed_len: 200 }
    }

    fn drain(s: &mut Spool) -> Vec<usize> {
        let mut out = Vec::new();
        while let Some(b) = s.peek().unwrap() {
            out.push(b.samples);
            s.ack().unwrap();
        }
        out
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, lost) = Spool::open(cfg(dir.path())).unwrap();
        assert_eq!(lost, Lost::default());
        for n in 1..=7 {
            s.append(&batch(n)).unwrap();
        }
        assert!(s.segments.len() > 2, "rolled segments");
        assert_eq!(s.pending_samples(), 28);
        // Deliver two, then "restart".
        assert_eq!(s.peek().unwrap().unwrap().samples, 1);
        s.ack().unwrap();
        assert_eq!(s.peek().unwrap().unwrap().samples, 2);
        s.ack().unwrap();
        drop(s);
        let (mut s, _) = Spool::open(cfg(dir.path())).unwrap();
        assert_eq!(s.pending_samples(), 25);
        s.append(&batch(8)).unwrap();
        assert_eq!(drain(&mut s), vec![3, 4, 5, 6, 7, 8]);
        assert!(s.is_empty());
        // Delivered segments are deleted, files are private.
        let files: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(files.len() <= 3, "{files:?}");
        for f in files {
            assert_eq!(f.metadata().unwrap().permissions().mode() & 0o077, 0, "{:?}", f.path());
        }
    }

    /// A one-segment spool holding batches 1, 2, 3, closed; returns its segment file.
    fn three_records(dir: &Path) -> PathBuf {
        let (mut s, _) = Spool::open(SpoolConfig { segment_bytes: 1 << 20, ..cfg(dir) }).unwrap();
        for n in 1..=3 {
            s.append(&batch(n)).unwrap();
        }
        drop(s);
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap()
    }

    #[test]
    fn a_torn_last_record_is_skipped_and_everything_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let seg = three_records(dir.path());
        // Cut the last record in half, as a SIGKILL mid-write would.
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 50).unwrap();
        let (mut s, lost) = Spool::open(SpoolConfig { segment_bytes: 1 << 20, ..cfg(dir.path()) }).unwrap();
        assert_eq!(lost.corrupt_records, 1);
        s.append(&batch(4)).unwrap();
        assert_eq!(drain(&mut s), vec![1, 2, 4]);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let seg = three_records(dir.path());
        let mut bytes = fs::read(&seg).unwrap();
        let second = bytes.len() / 3 + 40;
        bytes[second] ^= 0x10;
        fs::write(&seg, bytes).unwrap();
        let (mut s, lost) = Spool::open(SpoolConfig { segment_bytes: 1 << 20, ..cfg(dir.path()) }).unwrap();
        assert_eq!(lost.corrupt_records, 1);
        assert_eq!(drain(&mut s), vec![1]);
    }

    #[test]
    fn a_record_corrupted_under_a_running_spool_is_counted_and_later_batches_still_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(SpoolConfig { segment_bytes: 1 << 20, ..cfg(dir.path()) }).unwrap();
        for n in 1..=3 {
            s.append(&batch(n)).unwrap();
        }
        // Someone writes into the second record while the agent runs.
        let seg = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let second = bytes.len() / 3 + 40;
        bytes[second] ^= 0x10;
        fs::write(&seg, bytes).unwrap();
        assert_eq!(s.peek().unwrap().unwrap().samples, 1);
        s.ack().unwrap();
        // Records 2 and 3 are lost, and said so; the segment takes no more writes.
        assert!(s.peek().unwrap().is_none());
        let lost = s.take_lost();
        assert_eq!((lost.corrupt_records, lost.corrupt_samples), (1, 5));
        assert_eq!(s.take_lost(), Lost::default(), "counted once");
        for n in 4..=5 {
            s.append(&batch(n)).unwrap();
        }
        assert_eq!(drain(&mut s), vec![4, 5]);
        assert!(s.is_empty());
    }

    #[test]
    fn full_spool_drops_oldest_segments_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(SpoolConfig { max_bytes: 1000, ..cfg(dir.path()) }).unwrap();
        let mut dropped = 0;
        for n in 1..=20 {
            dropped += s.append(&batch(n)).unwrap().dropped_samples;
        }
        assert!(s.bytes() <= 1000, "{}", s.bytes());
        let kept = drain(&mut s);
        assert_eq!(kept.last(), Some(&20));
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?}");
        assert_eq!(dropped + kept.iter().sum::<usize>() as u64, (1..=20).sum::<u64>());
    }

    #[test]
    fn oldest_age_is_that_of_the_first_waiting_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(SpoolConfig { segment_bytes: 1 << 20, ..cfg(dir.path()) }).unwrap();
        assert_eq!(s.oldest_age(), None);
        s.append(&batch(1)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        s.append(&batch(2)).unwrap();
        // One segment: its first record, not its newest, sets the age.
        assert!(s.oldest_age().unwrap() >= Duration::from_millis(250), "{:?}", s.oldest_age());
        drain(&mut s);
        assert_eq!(s.oldest_age(), None);
    }

    #[test]
    fn a_second_spool_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_first, _) = Spool::open(cfg(dir.path())).unwrap();
        let err = Spool::open(cfg(dir.path())).err().unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn garbage_files_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("00000000000000000001.seg"), b"not a spool at all, just text").unwrap();
        fs::write(dir.path().join("cursor"), b"garbage").unwrap();
        let (mut s, lost) = Spool::open(cfg(dir.path())).unwrap();
        assert_eq!(lost.corrupt_records, 1);
        assert!(s.peek().unwrap().is_none());
        s.append(&batch(5)).unwrap();
        assert_eq!(drain(&mut s), vec![5]);
    }
}
