//! A series' label set, stored in the form it leaves the host in.
//!
//! Why: label sets are most of the agent's memory, and it grows with the host (8 series
//! per thread). They used to be kept twice: as `(name, interned value)` pairs (32 bytes a
//! label, plus the vector) for lookups, and as encoded protobuf bytes cached by the
//! remote-write encoder. Now each series keeps only the bytes the encoder sends — the
//! `repeated Label labels = 1` field of a remote-write `TimeSeries` — and the few readers
//! that need a label by name (the text writer, the trigger engine) decode them.
//!
//! Two labels of each set are the same for thousands of series: `__name__` (one per
//! metric) and the host labels (`instance`, user labels: one per agent). Those are kept
//! once, in [`SharedLabels`], and a set holds a two-byte reference in their place; the
//! encoder copies them in as it writes. That is ~60 bytes less per series (~500 bytes
//! per thread), for one more `memcpy` per label set encoded.

use std::hash::BuildHasher as _;

use hashbrown::{DefaultHashBuilder, HashTable};
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};

// Field keys: (field number << 3) | wire type 2 (length-delimited).
const KEY_LABELS: u8 = (1 << 3) | 2; // TimeSeries.labels
const KEY_NAME: u8 = (1 << 3) | 2; // Label.name
const KEY_VALUE: u8 = (2 << 3) | 2; // Label.value
/// Not a protobuf key of `TimeSeries`: a reference to a shared label, followed by its
/// index (varint). Never leaves the agent.
const KEY_SHARED: u8 = 0x01;

/// Encoded `repeated Label` bytes: labels sorted bytewise by name, names unique, no
/// empty value (what remote write requires, and what makes equal sets equal bytes),
/// with shared labels as references into a [`SharedLabels`]. Which labels are shared is
/// decided by the label alone, so equal sets are still equal bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LabelSet(Box<[u8]>);

/// Labels kept once for many sets, each encoded as one `Label` field.
#[derive(Debug, Default)]
pub struct SharedLabels {
    labels: Vec<Box<[u8]>>,
    /// Indexes into `labels` by the hash of the label's bytes (stored once, there).
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Scratch for the label being looked up.
    scratch: Vec<u8>,
}

impl SharedLabels {
    /// Append a reference to `name=value` to `out` (adding the label on first sight);
    /// returns its encoded length.
    pub(crate) fn encode_ref(&mut self, name: &str, value: &str, out: &mut Vec<u8>) -> usize {
        self.scratch.clear();
        encode_sorted(&[(name, value)], &mut self.scratch);
        let hash = self.hasher.hash_one(&self.scratch[..]);
        let (labels, label) = (&self.labels, &self.scratch[..]);
        let id = match self.index.find(hash, |&i| &labels[i as usize][..] == label) {
            Some(&id) => id,
            None => {
                // Shared labels are a metric name or a host label: a few hundred at most.
                let id = u32::try_from(self.labels.len()).unwrap_or(u32::MAX);
                self.labels.push(label.into());
                let (labels, hasher) = (&self.labels, &self.hasher);
                self.index.insert_unique(hash, id, |&i| hasher.hash_one(&labels[i as usize][..]));
                id
            }
        };
        out.push(KEY_SHARED);
        encode_varint(u64::from(id), out);
        self.scratch.len()
    }

    /// Labels kept.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn get(&self, id: u64) -> Option<&[u8]> {
        self.labels.get(usize::try_from(id).ok()?).map(|l| &l[..])
    }
}

impl LabelSet {
    /// From bytes made by [`encode_sorted`] and [`SharedLabels::encode_ref`].
    pub(crate) fn from_encoded(bytes: &[u8]) -> Self {
        LabelSet(bytes.into())
    }

    /// The stored form (shared labels as references): what identifies the set.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Append the bytes a remote-write `TimeSeries` carries, shared labels resolved.
    pub(crate) fn write_wire(&self, shared: &SharedLabels, out: &mut Vec<u8>) {
        let bytes = &self.0[..];
        // Own labels are copied in runs, between the shared ones.
        let (mut run, mut at) = (0, 0);
        while let Some(&key) = bytes.get(at) {
            let mut rest = &bytes[at + 1..];
            let Ok(n) = decode_varint(&mut rest) else { break };
            let after = bytes.len() - rest.len();
            if key == KEY_SHARED {
                out.extend_from_slice(&bytes[run..at]);
                out.extend_from_slice(shared.get(n).unwrap_or_default());
                (run, at) = (after, after);
            } else {
                at = after.saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
            }
        }
        out.extend_from_slice(bytes.get(run..at.min(bytes.len())).unwrap_or_default());
    }

    /// `(name, value)` in order.
    pub fn iter<'a>(&'a self, shared: &'a SharedLabels) -> Labels<'a> {
        Labels { rest: &self.0, shared }
    }

    /// The value of label `name`.
    pub fn get<'a>(&'a self, shared: &'a SharedLabels, name: &str) -> Option<&'a str> {
        self.iter(shared).find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// Append the encoded labels of `pairs` (sorted, unique, non-empty values) to `out`.
pub fn encode_sorted(pairs: &[(&str, &str)], out: &mut Vec<u8>) {
    for (name, value) in pairs {
        let len = field_len(name.len()) + field_len(value.len());
        out.push(KEY_LABELS);
        encode_varint(len as u64, out);
        for (key, s) in [(KEY_NAME, name), (KEY_VALUE, value)] {
            out.push(key);
            encode_varint(s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Bytes of a length-delimited protobuf field: key byte + length varint + payload.
pub(crate) fn field_len(payload: usize) -> usize {
    1 + encoded_len_varint(payload as u64) + payload
}

/// The labels of a [`LabelSet`], decoded as they are read.
pub struct Labels<'a> {
    rest: &'a [u8],
    shared: &'a SharedLabels,
}

impl<'a> Iterator for Labels<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        // Only this module makes these bytes; anything else ends the iteration.
        let label = if self.rest.first() == Some(&KEY_SHARED) {
            let mut rest = &self.rest[1..];
            let id = decode_varint(&mut rest).ok();
            self.rest = rest;
            id.and_then(|id| self.shared.get(id)).and_then(|mut l| field(&mut l, KEY_LABELS))
        } else {
            field(&mut self.rest, KEY_LABELS)
        };
        let Some(mut label) = label else {
            self.rest = &[];
            return None;
        };
        let name = field(&mut label, KEY_NAME)?;
        let value = field(&mut label, KEY_VALUE)?;
        Some((std::str::from_utf8(name).ok()?, std::str::from_utf8(value).ok()?))
    }
}

/// The payload of the length-delimited field `key` at the start of `buf`, advancing it.
fn field<'a>(buf: &mut &'a [u8], key: u8) -> Option<&'a [u8]> {
    let (&k, mut rest) = buf.split_first()?;
    if k != key {
        return None;
    }
    let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
    let (payload, rest) = (rest.get(..len)?, rest.get(len..)?);
    *buf = rest;
    Some(payload)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::encode::proto;

    /// `pairs` (sorted) with the labels named in `shared_names` shared.
    fn set(pairs: &[(&str, &str)], shared_names: &[&str], shared: &mut SharedLabels) -> LabelSet {
        let mut bytes = Vec::new();
        for pair in pairs {
            if shared_names.contains(&pair.0) {
                shared.encode_ref(pair.0, pair.1, &mut bytes);
            } else {
                encode_sorted(&[*pair], &mut bytes);
            }
        }
        LabelSet::from_encoded(&bytes)
    }

    fn wire(set: &LabelSet, shared: &SharedLabels) -> Vec<u8> {
        let mut out = Vec::new();
        set.write_wire(shared, &mut out);
        out
    }

    #[test]
    fn round_trips_and_matches_prost() {
        let long = "v".repeat(300); // a two-byte length varint
        let pairs = [("__name__", "m_total"), ("comm", "ü x"), ("instance", long.as_str()), ("z", "1")];
        let ts = proto::TimeSeries {
            labels: pairs.iter().map(|(n, v)| proto::Label { name: n.to_string(), value: v.to_string() }).collect(),
            samples: vec![],
        };
        // Any choice of shared labels: first, middle, last, adjacent, none, all.
        let choices: [&[&str]; 6] = [
            &[],
            &["__name__"],
            &["__name__", "instance"],
            &["comm", "z"],
            &["z"],
            &["__name__", "comm", "instance", "z"],
        ];
        let mut shared = SharedLabels::default();
        for names in choices {
            let set = set(&pairs, names, &mut shared);
            assert_eq!(set.iter(&shared).collect::<Vec<_>>(), pairs, "{names:?}");
            assert_eq!(set.get(&shared, "comm"), Some("ü x"));
            assert_eq!(set.get(&shared, "nope"), None);
            assert_eq!(wire(&set, &shared), ts.encode_to_vec(), "{names:?}");
        }
        // Each shared label is kept once however many sets refer to it.
        assert_eq!(shared.labels.len(), 4);
    }

    #[test]
    fn a_shared_label_costs_a_set_two_bytes() {
        let mut shared = SharedLabels::default();
        let name = "proc_tid_context_switches_total";
        let set = set(&[("__name__", name), ("tid", "1")], &["__name__"], &mut shared);
        assert_eq!(set.as_bytes().len(), 2 + field_len(field_len(3) + field_len(1)));
    }

    #[test]
    fn garbage_ends_the_iteration_without_panicking() {
        let mut shared = SharedLabels::default();
        let set = set(&[("a", "b"), ("c", "d"), ("e", "f")], &["c"], &mut shared);
        for cut in 0..set.as_bytes().len() {
            let short = LabelSet::from_encoded(&set.as_bytes()[..cut]);
            assert!(short.iter(&shared).count() <= 3);
            assert!(wire(&short, &shared).len() <= wire(&set, &shared).len());
        }
        for junk in [
            &[0xff, 0x0a, 0x80][..],
            &[KEY_SHARED, 0x7f],
            &[KEY_SHARED],
            &[KEY_LABELS, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ] {
            let bad = LabelSet::from_encoded(junk);
            assert_eq!(bad.iter(&shared).count(), 0);
            let _ = wire(&bad, &shared);
        }
    }
}
