//! Property-based fuzzing of every /proc parser: arbitrary bytes, and /proc-shaped text
//! with random damage (truncation, garbage tokens, huge numbers). The only property is
//! the one that matters in production: no panic, whatever the kernel (or a broken
//! capture) hands us. Runs in `cargo xtask test`; PROPTEST_CASES raises the count.

use lsvmi::bpf::{btf, tracefs};
use lsvmi::sources::{
    cpu_table, diskstats, host, keyed, loadavg, mounts, net_dev, net_snmp, pressure,
    proc_stat::parse::{self as proc_stat, ProcStat},
    processes::parse as task,
    softnet,
};
use proptest::prelude::*;

/// Run every parser over `buf`.
fn all_parsers(buf: &[u8]) {
    let mut stat = ProcStat::default();
    let _ = proc_stat::parse(buf, &mut stat);
    let mut table = cpu_table::CpuTable::default();
    let _ = cpu_table::parse(buf, &mut table, |row| {
        let _ = row.per_cpu().count();
    });
    let _ = keyed::split_line(buf);
    let _ = net_snmp::parse(buf, |_, _, _| {});
    let _ = net_dev::parse(buf, |_, _| {});
    let _ = softnet::parse(buf, |_, _, _| {});
    let _ = diskstats::parse(buf, |_, _, _| {});
    let _ = loadavg::parse(buf);
    let _ = pressure::parse(buf);
    let _ = mounts::parse(buf, |_| {});
    let _ = task::parse_stat(buf);
    let _ = task::parse_status(buf);
    let _ = task::parse_io(buf);
    let _ = task::parse_schedstat(buf);
    let _ = task::parse_cmdline(buf, 16);
    let _ = task::parse_cgroup(buf);
    let _ = host::parse_cpu_list(&String::from_utf8_lossy(buf));
    // Kernel self-descriptions read before loading BPF: tracefs formats and BTF.
    let format = tracefs::Format::parse(&String::from_utf8_lossy(buf));
    let _ = format.symbols("reason");
    let _ = format.offset("state");
    if let Ok(btf) = btf::Btf::parse(buf) {
        let _ = btf.member_offset("task_struct", "pid");
    }
}

/// Real captures to damage.
const SEEDS: &[&str] = &[
    include_str!("../../testdata/tracefs/debian12-6.18/events/skb/kfree_skb/format"),
    include_str!("../../testdata/tracefs/debian12-6.18/events/tcp/tcp_send_reset/format"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/stat"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/interrupts"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/softirqs"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/net/dev"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/net/snmp"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/net/netstat"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/net/softnet_stat"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/diskstats"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/meminfo"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/loadavg"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/pressure/cpu"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/self/mountinfo"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/1/stat"),
    include_str!("../../testdata/proc/debian12-6.18-2cpu/1/status"),
];

/// A seed with random edits: splice in a nasty token, then cut somewhere in the back half.
fn damaged() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"18446744073709551616".to_vec()),
        Just(b"-9223372036854775809".to_vec()),
        Just(b"ffffffffffffffffff".to_vec()),
        Just(b"(".to_vec()),
        Just(b")".to_vec()),
        Just(b":".to_vec()),
        Just(b"-".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\\0".to_vec()),
        Just(vec![0xff, 0xfe]),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    (0..SEEDS.len(), any::<prop::sample::Index>(), any::<prop::sample::Index>(), token).prop_map(
        |(seed, at, cut, token)| {
            let mut b = SEEDS[seed].as_bytes().to_vec();
            let at = at.index(b.len() + 1);
            b.splice(at..at, token);
            let cut = cut.index(b.len() + 1);
            b.truncate(cut.max(b.len() / 2));
            b
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        all_parsers(&buf);
    }

    #[test]
    fn damaged_captures_never_panic(buf in damaged()) {
        all_parsers(&buf);
    }

    #[test]
    fn proc_like_lines_never_panic(lines in proptest::collection::vec("[a-zA-Z0-9_:() \\-/.=]{0,60}", 0..20)) {
        all_parsers(lines.join("\n").as_bytes());
    }
}
