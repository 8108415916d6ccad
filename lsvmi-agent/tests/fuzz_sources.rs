//! Source-level fuzzing: damaged copies of a captured /proc tree, read by every procfs
//! source through `--procfs-root` and its real `collect`, on the sampler's own path.
//! Parser fuzzing (fuzz_parsers.rs) cannot see what a source does with a parsed value:
//! index a table by a CPU number, size a vector, unescape a path. The property is the
//! one production needs: no panic and no allocation blow-up, whatever the files say.
//! Runs in `cargo xtask test`; PROPTEST_CASES raises the count.
#![allow(clippy::unwrap_used, reason = "test set-up: a failed step should fail the test")]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::Parser as _;
use lsvmi::{
    agent,
    cli::Cli,
    config::Config,
    model::Registry,
    sampler::{Sampler, Schedule},
    stats::Stats,
};
use proptest::prelude::*;

fn captured() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/proc/debian12-6.18-2cpu")
}

fn copy_tree(from: &Path, to: &Path, files: &mut Vec<PathBuf>) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst, files);
        } else {
            std::fs::copy(&src, &dst).unwrap();
            files.push(dst);
        }
    }
}

/// What a broken kernel, a broken capture or a hostile container could put in a file.
const HOSTILE: &[&str] = &[
    "cpu4000000000 1 2 3 4 5 6 7 8 9 10\n",
    "           CPU0 CPU4294967295 CPU8192\n",
    "36 35 98:0 / /mnt/a\\777b rw - ext4 /dev/x\\400 rw\n",
    "18446744073709551616",
    "4000000000",
    "-1",
    "\0\0\0\0",
    " : : : \n",
    "some avg10=1 avg60=1 avg300=1 extra=1\n",
    "\n\n\n",
];

/// One random change to one file.
fn damage(rng: &mut fastrand::Rng, files: &[PathBuf]) {
    if files.is_empty() {
        return;
    }
    let path = &files[rng.usize(..files.len())];
    let Ok(mut bytes) = std::fs::read(path) else { return };
    match rng.u8(..7) {
        0 => bytes.truncate(rng.usize(..=bytes.len())),
        1 => {
            for _ in 0..rng.usize(1..8) {
                if !bytes.is_empty() {
                    let i = rng.usize(..bytes.len());
                    bytes[i] = rng.u8(..);
                }
            }
        }
        2 => {
            // A hostile line at a line boundary (or the very start).
            let starts: Vec<usize> = std::iter::once(0)
                .chain(bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1))
                .collect();
            let at = starts[rng.usize(..starts.len())];
            let text = HOSTILE[rng.usize(..HOSTILE.len())].as_bytes();
            bytes.splice(at..at, text.iter().copied());
        }
        3 => {
            // A number replaced by a hostile one.
            let digits: Vec<usize> =
                bytes.iter().enumerate().filter(|(_, b)| b.is_ascii_digit()).map(|(i, _)| i).collect();
            if let Some(&start) = digits.get(rng.usize(..digits.len().max(1))) {
                let end = start + bytes[start..].iter().take_while(|b| b.is_ascii_digit()).count();
                let text = HOSTILE[3 + rng.usize(..3)].as_bytes();
                bytes.splice(start..end, text.iter().copied());
            }
        }
        4 => bytes = bytes.repeat(2),
        5 => bytes.clear(),
        _ => {
            let _ = std::fs::remove_file(path);
            return;
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// Every procfs source over `root`, three cycles, damaged again between cycles.
fn collect_everything(root: &Path, rng: &mut fastrand::Rng, files: &[PathBuf]) {
    let cli = Cli::parse_from(["lsvmi", "--procfs-root", root.to_str().unwrap(), "--no-bpf", "--dry-run"]);
    let config = Config::from_cli(&cli).unwrap();
    let sources = agent::procfs_sources(&config);
    let names: Vec<&'static str> = sources.iter().map(|s| s.name()).collect();
    let stats = Arc::new(Stats::new(names));
    let scheduled = sources.into_iter().map(|s| (s, Schedule::default())).collect();
    let registry = Registry::new([("instance".to_string(), "fuzz".to_string())]).shared();
    let mut sampler = Sampler::new(scheduled, Duration::from_millis(100), registry, stats);
    for tick in 0..3 {
        let mut samples = Vec::new();
        sampler.cycle(tick, &mut samples);
        // Bounded output: a corrupt number never turns into millions of series.
        assert!(samples.len() < 1_000_000, "{} samples from one cycle", samples.len());
        damage(rng, files);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn damaged_proc_trees_never_crash_a_source(seed in any::<u64>(), damages in 1usize..8) {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        copy_tree(&captured(), dir.path(), &mut files);
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..damages {
            damage(&mut rng, &files);
        }
        collect_everything(dir.path(), &mut rng, &files);
    }
}

/// The hostile lines each at the head of every file, all at once.
#[test]
fn every_hostile_line_in_every_file() {
    for hostile in HOSTILE {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        copy_tree(&captured(), dir.path(), &mut files);
        for f in &files {
            let mut bytes = hostile.as_bytes().to_vec();
            bytes.extend(std::fs::read(f).unwrap());
            std::fs::write(f, bytes).unwrap();
        }
        collect_everything(dir.path(), &mut fastrand::Rng::with_seed(1), &[]);
    }
}
