//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6): one system
//! call per few thousand entries. aya's iterator costs two per entry
//! (`get_next_key` and a lookup), which for a 60,000-entry map was most
//! of a scrape. Kernels without batch operations get the iterator.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{HashMap, IterableMap, MapData},
    Pod,
};

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call; a hash bucket holding more answers ENOSPC
/// and the call is retried with room for twice as many.
const FIRST_CHUNK: u32 = 4096;

/// The `batch` member of `union bpf_attr`.
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

/// Every entry of `map`, read in batches where the kernel can.
pub fn read_all<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> Vec<(K, V)> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    match lookup_batch::<K, V>(fd) {
        Ok(entries) => entries,
        Err(err) => {
            tracing::debug!("batch lookup unavailable ({err}); reading entry by entry");
            map.iter().filter_map(Result::ok).collect()
        }
    }
}

fn lookup_batch<K: Pod, V: Pod>(fd: i32) -> io::Result<Vec<(K, V)>> {
    let (key_size, value_size) = (size_of::<K>(), size_of::<V>());
    let mut chunk = FIRST_CHUNK;
    let mut keys: Vec<u8> = Vec::new();
    let mut values: Vec<u8> = Vec::new();
    let mut entries = Vec::new();
    // The position token is opaque; a hash map's is a 4-byte bucket index.
    let mut position = [0u64; 2];
    let mut next = [0u64; 2];
    let mut first = true;
    loop {
        keys.resize(chunk as usize * key_size, 0);
        values.resize(chunk as usize * value_size, 0);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { position.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers that hold `count` keys and
        // values and a position token, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let done = if rc == 0 {
            false
        } else {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // The end of the map; `count` says what this call still read.
                Some(libc::ENOENT) => true,
                Some(libc::ENOSPC) if attr.count == 0 => {
                    chunk *= 2;
                    continue;
                }
                _ => return Err(err),
            }
        };
        for i in 0..attr.count as usize {
            // SAFETY: the kernel wrote `count` keys and values of these sizes;
            // Pod types accept any bytes, and read_unaligned any alignment.
            unsafe {
                let key = std::ptr::read_unaligned(keys.as_ptr().add(i * key_size).cast::<K>());
                let value = std::ptr::read_unaligned(values.as_ptr().add(i * value_size).cast::<V>());
                entries.push((key, value));
            }
        }
        if done {
            return Ok(entries);
        }
        position = next;
        first = false;
    }
}
