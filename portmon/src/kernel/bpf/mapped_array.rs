//! An array map's values mapped into this process (`BPF_F_MMAPABLE`,
//! Linux 5.5): reading them is a memory copy, with no system call per
//! entry and none per read. Writable for the one writer user space has:
//! the reclaim of a gone namespace's entries, which clears words the
//! programs check and zeroes entries no program can reach any more.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::maps::MapData;

#[derive(Debug, thiserror::Error)]
pub enum MappedArrayError {
    #[error("cannot read the kernel map {map}")]
    Info {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot map the kernel map {map} into memory (BPF_F_MMAPABLE, Linux 5.5)")]
    Map {
        map: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A shared mapping of one array map's values.
#[derive(Debug)]
pub struct MappedArray {
    base: NonNull<u8>,
    len: usize,
    entries: u32,
    value_size: usize,
    /// Keeps the map alive as long as the mapping.
    _map: MapData,
}

// SAFETY: the mapping is read-only memory shared with the kernel, read with
// volatile loads; nothing in it is tied to a thread.
unsafe impl Send for MappedArray {}
// SAFETY: as above.
unsafe impl Sync for MappedArray {}

impl MappedArray {
    /// Maps the values of `map`, an array of `value_size`-byte values,
    /// for reading and for the reclaim's writes.
    pub fn new(map: MapData, name: &'static str, value_size: usize) -> Result<Self, MappedArrayError> {
        let info = map
            .info()
            .map_err(|source| MappedArrayError::Info { map: name, source })?;
        let entries = info.max_entries();
        let page = 4096;
        let len = (entries as usize * value_size).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's values, which the
        // kernel allows for BPF_F_MMAPABLE arrays not frozen; checked for
        // failure.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(MappedArrayError::Map {
                map: name,
                source: io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(addr.cast::<u8>()).ok_or(MappedArrayError::Map {
            map: name,
            source: io::Error::other("mmap returned null"),
        })?;
        Ok(Self {
            base,
            len,
            entries,
            value_size,
            _map: map,
        })
    }

    /// Entries of the array.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The `index`th `T` of the array's memory (words of its values), read
    /// in one load as the kernel may be writing it; `None` past the end.
    /// Values are read a word at a time: a larger copy may be made byte by
    /// byte, and tear a counter the kernel is adding to.
    pub fn get<T: Word>(&self, index: usize) -> Option<T> {
        let at = index.checked_mul(size_of::<T>())?;
        self.at(at)
    }

    /// The `T` at byte `offset` of entry `entry`, as `get` reads it; `None`
    /// past the end or off `T`'s alignment.
    pub fn field<T: Word>(&self, entry: usize, offset: usize) -> Option<T> {
        if !offset.is_multiple_of(size_of::<T>()) || offset + size_of::<T>() > self.value_size {
            return None;
        }
        self.at(entry.checked_mul(self.value_size)?.checked_add(offset)?)
    }

    /// The whole `index`th value, copied as the compiler sees fit: for
    /// values whose reader can tell a torn copy (the socket table re-reads
    /// the slot's cookie), not for counters.
    pub fn value<T: Copy>(&self, index: usize) -> Option<T> {
        if size_of::<T>() != self.value_size || index >= self.entries as usize {
            return None;
        }
        // SAFETY: a whole value inside the mapping (checked above), aligned
        // as array map values are (8 bytes); any bit pattern is a valid T
        // (plain integers and byte arrays).
        Some(unsafe { std::ptr::read_volatile(self.base.as_ptr().add(index * self.value_size).cast::<T>()) })
    }

    /// Writes the `T` at byte `offset` of entry `entry` in one store, as
    /// `field` reads it; `false` past the end or off `T`'s alignment.
    pub fn set_field<T: Word>(&self, entry: usize, offset: usize, value: T) -> bool {
        let Some(at) = self.offset_of::<T>(entry, offset) else {
            return false;
        };
        // SAFETY: inside the values and aligned (checked by offset_of, as
        // in `at`); the mapping is writable and shared with the kernel,
        // which reads it with plain loads.
        unsafe { std::ptr::write_volatile(self.base.as_ptr().add(at).cast::<T>(), value) };
        true
    }

    /// Subtracts `n` from the `u64` at byte `offset` of entry `entry`, in
    /// one atomic instruction, as the programs add to it; `false` past the
    /// end or off alignment.
    pub fn subtract(&self, entry: usize, offset: usize, n: u64) -> bool {
        let Some(at) = self.offset_of::<u64>(entry, offset) else {
            return false;
        };
        // SAFETY: inside the values and 8-byte aligned (checked by
        // offset_of); the memory is shared with the kernel, whose programs
        // change it only with atomic instructions too.
        let word =
            unsafe { std::sync::atomic::AtomicU64::from_ptr(self.base.as_ptr().add(at).cast::<u64>()) };
        word.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        true
    }

    fn offset_of<T: Word>(&self, entry: usize, offset: usize) -> Option<usize> {
        if !offset.is_multiple_of(size_of::<T>()) || offset + size_of::<T>() > self.value_size {
            return None;
        }
        let at = entry.checked_mul(self.value_size)?.checked_add(offset)?;
        (at + size_of::<T>() <= self.entries as usize * self.value_size).then_some(at)
    }

    /// The size of one value.
    pub fn value_size(&self) -> usize {
        self.value_size
    }

    fn at<T: Word>(&self, at: usize) -> Option<T> {
        if !at.is_multiple_of(size_of::<T>()) || at + size_of::<T>() > self.entries as usize * self.value_size
        {
            return None;
        }
        debug_assert!(at + size_of::<T>() <= self.len);
        // SAFETY: inside the values (checked above), which the mapping
        // covers for as long as self lives; the mapping is page aligned and
        // `at` a multiple of T's size, so T is aligned; any bit pattern is a
        // valid T (a plain integer).
        Some(unsafe { std::ptr::read_volatile(self.base.as_ptr().add(at).cast::<T>()) })
    }
}

/// An integer the CPU loads in one instruction.
pub trait Word: Copy {}
impl Word for u32 {}
impl Word for u64 {}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
