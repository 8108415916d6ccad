//! `/proc/vmstat`: `nr_*` are current amounts (gauges), the rest are event counters
//! (page faults, reclaim scans, THP, NUMA balancing).

use std::path::Path;

use super::{
    keyed::{KeyedSource, Mapping},
    text::label,
};
use crate::model::MetricDesc;

const SOURCE: &str = "/proc/vmstat";

metric!(
    CURRENT,
    "proc_vmstat",
    Gauge,
    "",
    ["field"],
    SOURCE,
    "The nr_* lines of /proc/vmstat (amounts, mostly in pages): field=nr_free_pages, nr_dirty, …"
);
metric!(
    EVENTS,
    "proc_vmstat_total",
    Counter,
    "",
    ["field"],
    SOURCE,
    "Every other /proc/vmstat line (events since boot): field=pgfault, pgmajfault, pgscan_kswapd, …"
);

pub static METRICS: &[&MetricDesc] = &[&CURRENT, &EVENTS];

pub fn source(procfs_root: &Path) -> KeyedSource {
    KeyedSource::new("proc_vmstat", procfs_root.join("vmstat"), |key, _| {
        let desc = if key.starts_with(b"nr_") { &CURRENT } else { &EVENTS };
        Some(Mapping { desc, labels: vec![("field", label(key))], scale: 1.0 })
    })
}
