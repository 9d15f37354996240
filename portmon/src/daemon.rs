//! `portmon run`: preflight → registry → load and attach → listen → give up
//! capabilities ([`start`], before any thread exists) → serve → ready →
//! answer signals (SIGHUP reloads) → detach with a deadline ([`serve`]).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, RwLock,
    },
    time::{Duration, Instant},
};

use aya::maps::RingBuf;
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use portmon_common::{map, Owner};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    cgroups::CgroupPaths,
    config::Config,
    counters::{self, Health, PortCount, PortCounters},
    ephemeral::EphemeralReport,
    exporter::{ExporterError, MapUsage, Metrics, NetnsLabel},
    failures::{Failure, FailureKey, FailureLog, FailureReader},
    fnv::FastSet,
    http,
    inventory::{Inventory, Snapshot},
    loader::{Kernel, KernelMaps, LoadError, LoadOptions},
    map_batch::read_all,
    preflight::{self, PreflightError},
    registry::{Registry, RegistryError},
    service::{
        capabilities::{self, CapabilityError},
        notify::{self, Notifier, NotifyError},
        reload::{self, ConfigSource},
        signals::{Request, Signals},
        watchdog::{self, Heartbeat},
    },
    socket_table::SocketTable,
};

/// How long detaching may take before portmon exits anyway (the links go
/// with the process regardless).
const DETACH_DEADLINE: Duration = Duration::from_secs(5);
/// How often the failure reader wakes when nothing arrives, to notice shutdown.
const FAILURE_POLL: Duration = Duration::from_millis(200);
/// How old the list of namespaces may be when a snapshot is taken.
const NAMESPACE_RESCAN: Duration = Duration::from_secs(2);
/// How often namespaces are looked for between scrapes, so that one that
/// lives a short while is entered (and its sockets seen) while it exists.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
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
    #[error(transparent)]
    Capabilities(#[from] CapabilityError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error(transparent)]
    Exporter(#[from] ExporterError),
}

/// The kernel maps the daemon reads.
struct Maps {
    ports: PortCounters,
    sockets: SocketTable,
    bind_before_connect: BpfHashMap<MapData, [u8; 16], u64>,
    health: Array<MapData, u64>,
}

/// What the HTTP handlers read.
pub struct State {
    maps: Mutex<Maps>,
    failures: Mutex<FailureLog>,
    inventory: Mutex<(Inventory, Instant)>,
    cgroups: Mutex<CgroupPaths>,
    settings: RwLock<Arc<Settings>>,
    pub programs: Vec<&'static str>,
    pub options: LoadOptions,
}

/// What a reload can change while the programs stay attached.
#[derive(Debug)]
pub struct Settings {
    pub registry: Registry,
    pub port_series_limit: usize,
    pub netns_label: NetnsLabel,
    pub ephemeral_destinations: usize,
}

impl Settings {
    /// The reloadable part of `config`, with its registry loaded.
    pub fn new(config: &Config, registry: Registry) -> Self {
        Self {
            registry,
            port_series_limit: config.port_series_limit,
            netns_label: config.netns_label,
            ephemeral_destinations: config.ephemeral_destinations,
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("programs", &self.programs)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts new settings in force; scrapes under way finish with the old.
    pub fn replace_settings(&self, settings: Settings) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(settings);
    }

    /// Every port's counters.
    pub fn ports(&self) -> Vec<PortCount> {
        let maps = lock(&self.maps);
        counters::read_ports(&maps.ports, &maps.sockets.read())
    }

    /// portmon's own health counters.
    pub fn health(&self) -> Health {
        counters::read_health(&lock(&self.maps).health)
    }

    /// Who bound, listened on or connected each socket the kernel side
    /// follows, by cookie.
    pub fn owners(&self) -> HashMap<u64, Owner> {
        lock(&self.maps).sockets.owners()
    }

    /// The systemd units of the cgroups `ids`, for those whose path names one.
    pub fn units(&self, ids: impl IntoIterator<Item = u64>) -> HashMap<u64, String> {
        let mut cgroups = lock(&self.cgroups);
        ids.into_iter()
            .filter_map(|id| cgroups.unit(id).map(|unit| (id, unit)))
            .collect()
    }

    /// TCP connects from sockets bound to port 0, by command.
    pub fn bind_before_connect(&self) -> Vec<(String, u64)> {
        let maps = lock(&self.maps);
        read_all(&maps.bind_before_connect)
            .into_iter()
            .map(|(c, n)| (crate::api::comm(&c), n))
            .collect()
    }

    /// Cookies of the sockets that hold their port by bind() or listen().
    pub fn exclusive_sockets(&self) -> FastSet<u64> {
        let maps = lock(&self.maps);
        maps.sockets
            .read()
            .into_iter()
            .filter(|f| f.holds_exclusively())
            .map(|f| f.cookie)
            .collect()
    }

    /// How full each namespace's ephemeral pool is, as of `snapshot`.
    pub fn ephemeral(&self, snapshot: &Snapshot) -> EphemeralReport {
        crate::ephemeral::assess(
            &snapshot.sockets,
            &snapshot.pools,
            &self.exclusive_sockets(),
            self.settings().ephemeral_destinations,
        )
    }

    /// Entries and capacity of each kernel map.
    pub fn map_usage(&self) -> Vec<MapUsage> {
        let maps = lock(&self.maps);
        let o = self.options;
        let health = counters::read_health(&maps.health);
        vec![
            // The kernel's own count of entries handed out: every one taken,
            // in use or lost to a race, stops the map short of its capacity.
            MapUsage {
                name: map::PORT_STATS,
                entries: health.port_blocks_taken.min(o.port_stats.into()),
                capacity: o.port_stats.into(),
            },
            MapUsage {
                name: map::PORT_TABLES,
                entries: health.port_tables_taken.min(o.port_tables.into()),
                capacity: o.port_tables.into(),
            },
            MapUsage {
                name: map::SOCKETS,
                entries: maps.sockets.read().len() as u64,
                capacity: maps.sockets.capacity().into(),
            },
            MapUsage {
                name: map::BIND_BEFORE_CONNECT,
                entries: read_all(&maps.bind_before_connect).len() as u64,
                capacity: portmon_common::capacity::BIND_BEFORE_CONNECT.into(),
            },
        ]
    }

    /// Failure counts since start.
    pub fn failure_counts(&self) -> BTreeMap<FailureKey, u64> {
        lock(&self.failures).counts().clone()
    }

    /// The most recent failures, newest first.
    pub fn recent_failures(&self, limit: usize) -> Vec<Failure> {
        lock(&self.failures).recent().rev().take(limit).cloned().collect()
    }

    /// Finds new namespaces and opens their sockets; lets gone ones go.
    pub fn rescan_namespaces(&self) {
        let mut guard = lock(&self.inventory);
        guard.0.rescan();
        guard.1 = Instant::now();
    }

    /// A fresh inventory of every namespace, and their names by cookie.
    pub fn snapshot(&self) -> (Snapshot, HashMap<u64, String>) {
        let mut guard = lock(&self.inventory);
        let (inventory, scanned) = &mut *guard;
        if scanned.elapsed() > NAMESPACE_RESCAN {
            inventory.rescan();
            *scanned = Instant::now();
        }
        let snapshot = inventory.snapshot();
        let names = inventory
            .namespaces()
            .iter()
            .map(|n| (n.cookie, n.name.clone()))
            .collect();
        (snapshot, names)
    }
}

/// What [`start`] set up with privileges, for [`serve`].
pub struct Started {
    kernel: Kernel,
    state: Arc<State>,
    failures: RingBuf<MapData>,
    listener: std::net::TcpListener,
    config: Config,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The privileged half: preflight, registry, load and attach, listen, then
/// capabilities given up. Runs before any other thread exists, because
/// capabilities belong to threads.
pub fn start(config: Config) -> Result<Started, DaemonError> {
    let env = preflight::check()?;
    tracing::info!(kernel = %env.kernel_release, cgroup = %env.cgroup_root.display(), "preflight passed");
    if env.cgroup_is_subtree {
        tracing::warn!("the cgroup v2 mount is a subtree: only sockets of processes below it are seen");
    }
    let registry = Registry::load(config.registry.as_deref())?;
    let source = registry.source();
    tracing::info!(path = %source.path.display(), format = source.format.label(), entries = source.entries, "registry loaded");

    let options = LoadOptions {
        port_stats: config.port_stats_capacity,
        port_tables: crate::loader::port_tables(config.port_stats_capacity),
        sockets: config.sockets_capacity,
        hooks_only: false,
    };
    let (kernel, maps) = Kernel::load(&env.cgroup_root, options)?;
    let KernelMaps {
        ports,
        sockets,
        bind_before_connect,
        health,
        failures,
    } = maps;
    let listener = std::net::TcpListener::bind(config.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| DaemonError::Listen {
            addr: config.listen,
            source,
        })?;
    tracing::info!(addr = %config.listen, "listening");

    let dropped = capabilities::drop_after_attach()?;
    tracing::info!(
        dropped = %capabilities::names(dropped.before & !dropped.after),
        kept = %capabilities::names(dropped.after),
        "capabilities given up after attach"
    );
    if !crate::netns::can_enter_others() {
        tracing::warn!(
            "without CAP_SYS_ADMIN portmon cannot enter other network namespaces: the socket \
             inventory (portmon_sockets, portmon_listening_ports, portmon_ports_in_use, \
             /api/v1/ports) covers its own namespace only; kernel counters and failures \
             still cover every namespace"
        );
    }

    let state = Arc::new(State {
        maps: Mutex::new(Maps {
            ports,
            sockets,
            bind_before_connect,
            health,
        }),
        failures: Mutex::new(FailureLog::default()),
        inventory: Mutex::new((Inventory::scan(), Instant::now())),
        cgroups: Mutex::new(CgroupPaths::new(env.cgroup_root.clone())),
        settings: RwLock::new(Arc::new(Settings::new(&config, registry))),
        programs: kernel.attached().to_vec(),
        options,
    });
    Ok(Started {
        kernel,
        state,
        failures,
        listener,
        config,
    })
}

/// The unprivileged half: serves, announces readiness, reloads on SIGHUP,
/// and detaches on SIGTERM or SIGINT.
pub async fn serve(started: Started, source: ConfigSource) -> Result<(), DaemonError> {
    let Started {
        kernel,
        state,
        failures,
        listener,
        mut config,
    } = started;
    let notifier = Arc::new(Notifier::from_env()?);
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = Arc::new(Heartbeat::default());
    let reader = spawn_failure_reader(
        FailureReader::new(failures),
        state.clone(),
        stop.clone(),
        heartbeat.clone(),
    );

    let listener = TcpListener::from_std(listener).map_err(|source| DaemonError::Listen {
        addr: config.listen,
        source,
    })?;
    let mut signals = Signals::install().map_err(DaemonError::Signals)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics = Metrics::new(state.clone())?;
    let handler_state = state.clone();
    let handler: http::Handler =
        Arc::new(move |req: &http::Request| crate::api::route(&handler_state, &metrics, req));
    let server = tokio::spawn(http::serve(listener, handler, shutdown_rx));
    let watchdog = notify::watchdog_interval().map(|interval| {
        let probe_state = state.clone();
        watchdog::spawn(notifier.clone(), interval, heartbeat, move || {
            probe_state.health();
        })
    });
    let status = format!(
        "{} programs attached, serving on {}",
        kernel.attached().len(),
        config.listen
    );
    tracing::info!(programs = kernel.attached().len(), "ready");
    let reconciler = tokio::spawn(reconcile(state.clone()));
    notifier.ready(&status);

    loop {
        match signals.next().await {
            Request::Reload => {
                notifier.reloading();
                match reload::reload(&state, &config, &source) {
                    Ok(applied) => config = applied,
                    Err(err) => tracing::error!(
                        "reload failed, the running configuration stays: {}",
                        crate::loader::error_line(&err)
                    ),
                }
                notifier.ready(&status);
            }
            Request::Stop(name) => {
                tracing::info!(signal = name, "stopping");
                break;
            }
        }
    }

    notifier.stopping();
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    let _ = shutdown_tx.send(true);
    reconciler.abort();
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

/// Rescans namespaces on a schedule; scrapes take their own snapshot.
async fn reconcile(state: Arc<State>) {
    let mut ticks = tokio::time::interval(RECONCILE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || state.rescan_namespaces()).await;
    }
}

/// A thread that waits on the ring buffer and files failures as they come.
fn spawn_failure_reader(
    mut reader: FailureReader,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    heartbeat: Arc<Heartbeat>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let timeout_ms = FAILURE_POLL.as_millis() as libc::c_int;
        while !stop.load(Ordering::Relaxed) {
            heartbeat.beat();
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
