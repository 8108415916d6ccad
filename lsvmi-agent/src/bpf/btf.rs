//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust BPF programs get no CO-RE relocations (rustc + bpf-linker do not emit them), so
//! a program that reads a kernel struct field takes the field's offset as a load-time
//! global, and this module finds it in the running kernel's own type information. aya
//! parses BTF too, but keeps its type lookup private; the format is small enough
//! (a header, a type section, a string section) to walk here in a few dozen lines.
//!
//! The same walk gives the type ids of the `btf_trace_<tracepoint>` typedefs, which is
//! all a tp_btf program needs from the kernel's BTF to load. aya takes that id from a
//! fully parsed [`aya::Btf`]: the kernel's 5.5 MB of BTF become ~28 MB of heap, which
//! was the agent's whole peak memory. [`TracepointIds::skeleton`] hands aya a BTF that
//! holds only the typedefs asked for, each at its kernel id (the ids before it are
//! 12-byte placeholders): the lookup answers the same, for a few hundred KB.

use thiserror::Error;

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Error, PartialEq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or truncated header)")]
    BadHeader,
    #[error("BTF type section truncated at byte {0}")]
    Truncated(usize),
    #[error("BTF type kind {0} unknown to lsvmi")]
    UnknownKind(u32),
    #[error("struct {0} not in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {0} has no member {1}")]
    NoMember(String, String),
}

/// One parsed BTF blob: where each type starts, and the string section.
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte offset in `types` of type id `i + 1` (u32: the kernel's BTF has ~130k types).
    starts: Vec<u32>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0) != Some(MAGIC) {
            return Err(BtfError::BadHeader);
        }
        let field = |i: usize| u32_at(data, 4 + 4 * i).map(|v| v as usize).ok_or(BtfError::BadHeader);
        let (hdr_len, type_off, type_len, str_off, str_len) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let section = |off: usize, len: usize| {
            hdr_len.checked_add(off).and_then(|s| data.get(s..s.checked_add(len)?)).ok_or(BtfError::BadHeader)
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut starts = Vec::new();
        let mut at = 0;
        if u32::try_from(types.len()).is_err() {
            return Err(BtfError::BadHeader);
        }
        while at < types.len() {
            starts.push(at as u32);
            let info = u32_at(types, at + 4).ok_or(BtfError::Truncated(at))?;
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16 | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::UnknownKind(other)),
            };
            at += 12 + extra;
        }
        if at != types.len() {
            return Err(BtfError::Truncated(at));
        }
        Ok(Btf { types, strings, starts })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// (name_off, kind, vlen, kind_flag, size_or_type, start) of type `id`.
    fn ty(&self, id: u32) -> Option<(u32, u32, usize, bool, u32, usize)> {
        let start = *self.starts.get((id as usize).checked_sub(1)?)? as usize;
        let info = u32_at(self.types, start + 4)?;
        Some((
            u32_at(self.types, start)?,
            (info >> 24) & 0x1f,
            (info & 0xffff) as usize,
            info >> 31 == 1,
            u32_at(self.types, start + 8)?,
            start,
        ))
    }

    /// Follow typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some((_, KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG, _, _, next, _)) => {
                    id = next
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in `struct name`, looking inside anonymous struct and
    /// union members as C does.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = (1..=self.starts.len() as u32)
            .find(|&id| {
                matches!(self.ty(id), Some((n, KIND_STRUCT, vlen, ..)) if vlen > 0 && self.name(n) == name.as_bytes())
            })
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        self.find_member(id, member.as_bytes(), 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(name.into(), member.into()))
    }

    /// The id of every `btf_trace_<tracepoint>` typedef: the attach points of tp_btf
    /// programs.
    pub fn tracepoint_ids(&self) -> TracepointIds {
        const PREFIX: &[u8] = b"btf_trace_";
        let mut found: Vec<(&[u8], u32)> = (1..=self.starts.len() as u32)
            .filter_map(|id| match self.ty(id) {
                Some((n, KIND_TYPEDEF, ..)) => self.name(n).strip_prefix(PREFIX).map(|tp| (tp, id)),
                _ => None,
            })
            .collect();
        found.sort_unstable();
        let mut ids = TracepointIds::default();
        for (tp, id) in found {
            ids.index.push((ids.names.len() as u32, tp.len() as u32, id));
            ids.names.push_str(&String::from_utf8_lossy(tp));
        }
        ids.names.shrink_to_fit();
        ids.index.shrink_to_fit();
        ids
    }

    fn find_member(&self, id: u32, member: &[u8], depth: u32) -> Option<u32> {
        let (_, kind, vlen, kind_flag, _, start) = self.ty(id)?;
        if !matches!(kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for i in 0..vlen {
            let m = start + 12 + 12 * i;
            let (name_off, ty, raw) = (u32_at(self.types, m)?, u32_at(self.types, m + 4)?, u32_at(self.types, m + 8)?);
            let bits = if kind_flag { raw & 0xff_ffff } else { raw };
            let name = self.name(name_off);
            if name == member {
                return Some(bits);
            }
            if name.is_empty()
                && let Some(inner) = self.find_member(self.resolve(ty), member, depth + 1)
            {
                return Some(bits + inner);
            }
        }
        None
    }
}

/// The kernel's BTF id of each tracepoint's `btf_trace_` typedef, kept (~50 KB for the
/// ~1 600 tracepoints of a 6.x kernel) so that sessions load tp_btf programs without
/// reading the kernel's BTF again.
#[derive(Default, Debug)]
pub struct TracepointIds {
    /// Every tracepoint name, concatenated in sorted order.
    names: String,
    /// (start in `names`, length, type id), sorted by name.
    index: Vec<(u32, u32, u32)>,
}

impl TracepointIds {
    /// The id of `btf_trace_<tracepoint>`.
    pub fn get(&self, tracepoint: &str) -> Option<u32> {
        let name = |&(at, len, _): &(u32, u32, u32)| &self.names[at as usize..(at + len) as usize];
        let i = self.index.binary_search_by(|e| name(e).cmp(tracepoint)).ok()?;
        Some(self.index[i].2)
    }

    /// A BTF blob that aya can parse and that answers "which id is
    /// `btf_trace_<tp>`?" as the kernel's does, for each of `tracepoints`: their typedefs
    /// at their kernel ids, every id below the highest a `void *` placeholder. Nothing
    /// else in it (no structs): it serves only to name attach points. A tracepoint this
    /// kernel lacks is left out, so that loading its program alone fails, saying so.
    pub fn skeleton(&self, tracepoints: &[&str]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut wanted: Vec<(u32, u32)> = Vec::with_capacity(tracepoints.len());
        for tp in tracepoints {
            let Some(id) = self.get(tp) else { continue };
            wanted.push((id, strings.len() as u32));
            strings.extend_from_slice(b"btf_trace_");
            strings.extend_from_slice(tp.as_bytes());
            strings.push(0);
        }
        wanted.sort_unstable();
        let last = wanted.last().map_or(0, |w| w.0);
        let mut types = Vec::with_capacity(12 * last as usize);
        let mut next = wanted.iter().peekable();
        for id in 1..=last {
            let mut words = [0, KIND_PTR << 24, 0];
            while let Some(&&(at, name)) = next.peek()
                && at == id
            {
                words = [name, KIND_TYPEDEF << 24, 0];
                next.next();
            }
            words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        }
        blob(&types, &strings)
    }
}

/// A BTF blob from its type and string sections.
fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + types.len() + strings.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[1, 0]);
    for w in [24, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(types);
    out.extend_from_slice(strings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `struct outer { int a; union { int b; struct { int x; int pid; }; }; }`
    /// with the anonymous members nested as the kernel's task_struct has them.
    fn blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0x\0pid\0int\0btf_trace_foo\0btf_trace_bar\0".to_vec();
        let s = |name: &str| {
            strings
                .windows(name.len() + 1)
                .position(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
                .unwrap() as u32
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct { int x; int pid; } (anonymous)
        push(&[0, KIND_STRUCT << 24 | 2, 8, s("x"), 1, 0, s("pid"), 1, 32]);
        // 3: union { int b; struct 2; } (anonymous)
        push(&[0, KIND_UNION << 24 | 2, 8, s("b"), 1, 0, 0, 2, 0]);
        // 4: typedef of 3, to check resolve()
        push(&[0, KIND_TYPEDEF << 24, 3]);
        // 5: struct outer { int a; <typedef 4> at byte 8; }
        push(&[s("outer"), KIND_STRUCT << 24 | 2, 16, s("a"), 1, 0, 0, 4, 64]);
        // 6, 7: the attach points of two tracepoints
        push(&[s("btf_trace_foo"), KIND_TYPEDEF << 24, 1]);
        push(&[s("btf_trace_bar"), KIND_TYPEDEF << 24, 1]);
        super::blob(&types, &strings)
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let data = blob();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Ok(0));
        assert_eq!(btf.member_offset("outer", "b"), Ok(8));
        assert_eq!(btf.member_offset("outer", "pid"), Ok(12));
        assert_eq!(btf.member_offset("outer", "nope"), Err(BtfError::NoMember("outer".into(), "nope".into())));
        assert_eq!(btf.member_offset("inner", "pid"), Err(BtfError::NoStruct("inner".into())));
    }

    #[test]
    fn the_skeleton_names_attach_points_at_their_ids_for_aya() {
        let data = blob();
        let ids = Btf::parse(&data).unwrap().tracepoint_ids();
        assert_eq!((ids.get("foo"), ids.get("bar"), ids.get("baz")), (Some(6), Some(7), None));
        let skeleton = ids.skeleton(&["bar", "baz", "foo"]);
        let aya = aya::Btf::parse(&skeleton, aya::Endianness::default()).unwrap();
        let id = |tp: &str| aya.id_by_type_name_kind(tp, aya_obj::btf::BtfKind::Typedef);
        assert_eq!((id("btf_trace_foo").unwrap(), id("btf_trace_bar").unwrap()), (6, 7));
        assert!(id("btf_trace_baz").is_err(), "a tracepoint the kernel lacks fails only its own load");
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(Btf::parse(b"").err(), Some(BtfError::BadHeader));
        let mut data = blob();
        data.truncate(40);
        assert!(Btf::parse(&data).is_err());
        for cut in 0..blob().len() {
            let _ = Btf::parse(&blob()[..cut]);
        }
    }

    /// On a kernel with BTF: task_struct.tgid follows pid (both pid_t), as in every
    /// kernel since BTF exists.
    #[test]
    fn the_running_kernel_has_task_struct_pid() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("skipping: this kernel has no /sys/kernel/btf/vmlinux");
            return;
        };
        let btf = Btf::parse(&data).unwrap();
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        assert!(pid > 0);
        assert_eq!(btf.member_offset("task_struct", "tgid").unwrap(), pid + 4);
    }

    /// The skeleton gives aya the ids its own full parse of the kernel's BTF gives.
    #[test]
    fn the_skeleton_agrees_with_ayas_parse_of_the_running_kernel() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("skipping: this kernel has no /sys/kernel/btf/vmlinux");
            return;
        };
        let ids = Btf::parse(&data).unwrap().tracepoint_ids();
        let tps = ["sched_switch", "sched_migrate_task", "softirq_entry", "irq_handler_exit", "block_rq_issue"];
        let full = aya::Btf::parse(&data, aya::Endianness::default()).unwrap();
        let skeleton = aya::Btf::parse(&ids.skeleton(&tps), aya::Endianness::default()).unwrap();
        for tp in tps {
            let typedef = format!("btf_trace_{tp}");
            let id = |btf: &aya::Btf| btf.id_by_type_name_kind(&typedef, aya_obj::btf::BtfKind::Typedef).unwrap();
            assert_eq!(id(&skeleton), id(&full), "{tp}");
        }
    }
}
