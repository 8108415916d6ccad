//! `/proc/vmstat`: current amounts (gauges, mostly `nr_*`) and event counters since boot
//! (page faults, reclaim scans, THP, NUMA balancing). The prefix alone is not the type:
//! some `nr_*` lines count events and one gauge has no `nr_`, so those are listed.

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
    "The amounts in /proc/vmstat (mostly in pages): field=nr_free_pages, nr_dirty, workingset_nodes, …"
);
metric!(
    EVENTS,
    "proc_vmstat_total",
    Counter,
    "",
    ["field"],
    SOURCE,
    "The event counters in /proc/vmstat: field=pgfault, pgmajfault, pgscan_kswapd, nr_dirtied, …"
);

pub static METRICS: &[&MetricDesc] = &[&CURRENT, &EVENTS];

/// `nr_*` lines that count events (node stats the kernel only ever adds to:
/// `NR_DIRTIED`, `NR_WRITTEN`, `NR_VMSCAN_WRITE`, … in mm/vmstat.c).
const NR_COUNTERS: &[&[u8]] = &[
    b"nr_dirtied",
    b"nr_written",
    b"nr_throttled_written",
    b"nr_vmscan_write",
    b"nr_vmscan_immediate_reclaim",
    b"nr_foll_pin_acquired",
    b"nr_foll_pin_released",
];

/// Amounts without the `nr_` prefix (`WORKINGSET_NODES`: shadow nodes held now).
const OTHER_GAUGES: &[&[u8]] = &[b"workingset_nodes"];

fn is_gauge(key: &[u8]) -> bool {
    if key.starts_with(b"nr_") { !NR_COUNTERS.contains(&key) } else { OTHER_GAUGES.contains(&key) }
}

pub fn source(procfs_root: &Path) -> KeyedSource {
    KeyedSource::new("proc_vmstat", procfs_root.join("vmstat"), |key, _| {
        let desc = if is_gauge(key) { &CURRENT } else { &EVENTS };
        Some(Mapping { desc, labels: vec![("field", label(key))], scale: 1.0 })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_by_what_the_kernel_does_with_the_value() {
        for gauge in ["nr_free_pages", "nr_dirty", "nr_dirty_threshold", "workingset_nodes"] {
            assert!(is_gauge(gauge.as_bytes()), "{gauge}");
        }
        for counter in ["nr_dirtied", "nr_written", "nr_vmscan_write", "pgfault", "workingset_refault_file"] {
            assert!(!is_gauge(counter.as_bytes()), "{counter}");
        }
    }
}
