//! Small pieces every /proc parser shares: number parsing without allocation, the
//! report of malformed lines, and [`Tracked`], the table of things that come and go
//! (CPUs, interfaces, disks, mounts, tasks) with their series.

use hashbrown::HashMap;

use super::{Collector, ParseError};
use crate::model::SeriesId;

/// Malformed lines found by one parse; they were skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParseReport {
    pub bad_lines: u64,
    pub first_error: Option<ParseError>,
}

impl ParseReport {
    pub fn bad(&mut self, line: usize, field: &[u8], reason: &'static str) {
        self.bad_lines += 1;
        if self.first_error.is_none() {
            let field = String::from_utf8_lossy(&field[..field.len().min(32)]).into_owned();
            self.first_error = Some(ParseError { line, field, reason });
        }
    }

    /// Hand the report to the collector (counted in `lsvmi_source_parse_errors_total`).
    pub fn report_to(self, out: &mut Collector<'_>) {
        out.parse_errors(self.bad_lines, self.first_error);
    }
}

/// Decimal u64 without sign, spaces or overflow; `None` otherwise.
#[inline]
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    // Up to 19 digits cannot overflow (10^19 - 1 < 2^64): no overflow check per digit,
    // which halves the time of the digit loop (every /proc counter goes through here).
    // The rest (empty, 20 digits or more) is out of line, so this stays small enough
    // to be inlined into every parser.
    if s.is_empty() || s.len() > 19 {
        return parse_u64_long(s);
    }
    let mut v: u64 = 0;
    for &c in s {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + u64::from(d);
    }
    Some(v)
}

#[cold]
#[inline(never)]
fn parse_u64_long(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// CPU numbers at or above this are refused: Linux's NR_CPUS tops out at 8192, and
/// sources size per-CPU tables by the number, so one corrupt line such as
/// `cpu4294967295 …` must not become a table of four billion entries.
pub const MAX_CPUS: u32 = 8192;

/// A CPU number as /proc writes it (`3` of `cpu3` or `CPU3`), below [`MAX_CPUS`].
#[inline]
pub fn parse_cpu(s: &[u8]) -> Option<u32> {
    parse_u64(s).and_then(|n| u32::try_from(n).ok()).filter(|&n| n < MAX_CPUS)
}

/// Decimal i64 (a leading `-` allowed), as some /proc fields are signed.
#[inline]
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    match s.split_first() {
        Some((b'-', rest)) => parse_u64(rest).and_then(|v| 0i64.checked_sub_unsigned(v)),
        _ => parse_u64(s).and_then(|v| i64::try_from(v).ok()),
    }
}

/// An integer that may be unsigned 64-bit or negative (snmp's `MaxConn -1` beside
/// unsigned counters), as the f64 a sample carries.
#[inline]
pub fn parse_int(s: &[u8]) -> Option<f64> {
    parse_u64(s).map(|v| v as f64).or_else(|| parse_i64(s).map(|v| v as f64))
}

/// Hexadecimal u64 without prefix (/proc/net/softnet_stat).
#[inline]
pub fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// A decimal with an optional fraction (`0.53`, `12`), as in loadavg and pressure.
#[inline]
pub fn parse_decimal(s: &[u8]) -> Option<f64> {
    let (int, frac) = match s.iter().position(|&c| c == b'.') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[][..]),
    };
    let whole = parse_u64(int)? as f64;
    if frac.is_empty() {
        return Some(whole);
    }
    let f = parse_u64(frac)? as f64;
    Some(whole + f / 10f64.powi(i32::try_from(frac.len()).ok()?))
}

/// Whitespace-separated fields of a line.
#[inline]
pub fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|c| c.is_ascii_whitespace()).filter(|f| !f.is_empty())
}

/// The whitespace-separated field `n` (0-based) of a line and the text after it, or
/// `None` when the line has fewer fields.
#[inline]
pub fn split_fields(line: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    let mut at = 0;
    for i in 0..=n {
        let start = at + line[at..].iter().position(|c| !c.is_ascii_whitespace())?;
        let end = line[start..].iter().position(u8::is_ascii_whitespace).map_or(line.len(), |e| start + e);
        if i == n {
            return Some((&line[start..end], &line[end..]));
        }
        at = end;
    }
    None
}

/// The lines of `buf` (split at `\n`, as `split` would: a final newline leaves an empty
/// last line). The newline is found with `memchr`, which compares 16–32 bytes at a time:
/// a byte-by-byte split was half of the whole cycle of `/proc/interrupts` on a 256-CPU
/// host, whose rows are ~2.8 KB each (benches/parsers.rs, `source_cycle_256cpu`).
#[inline]
pub fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(buf);
    std::iter::from_fn(move || {
        let text = rest?;
        match memchr::memchr(b'\n', text) {
            Some(at) => {
                rest = Some(&text[at + 1..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// Lines with their 1-based numbers.
#[inline]
pub fn numbered_lines(buf: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    lines(buf).enumerate().map(|(i, l)| (i + 1, l))
}

/// A kernel task name (`comm`, NUL-padded to 16 bytes) as text.
pub fn comm(bytes: &[u8; 16]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    label(&bytes[..end])
}

/// Label text from /proc bytes (interface, disk and IRQ names are ASCII; anything else
/// is replaced rather than rejected).
pub fn label(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Things that come and go, each with the series registered for it.
///
/// `entry` marks a key as seen in this cycle (registering its series on first sight);
/// `sweep` ends the series of every key not seen since the last sweep, sending their
/// staleness markers. A steady-state lookup is one hash of the key, no allocation.
#[derive(Debug)]
pub struct Tracked<V> {
    map: HashMap<Box<[u8]>, (V, u64)>,
    cycle: u64,
    /// Keys seen for the first time / ended, since start (churn counters).
    pub appeared: u64,
    pub ended: u64,
}

impl<V> Default for Tracked<V> {
    fn default() -> Self {
        Tracked { map: HashMap::new(), cycle: 1, appeared: 0, ended: 0 }
    }
}

impl<V: SeriesIds> Tracked<V> {
    /// The value for `key`, created with `make` on first sight.
    pub fn entry(&mut self, key: &[u8], make: impl FnOnce() -> V) -> &mut V {
        let cycle = self.cycle;
        let appeared = &mut self.appeared;
        // entry_ref: the key is copied into a Box only when it is new.
        let (v, seen) = self.map.entry_ref(key).or_insert_with(|| {
            *appeared += 1;
            (make(), cycle)
        });
        *seen = cycle;
        v
    }

    /// The value for `key` if known, without marking it seen.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        self.map.get_mut(key).map(|(v, _)| v)
    }

    /// Mark `key` as seen without a value this cycle (its series stay, nothing is sent).
    pub fn touch(&mut self, key: &[u8]) {
        if let Some((_, seen)) = self.map.get_mut(key) {
            *seen = self.cycle;
        }
    }

    /// End the series of everything not seen since the previous sweep.
    pub fn sweep(&mut self, out: &mut Collector<'_>, ts_ms: i64) {
        let cycle = self.cycle;
        let mut ended = 0;
        self.map.retain(|_, (v, seen)| {
            if *seen == cycle {
                return true;
            }
            v.for_each_id(&mut |id| out.end_series(id, ts_ms));
            ended += 1;
            false
        });
        self.ended += ended;
        self.cycle += 1;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn for_each(&self, mut f: impl FnMut(&V)) {
        self.map.values().for_each(|(v, _)| f(v));
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A line of a table keyed by name (a disk, an interface), its values not parsed yet: a
/// source that skips unchanged rows ([`Memo`]) looks at `name` and `line` first.
pub struct Row<'a> {
    pub name: &'a [u8],
    /// The whole line, as [`Memo`] keeps it.
    pub line: &'a [u8],
    /// The text after the name: the values.
    pub values: &'a [u8],
    lineno: usize,
    report: &'a mut ParseReport,
}

impl<'a> Row<'a> {
    pub fn new(lineno: usize, line: &'a [u8], name: &'a [u8], values: &'a [u8], report: &'a mut ParseReport) -> Self {
        Row { name, line, values, lineno, report }
    }

    /// Report the row malformed (`field` is what to show of it); the caller skips it.
    pub fn bad(&mut self, field: &[u8], reason: &'static str) {
        self.report.bad(self.lineno, field, reason);
    }
}

/// A row's series, with the bytes the row was last parsed from and the series its
/// values went to: a row that reads the same as last time has the same values, so it
/// is not parsed again (see [`Tracked::unchanged`]). Most rows of the 100 ms files are
/// like that: idle disks and interfaces, softirq types that did not run.
#[derive(Debug)]
pub struct Memo<V> {
    pub ids: V,
    pub last: LastParse,
}

/// What a [`Memo`]'s row was last parsed from, and the series it pushed.
#[derive(Debug, Default)]
pub struct LastParse {
    row: Vec<u8>,
    pushed: Vec<SeriesId>,
}

impl<V> Memo<V> {
    pub fn new(ids: V) -> Self {
        Memo { ids, last: LastParse::default() }
    }
}

impl LastParse {
    /// A parse of the row begins: forget the last one.
    pub fn start(&mut self) {
        self.row.clear();
        self.pushed.clear();
    }

    /// Push a value of the row (as [`Collector::push`]) and note its series.
    #[inline]
    pub fn push(&mut self, out: &mut Collector<'_>, series: SeriesId, ts_ms: i64, value: f64) {
        self.pushed.push(series);
        out.push(series, ts_ms, value);
    }

    /// The row parsed completely: keep its bytes, so that the same bytes next time are
    /// not parsed again. (A row not marked so is parsed every time.)
    pub fn parsed(&mut self, row: &[u8]) {
        self.row.clear();
        self.row.extend_from_slice(row);
    }

    /// When `row` is what was last parsed and `out` allows it ([`Collector::repeats`]):
    /// send those of the series it pushed that are due for refresh, with their last
    /// values, and return true: the caller skips the row.
    pub fn repeat_if_same(&self, row: &[u8], out: &mut Collector<'_>, ts_ms: i64) -> bool {
        if !out.repeats() || self.row.is_empty() || self.row != row {
            return false;
        }
        for &id in &self.pushed {
            out.repeat(id, ts_ms);
        }
        true
    }
}

impl<V: SeriesIds> SeriesIds for Memo<V> {
    fn for_each_id(&self, f: &mut dyn FnMut(SeriesId)) {
        self.ids.for_each_id(f);
    }
}

impl<V: SeriesIds> Tracked<Memo<V>> {
    /// When `row` is what `key`'s row was last parsed from and `out` allows it
    /// ([`Collector::repeats`]): mark `key` seen, send those of the series it pushed
    /// that are due for refresh, with their last values, and return true: the caller
    /// skips the row. False otherwise (a new or changed row, or a collector that sends
    /// everything).
    pub fn unchanged(&mut self, key: &[u8], row: &[u8], out: &mut Collector<'_>, ts_ms: i64) -> bool {
        let Some((memo, seen)) = self.map.get_mut(key) else { return false };
        let same = memo.last.repeat_if_same(row, out, ts_ms);
        if same {
            *seen = self.cycle;
        }
        same
    }
}

/// What a [`Tracked`] value must expose: the series to end when its key disappears.
pub trait SeriesIds {
    fn for_each_id(&self, f: &mut dyn FnMut(SeriesId));
}

impl<const N: usize> SeriesIds for [SeriesId; N] {
    fn for_each_id(&self, f: &mut dyn FnMut(SeriesId)) {
        self.iter().copied().for_each(f);
    }
}

impl SeriesIds for Vec<SeriesId> {
    fn for_each_id(&self, f: &mut dyn FnMut(SeriesId)) {
        self.iter().copied().for_each(f);
    }
}

impl SeriesIds for Vec<Option<SeriesId>> {
    fn for_each_id(&self, f: &mut dyn FnMut(SeriesId)) {
        self.iter().flatten().copied().for_each(f);
    }
}

impl SeriesIds for SeriesId {
    fn for_each_id(&self, f: &mut dyn FnMut(SeriesId)) {
        f(*self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MetricDesc, MetricKind, Registry, STALE_NAN_BITS};

    static DESC: MetricDesc =
        MetricDesc { name: "g", kind: MetricKind::Gauge, unit: "", help: "", labels: &["k"], source: "t" };

    #[test]
    fn lines_split_as_split_does() {
        for text in ["", "\n", "a", "a\n", "a\nb", "a\n\nb\n", "\n\na"] {
            let ours: Vec<&[u8]> = lines(text.as_bytes()).collect();
            let split: Vec<&[u8]> = text.as_bytes().split(|&b| b == b'\n').collect();
            assert_eq!(ours, split, "{text:?}");
        }
        let numbered: Vec<(usize, &[u8])> = numbered_lines(b"x\ny").collect();
        assert_eq!(numbered, [(1, &b"x"[..]), (2, &b"y"[..])]);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"+1"), None);
        assert_eq!(parse_u64(b"007"), Some(7));
        // The longest that cannot overflow, and the 20-digit ones on the checked path.
        assert_eq!(parse_u64(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        assert_eq!(parse_u64(b"10000000000000000000"), Some(10_000_000_000_000_000_000));
        assert_eq!(parse_u64(b"99999999999999999999"), None);
        assert_eq!(parse_u64(b"123456789012345678x"), None);
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_hex(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_hex(b"0000002a"), Some(42));
        assert_eq!(parse_hex(b"0x1"), None);
        assert_eq!(parse_decimal(b"1.25"), Some(1.25));
        assert_eq!(parse_decimal(b"7"), Some(7.0));
        assert_eq!(parse_decimal(b"1."), Some(1.0));
        assert_eq!(parse_decimal(b".5"), None);
        assert_eq!(parse_decimal(b"1.2.3"), None);
    }

    #[test]
    fn tracked_ends_what_disappeared_once() {
        let mut reg = Registry::new([]);
        let mut samples = Vec::new();
        let mut t: Tracked<SeriesId> = Tracked::default();
        let mut out = Collector::new(&mut reg, &mut samples);
        for k in ["eth0", "eth1"] {
            let id = out.series(&DESC, &[("k", k)]);
            t.entry(k.as_bytes(), || id);
        }
        t.sweep(&mut out, 1);
        t.entry(b"eth0", || unreachable!());
        t.sweep(&mut out, 2);
        t.sweep(&mut out, 3);
        assert_eq!((t.appeared, t.ended, t.len()), (2, 2, 0));
        let stale: Vec<i64> = samples.iter().filter(|s| s.value.to_bits() == STALE_NAN_BITS).map(|s| s.ts_ms).collect();
        assert_eq!(stale, [2, 3]);
    }
}
