//! The namespace a count is for, and who owns it.

use crate::{layout, owner_quota::Owner};

/// Set by the loader: the daemon's own namespace (see `global::HOST_NETNS`).
#[unsafe(no_mangle)]
static PORTMON_HOST_NETNS: u64 = 0;

#[inline(always)]
pub fn host_netns() -> u64 {
    loader_set!(PORTMON_HOST_NETNS)
}

/// The namespace a count is for: its cookie, and a socket in it, through
/// which the rare claim of a new table, block or pool learns who owns it.
#[derive(Clone, Copy)]
pub struct Netns {
    pub cookie: u64,
    sk: u64,
    /// `sk` is a sock_addr context, which holds the socket.
    in_context: bool,
}

impl Netns {
    /// The namespace `cookie`, which the kernel socket at address `sk` is in.
    #[inline(always)]
    pub fn new(cookie: u64, sk: u64) -> Self {
        Self {
            cookie,
            sk,
            in_context: false,
        }
    }

    /// The namespace `cookie`, which the socket of the sock_addr context
    /// `ctx` is in.
    #[inline(always)]
    pub fn of_sock_addr(cookie: u64, ctx: u64) -> Self {
        Self {
            cookie,
            sk: ctx,
            in_context: true,
        }
    }

    /// The same socket's namespace, by the cookie its slot recorded.
    #[inline(always)]
    pub fn with_cookie(self, cookie: u64) -> Self {
        Self { cookie, ..self }
    }

    /// Whether the host's user namespace owns it: made by a process with
    /// `CAP_SYS_ADMIN` on the host, not by an unprivileged user through a
    /// user namespace of its own. Read only when something is claimed.
    #[inline(always)]
    pub fn host_owned(&self) -> bool {
        layout::user_ns_level(self.kernel_sock()) == Some(0)
    }

    /// The user charged for what the namespace takes of the shared
    /// entries; `None` for one the host's user namespace owns.
    #[inline(always)]
    pub fn owner(&self) -> Option<Owner> {
        let sk = self.kernel_sock();
        (layout::user_ns_level(sk) != Some(0)).then(|| Owner::of(sk))
    }

    #[inline(always)]
    fn kernel_sock(&self) -> u64 {
        if self.in_context {
            layout::sock_addr_sk(self.sk)
        } else {
            self.sk
        }
    }
}
