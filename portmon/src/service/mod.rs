//! What a service manager sees of the daemon: readiness, reload, stop and
//! watchdog notifications (`sd_notify`), signals, and the configuration
//! read again on SIGHUP.
//!
//! Nothing here needs systemd: without `NOTIFY_SOCKET` notifications are
//! skipped, and the rest works the same under any supervisor.

pub mod notify;
pub mod reload;
pub mod signals;
pub mod watchdog;
