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
    /// Port at the end given `== port`.
    Exactly(End, u16),
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
    /// field of a second op), or two for an exact port (at least, then at
    /// most). A socket that passes a comparison jumps `yes` = 8 bytes, to
    /// the next one or the end of the program; one that fails jumps `no`,
    /// 4 bytes past the end, and is not kept (`inet_diag_bc_run` keeps a
    /// socket whose jumps end exactly at the end; `inet_diag_bc_audit`
    /// allows a jump of up to 4 bytes past it, as `ss` uses).
    pub fn attribute(self) -> Option<Vec<u8>> {
        let comparisons: &[(u8, u16)] = match self {
            Ports::All => return None,
            Ports::AtMost(End::Local, port) => &[(INET_DIAG_BC_S_LE, port)],
            Ports::AtMost(End::Remote, port) => &[(INET_DIAG_BC_D_LE, port)],
            // A cut never falls on the last port (see `Histogram::cut` in the inventory).
            Ports::Above(End::Local, port) => &[(INET_DIAG_BC_S_GE, port.saturating_add(1))],
            Ports::Above(End::Remote, port) => &[(INET_DIAG_BC_D_GE, port.saturating_add(1))],
            Ports::Exactly(End::Local, port) => &[(INET_DIAG_BC_S_GE, port), (INET_DIAG_BC_S_LE, port)],
            Ports::Exactly(End::Remote, port) => &[(INET_DIAG_BC_D_GE, port), (INET_DIAG_BC_D_LE, port)],
        };
        let program_len = 8 * comparisons.len();
        let mut attribute = Vec::with_capacity(4 + program_len);
        attribute.extend_from_slice(&((4 + program_len) as u16).to_ne_bytes());
        attribute.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        for (i, &(code, port)) in comparisons.iter().enumerate() {
            let left = (program_len - 8 * i) as u16;
            attribute.extend_from_slice(&[code, 8]);
            attribute.extend_from_slice(&(left + 4).to_ne_bytes());
            attribute.extend_from_slice(&[0, 0]);
            attribute.extend_from_slice(&port.to_ne_bytes());
        }
        Some(attribute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_comparison_jumps_past_the_end_on_failure_two_as_well() {
        let one = Ports::AtMost(End::Local, 1000).attribute().unwrap();
        assert_eq!(one.len(), 12);
        assert_eq!(u16::from_ne_bytes([one[0], one[1]]), 12);
        assert_eq!((one[4], one[5]), (INET_DIAG_BC_S_LE, 8));
        assert_eq!(u16::from_ne_bytes([one[6], one[7]]), 12, "8 left, 4 past");
        assert_eq!(u16::from_ne_bytes([one[10], one[11]]), 1000);

        let exact = Ports::Exactly(End::Local, 8080).attribute().unwrap();
        assert_eq!(exact.len(), 20);
        assert_eq!(u16::from_ne_bytes([exact[0], exact[1]]), 20);
        assert_eq!((exact[4], exact[5]), (INET_DIAG_BC_S_GE, 8));
        assert_eq!(u16::from_ne_bytes([exact[6], exact[7]]), 20, "16 left, 4 past");
        assert_eq!(u16::from_ne_bytes([exact[10], exact[11]]), 8080);
        assert_eq!((exact[12], exact[13]), (INET_DIAG_BC_S_LE, 8));
        assert_eq!(u16::from_ne_bytes([exact[14], exact[15]]), 12, "8 left, 4 past");
        assert_eq!(u16::from_ne_bytes([exact[18], exact[19]]), 8080);
    }
}
