//! `/proc/meminfo`: memory in bytes (the kernel's kB are KiB), huge page counts.

use std::path::Path;

use super::{
    keyed::{KeyedSource, Mapping},
    text::label,
};
use crate::model::MetricDesc;

const SOURCE: &str = "/proc/meminfo";

metric!(
    BYTES,
    "proc_meminfo_bytes",
    Gauge,
    "bytes",
    ["field"],
    SOURCE,
    "Every /proc/meminfo line with a kB unit, in bytes: field=MemTotal, MemAvailable, Dirty, …"
);
metric!(
    PAGES,
    "proc_meminfo_pages",
    Gauge,
    "",
    ["field"],
    SOURCE,
    "The /proc/meminfo lines without a unit: HugePages_Total, HugePages_Free, HugePages_Rsvd, HugePages_Surp."
);

pub static METRICS: &[&MetricDesc] = &[&BYTES, &PAGES];

pub fn source(procfs_root: &Path) -> KeyedSource {
    KeyedSource::new("proc_meminfo", procfs_root.join("meminfo"), |key, unit| {
        let (desc, scale) = if unit == b"kB" { (&BYTES, 1024.0) } else { (&PAGES, 1.0) };
        Some(Mapping { desc, labels: vec![("field", label(key))], scale })
    })
}
