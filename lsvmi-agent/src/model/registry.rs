//! The series table: label sets interned once, referenced by [`SeriesId`] afterwards.
//! This is also the one place where host labels (`instance`, user labels) are added.

use std::{
    collections::VecDeque,
    hash::BuildHasher as _,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{MetricDesc, SeriesId};

/// A label of a registered series. Names are static (declared with the metric, or host
/// label names leaked once at start-up) and values are interned: a host has thousands of
/// series whose label values mostly repeat (`instance`, `pid`, `comm`, `mode`), and the
/// label sets are most of the agent's heap.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    pub name: &'static str,
    pub value: Arc<str>,
}

/// A registered series: its metric and its full, sorted label set (with `__name__`).
#[derive(Debug)]
pub struct Series {
    pub desc: &'static MetricDesc,
    /// Sorted bytewise by name, names unique, no empty values: the remote-write rules.
    pub labels: Vec<Label>,
    /// Bumped each time the id is reused for another label set, so caches keyed by
    /// [`SeriesId`] (the encoder's label bytes) know to refresh.
    pub generation: u32,
}

/// How long a retired id waits before reuse: longer than any sample can sit between the
/// sampler and the encoder (channel + one batch interval), so a late sample of the old
/// series is never encoded with the new series' labels.
const REUSE_AFTER: Duration = Duration::from_secs(60);

/// Shared between the sampler (which registers) and the encoders (which read).
pub type SharedRegistry = Arc<RwLock<Registry>>;

/// All series known to this agent run.
#[derive(Debug, Default)]
pub struct Registry {
    host_labels: Vec<Label>,
    series: Vec<Series>,
    /// Live series by the hash of their label set. The labels themselves are stored once,
    /// in `series` (on a host with thousands of task series, a second copy as map keys
    /// was a third of the agent's memory).
    index: HashTable<SeriesId>,
    hasher: DefaultHashBuilder,
    /// Retired ids, oldest first, with the instant they were retired.
    free: VecDeque<(SeriesId, Instant)>,
    /// Every label value in use, once.
    values: hashbrown::HashSet<Arc<str>>,
}

impl Registry {
    /// `host_labels` are put on every series (a source's own label of the same name wins).
    pub fn new(host_labels: impl IntoIterator<Item = (String, String)>) -> Self {
        let host_labels = host_labels
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            // Leaked once per configured host label: they live as long as the process.
            .map(|(name, value)| Label { name: Box::leak(name.into_boxed_str()), value: Arc::from(value) })
            .collect();
        Registry { host_labels, ..Default::default() }
    }

    pub fn shared(self) -> SharedRegistry {
        Arc::new(RwLock::new(self))
    }

    /// The id of the series `desc{labels}`, registering it on first sight.
    /// Labels with empty values are dropped (remote-write forbids them).
    pub fn register(&mut self, desc: &'static MetricDesc, labels: &[(&'static str, &str)]) -> SeriesId {
        let mut set: Vec<Label> = Vec::with_capacity(1 + labels.len() + self.host_labels.len());
        set.push(Label { name: "__name__", value: self.intern(desc.name) });
        for (name, value) in labels {
            if !value.is_empty() {
                let value = self.intern(value);
                set.push(Label { name, value });
            }
        }
        for host in &self.host_labels {
            if !set.iter().any(|l| l.name == host.name) {
                set.push(host.clone());
            }
        }
        set.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        // Duplicate names from one source would be a bug in that source; keep the first.
        set.dedup_by(|b, a| a.name == b.name);
        let hash = self.hasher.hash_one(&set);
        let series = &self.series;
        if let Some(id) = self.index.find(hash, |id| series[id.index()].labels == set) {
            return *id;
        }
        let id = match self.free.front() {
            Some(&(id, retired)) if retired.elapsed() >= REUSE_AFTER => {
                self.free.pop_front();
                let slot = &mut self.series[id.index()];
                let old =
                    std::mem::replace(slot, Series { desc, labels: set, generation: slot.generation.wrapping_add(1) });
                // Values only the retired series used leave the pool.
                for label in old.labels {
                    if Arc::strong_count(&label.value) == 2 {
                        self.values.remove(&*label.value);
                    }
                }
                id
            }
            _ => {
                // u32 ids: over four billion series would exhaust memory long before this.
                let id = SeriesId(u32::try_from(self.series.len()).unwrap_or(u32::MAX));
                self.series.push(Series { desc, labels: set, generation: 0 });
                id
            }
        };
        let (series, hasher) = (&self.series, &self.hasher);
        self.index.insert_unique(hash, id, |id| hasher.hash_one(&series[id.index()].labels));
        id
    }

    fn intern(&mut self, value: &str) -> Arc<str> {
        if let Some(v) = self.values.get(value) {
            return v.clone();
        }
        let v: Arc<str> = Arc::from(value);
        self.values.insert(v.clone());
        v
    }

    /// The series has ended (process exited, interface removed). Its labels stay readable
    /// for samples still in flight; the id is reused for a new series after a quarantine,
    /// which keeps the table bounded under pid churn. Registering the same labels again
    /// gives a fresh id.
    pub fn retire(&mut self, id: SeriesId) {
        let Some(series) = self.series.get(id.index()) else { return };
        let hash = self.hasher.hash_one(&series.labels);
        if let Ok(entry) = self.index.find_entry(hash, |live| *live == id) {
            entry.remove();
            self.free.push_back((id, Instant::now()));
        }
    }

    /// Series currently live (registered and not retired).
    pub fn live(&self) -> usize {
        self.index.len()
    }

    pub fn get(&self, id: SeriesId) -> Option<&Series> {
        self.series.get(id.index())
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MetricKind;

    static DESC: MetricDesc = MetricDesc {
        name: "test_metric_total",
        kind: MetricKind::Counter,
        unit: "",
        help: "test",
        labels: &["cpu", "mode", "Zed"],
        source: "test",
    };

    fn names(r: &Registry, id: SeriesId) -> Vec<(String, String)> {
        r.get(id).unwrap().labels.iter().map(|l| (l.name.to_string(), l.value.to_string())).collect()
    }

    #[test]
    fn labels_are_sorted_bytewise_with_name_and_host_labels() {
        let mut r = Registry::new([("instance".to_string(), "h1".to_string())]);
        let id = r.register(&DESC, &[("mode", "user"), ("cpu", "0"), ("Zed", "z")]);
        let got: Vec<String> = names(&r, id).into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, ["Zed", "__name__", "cpu", "instance", "mode"]);
    }

    #[test]
    fn same_labels_give_same_id_and_empty_values_are_dropped() {
        let mut r = Registry::new([("instance".to_string(), "h1".to_string())]);
        let a = r.register(&DESC, &[("cpu", "0"), ("mode", "")]);
        let b = r.register(&DESC, &[("cpu", "0")]);
        assert_eq!(a, b);
        assert_eq!(r.len(), 1);
        assert!(!names(&r, a).iter().any(|(n, _)| n == "mode"));
    }

    #[test]
    fn retired_ids_are_reused_only_after_quarantine_with_a_new_generation() {
        let mut r = Registry::new([]);
        let a = r.register(&DESC, &[("cpu", "0")]);
        r.retire(a);
        r.retire(a); // twice is harmless
        assert_eq!(r.live(), 0);
        // Within the quarantine: a new id, the old labels still readable.
        let b = r.register(&DESC, &[("cpu", "1")]);
        assert_ne!(a, b);
        assert!(names(&r, a).contains(&("cpu".into(), "0".into())));
        // After it: the id comes back with a bumped generation.
        r.free[0].1 -= REUSE_AFTER;
        let c = r.register(&DESC, &[("cpu", "2")]);
        assert_eq!(a, c);
        assert_eq!(r.get(c).unwrap().generation, 1);
        assert!(names(&r, c).contains(&("cpu".into(), "2".into())));
        assert_eq!(r.live(), 2);
        // Label values are shared, and those only the retired series used are dropped.
        assert!(!r.values.contains("0"));
        let d = r.register(&DESC, &[("cpu", "2"), ("mode", "user")]);
        let (lc, ld) = (&r.get(c).unwrap().labels, &r.get(d).unwrap().labels);
        let cpu = |l: &Vec<Label>| l.iter().find(|l| l.name == "cpu").unwrap().value.clone();
        assert!(Arc::ptr_eq(&cpu(lc), &cpu(ld)));
    }

    #[test]
    fn source_label_wins_over_host_label() {
        let mut r = Registry::new([("cpu".to_string(), "host".to_string())]);
        let id = r.register(&DESC, &[("cpu", "3")]);
        assert!(names(&r, id).contains(&("cpu".into(), "3".into())));
        assert_eq!(names(&r, id).iter().filter(|(n, _)| n == "cpu").count(), 1);
    }
}
