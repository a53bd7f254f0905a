//! BPF_MAP_LOOKUP_AND_DELETE_BATCH (Linux 5.6+), which aya 0.14 does not wrap:
//! empties a quiescent hash map in a handful of syscalls instead of three per
//! entry. Callers fall back to per-key iteration when the kernel refuses it.

use std::{io, os::fd::RawFd};

use aya::Pod;

const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Moves every entry of the hash map `fd` into `out`, `chunk` entries per call.
/// `Err` with `EINVAL`/`ENOTSUPP` means batching is unavailable.
pub fn drain_hash<K: Pod + Default, V: Pod + Default>(
    fd: RawFd,
    chunk: usize,
    out: &mut Vec<(K, V)>,
) -> io::Result<()> {
    let chunk = chunk.max(1);
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // Hash maps use a u32 bucket cursor; 8 bytes leaves room for others.
    let mut cursor = [0u64; 1];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { cursor.as_ptr() as u64 },
            out_batch: cursor.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: attr points at buffers of `chunk` keys and values that live
        // across the call; the kernel writes at most `count` of each.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        let end = err.as_ref().is_some_and(|e| e.raw_os_error() == Some(libc::ENOENT));
        // The kernel writes `count` only on success and at the end (ENOENT);
        // on other errors it still holds our input and nothing was moved.
        let n = if err.is_none() || end { (attr.count as usize).min(chunk) } else { 0 };
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err {
            None => first = false,
            Some(_) if end => return Ok(()),
            Some(e) => return Err(e),
        }
    }
}
