//! `cargo xtask bench-scale`: does the agent stay close to the floor as hosts grow?
//!
//! Two axes, each measured for the agent (release build, default settings, sending to a
//! local VictoriaMetrics) and the floor (`bench-overhead`'s), one after the other:
//!
//! - tasks: 100, 1 000 and 10 000 extra threads in a load process (most blocked, four
//!   busy a fifth of the time), on this host's /proc;
//! - CPUs: /proc trees of 64 and 256 CPUs synthesised from the captured 2-CPU one
//!   (`testdata/proc/debian12-6.18-2cpu`: stat, softirqs, interrupts and softnet_stat
//!   widened), read through `--procfs-root` with eBPF off. The tree ticks while it is
//!   read ([`Ticker`]): every 100 ms each CPU's idle time, its TIMER, SCHED and RCU
//!   softirqs and its local timer interrupts advance, as on a real host. A still tree
//!   would be the best case, every row reading as it did (and not parsed again).
//!
//! Printed per row: CPU (% of one core) of both and their ratio, the agent's CPU per task
//! (µs per second), its steady RSS, and bytes of RSS per task and per series.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use crate::{bench_overhead, cargo, status, vm, workspace_root};

pub fn run(seconds: u64) -> anyhow::Result<()> {
    crate::setup::ensure()?;
    status(cargo().args(["build", "--release", "-p", "lsvmi-agent"]))?;
    let dir = workspace_root().join("target/lsvmi-scale");
    let _ = std::fs::remove_dir_all(&dir);
    let vm = vm::VictoriaMetrics::start(&dir, 8428)?;
    let me = std::env::current_exe().context("locating xtask")?;
    let floor_bin = bench_overhead::floor_bin()?;
    let dur = Duration::from_secs(seconds);
    let mut rows = Vec::new();

    for extra in [100u32, 1_000, 10_000] {
        println!("bench-scale: {extra} extra threads…");
        let mut load = Command::new(&me)
            .args(["scale-load", "--threads", &extra.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the thread load")?;
        std::thread::sleep(Duration::from_secs(2));
        let tasks = count_tasks(Path::new("/proc"));
        let (agent, series) = measure_agent(&vm, &dir, &[], dur)?;
        let floor = bench_overhead::measure_floor(&floor_bin, &[], None, dur)?;
        let _ = load.kill();
        let _ = load.wait();
        rows.push((format!("{extra} extra threads"), tasks, agent, floor, series));
    }
    for cpus in [64u32, 256] {
        println!("bench-scale: a /proc tree of {cpus} CPUs…");
        let (root, sys) = trees(&dir, cpus)?;
        let root_s = root.to_str().context("utf-8 path")?;
        let sys_s = sys.to_str().context("utf-8 path")?;
        let args = ["--procfs-root", root_s, "--sysfs-root", sys_s, "--no-bpf"];
        let ticker = Ticker::start(&root)?;
        let (agent, series) = measure_agent(&vm, &dir, &args, dur)?;
        let floor = bench_overhead::measure_floor(&floor_bin, &[], Some(&root), dur)?;
        ticker.stop();
        // A tree has no tasks to speak of: its per-task columns are left empty.
        rows.push((format!("{cpus} CPUs (tree)"), 0, agent, floor, series));
    }
    drop(vm);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n| host | tasks | lsvmi CPU % | floor CPU % | ratio | lsvmi µs/task/s | lsvmi RSS | RSS/task | RSS per added task | RSS/series |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    // What each task beyond the smallest host's costs: the memory that grows with tasks,
    // without the agent's fixed part.
    let first = rows.first().map(|(_, tasks, a, ..)| (*tasks, a.rss_steady_max_kb));
    for (name, tasks, a, f, series) in rows {
        // A tree has no tasks: its per-task cells are a bare "-".
        let per_task =
            |v: f64, unit: &str| if tasks == 0 { "-".to_string() } else { format!("{:.2}{unit}", v / tasks as f64) };
        let added = match first {
            Some((t0, rss0)) if tasks > t0 => {
                format!("{:.2} KB", (a.rss_steady_max_kb as f64 - rss0 as f64) / (tasks - t0) as f64)
            }
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {:.3} | {:.3} | {:.2}× | {} | {:.1} MB | {} | {added} | {} B |",
            if tasks == 0 { "-".to_string() } else { tasks.to_string() },
            a.cpu_percent,
            f.cpu_percent,
            a.cpu_percent / f.cpu_percent.max(1e-9),
            per_task(a.cpu_percent / 100.0 * 1e6, ""),
            a.rss_steady_max_kb as f64 / 1024.0,
            per_task(a.rss_steady_max_kb as f64, " KB"),
            (a.rss_steady_max_kb * 1024).checked_div(series).map_or("-".into(), |b| b.to_string()),
        );
    }
    print!("{out}");
    Ok(())
}

/// The agent at default settings plus `args` for `dur`; its usage and the series it had.
fn measure_agent(
    vm: &vm::VictoriaMetrics,
    dir: &Path,
    args: &[&str],
    dur: Duration,
) -> anyhow::Result<(bench_overhead::Usage, u64)> {
    let mut all: Vec<std::ffi::OsString> = vec!["--control-socket".into(), dir.join("control.sock").into()];
    all.extend(["--instance", "scale"].into_iter().chain(args.iter().copied()).map(Into::into));
    let child = bench_overhead::spawn_agent(vm, dir, &all)?;
    let usage = bench_overhead::measure(child, dur)?;
    let _ = vm.get("/internal/force_flush");
    let series = vm
        .get("/api/v1/query?query=max_over_time(lsvmi_series%7Binstance%3D%22scale%22%7D%5B1m%5D)")
        .ok()
        .and_then(|body| {
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            v["data"]["result"][0]["value"][1].as_str()?.parse::<f64>().ok()
        })
        .unwrap_or(0.0) as u64;
    Ok((usage, series))
}

/// Processes and threads under `root`.
fn count_tasks(root: &Path) -> u64 {
    let Ok(dir) = std::fs::read_dir(root) else { return 0 };
    dir.flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .map(|e| std::fs::read_dir(e.path().join("task")).map(|t| t.count() as u64).unwrap_or(1).max(1))
        .sum()
}

/// The load: `threads` threads, four of them busy a fifth of the time, the rest blocked.
pub fn load(threads: u32) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for i in 0..threads {
        let busy = i < 4;
        let h = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            loop {
                if busy {
                    let t = std::time::Instant::now();
                    while t.elapsed() < Duration::from_millis(10) {
                        std::hint::spin_loop();
                    }
                    std::thread::sleep(Duration::from_millis(40));
                } else {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        });
        match h {
            Ok(h) => handles.push(h),
            Err(e) => anyhow::bail!("thread {i}: {e}"),
        }
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// The /proc and /sys trees of a host of `cpus` CPUs, under `dir`.
fn trees(dir: &Path, cpus: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    let root = dir.join(format!("proc-{cpus}cpu"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    synthesise(&workspace_root().join("testdata/proc/debian12-6.18-2cpu"), &root, cpus)?;
    // Every CPU of the tree online (the agent skips the columns of offline ones).
    let sys = dir.join(format!("sys-{cpus}cpu"));
    std::fs::create_dir_all(sys.join("devices/system/cpu"))?;
    write(&sys, "devices/system/cpu/online", &format!("0-{}\n", cpus - 1))?;
    Ok((root, sys))
}

/// `cargo xtask scale-tree --cpus N --dir D`: the trees bench-scale reads for N CPUs,
/// ticking until killed, so that the agent can be run and profiled against them by hand
/// (`--procfs-root D/proc-Ncpu --sysfs-root D/sys-Ncpu --no-bpf`).
pub fn tree(cpus: u32, dir: &Path) -> anyhow::Result<()> {
    let (root, sys) = trees(dir, cpus)?;
    println!("--procfs-root {} --sysfs-root {} --no-bpf", root.display(), sys.display());
    let _ticker = Ticker::start(&root)?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `from` copied to `to` with its per-CPU files widened to `cpus` CPUs (the values of
/// the captured CPUs repeated).
fn synthesise(from: &Path, to: &Path, cpus: u32) -> anyhow::Result<()> {
    let st = Command::new("cp").arg("-r").arg(from).arg(to).status()?;
    anyhow::ensure!(st.success(), "copying {}", from.display());
    let read = |p: &str| std::fs::read_to_string(from.join(p)).with_context(|| format!("reading {p}"));
    // stat: a `cpuN` line per CPU after the total.
    let stat = read("stat")?;
    let per_cpu: Vec<&str> = stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).collect();
    let mut out = String::new();
    for l in stat.lines() {
        if l.starts_with("cpu") && !l.starts_with("cpu ") {
            continue;
        }
        out.push_str(l);
        out.push('\n');
        if l.starts_with("cpu ") {
            for c in 0..cpus {
                let src = per_cpu[c as usize % per_cpu.len()];
                let rest = src.split_once(' ').map_or("", |(_, r)| r);
                let _ = writeln!(out, "cpu{c} {rest}");
            }
        }
    }
    write(to, "stat", &out)?;
    // softirqs and interrupts: a header of CPUn columns, a column per CPU in each row.
    for name in ["softirqs", "interrupts"] {
        let text = read(name)?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or("");
        let captured = header.split_whitespace().count().max(1);
        let mut out = String::new();
        let _ = writeln!(out, "{}", (0..cpus).map(|c| format!("{:>11}", format!("CPU{c}"))).collect::<String>());
        for l in lines {
            let Some((name, rest)) = l.split_once(':') else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let counts: Vec<&str> =
                fields.iter().take(captured).copied().take_while(|f| f.parse::<u64>().is_ok()).collect();
            let tail: Vec<&str> = fields[counts.len()..].to_vec();
            let widened: String = if counts.len() == captured {
                (0..cpus as usize).map(|c| format!(" {:>10}", counts[c % captured])).collect()
            } else {
                counts.iter().map(|c| format!(" {c:>10}")).collect()
            };
            let _ = writeln!(out, "{name}:{widened}  {}", tail.join(" "));
        }
        write(to, name, &out)?;
    }
    // softnet_stat: a row per CPU.
    let softnet = read("net/softnet_stat")?;
    let rows: Vec<&str> = softnet.lines().collect();
    let out: String = (0..cpus as usize).map(|c| format!("{}\n", rows[c % rows.len().max(1)])).collect();
    write(to, "net/softnet_stat", &out)
}

/// Makes a synthesised tree change as a busy host's /proc does: every 100 ms, the last
/// digit of the counters a running CPU advances (each `cpuN` line's idle column; the
/// TIMER, SCHED and RCU rows of softirqs; LOC of interrupts) steps on, in place. The
/// lengths never change, so a read that meets a write still parses.
pub struct Ticker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Ticker {
    pub fn start(root: &Path) -> anyhow::Result<Ticker> {
        let mut files = Vec::new();
        for (name, rows, column) in [
            ("stat", &["cpu"][..], Some(3)),
            ("softirqs", &["TIMER:", "SCHED:", "RCU:"][..], None),
            ("interrupts", &["LOC:"][..], None),
        ] {
            let path = root.join(name);
            let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let digits = last_digits(&text, rows, column);
            files.push((std::fs::OpenOptions::new().write(true).open(&path)?, text, digits));
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::os::unix::fs::FileExt as _;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for (file, text, digits) in &mut files {
                    for &at in digits.iter() {
                        text[at] = if text[at] == b'9' { b'0' } else { text[at] + 1 };
                    }
                    let _ = file.write_all_at(text, 0);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Ok(Ticker { stop, thread })
    }

    pub fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Offsets of the last digit of the counters to advance: in rows starting with one of
/// `rows` (`cpu` matches every `cpuN` line but not the total), the value `column`
/// (0-based after the row's name), or every value when `None`.
fn last_digits(text: &[u8], rows: &[&str], column: Option<usize>) -> Vec<usize> {
    let mut out = Vec::new();
    let mut start = 0;
    for line in text.split(|&b| b == b'\n') {
        let trimmed = line.trim_ascii_start();
        let lead = line.len() - trimmed.len();
        let name_end = trimmed.iter().position(u8::is_ascii_whitespace).unwrap_or(trimmed.len());
        let name = &trimmed[..name_end];
        let wanted = rows.iter().any(|r| match *r {
            "cpu" => name.len() > 3 && name.starts_with(b"cpu") && name[3].is_ascii_digit(),
            r => name == r.as_bytes(),
        });
        if wanted {
            let mut i = lead + name_end;
            let mut field = 0;
            while i < line.len() {
                while i < line.len() && line[i].is_ascii_whitespace() {
                    i += 1;
                }
                let begin = i;
                while i < line.len() && line[i].is_ascii_digit() {
                    i += 1;
                }
                if i == begin {
                    break; // the description after the counts
                }
                if column.is_none_or(|c| c == field) {
                    out.push(start + i - 1);
                }
                field += 1;
            }
        }
        start += line.len() + 1;
    }
    out
}

fn write(root: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path: PathBuf = root.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ticker_advances_the_counters_it_names() {
        let stat = b"cpu  1 2 3 44 5\ncpu0 1 2 3 17 5\ncpu12 1 2 3 9 5\nctxt 5\n";
        let at = last_digits(stat, &["cpu"], Some(3));
        assert_eq!(at.iter().map(|&i| stat[i]).collect::<Vec<_>>(), b"79");
        let softirqs = b"    CPU0 CPU1\n  HI: 1 2\n  TIMER: 10 25\nLOC: 7 8 Local timer\n";
        let at = last_digits(softirqs, &["TIMER:", "LOC:"], None);
        assert_eq!(at.iter().map(|&i| softirqs[i]).collect::<Vec<_>>(), b"0578");
    }
}
