//! Loading the embedded BPF object. Each source under `sources/` that reads BPF maps
//! attaches its own programs from the loaded object, so one program failing to attach
//! does not take the others down.
//!
//! Before loading, the kernel is asked where the fields the programs read are: struct
//! members from its BTF ([`btf`]), tracepoint record fields from tracefs ([`tracefs`]).
//! They reach the programs as read-only globals, which the verifier treats as constants.

pub mod btf;
pub mod tracefs;

use std::path::PathBuf;

use aya::{Btf, Ebpf, EbpfLoader};
use lsvmi_common::{net::NetOffsets, sched, softirq};

use crate::sources::{net_events, softirq_time};

/// Every program name, for `bpf_disable` (checked when the config is read).
pub fn program_names() -> Vec<&'static str> {
    let sources = [crate::sources::sched::PROGRAMS, net_events::PROGRAMS, softirq_time::PROGRAMS];
    sources.iter().flat_map(|p| p.iter().copied()).collect()
}

/// A map value or global as plain bytes for aya. `T` is a `#[repr(C)]` type of
/// `lsvmi-common` made of integers only, so any bit pattern is valid.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Plain<T>(pub T);

// SAFETY: each type below is #[repr(C)], Copy, and holds only integers and arrays of
// integers, laid out without padding.
unsafe impl aya::Pod for Plain<sched::CpuSched> {}
// SAFETY: as above (the explicit `_pad` field fills the gap).
unsafe impl aya::Pod for Plain<sched::TaskTimes> {}
// SAFETY: as above.
unsafe impl aya::Pod for Plain<NetOffsets> {}
// SAFETY: as above.
unsafe impl aya::Pod for Plain<sched::SchedOffsets> {}
// SAFETY: as above.
unsafe impl aya::Pod for Plain<lsvmi_common::net::CpuNet> {}
// SAFETY: as above.
unsafe impl aya::Pod for Plain<softirq::CpuSoftirq> {}

/// What the agent asks of the programs at load time.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Keep per-task run-queue wait and on-CPU time (source `sched_tasks`).
    pub task_stats: bool,
}

/// Built by build.rs from `lsvmi-ebpf/` (empty when built with LSVMI_NO_BPF_BUILD=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lsvmi-ebpf.o"));

/// Why BPF is not available. The messages are complete sentences for one log line.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The agent binary carries no BPF object.
    #[error("this lsvmi binary was built without BPF programs (LSVMI_NO_BPF_BUILD)")]
    NotBuiltIn,
    /// The kernel exposes no BTF; tp_btf programs cannot be loaded.
    #[error("kernel BTF not readable at /sys/kernel/btf/vmlinux ({0}); needs CONFIG_DEBUG_INFO_BTF")]
    NoBtf(String),
    /// The object, a map or a program was refused by the kernel.
    #[error("{what}: {cause}")]
    Kernel { what: String, cause: String },
}

impl BpfError {
    /// Wrap an aya error, naming the likely cause in the same line.
    pub fn kernel(what: impl Into<String>, err: &(dyn std::error::Error + 'static)) -> Self {
        BpfError::Kernel { what: what.into(), cause: describe(err) }
    }
}

/// The loaded object plus what the sources need to attach their programs.
pub struct Bpf {
    pub ebpf: Ebpf,
    pub btf: Btf,
    /// The kernel fields sched_switch reads, or why they are unknown.
    pub sched_offsets: Result<sched::SchedOffsets, String>,
    /// Where tracefs is, or why it is not there.
    pub tracefs: Result<PathBuf, String>,
    /// Field names and enum names of the network tracepoints (None without tracefs).
    pub net: Option<net_events::Layout>,
}

impl Bpf {
    /// Keep only what must live on (the programs' links and maps) once every program is
    /// attached. The parsed kernel BTF is ~25 MB of heap that is only needed while loading;
    /// freeing it and handing the pages back keeps the agent's RSS in single-digit MB.
    pub fn finish_loading(self) -> Ebpf {
        drop(self.btf);
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free heap pages back to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        self.ebpf
    }
}

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Load the embedded object into the kernel (maps created, programs not yet loaded),
/// with the globals each program needs filled in from this kernel's BTF and tracefs.
pub fn load(options: LoadOptions) -> Result<Bpf, BpfError> {
    if OBJECT.is_empty() {
        return Err(BpfError::NotBuiltIn);
    }
    let raw = std::fs::read(VMLINUX_BTF).map_err(|e| BpfError::NoBtf(e.to_string()))?;
    let sched_offsets = btf::Btf::parse(&raw).map_err(|e| e.to_string()).and_then(|b| sched_offsets(&b));
    drop(raw);
    let btf = Btf::from_sys_fs().map_err(|e| BpfError::NoBtf(describe(&e)))?;

    let tracefs = tracefs::ensure_mounted();
    let net = tracefs.as_ref().ok().map(|root| net_events::Layout::discover(root));

    let task_stats = u32::from(options.task_stats);
    let offsets = Plain(sched_offsets.clone().unwrap_or_default());
    let net_offsets = Plain(net.as_ref().map_or(NetOffsets::NONE, |n| n.offsets));
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&btf))
        .override_global(sched::GLOBAL_OFFSETS, &offsets, true)
        .override_global(sched::GLOBAL_TASK_STATS, &task_stats, true)
        .override_global(lsvmi_common::net::GLOBAL_OFFSETS, &net_offsets, true);
    let ebpf = loader.load(OBJECT).map_err(|e| BpfError::kernel("loading the BPF object", &e))?;
    Ok(Bpf { ebpf, btf, sched_offsets, tracefs, net })
}

/// The fields sched_switch reads. `pid` is required; the run-queue ones are optional
/// (a kernel without CONFIG_FAIR_GROUP_SCHED or CONFIG_SCHED_INFO lacks some of them, and
/// run-queue latency is then left out with one warning).
fn sched_offsets(b: &btf::Btf<'_>) -> Result<sched::SchedOffsets, String> {
    let at = |s: &str, m: &str| b.member_offset(s, m).map_err(|e| e.to_string());
    let mut o = sched::SchedOffsets { pid: at("task_struct", "pid")?, ..Default::default() };
    let runq = (|| -> Result<(), String> {
        o.last_queued = at("task_struct", "sched_info")? + at("sched_info", "last_queued")?;
        o.se_cfs_rq = at("task_struct", "se")? + at("sched_entity", "cfs_rq")?;
        o.cfs_rq_rq = at("cfs_rq", "rq")?;
        o.rq_clock = at("rq", "clock")?;
        Ok(())
    })();
    match runq {
        Ok(()) => o.runq = 1,
        Err(e) => tracing::warn!("run-queue latency not measured: {e} (kernel BTF)"),
    }
    Ok(o)
}

/// One line for an error chain: each cause's first line, joined, with a hint when the
/// kernel said "not permitted" (the usual case: not root, or lockdown).
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut denied = false;
    let mut verifier = false;
    for e in crate::error_line::causes(err) {
        let text = e.to_string();
        crate::error_line::push_first_line(&mut parts, &text);
        // Verifier logs are many lines: the first says what failed, the last lines why.
        // The whole log goes to the debug level.
        if text.contains("Verifier output") {
            verifier = true;
            tracing::debug!("verifier log: {text}");
            let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let reason = lines
                .iter()
                .skip(1)
                .rev()
                .find(|l| !["processed ", "verification time", "stack depth"].iter().any(|p| l.starts_with(p)));
            if let Some(reason) = reason {
                parts.push(format!("verifier: {reason}"));
            }
        }
        denied |= crate::error_line::is_denied(e);
    }
    let mut line = parts.join(": ");
    if denied && !verifier {
        line.push_str(" (operation not permitted: run as root, or grant CAP_BPF and CAP_PERFMON)");
    }
    line
}

/// Where a program attaches.
#[derive(Clone, Copy)]
pub enum Hook {
    /// `tp_btf/<program name>`.
    TpBtf,
    /// Classic tracepoint `<category>/<program name>`.
    Tracepoint(&'static str),
}

impl Bpf {
    /// Load and attach one program.
    pub fn attach(&mut self, name: &str, hook: Hook) -> Result<(), BpfError> {
        use aya::programs::{BtfTracePoint, TracePoint};
        let prog = self.ebpf.program_mut(name).ok_or_else(|| BpfError::Kernel {
            what: name.to_string(),
            cause: "program missing from the object".into(),
        })?;
        match hook {
            Hook::TpBtf => {
                let what = format!("tp_btf/{name}");
                let p: &mut BtfTracePoint = prog.try_into().map_err(|e| BpfError::kernel(&what, &e))?;
                p.load(name, &self.btf).map_err(|e| BpfError::kernel(format!("loading {what}"), &e))?;
                p.attach().map_err(|e| BpfError::kernel(format!("attaching {what}"), &e))?;
            }
            Hook::Tracepoint(category) => {
                let what = format!("tracepoint {category}/{name}");
                if let Err(e) = &self.tracefs {
                    return Err(BpfError::Kernel { what, cause: e.clone() });
                }
                let p: &mut TracePoint = prog.try_into().map_err(|e| BpfError::kernel(&what, &e))?;
                p.load().map_err(|e| BpfError::kernel(format!("loading {what}"), &e))?;
                p.attach(category, name).map_err(|e| BpfError::kernel(format!("attaching {what}"), &e))?;
            }
        }
        Ok(())
    }

    /// Attach each program not in `disabled`. A failure is one warning line naming the
    /// program and the cause; the others go on. Returns, per program, whether it runs.
    pub fn attach_each(&mut self, source: &str, programs: &[(&str, Hook)], disabled: &[String]) -> Vec<bool> {
        programs
            .iter()
            .map(|&(name, hook)| {
                if disabled.iter().any(|d| d == name) {
                    return false;
                }
                match self.attach(name, hook) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("eBPF program {name} ({source}) not running: {e}; the rest continue");
                        false
                    }
                }
            })
            .collect()
    }

    /// Take a map out of the object for a source to own, as its typed aya map.
    pub fn take_map<T>(&mut self, name: &'static str) -> Result<T, BpfError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or_else(|| BpfError::Kernel { what: name.into(), cause: "map missing from the object".into() })?;
        T::try_from(map).map_err(|e| BpfError::kernel(name, &e))
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Forward the programs' aya-log records (all at debug level: rare conditions such as a
/// full event ring) to the agent's log, at debug level. Only called when debug logging
/// is on. Drained every 100 ms rather than on readiness, so a program that logs a lot
/// cannot make the agent wake per record (the feedback loop of architecture.md).
pub fn forward_program_logs(ebpf: &mut Ebpf) {
    let mut logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!("BPF program logs not available: {e}");
            return;
        }
    };
    tracing::debug!("forwarding BPF program logs (aya-log) at debug level");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tick.tick().await;
            // aya-log panics on a record it cannot decode; losing the log is better
            // than losing the agent.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush())).is_err() {
                tracing::warn!("BPF program log record undecodable; program logs no longer forwarded");
                return;
            }
        }
    });
}
