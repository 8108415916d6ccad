//! `/proc/interrupts`: interrupts per IRQ per CPU, and an info series per IRQ naming its
//! chip, trigger and devices (which NIC queue is IRQ 57, and on which CPUs it fires).

use std::path::Path;

use super::{
    Collector, Source, SourceError,
    cpu_table::{self, CpuTable},
    procfs_file::ProcFile,
    text::{Memo, SeriesIds, Tracked, fields, label},
};
use crate::model::{MetricDesc, SeriesId, now_ms};

const SOURCE: &str = "/proc/interrupts";

metric!(
    INTERRUPTS,
    "proc_interrupts_total",
    Counter,
    "",
    ["cpu", "irq"],
    SOURCE,
    "Interrupts serviced since boot, per IRQ (number, or name such as LOC, NMI, RES) and CPU. Rows with a \
     single total (ERR, MIS) have no cpu label."
);
metric!(
    INFO,
    "proc_interrupts_info",
    Gauge,
    "",
    ["irq", "chip", "hwirq", "devices", "description"],
    SOURCE,
    "Always 1: what an IRQ is. Numbered IRQs carry chip (IO-APIC, PCI-MSIX-…), hwirq with its trigger \
     (2-edge) and devices (the action names, e.g. virtio0-input.0); named rows carry description."
);

pub static METRICS: &[&MetricDesc] = &[&INTERRUPTS, &INFO];

#[derive(Default)]
struct IrqSeries {
    per_cpu: Vec<Option<SeriesId>>,
    total: Option<SeriesId>,
    /// The info series and the description it was made from.
    info: Option<(Box<[u8]>, SeriesId)>,
}

impl SeriesIds for IrqSeries {
    fn for_each_id(&self, f: &mut dyn FnMut(SeriesId)) {
        self.per_cpu.for_each_id(f);
        self.total.iter().copied().for_each(&mut *f);
        self.info.iter().for_each(|(_, id)| f(*id));
    }
}

pub struct InterruptsSource {
    file: ProcFile,
    table: CpuTable,
    irqs: Tracked<Memo<IrqSeries>>,
}

impl InterruptsSource {
    pub fn new(procfs_root: &Path) -> Self {
        InterruptsSource {
            file: ProcFile::new(procfs_root.join("interrupts")),
            table: CpuTable::default(),
            irqs: Tracked::default(),
        }
    }
}

/// Info labels from a row's description.
fn info_labels(numbered: bool, description: &[u8]) -> [(&'static str, String); 4] {
    let mut chip = String::new();
    let mut hwirq = String::new();
    let mut devices = String::new();
    let mut text = String::new();
    if numbered {
        let mut f = fields(description);
        chip = f.next().map(label).unwrap_or_default();
        hwirq = f.next().map(label).unwrap_or_default();
        devices = f.map(label).collect::<Vec<_>>().join(" ");
    } else {
        text = fields(description).map(label).collect::<Vec<_>>().join(" ");
    }
    [("chip", chip), ("hwirq", hwirq), ("devices", devices), ("description", text)]
}

impl Source for InterruptsSource {
    fn name(&self) -> &'static str {
        "proc_interrupts"
    }

    fn collect(&mut self, out: &mut Collector<'_>) -> Result<(), SourceError> {
        let buf = self.file.contents()?;
        let ts = now_ms();
        // Most IRQs did not fire in the last second: their rows read the same.
        let skip = |(irqs, out): &mut (&mut Tracked<Memo<IrqSeries>>, &mut Collector<'_>), name: &[u8], line: &[u8]| {
            irqs.unchanged(name, line, out, ts)
        };
        let report = cpu_table::parse_skipping(
            buf,
            &mut self.table,
            &mut (&mut self.irqs, &mut *out),
            skip,
            |(irqs, out), row| {
                let Memo { ids: s, last } = irqs.entry(row.name, || Memo::new(IrqSeries::default()));
                last.start();
                if row.is_total() {
                    let id = *s.total.get_or_insert_with(|| out.series(&INTERRUPTS, &[("irq", &label(row.name))]));
                    last.push(out, id, ts, row.values[0] as f64);
                } else {
                    for (cpu, value) in row.per_cpu() {
                        let idx = cpu as usize;
                        if s.per_cpu.len() <= idx {
                            s.per_cpu.resize(idx + 1, None);
                        }
                        let id = *s.per_cpu[idx].get_or_insert_with(|| {
                            out.series(&INTERRUPTS, &[("cpu", &cpu.to_string()), ("irq", &label(row.name))])
                        });
                        last.push(out, id, ts, value as f64);
                    }
                }
                // A device can be added to or removed from a shared IRQ: the info follows.
                if s.info.as_ref().is_none_or(|(d, _)| **d != *row.description) {
                    if let Some((_, old)) = s.info.take() {
                        out.end_series(old, ts);
                    }
                    let irq = label(row.name);
                    let numbered = row.name.iter().all(u8::is_ascii_digit);
                    let labels = info_labels(numbered, row.description);
                    let mut all: Vec<(&str, &str)> = vec![("irq", &irq)];
                    all.extend(labels.iter().map(|(k, v)| (*k, v.as_str())));
                    s.info = Some((row.description.into(), out.series(&INFO, &all)));
                }
                if let Some((_, id)) = &s.info {
                    last.push(out, *id, ts, 1.0);
                }
                last.parsed(row.line);
            },
        );
        report.report_to(out);
        self.irqs.sweep(out, ts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_unchanged_rows_sends_what_parsing_them_sends() {
        let dir = tempfile::tempdir().unwrap();
        let header = "           CPU0       CPU1\n";
        let table = |loc: u32, devices: &str| {
            format!(
                "{header}  1:         10          0   IO-APIC   1-edge      {devices}\nLOC:        {loc}        200   Local timer interrupts\nERR:          0\n"
            )
        };
        let contents = [
            table(100, "i8042"),
            table(100, "i8042"),
            table(101, "i8042"),
            table(101, "i8042, rtc0"),
            table(101, "i8042"),
            table(101, "i8042").replace("CPU1", "CPU2"),
            table(101, "i8042"),
            table(101, "i8042"),
        ];
        crate::sources::assert_skipping_sends_what_parsing_sends(
            InterruptsSource::new(dir.path()),
            InterruptsSource::new(dir.path()),
            |text| std::fs::write(dir.path().join("interrupts"), text).unwrap(),
            &contents,
        );
    }

    #[test]
    fn info_labels_split_chip_trigger_devices() {
        let l = info_labels(true, b"PCI-MSIX-0000:00:04.0   1-edge      virtio0-input.0 virtio0-output.0");
        assert_eq!(l[0].1, "PCI-MSIX-0000:00:04.0");
        assert_eq!(l[1].1, "1-edge");
        assert_eq!(l[2].1, "virtio0-input.0 virtio0-output.0");
        let l = info_labels(false, b"Local timer   interrupts");
        assert_eq!(l[3].1, "Local timer interrupts");
    }
}
