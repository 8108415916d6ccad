//! tracefs: where classic tracepoints describe themselves. Each event's `format` file
//! gives its record's fields with offsets and sizes, and its print format names the
//! values of enums (drop reasons, TCP states, softirq vectors). The network and softirq
//! programs read their fields at the offsets found here, so no layout is assumed.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use tracing::info;

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Find tracefs, mounting it at /sys/kernel/tracing when no mount exists (a minimal
/// host or a container may not have it, and classic tracepoints need it to attach).
pub fn ensure_mounted() -> Result<PathBuf, String> {
    if let Some(found) = CANDIDATES.iter().map(Path::new).find(|p| p.join("events").is_dir()) {
        return Ok(found.to_path_buf());
    }
    let target = Path::new(CANDIDATES[0]);
    let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let (src, dir, fstype) = (c("nodev")?, c(CANDIDATES[0])?, c("tracefs")?);
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe { libc::mount(src.as_ptr(), dir.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(format!(
            "tracefs is not mounted and mounting it at {} failed: {}",
            target.display(),
            io::Error::last_os_error()
        ));
    }
    info!("mounted tracefs at {} (classic tracepoints need it)", target.display());
    Ok(target.to_path_buf())
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub offset: u16,
    pub size: u16,
}

/// A parsed `events/<category>/<event>/format` file.
#[derive(Debug, Default)]
pub struct Format {
    pub fields: Vec<Field>,
    print_fmt: String,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, event: &str) -> io::Result<Format> {
        Ok(Format::parse(&fs::read_to_string(tracefs.join("events").join(category).join(event).join("format"))?))
    }

    /// Lines like `\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;` and one
    /// `print fmt: ...` line; anything else is ignored, malformed fields are skipped.
    pub fn parse(text: &str) -> Format {
        let mut out = Format::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("print fmt:") {
                out.print_fmt = rest.trim().to_string();
            } else if let Some(field) = parse_field(line) {
                out.fields.push(field);
            }
        }
        out
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn offset(&self, name: &str) -> Option<u16> {
        self.field(name).map(|f| f.offset)
    }

    /// The names `__print_symbolic(REC->field, { 1, "NAME" }, ...)` gives the values of
    /// `field`, in the order written.
    pub fn symbols(&self, field: &str) -> Vec<(u64, String)> {
        let needle = format!("__print_symbolic(REC->{field},");
        let Some(start) = self.print_fmt.find(&needle) else { return Vec::new() };
        let mut rest = &self.print_fmt[start + needle.len()..];
        let mut out = Vec::new();
        // Each entry: `{ <number>, "<name>" }`; the list ends at the first `)` outside one.
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            let Some(body) = rest.strip_prefix('{') else { break };
            let Some(end) = body.find('}') else { break };
            let (entry, after) = (&body[..end], &body[end + 1..]);
            rest = after;
            let Some((num, name)) = entry.split_once(',') else { continue };
            let num = num.trim();
            let value = match num.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => num.parse().ok(),
            };
            if let Some(value) = value {
                out.push((value, name.trim().trim_matches('"').to_string()));
            }
        }
        out
    }
}

fn parse_field(line: &str) -> Option<Field> {
    let mut decl = None;
    let (mut offset, mut size) = (None, None);
    for part in line.split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d);
        } else if let Some(o) = part.strip_prefix("offset:") {
            offset = o.trim().parse().ok();
        } else if let Some(s) = part.strip_prefix("size:") {
            size = s.trim().parse().ok();
        }
    }
    // `__u8 saddr[4]` → `saddr`; `__data_loc char[] name` → `name`.
    let last = decl?.split_whitespace().last()?;
    let name = last.split('[').next().filter(|n| !n.is_empty())?;
    Some(Field { name: name.to_string(), offset: offset?, size: size? })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRANSMIT: &str = "name: tcp_retransmit_skb\nID: 1519\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;\n\
\tfield:garbage\n\
\n\
print fmt: \"state=%s\", __print_symbolic(REC->state, { TCP_ESTABLISHED, \"x\" }, { 1, \"TCP_ESTABLISHED\" }, { 0x2, \"TCP_SYN_SENT\" }), REC->skaddr\n";

    #[test]
    fn parses_fields_and_symbols() {
        let f = Format::parse(RETRANSMIT);
        assert_eq!(f.offset("state"), Some(24));
        assert_eq!(f.field("saddr_v6"), Some(&Field { name: "saddr_v6".into(), offset: 42, size: 16 }));
        assert_eq!(f.offset("garbage"), None);
        assert_eq!(f.symbols("state"), vec![(1, "TCP_ESTABLISHED".into()), (2, "TCP_SYN_SENT".into())]);
        assert!(f.symbols("family").is_empty());
    }

    #[test]
    fn this_kernel_has_the_fields_we_read() {
        let root = match ensure_mounted() {
            Ok(root) => root,
            Err(e) => {
                eprintln!("skipping: tracefs is not available here ({e})");
                return;
            }
        };
        let f = Format::read(&root, "skb", "kfree_skb").unwrap();
        assert!(f.offset("reason").is_some());
        assert!(f.symbols("reason").iter().any(|(_, n)| n == "NOT_SPECIFIED"));
    }
}
