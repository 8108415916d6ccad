//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust BPF programs get no CO-RE relocations (rustc + bpf-linker do not emit them), so
//! a program that reads a kernel struct field takes the field's offset as a load-time
//! global, and this module finds it in the running kernel's own type information. aya
//! parses BTF too, but keeps its type lookup private; the format is small enough
//! (a header, a type section, a string section) to walk here in a few dozen lines.

use thiserror::Error;

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
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
    /// Byte offset in `types` of type id `i + 1`.
    starts: Vec<usize>,
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
        while at < types.len() {
            starts.push(at);
            let info = u32_at(types, at + 4).ok_or(BtfError::Truncated(at))?;
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16 | KIND_TYPE_TAG => 0,
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
        let start = *self.starts.get((id as usize).checked_sub(1)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `struct outer { int a; union { int b; struct { int x; int pid; }; }; }`
    /// with the anonymous members nested as the kernel's task_struct has them.
    fn blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0x\0pid\0int\0".to_vec();
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
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
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
}
