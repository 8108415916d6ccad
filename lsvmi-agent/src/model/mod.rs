//! The core model every source emits into and every sink reads from.
//!
//! A source registers each series once (metric metadata + its own labels) and gets a
//! [`SeriesId`]; after that a data point is just `(SeriesId, timestamp, value)`, 24 bytes.
//! Encoding, batching and sending never know which source spoke.

pub mod labels;
mod metric;
mod registry;

use std::time::{SystemTime, UNIX_EPOCH};

pub use labels::LabelSet;
pub use metric::{MetricDesc, MetricKind};
pub use registry::{Registry, Series, SharedRegistry};

/// Index of a series in the [`Registry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(pub(crate) u32);

impl SeriesId {
    /// The series' position in the registry, for tables indexed by series.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One data point: a value of a series at the instant it was collected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub series: SeriesId,
    /// Milliseconds since the Unix epoch, taken right after the value was read.
    pub ts_ms: i64,
    pub value: f64,
}

/// The Prometheus staleness marker: a NaN with exactly these bits. Never produced by
/// arithmetic, so it can be told apart from a real NaN.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Wall-clock now, in ms since the epoch (the remote-write timestamp unit).
pub fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        // A clock before 1970 is a broken host; 0 makes the problem visible in the sink.
        Err(_) => 0,
    }
}
