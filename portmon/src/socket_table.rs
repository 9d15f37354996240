//! The kernel's table of the sockets it follows (`SOCKETS`, with
//! `SOCKET_COOKIES` saying which socket holds each slot), mapped read-only
//! into this process: reading it is a memory copy, with no system call per
//! entry and none per read.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::maps::MapData;
use portmon_common::{sock_flag, Owner, SockSlot, SocketGroup, SLOTS_PER_GROUP, SOCKETS_PER_GROUP};

#[derive(Debug, thiserror::Error)]
pub enum SocketTableError {
    #[error("cannot read the kernel's socket table {map}")]
    Info {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot map the kernel's socket table {map} into memory (BPF_F_MMAPABLE, Linux 5.5)")]
    Map {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel's socket tables disagree: {groups} groups of cookies for {slots} slots")]
    Sizes { groups: u32, slots: u32 },
}

/// A read-only mapping of one array map's values.
#[derive(Debug)]
struct Mapping {
    base: NonNull<u8>,
    len: usize,
    /// Keeps the map alive as long as the mapping.
    _map: MapData,
}

// SAFETY: the mapping is read-only memory shared with the kernel, read with
// volatile loads; nothing in it is tied to a thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(map: MapData, name: &'static str, value_size: usize) -> Result<(Self, u32), SocketTableError> {
        let info = map
            .info()
            .map_err(|source| SocketTableError::Info { map: name, source })?;
        let entries = info.max_entries();
        let page = 4096;
        let len = (entries as usize * value_size).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared read-only mapping of the map's values, which
        // the kernel allows for BPF_F_MMAPABLE arrays; checked for failure.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(SocketTableError::Map {
                map: name,
                source: io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(addr.cast::<u8>()).ok_or(SocketTableError::Map {
            map: name,
            source: io::Error::other("mmap returned null"),
        })?;
        Ok((Self { base, len, _map: map }, entries))
    }

    /// The `index`th value of type `T`, read as the kernel may be writing it.
    fn read<T: Copy>(&self, index: usize) -> T {
        let at = index * size_of::<T>();
        assert!(
            at + size_of::<T>() <= self.len,
            "index {index} outside the mapping"
        );
        // SAFETY: inside the mapping (checked above), which lives as long as
        // self; values are 8-byte aligned in an array map and any bit pattern
        // is a valid T (plain integers).
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(at).cast::<T>()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The socket table, mapped.
#[derive(Debug)]
pub struct SocketTable {
    cookies: Mapping,
    slots: Mapping,
    capacity: u32,
}

/// One socket the kernel side follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followed {
    pub cookie: u64,
    pub slot: SockSlot,
}

impl Followed {
    /// The port it holds now (bound, listening, or connected from), if any.
    pub fn holds_local(&self) -> Option<u16> {
        let held = sock_flag::BOUND | sock_flag::LISTENING | sock_flag::CONNECTED;
        (self.slot.flags & held != 0 && self.slot.local_port != 0).then_some(self.slot.local_port)
    }

    /// The destination port of its live connection, if any.
    pub fn connected_to(&self) -> Option<u16> {
        (self.slot.flags & sock_flag::CONNECTED != 0 && self.slot.remote_port != 0)
            .then_some(self.slot.remote_port)
    }

    /// Whether it holds its port by bind() or listen(): exclusively, out of
    /// reach of every connect().
    pub fn holds_exclusively(&self) -> bool {
        self.slot.flags & (sock_flag::BOUND | sock_flag::LISTENING) != 0 && self.slot.local_port != 0
    }
}

impl SocketTable {
    /// Maps the two arrays the loader took from the kernel object.
    pub fn new(cookies: MapData, slots: MapData) -> Result<Self, SocketTableError> {
        let (cookies, groups) = Mapping::new(
            cookies,
            portmon_common::map::SOCKET_COOKIES,
            size_of::<SocketGroup>(),
        )?;
        let (slots, capacity) = Mapping::new(slots, portmon_common::map::SOCKETS, size_of::<SockSlot>())?;
        if groups as usize * SLOTS_PER_GROUP != capacity as usize {
            return Err(SocketTableError::Sizes {
                groups,
                slots: capacity,
            });
        }
        Ok(Self {
            cookies,
            slots,
            capacity,
        })
    }

    /// Sockets the table can hold.
    pub fn capacity(&self) -> u32 {
        self.capacity / SLOTS_PER_GROUP as u32 * SOCKETS_PER_GROUP as u32
    }

    /// Every socket followed now. A slot that changes hands while it is
    /// read (its cookie differs before and after) is left out.
    pub fn read(&self) -> Vec<Followed> {
        let mut out = Vec::new();
        // A group's last word counts displaced sockets: it is no cookie.
        for index in (0..self.capacity as usize).filter(|i| i % SLOTS_PER_GROUP < SOCKETS_PER_GROUP) {
            let cookie: u64 = self.cookies.read(index);
            if cookie == 0 {
                continue;
            }
            let slot: SockSlot = self.slots.read(index);
            if self.cookies.read::<u64>(index) == cookie {
                out.push(Followed { cookie, slot });
            }
        }
        out
    }

    /// Who made each followed socket, by cookie. Sockets first seen at
    /// connect() carry no command name from the kernel: it is the pid's,
    /// read now, and stays empty once the process is gone.
    pub fn owners(&self) -> HashMap<u64, Owner> {
        let mut commands: HashMap<u32, [u8; 16]> = HashMap::new();
        self.read()
            .into_iter()
            .filter_map(|f| {
                let mut owner = f.slot.owner()?;
                if owner.comm == [0; 16] {
                    owner.comm = *commands.entry(owner.pid).or_insert_with(|| command_of(owner.pid));
                }
                Some((f.cookie, owner))
            })
            .collect()
    }
}

/// A process's command name as the kernel keeps it (`/proc/PID/comm`,
/// 15 bytes at most), NUL padded; all zero if the process is gone.
fn command_of(pid: u32) -> [u8; 16] {
    let mut comm = [0; 16];
    if let Ok(text) = std::fs::read(format!("/proc/{pid}/comm")) {
        let name = text.strip_suffix(b"\n").unwrap_or(&text);
        let len = name.len().min(15);
        comm[..len].copy_from_slice(&name[..len]);
    }
    comm
}
