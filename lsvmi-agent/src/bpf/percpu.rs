//! One entry of a per-CPU array, read every tick without aya's copies.
//!
//! aya's `PerCpuArray::get` zero-fills a buffer for every possible CPU's value, has the
//! kernel copy into it, copies the values one by one into a vector grown as it goes,
//! and frees both: at 256 possible CPUs and `CpuSched`'s 888 bytes that is ~0.7 MB
//! allocated, zeroed or copied per read, ten times a second. Here the kernel copies
//! into a buffer kept for the source's life, and the values are read where they lie:
//! one copy, the kernel's.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{Map, MapData, MapError},
    sys::SyscallError,
};

/// `BPF_MAP_LOOKUP_ELEM` of `enum bpf_cmd`.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

/// The `map_elem` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
struct LookupAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A per-CPU array of `T`, one of whose entries is read at a time.
pub struct PerCpuEntry<T> {
    map: MapData,
    /// Every possible CPU's value, each at a multiple of `stride` bytes. Words of 8
    /// bytes, so that each value is aligned for `T` (checked in `new`).
    buf: Vec<u64>,
    stride: usize,
    cpus: usize,
    _value: PhantomData<T>,
}

impl<T: Pod> PerCpuEntry<T> {
    /// Take `map`, which must be a per-CPU array with u32 keys and `T` values.
    pub fn new(map: Map) -> Result<Self, String> {
        let Map::PerCpuArray(map) = map else { return Err("not a per-CPU array".into()) };
        let info = map.info().map_err(|e| e.to_string())?;
        if info.key_size() != 4 || info.value_size() as usize != size_of::<T>() {
            return Err(format!(
                "key/value sizes {}/{} where {}/{} were expected",
                info.key_size(),
                info.value_size(),
                4,
                size_of::<T>()
            ));
        }
        if align_of::<T>() > 8 {
            return Err("values aligned beyond 8 bytes".into());
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
        // The kernel lays out each CPU's value rounded up to 8 bytes.
        let stride = size_of::<T>().next_multiple_of(8);
        Ok(PerCpuEntry { map, buf: vec![0; cpus * stride / 8], stride, cpus, _value: PhantomData })
    }

    /// Copy entry `key` of every possible CPU into the buffer.
    pub fn read(&mut self, key: u32) -> Result<(), MapError> {
        let attr = LookupAttr {
            map_fd: self.map.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: (&raw const key) as u64,
            value: self.buf.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: BPF_MAP_LOOKUP_ELEM reads a u32 key and writes, for a per-CPU array,
        // possible CPUs × round_up(value_size, 8) bytes: `buf`'s length (value size and
        // CPU count checked in `new`). Both pointers outlive the call.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_ELEM, &raw const attr, size_of::<LookupAttr>() as u32)
        };
        if r < 0 {
            let io_error = io::Error::last_os_error();
            return Err(MapError::SyscallError(SyscallError { call: "bpf_map_lookup_elem", io_error }));
        }
        Ok(())
    }

    /// The possible CPUs' values from the last `read`, by CPU number.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &T> + Clone + '_ {
        (0..self.cpus).map(|cpu| {
            // SAFETY: `cpu * stride + size_of::<T>()` is within `buf` (its length is
            // cpus × stride), the offset is a multiple of 8 from an 8-aligned base and
            // `T` needs at most 8, and `T: Pod` takes any bytes.
            unsafe { &*self.buf.as_ptr().cast::<u8>().add(cpu * self.stride).cast::<T>() }
        })
    }
}
