//! Whether any TCP socket of the host may be bound and idle, from the
//! kernel's own counters, so that the walk that finds such sockets can be
//! left out when none can exist.
//!
//! A socket bound and neither listening nor connected is in no table but
//! the bind table, and finding it costs a walk of every bound socket of the
//! host per namespace (about a third of a dump at 100,000 sockets). But
//! `/proc/net/sockstat` says how many TCP sockets exist on the whole host
//! (`alloc`: `tcp_sockets_allocated`, counted from `tcp_init_sock` to
//! `tcp_v4_destroy_sock`) and how many of a namespace are in the listening
//! or established tables (`inuse`, and `TCP6: inuse` in `sockstat6`;
//! `sock_prot_inuse_add` at hash and unhash, net/ipv4/inet_hashtables.c).
//! When the namespaces' `inuse` add up to `alloc`, every TCP socket is in
//! those tables and none is bound and idle. Anything else — a socket not
//! yet bound, one closing, a namespace portmon does not see — keeps the
//! walk.
//!
//! The same files say how many UDP sockets of each family a namespace has
//! bound (`UDP: inuse`, `UDP6: inuse`): a namespace with none needs no UDP
//! dump of that family, which would walk the host's whole UDP table.

use std::io;

use crate::kernel::{
    netns_opener::{NetnsFile, Opened},
    procfs::{ProcError, ProcFile},
};

/// The TCP counters of one namespace, opened inside it (a
/// `/proc/thread-self/net` file shows the namespace of the thread that
/// opened it, from any thread afterwards).
#[derive(Debug)]
pub(super) struct Sockstat {
    v4: ProcFile,
    /// Absent without IPv6.
    v6: Option<ProcFile>,
}

/// What one namespace's files say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    /// Its TCP sockets in the listening and established tables, both families.
    pub hashed: u64,
    /// TCP sockets of the whole host.
    pub allocated: u64,
    /// Whether it may have bound UDP sockets, IPv4 then IPv6: false only
    /// where its counter says none.
    pub udp: [bool; 2],
}

impl Sockstat {
    /// Opens the calling thread's namespace's files.
    #[cfg(test)]
    pub fn open() -> Result<Self, ProcError> {
        let files = crate::kernel::netns_opener::Wanted::of(&[NetnsFile::Sockstat, NetnsFile::Sockstat6]);
        Self::from_opened(&mut crate::kernel::netns_opener::open_here(files))
    }

    /// The files of a namespace opened elsewhere (by the namespace helper).
    pub fn from_opened(opened: &mut Opened) -> Result<Self, ProcError> {
        let mut take = |file: NetnsFile| {
            let path = file.path().unwrap_or_default();
            opened
                .take(file)
                .map(|fd| ProcFile::from_fd(fd, path))
                .ok_or_else(|| ProcError {
                    path: path.into(),
                    source: io::ErrorKind::NotFound.into(),
                })
        };
        Ok(Self {
            v4: take(NetnsFile::Sockstat)?,
            v6: take(NetnsFile::Sockstat6).ok(),
        })
    }

    pub fn read(&self) -> Result<Counts, ProcError> {
        let v4 = self.v4.read()?;
        let v6 = match &self.v6 {
            Some(file) => file.read()?,
            None => String::new(),
        };
        parse(&v4, &v6).ok_or_else(|| ProcError {
            path: self.v4.path().to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, "no TCP line in sockstat"),
        })
    }
}

/// `TCP: inuse N orphan N tw N alloc N mem N` and `TCP6: inuse N`.
fn parse(v4: &str, v6: &str) -> Option<Counts> {
    let field = |text: &str, line: &str, name: &str| -> Option<u64> {
        let fields = text.lines().find_map(|l| l.strip_prefix(line))?;
        let mut words = fields.split_whitespace();
        while let Some(word) = words.next() {
            if word == name {
                return words.next()?.parse().ok();
            }
        }
        None
    };
    let v6_hashed = if v6.is_empty() {
        0
    } else {
        field(v6, "TCP6:", "inuse")?
    };
    Some(Counts {
        hashed: field(v4, "TCP:", "inuse")? + v6_hashed,
        allocated: field(v4, "TCP:", "alloc")?,
        udp: [
            field(v4, "UDP:", "inuse") != Some(0),
            field(v6, "UDP6:", "inuse") != Some(0),
        ],
    })
}

/// Whether a bound and idle TCP socket may exist, given every namespace's
/// counts (`None` where they could not be read).
pub(super) fn bound_idle_possible(counts: impl IntoIterator<Item = Option<Counts>>) -> bool {
    let mut hashed = 0;
    let mut allocated = None;
    for counts in counts {
        let Some(counts) = counts else { return true };
        hashed += counts.hashed;
        // Host-wide: the last one read is the latest.
        allocated = Some(counts.allocated);
    }
    allocated != Some(hashed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "sockets: used 190\nTCP: inuse 7 orphan 0 tw 3 alloc 12 mem 4\nUDP: inuse 2 mem 1\n";

    #[test]
    fn reads_the_tcp_lines_of_both_files() {
        assert_eq!(
            parse(V4, "TCP6: inuse 5\nUDP6: inuse 1\n"),
            Some(Counts {
                hashed: 12,
                allocated: 12,
                udp: [true, true],
            })
        );
        // No IPv6 file: its UDP is not known to be empty.
        assert_eq!(
            parse(V4, ""),
            Some(Counts {
                hashed: 7,
                allocated: 12,
                udp: [true, true],
            })
        );
        let none = "TCP: inuse 7 orphan 0 tw 3 alloc 12 mem 4\nUDP: inuse 0 mem 0\n";
        assert_eq!(
            parse(none, "TCP6: inuse 0\nUDP6: inuse 0\n").map(|c| c.udp),
            Some([false, false])
        );
        assert_eq!(parse("UDP: inuse 2\n", ""), None);
        assert_eq!(parse(V4, "TCP6: inuse x\n"), None);
    }

    #[test]
    fn the_walk_is_left_out_only_when_every_socket_is_accounted_for() {
        let ns = |hashed, allocated| {
            Some(Counts {
                hashed,
                allocated,
                udp: [true; 2],
            })
        };
        assert!(!bound_idle_possible([ns(7, 12), ns(5, 12)]));
        // A socket in no table: bound and idle, or not bound yet.
        assert!(bound_idle_possible([ns(7, 13), ns(5, 13)]));
        // A namespace that could not be read might hold it.
        assert!(bound_idle_possible([ns(7, 12), None]));
        assert!(bound_idle_possible([]));
    }

    #[test]
    fn reads_this_namespace_twice() {
        let sockstat = Sockstat::open().expect("procfs");
        sockstat.read().expect("first read");
        sockstat.read().expect("a read from the start again");
    }
}
