//! `portmon run`: preflight → load and attach → serve → ready → wait for a
//! signal → detach with a deadline.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use aya::maps::{Array, HashMap, MapData};
use portmon_common::{Owner, PortKey, PortStats};
use serde::Serialize;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    config::Config,
    counters::{self, Health, PortCount},
    failures::{Failure, FailureLog, FailureReader},
    http::{self, Request, Response},
    loader::{Kernel, KernelMaps, LoadError, LoadOptions},
    preflight::{self, PreflightError},
};

/// How long detaching may take before portmon exits anyway (the links go
/// with the process regardless).
const DETACH_DEADLINE: Duration = Duration::from_secs(5);
/// How often the failure reader wakes when nothing arrives, to notice shutdown.
const FAILURE_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot listen on {addr}: pick another address with --listen")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// What the HTTP handlers read: the kernel maps and the failure log.
pub struct State {
    port_stats: Mutex<HashMap<MapData, PortKey, PortStats>>,
    #[expect(dead_code, reason = "read by the inventory (next step of the exporter work)")]
    owners: Mutex<HashMap<MapData, u64, Owner>>,
    health: Mutex<Array<MapData, u64>>,
    failures: Mutex<FailureLog>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// Every port's counters.
    pub fn ports(&self) -> Vec<PortCount> {
        counters::read_ports(&lock(&self.port_stats))
    }

    /// portmon's own health counters.
    pub fn health(&self) -> Health {
        counters::read_health(&lock(&self.health))
    }

    /// The most recent failures, newest first.
    pub fn recent_failures(&self, limit: usize) -> Vec<Failure> {
        lock(&self.failures).recent().rev().take(limit).cloned().collect()
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let env = preflight::check()?;
    tracing::info!(
        kernel = %env.kernel_release, cgroup = %env.cgroup_root.display(),
        "preflight passed"
    );
    if env.cgroup_is_subtree {
        tracing::warn!("the cgroup v2 mount is a subtree: only sockets of processes below it are seen");
    }
    let capacity = LoadOptions {
        port_stats: config.port_stats_capacity,
        owners: config.owners_capacity,
        sockets: config.sockets_capacity,
        hooks_only: false,
    };
    let (kernel, maps) = Kernel::load(&env.cgroup_root, capacity)?;
    let KernelMaps {
        port_stats,
        owners,
        health,
        failures,
        ..
    } = maps;
    let state = Arc::new(State {
        port_stats: Mutex::new(port_stats),
        owners: Mutex::new(owners),
        health: Mutex::new(health),
        failures: Mutex::new(FailureLog::default()),
    });

    let stop = Arc::new(AtomicBool::new(false));
    let reader = spawn_failure_reader(FailureReader::new(failures), state.clone(), stop.clone());

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: config.listen,
            source,
        })?;
    tracing::info!(addr = %config.listen, "listening");
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let handler_state = state.clone();
    let handler: http::Handler = Arc::new(move |req: &Request| route(&handler_state, req));
    let server = tokio::spawn(http::serve(listener, handler, shutdown_rx));
    tracing::info!(programs = kernel.attached().len(), "ready");

    wait_for_signal().await?;

    let _ = shutdown_tx.send(true);
    let _ = server.await;
    stop.store(true, Ordering::Relaxed);
    let detach = tokio::task::spawn_blocking(move || {
        kernel.detach();
        let _ = reader.join();
    });
    if tokio::time::timeout(DETACH_DEADLINE, detach).await.is_err() {
        tracing::warn!("detaching took longer than {DETACH_DEADLINE:?}; exiting, the kernel drops the links");
    }
    Ok(())
}

async fn wait_for_signal() -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "stopping");
    Ok(())
}

/// A thread that waits on the ring buffer and files failures as they come.
fn spawn_failure_reader(
    mut reader: FailureReader,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let timeout_ms = FAILURE_POLL.as_millis() as libc::c_int;
        while !stop.load(Ordering::Relaxed) {
            let mut fds = libc::pollfd {
                fd: reader.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut fds, 1, timeout_ms) };
            let mut log = FailureLog::default();
            if reader.drain_into(&mut log) > 0 || log.undecodable > 0 {
                let mut shared = lock(&state.failures);
                shared.undecodable += log.undecodable;
                for failure in log.recent() {
                    shared.record(failure.clone());
                }
            }
        }
    })
}

#[derive(Serialize)]
struct PortCountJson {
    netns: u64,
    proto: portmon_common::Proto,
    family: portmon_common::Family,
    role: portmon_common::Role,
    port: u16,
    binds: u64,
    listens: u64,
    connects: u64,
    live: i64,
}

fn route(state: &State, req: &Request) -> Response {
    match req.path.as_str() {
        "/healthz" => Response::text(200, "ok\n"),
        "/api/v1/counters" => {
            let ports: Vec<PortCountJson> = state
                .ports()
                .into_iter()
                .map(|p| PortCountJson {
                    netns: p.netns,
                    proto: p.proto,
                    family: p.family,
                    role: p.role,
                    port: p.port,
                    binds: p.stats.binds,
                    listens: p.stats.listens,
                    connects: p.stats.connects,
                    live: p.stats.live,
                })
                .collect();
            Response::json(&ports)
        }
        "/api/v1/failures" => {
            let limit = req.param("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
            Response::json(&state.recent_failures(limit))
        }
        _ => Response::text(
            404,
            "not found: try /metrics, /healthz, /api/v1/counters, /api/v1/failures\n",
        ),
    }
}
