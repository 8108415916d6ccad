//! Where metrics are born: one module per source of data. Each source declares its
//! metrics ([`MetricDesc`]) next to its reader, registers series once, and pushes
//! `(series, timestamp, value)` into a [`Collector`] on every cycle.

pub mod proc_stat;
pub mod procfs_file;
pub mod sched;
pub mod self_metrics;

use std::fmt;

use crate::model::{MetricDesc, Registry, Sample, SeriesId};

/// One source of data, polled by the sampler on its tick.
pub trait Source: Send {
    /// Short name used in logs and in `lsvmi_*` self-metrics (`proc_stat`, `sched`).
    fn name(&self) -> &'static str;

    /// Collect every `every_ticks()` base ticks (the base tick is `interval`, 100 ms).
    fn every_ticks(&self) -> u32 {
        1
    }

    /// Read the source once and push its samples. An `Err` means nothing could be read
    /// this cycle (the file is gone, the map cannot be read); malformed parts of what was
    /// read are reported through [`Collector::parse_errors`] instead.
    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError>;
}

/// Why a source produced nothing this cycle.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A BPF map could not be read.
    #[error("cannot read BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// A malformed part of a source's input: where it is and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number in the file.
    pub line: usize,
    /// The line's key or field that could not be parsed.
    pub field: String,
    pub reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, field {:?}: {}", self.line, self.field, self.reason)
    }
}

/// What a source writes into during one cycle.
pub struct Collector<'a> {
    registry: &'a mut Registry,
    samples: &'a mut Vec<Sample>,
    parse_errors: u64,
    first_parse_error: Option<ParseError>,
}

impl<'a> Collector<'a> {
    pub fn new(registry: &'a mut Registry, samples: &'a mut Vec<Sample>) -> Self {
        Collector { registry, samples, parse_errors: 0, first_parse_error: None }
    }

    /// Register (or look up) a series; sources call this once per series, not per cycle.
    pub fn series(&mut self, desc: &'static MetricDesc, labels: &[(&str, &str)]) -> SeriesId {
        self.registry.register(desc, labels)
    }

    /// Number of series registered so far (all sources).
    pub fn series_count(&self) -> usize {
        self.registry.len()
    }

    #[inline]
    pub fn push(&mut self, series: SeriesId, ts_ms: i64, value: f64) {
        self.samples.push(Sample { series, ts_ms, value });
    }

    /// Report `count` malformed lines (skipped; the rest of the input still counts).
    pub fn parse_errors(&mut self, count: u64, first: Option<ParseError>) {
        self.parse_errors += count;
        if self.first_parse_error.is_none() {
            self.first_parse_error = first;
        }
    }

    /// Malformed lines reported this cycle, and the first of them.
    pub fn take_parse_errors(&mut self) -> (u64, Option<ParseError>) {
        (std::mem::take(&mut self.parse_errors), self.first_parse_error.take())
    }
}
