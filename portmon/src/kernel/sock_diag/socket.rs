//! A socket as a `sock_diag` dump reports it.

use std::net::SocketAddr;

use portmon_common::{tcp_state, Family, Proto};
use serde::Serialize;

/// A TCP state, or for UDP the two `ss` shows (`UNCONN` is CLOSE,
/// a connected UDP socket is ESTABLISHED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    /// TCP only: bound, neither listening nor connected.
    Bound,
}

impl SocketState {
    /// Every state, in label order.
    pub const ALL: &'static [SocketState] = &[
        SocketState::Bound,
        SocketState::Close,
        SocketState::CloseWait,
        SocketState::Closing,
        SocketState::Established,
        SocketState::FinWait1,
        SocketState::FinWait2,
        SocketState::LastAck,
        SocketState::Listen,
        SocketState::NewSynRecv,
        SocketState::SynRecv,
        SocketState::SynSent,
        SocketState::TimeWait,
    ];

    /// The kernel's number (include/net/tcp_states.h).
    pub fn from_kernel(state: u8) -> Option<Self> {
        Some(match state {
            tcp_state::ESTABLISHED => SocketState::Established,
            tcp_state::SYN_SENT => SocketState::SynSent,
            tcp_state::SYN_RECV => SocketState::SynRecv,
            tcp_state::FIN_WAIT1 => SocketState::FinWait1,
            tcp_state::FIN_WAIT2 => SocketState::FinWait2,
            tcp_state::TIME_WAIT => SocketState::TimeWait,
            tcp_state::CLOSE => SocketState::Close,
            tcp_state::CLOSE_WAIT => SocketState::CloseWait,
            tcp_state::LAST_ACK => SocketState::LastAck,
            tcp_state::LISTEN => SocketState::Listen,
            tcp_state::CLOSING => SocketState::Closing,
            tcp_state::NEW_SYN_RECV => SocketState::NewSynRecv,
            _ => return None,
        })
    }

    /// The label used in metrics and JSON.
    pub const fn label(self) -> &'static str {
        match self {
            SocketState::Established => "established",
            SocketState::SynSent => "syn_sent",
            SocketState::SynRecv => "syn_recv",
            SocketState::FinWait1 => "fin_wait1",
            SocketState::FinWait2 => "fin_wait2",
            SocketState::TimeWait => "time_wait",
            SocketState::Close => "close",
            SocketState::CloseWait => "close_wait",
            SocketState::LastAck => "last_ack",
            SocketState::Listen => "listen",
            SocketState::Closing => "closing",
            SocketState::NewSynRecv => "new_syn_recv",
            SocketState::Bound => "bound",
        }
    }
}

/// One socket holding (or having held, in TIME_WAIT) a local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Socket {
    pub proto: Proto,
    pub family: Family,
    pub state: SocketState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Socket cookie: the same number the kernel programs see.
    pub cookie: u64,
    pub uid: u32,
    pub inode: u32,
}

/// A socket and the namespace it lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NsSocket {
    /// Network namespace cookie.
    pub netns: u64,
    #[serde(flatten)]
    pub socket: Socket,
}

impl Socket {
    /// The state as `ss` names it: `unconn` for an unconnected UDP socket,
    /// the TCP state's name otherwise.
    pub fn state_label(&self) -> &'static str {
        match (self.proto, self.state) {
            (Proto::Udp, SocketState::Close) => "unconn",
            (_, state) => state.label(),
        }
    }
}

/// What `ss -l` counts as listening.
pub fn is_listening(state: SocketState, proto: Proto) -> bool {
    match proto {
        Proto::Tcp => state == SocketState::Listen,
        Proto::Udp => state == SocketState::Close,
    }
}
