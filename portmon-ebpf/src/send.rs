//! The raw tracepoint `sock_send_length` (Linux 6.3+, `sock_sendmsg_nosec`,
//! net/socket.c): the one place without a kprobe or a `syscalls:*`
//! tracepoint where a sendto() or sendmsg() that failed shows. It runs for
//! every send on the host, so it returns after one comparison unless the
//! send failed with EAGAIN.
//!
//! A UDP socket without a port gets one inside the send (`inet_autobind`
//! from `inet_send_prepare`, net/ipv4/af_inet.c), and when the pool is used
//! up the send fails with EAGAIN before any datagram hook runs. A full send
//! buffer fails with EAGAIN too, but on a socket that has its port.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use portmon_common::{errno, op, proto};

use crate::{
    layout,
    sockets::{current_failure, send_failure},
};

/// `-EAGAIN`, as the tracepoint's `int ret` holds it.
const AGAIN: i32 = -(errno::EAGAIN as i32);

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    if crate::hooks_only() {
        return 0;
    }
    // TP_PROTO(struct sock *sk, int ret, int flags)
    let ret = ctx.arg::<u64>(1) as i32;
    if ret == AGAIN {
        on_send_again(ctx.arg(0));
    }
    0
}

#[inline(always)]
fn on_send_again(sk: u64) {
    let Some(head) = layout::head(sk) else { return };
    if head.num != 0 || layout::protocol(sk) != u16::from(proto::UDP) {
        return;
    }
    let mut event = current_failure(errno::EAGAIN, op::SEND, proto::UDP, head.family as u8);
    event.netns = layout::netns(sk);
    event.socket_cookie = layout::cookie(sk);
    send_failure(&event);
}
