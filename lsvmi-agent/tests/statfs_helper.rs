//! The statfs helper as the agent runs it: the real binary with `--statfs-helper`.

use std::time::Duration;

use lsvmi::sources::mounts::statfs::{HELPER_FLAG, Prober};

#[test]
fn the_agent_binary_answers_statfs_for_each_path_in_order() {
    let mut p = Prober::with_command(env!("CARGO_BIN_EXE_lsvmi"), [HELPER_FLAG]);
    let paths = vec!["/".to_string(), "/nonexistent/lsvmi".to_string(), "/proc".to_string()];
    let mut got = Vec::new();
    // Generous: the first round also starts the helper.
    let ev = p.stat_all(&paths, Duration::from_secs(10), |i, a| got.push((i, a))).expect("helper");
    assert!(ev.stuck.is_empty(), "{ev:?}");
    assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(got[0].1.is_ok_and(|s| s.blocks > 0 && s.frsize > 0), "{:?}", got[0]);
    assert_eq!(got[1].1, Err(libc::ENOENT));
    // The same helper serves the next round.
    let mut n = 0;
    p.stat_all(&paths, Duration::from_secs(10), |_, _| n += 1).expect("helper");
    assert_eq!(n, 3);
}
