//! The sd_notify protocol: one datagram of `KEY=value` lines to the unix
//! socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). See sd_notify(3).

use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

use crate::kernel::clock;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={value:?} is not a unix socket address")]
    Address {
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a socket to talk to the service manager")]
    Socket(#[source] io::Error),
}

/// Talks to the service manager, or to nobody when none asked.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier for the socket in `NOTIFY_SOCKET`, if set.
    pub fn from_env() -> Result<Self, NotifyError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(value) if !value.is_empty() => Self::to(&value),
            _ => Ok(Self { target: None }),
        }
    }

    /// A notifier for the socket at `value` (`/path` or `@abstract`).
    pub fn to(value: &str) -> Result<Self, NotifyError> {
        let address = |source| NotifyError::Address {
            value: value.to_owned(),
            source,
        };
        let addr = match value.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(name.as_bytes()).map_err(address)?
            }
            None => SocketAddr::from_pathname(value).map_err(address)?,
        };
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        Ok(Self {
            target: Some((socket, addr)),
        })
    }

    /// Whether a service manager listens.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// The programs are attached and the exporter listens.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload began; `ready` ends it.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            clock::monotonic_usec()
        ));
    }

    /// Shutdown began.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// The daemon is alive and well.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// A line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        // A service manager that went away is not the daemon's problem.
        if let Err(err) = socket.send_to_addr(message.as_bytes(), addr) {
            tracing::debug!("sd_notify failed: {err}");
        }
    }
}

/// How often the service manager wants a watchdog ping (`WATCHDOG_USEC`),
/// if it wants one from this process (`WATCHDOG_PID`, when set).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::to(path.to_str().unwrap()).unwrap();
        notifier.ready("8 programs attached");
        notifier.reloading();
        notifier.stopping();
        let mut buf = [0u8; 256];
        let mut next = || {
            let n = receiver.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        assert_eq!(next(), "READY=1\nSTATUS=8 programs attached");
        let reloading = next();
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        assert_eq!(next(), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("portmon-notify-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        Notifier::to(&format!("@{name}")).unwrap().watchdog();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn no_socket_no_manager() {
        assert!(!Notifier { target: None }.is_active());
        assert!(Notifier::to("relative\0nul").is_err());
    }
}
