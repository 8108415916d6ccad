//! Loading the embedded BPF object. Each source under `sources/` that reads BPF maps
//! attaches its own programs from the loaded object, so one program failing to attach
//! does not take the others down.

use std::io;

use aya::{Btf, Ebpf, EbpfLoader};

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

/// The loaded object plus the kernel's BTF, for sources to attach programs from.
pub struct Bpf {
    pub ebpf: Ebpf,
    pub btf: Btf,
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

/// Load the embedded object into the kernel (maps created, programs not yet loaded).
pub fn load() -> Result<Bpf, BpfError> {
    if OBJECT.is_empty() {
        return Err(BpfError::NotBuiltIn);
    }
    let btf = Btf::from_sys_fs().map_err(|e| BpfError::NoBtf(describe(&e)))?;
    let ebpf =
        EbpfLoader::new().btf(Some(&btf)).load(OBJECT).map_err(|e| BpfError::kernel("loading the BPF object", &e))?;
    Ok(Bpf { ebpf, btf })
}

/// One line for an error chain: each cause's first line, joined, with a hint when the
/// kernel said "not permitted" (the usual case: not root, or lockdown).
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut denied = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        // Verifier logs are many lines; the first says what failed.
        let first = text.lines().next().unwrap_or("").trim().to_string();
        if !first.is_empty() && !parts.iter().any(|p| p.contains(&first)) {
            parts.push(first);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            denied |= matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES));
        }
        cur = e.source();
    }
    let mut line = parts.join(": ");
    if denied {
        line.push_str(" (operation not permitted: run as root, or grant CAP_BPF and CAP_PERFMON)");
    }
    line
}
