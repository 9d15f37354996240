//! Which TCP sockets a dump asks for: a port filter the kernel runs on
//! each socket (`INET_DIAG_REQ_BYTECODE`, checked by `inet_diag_bc_run` in
//! net/ipv4/inet_diag.c).

/// Which end of a connection a port filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Local,
    Remote,
}

/// The TCP sockets a dump asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    All,
    /// Port at the end given `<= port`.
    AtMost(End, u16),
    /// Port at the end given `> port`.
    Above(End, u16),
}

/// Codes of `enum inet_diag_bc_op` (include/uapi/linux/inet_diag.h).
pub(crate) const INET_DIAG_BC_S_GE: u8 = 2;
pub(crate) const INET_DIAG_BC_S_LE: u8 = 3;
pub(crate) const INET_DIAG_BC_D_GE: u8 = 4;
pub(crate) const INET_DIAG_BC_D_LE: u8 = 5;
/// `INET_DIAG_REQ_BYTECODE`: the request attribute carrying a filter.
const INET_DIAG_REQ_BYTECODE: u16 = 1;

impl Ports {
    /// The request attribute that asks for these sockets, if any: one
    /// comparison (`struct inet_diag_bc_op`, then the port in the `no`
    /// field of a second op). A socket that passes jumps `yes` = 8 bytes,
    /// to the end of the program, and is kept; one that fails jumps
    /// `no` = 12, past the end, and is not (`inet_diag_bc_run` keeps a
    /// socket whose jumps end exactly at the end).
    pub fn attribute(self) -> Option<[u8; 12]> {
        let (code, port) = match self {
            Ports::All => return None,
            Ports::AtMost(End::Local, port) => (INET_DIAG_BC_S_LE, port),
            Ports::AtMost(End::Remote, port) => (INET_DIAG_BC_D_LE, port),
            // A cut never falls on the last port (see `Histogram::cut` in the inventory).
            Ports::Above(End::Local, port) => (INET_DIAG_BC_S_GE, port.saturating_add(1)),
            Ports::Above(End::Remote, port) => (INET_DIAG_BC_D_GE, port.saturating_add(1)),
        };
        let mut attribute = [0u8; 12];
        attribute[0..2].copy_from_slice(&12u16.to_ne_bytes());
        attribute[2..4].copy_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        attribute[4] = code;
        attribute[5] = 8;
        attribute[6..8].copy_from_slice(&12u16.to_ne_bytes());
        attribute[10..12].copy_from_slice(&port.to_ne_bytes());
        Some(attribute)
    }
}
