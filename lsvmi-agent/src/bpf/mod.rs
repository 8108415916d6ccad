//! Loading the embedded BPF object and starting the BPF sources declared in `sources/`.
//!
//! Each BPF source is one [`BpfSource`] declaration beside its code: the programs it
//! attaches and their hooks, the load-time globals it needs, and how it is built once its
//! programs run. [`start`] walks the enabled ones; this module knows no source by name.
//! One program failing to attach is one warning and takes no other down.
//!
//! Before loading, the kernel is asked where the fields the programs read are: struct
//! members from its BTF ([`btf`]), tracepoint record fields from tracefs ([`tracefs`]).
//! They reach the programs as read-only globals, which the verifier treats as constants.

pub mod btf;
pub mod percpu;
pub mod tracefs;

use std::{path::PathBuf, sync::OnceLock};

use aya::{Btf, Ebpf, EbpfLoader};

use crate::sources::Source;

/// A BPF source as the loader sees it.
pub struct BpfSource {
    /// The programs it attaches (names from `lsvmi-common`) and where.
    pub programs: &'static [(&'static str, Hook)],
    /// Sources that must be running first (`sched_tasks` reads what `sched`'s program
    /// writes); without them this one stays off, said in one line.
    pub needs: &'static [&'static str],
    /// The object's globals this source sets before load, from what the kernel says.
    pub globals: fn(&Kernel) -> Vec<Global>,
    /// Attach its programs (those not in `bpf_disable`) and take its maps.
    pub attach: Attach,
}

/// How a BPF source is built: given the loaded object and the programs not to run.
pub type Attach = fn(&mut Bpf, &[String]) -> Result<Box<dyn Source>, BpfError>;

/// What the kernel says about itself, read once before load: its BTF, walked once for
/// every source's globals and the tp_btf attach ids, then freed; and tracefs.
pub struct Kernel<'a> {
    btf: Result<btf::Btf<'a>, String>,
    /// Where tracefs is mounted, or why it is not.
    pub tracefs: Result<PathBuf, String>,
}

impl Kernel<'_> {
    /// Byte offset of `member` in `struct name`, from the kernel's BTF.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, String> {
        self.btf.as_ref().map_err(Clone::clone)?.member_offset(name, member).map_err(|e| e.to_string())
    }
}

/// The kernel's tp_btf attach ids, taken from its BTF at start (the kernel's BTF does not
/// change while it runs). Sessions load their programs from these later.
static TRACEPOINT_IDS: OnceLock<btf::TracepointIds> = OnceLock::new();

/// What aya needs to load tp_btf programs on `tracepoints`: a BTF that names their attach
/// points at the kernel's ids and nothing else (see [`btf::TracepointIds::skeleton`]),
/// instead of aya's ~28 MB parse of the kernel's whole BTF.
pub fn attach_btf(tracepoints: &[&str]) -> Result<Btf, String> {
    let ids = TRACEPOINT_IDS.get().ok_or("the kernel's BTF was not readable at start")?;
    Btf::parse(&ids.skeleton(tracepoints), aya::Endianness::default()).map_err(|e| format!("tp_btf attach ids: {e}"))
}

/// A value for one of the object's globals.
#[derive(Clone)]
pub struct Global {
    name: &'static str,
    bytes: Vec<u8>,
}

impl Global {
    pub fn new<T: aya::Pod>(name: &'static str, value: T) -> Global {
        // SAFETY: `T: Pod` says T is #[repr(C)] plain integers without padding, so
        // its bytes are all initialised and may be read as u8.
        let bytes = unsafe { std::slice::from_raw_parts((&raw const value).cast::<u8>(), size_of::<T>()) }.to_vec();
        Global { name, bytes }
    }
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
    /// Where tracefs is mounted, or why it is not.
    pub tracefs: Result<PathBuf, String>,
    /// The globals the object was loaded with.
    globals: Vec<Global>,
}

impl Bpf {
    /// The value global `name` was loaded with, if a source set it.
    pub fn global<T: aya::Pod>(&self, name: &str) -> Option<T> {
        let g = self.globals.iter().find(|g| g.name == name && g.bytes.len() == size_of::<T>())?;
        // SAFETY: the bytes were made from a T by `Global::new` (length checked); any bit
        // pattern is a valid plain-integer T, and read_unaligned needs no alignment.
        Some(unsafe { std::ptr::read_unaligned(g.bytes.as_ptr().cast::<T>()) })
    }

    /// Keep only what must live on (the programs' links and maps) once every program is
    /// attached. The kernel's raw BTF and what was built from it (~6 MB) are only needed
    /// while loading; handing their freed pages back keeps them out of the steady RSS.
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

/// Load the object with the wanted sources' globals and start each source: the ones
/// whose needs run, in the order given. Returns the object (dropping it detaches every
/// program) and the sources that run; `None` when BPF is not available at all, said in
/// one line.
pub fn start(
    wanted: &[(&'static str, &'static BpfSource)],
    disabled: &[String],
) -> Option<(Ebpf, Vec<Box<dyn Source>>)> {
    let names: Vec<&str> = wanted.iter().map(|(n, _)| *n).collect();
    let startable = |spec: &BpfSource| spec.needs.iter().all(|n| names.contains(n));
    let raw = std::fs::read(VMLINUX_BTF).map_err(|e| e.to_string());
    let tracefs = tracefs::ensure_mounted();
    let globals: Vec<Global> = {
        let btf = raw.as_ref().map_err(Clone::clone).and_then(|r| btf::Btf::parse(r).map_err(|e| e.to_string()));
        if let Ok(btf) = &btf {
            let _ = TRACEPOINT_IDS.set(btf.tracepoint_ids());
        }
        let kernel = Kernel { btf, tracefs: tracefs.clone() };
        wanted.iter().filter(|(_, s)| startable(s)).flat_map(|(_, s)| (s.globals)(&kernel)).collect()
    };
    // The raw BTF (~5.5 MB) is freed before the object is loaded.
    let no_btf = raw.err();
    let tp_btf: Vec<&str> = (wanted.iter().filter(|(_, s)| startable(s)))
        .flat_map(|(_, s)| s.programs.iter().filter(|(_, hook)| matches!(hook, Hook::TpBtf)).map(|(name, _)| *name))
        .collect();
    let mut bpf = match load(no_btf, &tp_btf, tracefs, globals) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("eBPF disabled: {e}; continuing with procfs sources");
            return None;
        }
    };
    let mut running: Vec<&str> = Vec::new();
    let mut sources = Vec::new();
    for (name, spec) in wanted {
        if let Some(missing) = spec.needs.iter().find(|n| !running.contains(n)) {
            tracing::warn!("eBPF source {name} needs source {missing} running; it stays off");
            continue;
        }
        match (spec.attach)(&mut bpf, disabled) {
            Ok(s) => {
                running.push(name);
                sources.push(s);
            }
            Err(e) => tracing::warn!("eBPF source {name} disabled: {e}; other sources continue"),
        }
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        forward_program_logs(&mut bpf.ebpf);
    }
    Some((bpf.finish_loading(), sources))
}

/// Load the embedded object into the kernel (maps created, programs not yet loaded),
/// with `globals` set, ready to attach tp_btf programs on `tp_btf`.
fn load(
    no_btf: Option<String>,
    tp_btf: &[&str],
    tracefs: Result<PathBuf, String>,
    globals: Vec<Global>,
) -> Result<Bpf, BpfError> {
    if OBJECT.is_empty() {
        return Err(BpfError::NotBuiltIn);
    }
    if let Some(e) = no_btf {
        return Err(BpfError::NoBtf(e));
    }
    let btf = attach_btf(tp_btf).map_err(BpfError::NoBtf)?;
    let mut loader = loader_without_kernel_btf();
    // The object has no CO-RE relocations (rustc emits none; offsets come as globals),
    // so aya needs the kernel's BTF for nothing else. Were one ever added, it would match
    // no struct in the skeleton: aya poisons such an instruction and the verifier refuses
    // that program, rather than it running with a wrong offset.
    loader.btf(Some(&btf));
    for g in &globals {
        loader.override_global(g.name, g.bytes.as_slice(), true);
    }
    let ebpf = loader.load(OBJECT).map_err(|e| BpfError::kernel("loading the BPF object", &e))?;
    Ok(Bpf { ebpf, btf, tracefs, globals })
}

/// An `EbpfLoader` that did not parse the kernel's BTF.
///
/// aya 0.14's `EbpfLoader::new()` parses the kernel's whole BTF before any setter can
/// say not to (aya-rs/aya#1172; aya 0.15 defers it, but needs a newer rustc than the one
/// this project builds with): ~20 MB of heap, which made the agent's peak memory twice
/// its steady size, for a parse that [`attach_btf`] makes unneeded. So the one call is
/// made while no file can be opened: the soft RLIMIT_NOFILE is set to the lowest free
/// descriptor, aya's read of /sys/kernel/btf/vmlinux fails at once, and the limit is put
/// back. The limit is process-wide, so this is done only while this is the process's
/// only thread (at start, before the runtime's pools); otherwise aya parses as before.
fn loader_without_kernel_btf<'a>() -> EbpfLoader<'a> {
    if crate::privileges::threads() != 1 {
        return EbpfLoader::new();
    }
    let Some(old) = crate::limits::open_files() else { return EbpfLoader::new() };
    // The lowest free descriptor is the one the next open returns.
    let lowest = match std::fs::File::open("/dev/null") {
        Ok(f) => std::os::fd::AsRawFd::as_raw_fd(&f) as libc::rlim_t,
        Err(_) => return EbpfLoader::new(),
    };
    // Lowering the soft limit is always allowed.
    if crate::limits::set_open_files(&libc::rlimit { rlim_cur: lowest, rlim_max: old.rlim_max }).is_err() {
        return EbpfLoader::new();
    }
    let loader = EbpfLoader::new();
    // The old soft limit is within the unchanged hard limit.
    if let Err(e) = crate::limits::set_open_files(&old) {
        tracing::warn!("could not restore the open-file limit after loading BPF: {e}");
    }
    loader
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
        let map = self.take_raw_map(name)?;
        T::try_from(map).map_err(|e| BpfError::kernel(name, &e))
    }

    /// Take a per-CPU array out of the object, to be read one entry at a time into a
    /// buffer kept between reads ([`percpu::PerCpuEntry`]).
    pub fn take_per_cpu<T: aya::Pod>(&mut self, name: &'static str) -> Result<percpu::PerCpuEntry<T>, BpfError> {
        let map = self.take_raw_map(name)?;
        percpu::PerCpuEntry::new(map).map_err(|cause| BpfError::Kernel { what: name.into(), cause })
    }

    /// Take a map out of the object as aya's untyped map.
    pub fn take_raw_map(&mut self, name: &'static str) -> Result<aya::maps::Map, BpfError> {
        self.ebpf
            .take_map(name)
            .ok_or_else(|| BpfError::Kernel { what: name.into(), cause: "map missing from the object".into() })
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
