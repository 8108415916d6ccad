//! One log line for an error chain: each cause's first line, joined with `: `, a cause
//! that only repeats the one before it left out. Each context adds its own hint on top
//! (the BPF loader speaks of capabilities, the HTTP sender of firewalls).

use std::{error::Error, io};

/// The error and its causes, outermost first.
pub fn causes<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

/// Add `text`'s first non-empty line to `parts`, unless a part already says it.
pub fn push_first_line(parts: &mut Vec<String>, text: &str) {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    if !first.is_empty() && !parts.iter().any(|p| p.contains(first)) {
        parts.push(first.to_string());
    }
}

/// Whether a cause is the kernel saying "not permitted" (EPERM or EACCES).
pub fn is_denied(err: &(dyn Error + 'static)) -> bool {
    err.downcast_ref::<io::Error>().is_some_and(|e| matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("sending to vm:8428\nsecond line")]
    struct Outer(#[source] io::Error);

    #[test]
    fn first_lines_joined_repeats_dropped_and_denial_found() {
        let err = Outer(io::Error::from_raw_os_error(libc::EPERM));
        let mut parts = Vec::new();
        let mut denied = false;
        for e in causes(&err) {
            push_first_line(&mut parts, &e.to_string());
            denied |= is_denied(e);
        }
        push_first_line(&mut parts, "sending to vm:8428");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "sending to vm:8428");
        assert!(denied);
    }
}
