//! A series' label set, stored in the form it leaves the host in.
//!
//! Why: label sets are most of the agent's memory, and it grows with the host (8 series
//! per thread). They used to be kept twice: as `(name, interned value)` pairs (32 bytes a
//! label, plus the vector) for lookups, and as encoded protobuf bytes cached by the
//! remote-write encoder. Now each series keeps only the bytes the encoder sends — the
//! `repeated Label labels = 1` field of a remote-write `TimeSeries` — and the few readers
//! that need a label by name (the text writer, the trigger engine) decode them. That is
//! ~130 bytes for a thread's series instead of ~380.

use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};

// Field keys: (field number << 3) | wire type 2 (length-delimited).
const KEY_LABELS: u8 = (1 << 3) | 2; // TimeSeries.labels
const KEY_NAME: u8 = (1 << 3) | 2; // Label.name
const KEY_VALUE: u8 = (2 << 3) | 2; // Label.value

/// Encoded `repeated Label` bytes: labels sorted bytewise by name, names unique, no
/// empty value (what remote write requires, and what makes equal sets equal bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LabelSet(Box<[u8]>);

impl LabelSet {
    /// From bytes made by [`encode_sorted`].
    pub(crate) fn from_encoded(bytes: &[u8]) -> Self {
        LabelSet(bytes.into())
    }

    /// The bytes a remote-write `TimeSeries` carries.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `(name, value)` in order.
    pub fn iter(&self) -> Labels<'_> {
        Labels { rest: &self.0 }
    }

    /// The value of label `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
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
}

impl<'a> Iterator for Labels<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        // Only `encode_sorted` makes these bytes; anything else ends the iteration.
        let mut label = field(&mut self.rest, KEY_LABELS).or_else(|| {
            self.rest = &[];
            None
        })?;
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

    fn set(pairs: &[(&str, &str)]) -> LabelSet {
        let mut bytes = Vec::new();
        encode_sorted(pairs, &mut bytes);
        LabelSet::from_encoded(&bytes)
    }

    #[test]
    fn round_trips_and_matches_prost() {
        let long = "v".repeat(300); // a two-byte length varint
        let pairs = [("__name__", "m_total"), ("comm", "ü x"), ("instance", long.as_str())];
        let set = set(&pairs);
        assert_eq!(set.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(set.get("comm"), Some("ü x"));
        assert_eq!(set.get("nope"), None);
        let ts = proto::TimeSeries {
            labels: pairs.iter().map(|(n, v)| proto::Label { name: n.to_string(), value: v.to_string() }).collect(),
            samples: vec![],
        };
        assert_eq!(set.as_bytes(), &ts.encode_to_vec()[..]);
    }

    #[test]
    fn garbage_ends_the_iteration_without_panicking() {
        let set = set(&[("a", "b"), ("c", "d")]);
        for cut in 0..set.as_bytes().len() {
            let short = LabelSet::from_encoded(&set.as_bytes()[..cut]);
            assert!(short.iter().count() <= 2);
        }
        assert_eq!(LabelSet::from_encoded(&[0xff, 0x0a, 0x80]).iter().count(), 0);
    }
}
