//! Least privilege: the agent needs four capabilities, and keeps no more.
//!
//! Measured on kernel 6.18 (docs/deployment.md): `CAP_BPF` + `CAP_PERFMON` load and
//! attach the tp_btf and raw tracepoint programs and their ring buffers; the classic
//! tracepoints (the network programs) also need tracefs, whose directory is 0700:
//! `CAP_DAC_READ_SEARCH`; other users' `/proc/<pid>/io` needs `CAP_DAC_READ_SEARCH` +
//! `CAP_SYS_PTRACE`. qdisc statistics over netlink need none, and `CAP_SYS_ADMIN` is not
//! needed at all (without it a deep-tracing session estimates its cost from run counts
//! instead of the kernel's timing).
//!
//! Started as root (or with more), the agent keeps exactly these once its BPF object is
//! loaded — deep-tracing sessions load programs later with them — and drops every other
//! capability from its sets and its bounding set, so nothing it starts regains them.
//! Capabilities are per thread: [`reduce`] runs before any thread but the main one
//! exists. Started with fewer, it says in one line each what it goes without.

use rustix::thread::{
    CapabilitySet as Cap, CapabilitySets, capabilities, capability_is_in_bounding_set, clear_ambient_capability_set,
    remove_capability_from_bounding_set, set_capabilities,
};

/// What the agent uses, its name, and what goes without it.
pub const NEEDED: [(Cap, &str, &str); 4] = [
    (Cap::BPF, "CAP_BPF", "no eBPF: scheduler, softirq and network programs, hindsight and deep tracing are off"),
    (Cap::PERFMON, "CAP_PERFMON", "no eBPF programs can attach: scheduler, softirq and network programs are off"),
    (
        Cap::DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        "tracefs is unreadable (the network programs stay off) and so is other users' /proc/<pid>/io",
    ),
    (Cap::SYS_PTRACE, "CAP_SYS_PTRACE", "other users' /proc/<pid>/io is unreadable: their I/O counters are left out"),
];

/// Keep only what the agent needs (all four with `bpf`, else the two for /proc) and say
/// what is missing; the lines to log, as (is a warning, text).
pub fn reduce(bpf: bool) -> Vec<(bool, String)> {
    let wanted: Cap = NEEDED
        .iter()
        .filter(|(c, ..)| bpf || !matches!(*c, Cap::BPF | Cap::PERFMON))
        .fold(Cap::empty(), |a, (c, ..)| a | *c);
    let Ok(now) = capabilities(None) else {
        return vec![(true, "capabilities: cannot read this process's own (capget); kept as they are".into())];
    };
    let keep = now.permitted & wanted;
    let mut lines = Vec::new();
    let extra = now.permitted - wanted;
    if !extra.is_empty() {
        // Others in the bounding set go too (needs CAP_SETPCAP, which root has): nothing
        // the agent starts (its statfs helper) can regain them by exec.
        for bit in 0..64 {
            let c = Cap::from_bits_retain(1u64 << bit);
            if !wanted.contains(c) && capability_is_in_bounding_set(c).unwrap_or(false) {
                let _ = remove_capability_from_bounding_set(c);
            }
        }
        let _ = clear_ambient_capability_set();
        let sets = CapabilitySets { effective: keep, permitted: keep, inheritable: Cap::empty() };
        match set_capabilities(None, sets) {
            Ok(()) => lines.push((false, format!("capabilities: kept {}; every other one dropped", names(keep)))),
            Err(e) => {
                lines.push((true, format!("capabilities: could not drop the unneeded ones ({e}); running with them")))
            }
        }
    }
    for (cap, name, without) in NEEDED {
        if wanted.contains(cap) && !keep.contains(cap) {
            lines.push((true, format!("without {name}: {without}")));
        }
    }
    lines
}

fn names(set: Cap) -> String {
    let n: Vec<&str> = NEEDED.iter().filter(|(c, ..)| set.contains(*c)).map(|(_, name, _)| *name).collect();
    if n.is_empty() { "none".into() } else { n.join(", ") }
}

/// Threads of this process now (capabilities set by [`reduce`] cover only the caller).
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1)
}
