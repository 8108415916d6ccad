//! Remote-write 1.0 encoder for the hot path.
//!
//! Why by hand: building prost structs means allocating a `String` per label per
//! series per batch. Here each series' labels are already in wire form in the registry
//! ([`crate::model::LabelSet`]) and a batch is a memcpy of those bytes plus a few
//! varints per sample.
//! The output is byte-identical to prost's (tested below); `benches/hot_paths.rs`
//! measures both.
//!
//! Snappy's block format compresses its input in independent 64 KiB blocks (no copy
//! reaches into an earlier block), so a request is compressed while it is encoded, one
//! 64 KiB block at a time: the same bytes as compressing it whole (tested), without
//! holding the whole uncompressed request plus a compressed scratch of its size. Those
//! two buffers were a third of the agent's heap, and they grow with the host.

use prost::encoding::{encode_varint, encoded_len_varint};

use std::sync::{RwLock, RwLockReadGuard};

use crate::model::{Registry, Sample, labels::field_len};

/// How the encoder reads the series registry: a plain reference (tests, benchmarks), or
/// the agent's shared one, read-locked while a block's worth of series is written and
/// let go while the block is compressed and while the batch is sorted. The sampler locks
/// it for writing only to register or retire a series; so a tick that adds one waits
/// for one block's encoding at most, not for a whole batch's sort, encode and
/// compression (milliseconds on a host with tens of thousands of series).
pub trait RegistryRead {
    type Guard<'g>: std::ops::Deref<Target = Registry>
    where
        Self: 'g;
    fn lock(&self) -> Self::Guard<'_>;
}

impl RegistryRead for Registry {
    type Guard<'g> = &'g Registry;
    fn lock(&self) -> &Registry {
        self
    }
}

impl RegistryRead for RwLock<Registry> {
    type Guard<'g> = RwLockReadGuard<'g, Registry>;
    fn lock(&self) -> RwLockReadGuard<'_, Registry> {
        // Poisoned only by a panic mid-registration, which leaves the table consistent.
        self.read().unwrap_or_else(|p| p.into_inner())
    }
}

// Field keys: (field number << 3) | wire type.
const KEY_TIMESERIES: u8 = (1 << 3) | 2; // WriteRequest.timeseries, length-delimited
const KEY_SAMPLES: u8 = (2 << 3) | 2; // TimeSeries.samples
const KEY_SAMPLE_VALUE: u8 = (1 << 3) | 1; // Sample.value, fixed64
const KEY_SAMPLE_TS: u8 = 2 << 3; // Sample.timestamp, varint

/// A compressed request ready to POST.
#[derive(Clone, Debug)]
pub struct EncodedBatch {
    /// Snappy block-compressed protobuf `WriteRequest`.
    pub body: bytes::Bytes,
    pub samples: usize,
    pub series: usize,
    pub uncompressed_len: usize,
}

/// Snappy's block size: its compressor starts afresh every 64 KiB of input.
const SNAPPY_BLOCK: usize = 1 << 16;
/// The longest varint of a snappy preamble (the uncompressed length, < 2^32).
const MAX_PREAMBLE: usize = 5;

pub struct Encoder {
    /// The request being encoded: all of it for [`Encoder::encode_protobuf`], at most a
    /// block and one time series while [`Encoder::encode`] compresses as it goes.
    protobuf: Vec<u8>,
    compressor: Compressor,
    /// The other half of [`group_by_series`]'s radix sort.
    scratch: Vec<Sample>,
}

/// Compresses a request block by block into one snappy block-format body.
struct Compressor {
    snappy: snap::raw::Encoder,
    /// One block's compressed form (~76 KiB), reused.
    scratch: Vec<u8>,
    /// `MAX_PREAMBLE` bytes kept for the preamble, then the blocks' compressed elements.
    body: Vec<u8>,
    /// Uncompressed bytes so far.
    total: usize,
    /// The last body's length: the next one's first capacity.
    last_len: usize,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            protobuf: Vec::new(),
            compressor: Compressor {
                snappy: snap::raw::Encoder::new(),
                scratch: Vec::new(),
                body: Vec::new(),
                total: 0,
                last_len: 0,
            },
            scratch: Vec::new(),
        }
    }
}

impl Compressor {
    fn start(&mut self) {
        self.body = Vec::with_capacity(MAX_PREAMBLE + self.last_len + self.last_len / 8);
        self.body.resize(MAX_PREAMBLE, 0);
        self.total = 0;
    }

    /// Compress one block (≤ 64 KiB) and append its elements, without its own preamble.
    fn block(&mut self, block: &[u8]) -> Result<(), snap::Error> {
        self.scratch.resize(snap::raw::max_compress_len(block.len()), 0);
        let n = self.snappy.compress(block, &mut self.scratch)?;
        let preamble = encoded_len_varint(block.len() as u64);
        self.body.extend_from_slice(&self.scratch[preamble..n]);
        self.total += block.len();
        Ok(())
    }

    /// The body: the whole request's preamble, then every block's elements.
    fn finish(&mut self) -> bytes::Bytes {
        let mut preamble = Vec::with_capacity(MAX_PREAMBLE);
        encode_varint(self.total as u64, &mut preamble);
        let at = MAX_PREAMBLE - preamble.len();
        self.body[at..MAX_PREAMBLE].copy_from_slice(&preamble);
        let mut body = std::mem::take(&mut self.body);
        self.last_len = body.len();
        body.shrink_to_fit();
        bytes::Bytes::from(body).slice(at..)
    }
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Encode `samples` as one `WriteRequest`, one `TimeSeries` per series with its
    /// samples in timestamp order. `samples` is reordered in place (stable by series:
    /// samples of one series must already be in collection order, as the sampler makes them).
    pub fn encode_protobuf<R: RegistryRead + ?Sized>(&mut self, registry: &R, samples: &mut [Sample]) -> &[u8] {
        let _ = self.fill(registry, samples, false);
        &self.protobuf
    }

    /// Write the request into `self.protobuf`; with `compress`, every full block of it
    /// goes to the compressor as soon as it is written. Returns the number of series.
    fn fill<R: RegistryRead + ?Sized>(
        &mut self,
        registry: &R,
        samples: &mut [Sample],
        compress: bool,
    ) -> Result<usize, snap::Error> {
        group_by_series(samples, &mut self.scratch);
        self.protobuf.clear();
        let mut series_count = 0;
        let mut guard = None;
        for run in samples.chunk_by(|a, b| a.series == b.series) {
            if compress && self.protobuf.len() >= SNAPPY_BLOCK {
                // Compression does not need the registry: a tick may register meanwhile.
                guard = None;
                while self.protobuf.len() >= SNAPPY_BLOCK {
                    self.compressor.block(&self.protobuf[..SNAPPY_BLOCK])?;
                    self.protobuf.drain(..SNAPPY_BLOCK);
                }
            }
            let registry = guard.get_or_insert_with(|| registry.lock());
            let Some(series) = registry.get(run[0].series) else { continue };
            series_count += 1;
            let samples_len: usize = run.iter().map(|s| field_len(sample_len(s))).sum();
            let ts_len = series.wire_len() + samples_len;
            let out = &mut self.protobuf;
            out.push(KEY_TIMESERIES);
            encode_varint(ts_len as u64, out);
            registry.write_labels(series, out);
            for s in run {
                out.push(KEY_SAMPLES);
                encode_varint(sample_len(s) as u64, out);
                encode_sample(s, out);
            }
        }
        drop(guard);
        if compress {
            for block in self.protobuf.chunks(SNAPPY_BLOCK) {
                self.compressor.block(block)?;
            }
            self.protobuf.clear();
        }
        Ok(series_count)
    }

    /// Encode and snappy-compress (block format: the framed format is refused by sinks).
    pub fn encode<R: RegistryRead + ?Sized>(
        &mut self,
        registry: &R,
        samples: &mut [Sample],
    ) -> Result<EncodedBatch, snap::Error> {
        let sample_count = samples.len();
        self.compressor.start();
        let series = self.fill(registry, samples, true)?;
        let uncompressed_len = self.compressor.total;
        Ok(EncodedBatch { body: self.compressor.finish(), samples: sample_count, series, uncompressed_len })
    }
}

/// Order `samples` by series, stably (a series' samples stay in collection order), as
/// `sort_by_key(|s| s.series)` does. By hand because it ran once a second over every
/// sample of the batch and was 1.6 % of the agent's CPU: series ids are dense indexes,
/// so an LSD radix sort, 11 bits a pass and only as many passes as the largest id needs
/// (one up to 2 048 series, two up to 4 M), is a few linear passes where the merge
/// sort compared and moved each sample log n times (`benches/hot_paths.rs`,
/// `remote_write_encode`). `scratch` is the other buffer.
fn group_by_series(samples: &mut [Sample], scratch: &mut Vec<Sample>) {
    const BITS: u32 = 11;
    const MASK: u32 = (1 << BITS) - 1;
    let max = samples.iter().map(|s| s.series.0).max().unwrap_or(0);
    let passes = (u32::BITS - max.leading_zeros()).div_ceil(BITS);
    if samples.len() < 2 || passes == 0 {
        return;
    }
    scratch.clear();
    scratch.extend_from_slice(samples);
    for pass in 0..passes {
        let shift = pass * BITS;
        let (from, to): (&[Sample], &mut [Sample]) =
            if pass % 2 == 0 { (samples, scratch) } else { (scratch, samples) };
        let mut at = [0usize; 1 << BITS];
        for s in from {
            at[((s.series.0 >> shift) & MASK) as usize] += 1;
        }
        let mut sum = 0;
        for slot in &mut at {
            let n = *slot;
            *slot = sum;
            sum += n;
        }
        for s in from {
            let bucket = &mut at[((s.series.0 >> shift) & MASK) as usize];
            to[*bucket] = *s;
            *bucket += 1;
        }
    }
    if passes % 2 == 1 {
        samples.copy_from_slice(scratch);
    }
    // A host's usual batch keeps its scratch; a burst's (every series' refresh at
    // once on a host of 10 000 threads, 80 000 samples) is handed back at once, as the
    // merge sort's own scratch was.
    if scratch.capacity() > KEEP_SCRATCH {
        *scratch = Vec::new();
    }
}

/// Samples of scratch kept between batches (96 KiB; a 2-CPU host's batch is ~1 700).
const KEEP_SCRATCH: usize = 4096;

/// proto3 leaves default values (0.0, 0) out; so do we, to match prost byte for byte.
fn sample_len(s: &Sample) -> usize {
    let value = if s.value != 0.0 { 9 } else { 0 };
    let ts = if s.ts_ms != 0 { 1 + encoded_len_varint(s.ts_ms as u64) } else { 0 };
    value + ts
}

fn encode_sample(s: &Sample, out: &mut Vec<u8>) {
    if s.value != 0.0 {
        out.push(KEY_SAMPLE_VALUE);
        out.extend_from_slice(&s.value.to_bits().to_le_bytes());
    }
    if s.ts_ms != 0 {
        out.push(KEY_SAMPLE_TS);
        // int64 on the wire: two's complement as a 64-bit varint.
        encode_varint(s.ts_ms as u64, out);
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::{
        encode::proto,
        model::{MetricDesc, MetricKind, STALE_NAN_BITS, SeriesId},
    };

    static DESC: MetricDesc =
        MetricDesc { name: "m_total", kind: MetricKind::Counter, unit: "", help: "", labels: &["cpu"], source: "t" };

    /// The same request built with prost, the reference.
    fn with_prost(reg: &Registry, samples: &[Sample]) -> Vec<u8> {
        let mut ids: Vec<SeriesId> = samples.iter().map(|s| s.series).collect();
        ids.sort();
        ids.dedup();
        let timeseries = ids
            .iter()
            .map(|id| proto::TimeSeries {
                labels: reg
                    .labels(reg.get(*id).unwrap())
                    .map(|(name, value)| proto::Label { name: name.to_string(), value: value.to_string() })
                    .collect(),
                samples: samples
                    .iter()
                    .filter(|s| s.series == *id)
                    .map(|s| proto::Sample { value: s.value, timestamp: s.ts_ms })
                    .collect(),
            })
            .collect();
        proto::WriteRequest { timeseries }.encode_to_vec()
    }

    fn fixture() -> (Registry, Vec<Sample>) {
        let mut reg = Registry::new([("instance".to_string(), "host-ü".to_string())]);
        let a = reg.register(&DESC, &[("cpu", "0")]);
        let b = reg.register(&DESC, &[("cpu", "1")]);
        let samples = vec![
            Sample { series: b, ts_ms: 1_700_000_000_000, value: 1.5 },
            Sample { series: a, ts_ms: 1_700_000_000_000, value: 0.0 },
            Sample { series: b, ts_ms: 1_700_000_000_100, value: f64::INFINITY },
            Sample { series: a, ts_ms: 1_700_000_000_100, value: f64::from_bits(STALE_NAN_BITS) },
            Sample { series: a, ts_ms: -5, value: -2.0 },
            Sample { series: b, ts_ms: 0, value: 1e300 },
        ];
        (reg, samples)
    }

    #[test]
    fn bytes_match_prost_exactly() {
        let (reg, mut samples) = fixture();
        let expected = with_prost(&reg, &{
            let mut s = samples.clone();
            s.sort_by_key(|s| s.series);
            s
        });
        let mut enc = Encoder::new();
        assert_eq!(enc.encode_protobuf(&reg, &mut samples), &expected[..]);
        // Cached labels give the same bytes the second time.
        assert_eq!(enc.encode_protobuf(&reg, &mut samples), &expected[..]);
    }

    #[test]
    fn decodes_with_order_labels_and_stale_marker_kept() {
        let (reg, mut samples) = fixture();
        let batch = Encoder::new().encode(&reg, &mut samples).unwrap();
        assert_eq!((batch.samples, batch.series), (6, 2));
        // Block format, not framed: the framed stream starts with ff 06 00 00 73 4e 61 50 50 59.
        assert_ne!(batch.body.first(), Some(&0xff));
        let raw = snap::raw::Decoder::new().decompress_vec(&batch.body).unwrap();
        let req = proto::WriteRequest::decode(&raw[..]).unwrap();
        assert_eq!(req.timeseries.len(), 2);
        let ts0 = &req.timeseries[0];
        let names: Vec<&str> = ts0.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "cpu", "instance"]);
        assert_eq!(ts0.labels[2].value, "host-ü");
        let ts: Vec<i64> = ts0.samples.iter().map(|s| s.timestamp).collect();
        assert_eq!(ts, [1_700_000_000_000, 1_700_000_000_100, -5]); // collection order kept
        assert_eq!(ts0.samples[1].value.to_bits(), STALE_NAN_BITS);
    }

    #[test]
    fn grouping_by_series_is_a_stable_sort_by_series() {
        let mut scratch = Vec::new();
        // Ids spanning one, two and three radix passes, repeated, in a scrambled order.
        for max in [1u32, 7, 2047, 2048, 70_000, 5_000_000, u32::MAX] {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut samples: Vec<Sample> = (0..3000)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let id = (x % 50) as u32 * (max / 49).max(1);
                    Sample { series: SeriesId(id), ts_ms: i, value: 0.0 }
                })
                .collect();
            let mut expected = samples.clone();
            expected.sort_by_key(|s| s.series);
            group_by_series(&mut samples, &mut scratch);
            assert_eq!(samples, expected, "ids up to {max}");
        }
        let mut one = vec![Sample { series: SeriesId(9), ts_ms: 1, value: 1.0 }];
        group_by_series(&mut one, &mut scratch);
        group_by_series(&mut [], &mut scratch);
        assert_eq!(one[0].ts_ms, 1);
    }

    #[test]
    fn empty_batch_is_an_empty_request() {
        let reg = Registry::new([]);
        assert!(Encoder::new().encode_protobuf(&reg, &mut []).is_empty());
        let batch = Encoder::new().encode(&reg, &mut []).unwrap();
        assert_eq!((&batch.body[..], batch.uncompressed_len), (&[0u8][..], 0));
    }

    /// Compressing block by block while encoding gives the bytes that compressing the
    /// whole request at once gives, for requests of 0 to 5 blocks (and across batches:
    /// the encoder's buffers are reused).
    #[test]
    fn streamed_compression_equals_compressing_the_whole_request() {
        let mut reg = Registry::new([("instance".to_string(), "h".to_string())]);
        let ids: Vec<SeriesId> = (0..4000).map(|i| reg.register(&DESC, &[("cpu", &i.to_string())])).collect();
        let make = |n: usize, per_series: usize| -> Vec<Sample> {
            (0..per_series)
                .flat_map(|k| {
                    ids[..n].iter().map(move |&series| Sample {
                        series,
                        ts_ms: 1_700_000_000_000 + 100 * k as i64,
                        value: (series.index() * 7 + k) as f64 / 3.0,
                    })
                })
                .collect()
        };
        let cases = [(1, 1), (900, 1), (1200, 1), (4000, 3), (4000, 7), (10, 1)];
        let mut enc = Encoder::new();
        let mut bodies = Vec::new();
        for (n, per_series) in cases {
            let mut samples = make(n, per_series);
            let mut reference = Encoder::new();
            let request = reference.encode_protobuf(&reg, &mut samples.clone());
            let (whole, uncompressed) = (snap::raw::Encoder::new().compress_vec(request).unwrap(), request.len());
            let batch = enc.encode(&reg, &mut samples).unwrap();
            assert_eq!(batch.uncompressed_len, uncompressed);
            assert_eq!(&batch.body[..], &whole[..], "{n} series × {per_series}: {uncompressed} bytes");
            assert!(enc.protobuf.capacity() < 2 * SNAPPY_BLOCK, "held {} bytes", enc.protobuf.capacity());
            bodies.push(batch.body);
        }
        // Through the agent's shared registry, locked block by block: the same bytes.
        let shared = std::sync::RwLock::new(reg);
        let mut enc = Encoder::new();
        for ((n, per_series), body) in cases.into_iter().zip(bodies) {
            let batch = enc.encode(&shared, &mut make(n, per_series)).unwrap();
            assert_eq!(batch.body, body, "{n} series × {per_series}, shared");
        }
    }
}
