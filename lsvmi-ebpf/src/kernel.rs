//! Reading what the agent set and what the kernel holds, shared by every program.

/// The value of a read-only global the agent set at load.
#[inline(always)]
pub fn global<T: Copy>(v: &T) -> T {
    // SAFETY: reading a static; volatile so the compiler keeps the load the loader patches.
    unsafe { core::ptr::read_volatile(v) }
}

/// A task's name (`task_struct.comm` at `off`), in two loads.
#[inline(always)]
pub fn comm_at(task: *const u8, off: u32) -> [u8; 16] {
    let lo: u64 = field(task, off);
    let hi: u64 = field(task, off + 8);
    let mut comm = [0u8; 16];
    comm[..8].copy_from_slice(&lo.to_ne_bytes());
    comm[8..].copy_from_slice(&hi.to_ne_bytes());
    comm
}

/// The `T` at `base + off`, `base` being a BTF-typed kernel pointer: the verifier checks
/// the access against BTF and makes it fault-safe (a faulting address loads 0). That is
/// far cheaper than a bpf_probe_read_kernel call.
#[inline(always)]
pub fn field<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: see above.
    unsafe { core::ptr::read_volatile(base.add(off as usize).cast::<T>()) }
}
