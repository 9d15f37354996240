//! The kernel's table of the sockets it follows (`SOCKETS`, with
//! `SOCKET_COOKIES` saying which socket holds each slot), mapped read-only
//! into this process: reading it is a memory copy, with no system call per
//! entry and none per read.

use std::collections::HashMap;

use aya::maps::MapData;
use portmon_common::{sock_flag, Owner, SockSlot, SocketGroup, SLOTS_PER_GROUP, SOCKETS_PER_GROUP};

use super::mapped_array::{MappedArray, MappedArrayError};
use crate::kernel::procfs;

#[derive(Debug, thiserror::Error)]
pub enum SocketTableError {
    #[error(transparent)]
    Mapped(#[from] MappedArrayError),
    #[error("the kernel's socket tables disagree: {groups} groups of cookies for {slots} slots")]
    Sizes { groups: u32, slots: u32 },
}

/// The socket table, mapped.
#[derive(Debug)]
pub struct SocketTable {
    cookies: MappedArray,
    slots: MappedArray,
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
        let cookies = MappedArray::new(
            cookies,
            portmon_common::map::SOCKET_COOKIES,
            size_of::<SocketGroup>(),
        )?;
        let slots = MappedArray::new(slots, portmon_common::map::SOCKETS, size_of::<SockSlot>())?;
        let (groups, capacity) = (cookies.entries(), slots.entries());
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
            let cookie = self.cookies.get::<u64>(index).unwrap_or(0);
            if cookie == 0 {
                continue;
            }
            let Some(slot) = self.slots.value::<SockSlot>(index) else {
                continue;
            };
            if self.cookies.get::<u64>(index) == Some(cookie) {
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
                    owner.comm = *commands
                        .entry(owner.pid)
                        .or_insert_with(|| procfs::command_of(owner.pid));
                }
                Some((f.cookie, owner))
            })
            .collect()
    }
}
