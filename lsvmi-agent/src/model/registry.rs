//! The series table: label sets stored once (in wire form, see [`super::labels`]),
//! referenced by [`SeriesId`] afterwards. This is also the one place where host labels
//! (`instance`, user labels) are added; they and `__name__` are shared by all sets
//! ([`SharedLabels`]).

use std::{
    collections::VecDeque,
    hash::BuildHasher as _,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{
    MetricDesc, SeriesId,
    labels::{LabelSet, Labels, SharedLabels},
};

/// A registered series: its metric and its full label set (with `__name__`).
#[derive(Debug)]
pub struct Series {
    pub desc: &'static MetricDesc,
    /// Sorted bytewise by name, names unique, no empty values (the remote-write rules),
    /// in wire form with shared labels as references: read it through the registry.
    labels: LabelSet,
    /// Bumped each time the id is reused for another label set, so tables keyed by
    /// [`SeriesId`] (the trigger engine's roles) know to refresh.
    pub generation: u32,
    /// Length of the labels on the wire (shared ones resolved).
    wire_len: u32,
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
    /// Put on every series; names leaked once at start-up (they live as long as the process).
    host_labels: Vec<(&'static str, String)>,
    /// `__name__` and host labels, kept once for all sets.
    shared: SharedLabels,
    series: Vec<Series>,
    /// Live series by the hash of their label set. The labels themselves are stored once,
    /// in `series`.
    index: HashTable<SeriesId>,
    hasher: DefaultHashBuilder,
    /// Retired ids, oldest first, with the instant they were retired.
    free: VecDeque<(SeriesId, Instant)>,
    /// Scratch for the label set being registered.
    scratch: Vec<u8>,
}

impl Series {
    /// Length of the labels on the wire: what [`Registry::write_labels`] appends.
    pub fn wire_len(&self) -> usize {
        self.wire_len as usize
    }
}

impl Registry {
    /// `host_labels` are put on every series (a source's own label of the same name wins).
    pub fn new(host_labels: impl IntoIterator<Item = (String, String)>) -> Self {
        let host_labels = host_labels
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(name, value)| (&*Box::leak(name.into_boxed_str()), value))
            .collect();
        Registry { host_labels, ..Default::default() }
    }

    pub fn shared(self) -> SharedRegistry {
        Arc::new(RwLock::new(self))
    }

    /// The id of the series `desc{labels}`, registering it on first sight.
    /// Labels with empty values are dropped (remote-write forbids them).
    pub fn register(&mut self, desc: &'static MetricDesc, labels: &[(&'static str, &str)]) -> SeriesId {
        // (name, value, shared?)
        let mut set: Vec<(&str, &str, bool)> = Vec::with_capacity(1 + labels.len() + self.host_labels.len());
        set.push(("__name__", desc.name, true));
        set.extend(labels.iter().filter(|(_, v)| !v.is_empty()).map(|(n, v)| (*n, *v, false)));
        for (name, value) in &self.host_labels {
            if !set.iter().any(|(n, ..)| n == name) {
                set.push((name, value, true));
            }
        }
        // Stable: of duplicate names from one source (a bug in that source), the first stays.
        set.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        set.dedup_by(|b, a| a.0 == b.0);
        self.scratch.clear();
        let mut wire_len = 0;
        for &(name, value, shared) in &set {
            if shared {
                wire_len += self.shared.encode_ref(name, value, &mut self.scratch);
            } else {
                let at = self.scratch.len();
                super::labels::encode_sorted(&[(name, value)], &mut self.scratch);
                wire_len += self.scratch.len() - at;
            }
        }
        // A label set over 4 GiB cannot be built in the first place.
        let wire_len = u32::try_from(wire_len).unwrap_or(u32::MAX);
        let hash = self.hasher.hash_one(&self.scratch[..]);
        let (series, scratch) = (&self.series, &self.scratch);
        if let Some(id) = self.index.find(hash, |id| series[id.index()].labels.as_bytes() == &scratch[..]) {
            return *id;
        }
        let labels = LabelSet::from_encoded(&self.scratch);
        let id = match self.free.front() {
            Some(&(id, retired)) if retired.elapsed() >= REUSE_AFTER => {
                self.free.pop_front();
                let slot = &mut self.series[id.index()];
                *slot = Series { desc, labels, generation: slot.generation.wrapping_add(1), wire_len };
                id
            }
            _ => {
                // u32 ids: over four billion series would exhaust memory long before this.
                let id = SeriesId(u32::try_from(self.series.len()).unwrap_or(u32::MAX));
                self.series.push(Series { desc, labels, generation: 0, wire_len });
                id
            }
        };
        let (series, hasher) = (&self.series, &self.hasher);
        self.index.insert_unique(hash, id, |id| hasher.hash_one(series[id.index()].labels.as_bytes()));
        id
    }

    /// The series has ended (process exited, interface removed). Its labels stay readable
    /// for samples still in flight; the id is reused for a new series after a quarantine,
    /// which keeps the table bounded under pid churn. Registering the same labels again
    /// gives a fresh id.
    pub fn retire(&mut self, id: SeriesId) {
        let Some(series) = self.series.get(id.index()) else { return };
        let hash = self.hasher.hash_one(series.labels.as_bytes());
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

    /// The labels of `series`, `(name, value)` in wire order (`__name__` included).
    pub fn labels<'a>(&'a self, series: &'a Series) -> Labels<'a> {
        series.labels.iter(&self.shared)
    }

    /// The value of label `name` of `series`.
    pub fn label<'a>(&'a self, series: &'a Series, name: &str) -> Option<&'a str> {
        series.labels.get(&self.shared, name)
    }

    /// Append the remote-write bytes of `series`' labels (its [`Series::wire_len`]).
    pub(crate) fn write_labels(&self, series: &Series, out: &mut Vec<u8>) {
        series.labels.write_wire(&self.shared, out);
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
        r.labels(r.get(id).unwrap()).map(|(n, v)| (n.to_string(), v.to_string())).collect()
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
        // The reused id's old labels are gone with it.
        assert!(!names(&r, c).contains(&("cpu".into(), "0".into())));
    }

    #[test]
    fn name_and_host_labels_are_kept_once_and_resolved_on_the_wire() {
        let mut r = Registry::new([("instance".to_string(), "h1".to_string())]);
        let a = r.register(&DESC, &[("cpu", "0")]);
        let _ = r.register(&DESC, &[("cpu", "1")]);
        let mut wire = Vec::new();
        r.write_labels(r.get(a).unwrap(), &mut wire);
        let mut expected = Vec::new();
        crate::model::labels::encode_sorted(
            &[("__name__", "test_metric_total"), ("cpu", "0"), ("instance", "h1")],
            &mut expected,
        );
        assert_eq!(wire, expected);
        assert_eq!(r.get(a).unwrap().wire_len(), expected.len());
        assert_eq!(r.shared.len(), 2);
        assert_eq!(r.label(r.get(a).unwrap(), "instance"), Some("h1"));
    }

    #[test]
    fn source_label_wins_over_host_label() {
        let mut r = Registry::new([("cpu".to_string(), "host".to_string())]);
        let id = r.register(&DESC, &[("cpu", "3")]);
        assert!(names(&r, id).contains(&("cpu".into(), "3".into())));
        assert_eq!(names(&r, id).iter().filter(|(n, _)| n == "cpu").count(), 1);
    }
}
