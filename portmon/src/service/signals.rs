//! The signals the daemon answers: SIGTERM and SIGINT stop it, SIGHUP
//! reloads its configuration.

use tokio::signal::unix::{signal, Signal as Stream, SignalKind};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Read the configuration again.
    Reload,
    /// Stop; the signal's name.
    Stop(&'static str),
}

/// Handlers for the daemon's signals, installed once.
#[derive(Debug)]
pub struct Signals {
    term: Stream,
    int: Stream,
    hup: Stream,
}

impl Signals {
    /// Installs the handlers. Until then SIGHUP would kill the process, so
    /// this comes before readiness is announced.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.term.recv() => Request::Stop("SIGTERM"),
            _ = self.int.recv() => Request::Stop("SIGINT"),
            _ = self.hup.recv() => Request::Reload,
        }
    }
}
