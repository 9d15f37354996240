//! `portmon run`: the namespace helper forked off with CAP_SYS_ADMIN →
//! preflight → registry → load and attach → listen → give up capabilities
//! ([`start`], before any thread exists) → serve → ready → answer signals
//! (SIGHUP reloads) → detach with a deadline ([`serve`]).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};

use crate::{
    config::Config,
    exporter::{ExporterError, Metrics},
    failures::{self, ReaderProgress},
    http,
    kernel::{
        bpf::{FailureEvents, Kernel, LoadError, LoadOptions},
        capabilities::{self, CapabilityError},
        netns_opener,
        preflight::{self, PreflightError},
        resources,
    },
    registry::{Registry, RegistryError},
    report::error_line,
    service::{
        notify::{self, Notifier, NotifyError},
        reload::{self, ConfigSource},
        signals::{Request, Signals},
        watchdog,
    },
    state::State,
    workload::RuntimeState,
};

/// How long detaching may take before portmon exits anyway (the links go
/// with the process regardless).
const DETACH_DEADLINE: Duration = Duration::from_secs(5);
/// How often namespaces are looked for between scrapes, so that one that
/// lives a short while is entered (and its sockets seen) while it exists.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);
/// How often gone namespaces' kernel entries are looked for and given
/// back while namespaces come and go: the maps hold the entries of the
/// namespaces gone within about this plus the quarantine, so namespaces
/// made and dropped fast fill them unless the looks are frequent.
const RECLAIM_INTERVAL_CHURNING: Duration = Duration::from_millis(500);
/// The same on a host whose namespaces stay: a look walks `/proc` (a few
/// milliseconds), which twice a second would be most of an idle daemon's
/// CPU.
const RECLAIM_INTERVAL_SETTLED: Duration = Duration::from_secs(5);

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

/// What [`start`] set up with privileges, for [`serve`].
pub struct Started {
    kernel: Kernel,
    state: Arc<State>,
    failures: FailureEvents,
    listener: std::net::TcpListener,
    served: http::Served,
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
pub fn start(config: Config, served: http::Served) -> Result<Started, DaemonError> {
    start_namespace_helper()?;
    resources::bound_allocator();
    match resources::raise_descriptor_limit() {
        Ok(limit) => tracing::debug!(limit, "open descriptor limit raised to the hard limit"),
        Err(err) => tracing::warn!("cannot raise the open descriptor limit: {err}"),
    }
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
        port_tables: crate::kernel::bpf::loader::port_tables(config.port_stats_capacity),
        sockets: config.sockets_capacity,
        blocks_per_namespace: config.max_port_blocks_per_namespace,
        owner_percent: config.max_shared_percent_per_user,
        connect_search: config.connect_search,
        established_walk: config.established_walk,
        ..LoadOptions::default()
    };
    let (kernel, maps, failures) = Kernel::load(&env.cgroup_root, options)?;
    let listener = std::net::TcpListener::bind(config.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| DaemonError::Listen {
            addr: config.listen,
            source,
        })?;
    tracing::info!(addr = %config.listen, tls = served.is_tls(), api = config.api, "listening");

    let dropped = capabilities::drop_after_attach()?;
    tracing::info!(
        dropped = %capabilities::names(dropped.before & !dropped.after),
        kept = %capabilities::names(dropped.after),
        "capabilities given up after attach"
    );
    if netns_opener::helper().is_none() {
        tracing::warn!(
            "without CAP_SYS_ADMIN portmon cannot enter other network namespaces: the socket \
             inventory (portmon_sockets, portmon_listening_ports, portmon_ports_in_use, \
             /api/v1/ports) covers its own namespace only; kernel counters and failures \
             still cover every namespace"
        );
    }

    let state = Arc::new(State::new(
        maps,
        env.cgroup_root.clone(),
        RuntimeState::new(config.runtime_state_root.clone()),
        config.settings(registry),
        kernel.attached().to_vec(),
    ));
    Ok(Started {
        kernel,
        state,
        failures,
        listener,
        served,
        config,
    })
}

/// Forks the namespace helper first, so that it inherits nothing but the
/// standard descriptors, and hands it CAP_SYS_ADMIN and CAP_SYS_PTRACE,
/// which the daemon gives up at once: it loads and attaches the programs
/// with the unit's three capabilities alone (CAP_SYS_ADMIN would stand in
/// for CAP_BPF and CAP_PERFMON, `bpf_capable`/`perfmon_capable`). Without
/// CAP_SYS_ADMIN there is no helper, and the inventory covers portmon's own
/// namespace (said once, after attach).
fn start_namespace_helper() -> Result<(), DaemonError> {
    let held = capabilities::permitted()? & capabilities::NAMESPACE_HELPER;
    if held & (1 << capabilities::CAP_SYS_ADMIN) == 0 {
        return Ok(());
    }
    match netns_opener::start_helper(held) {
        Ok(pid) => tracing::info!(
            pid,
            kept = %capabilities::names(held),
            "namespace helper started: every network namespace is inventoried"
        ),
        Err(err) => tracing::warn!("{}", error_line(&err)),
    }
    capabilities::give_up(capabilities::NAMESPACE_HELPER)?;
    Ok(())
}

/// The unprivileged half: serves, announces readiness, reloads on SIGHUP,
/// and detaches on SIGTERM or SIGINT.
pub async fn serve(started: Started, source: ConfigSource) -> Result<(), DaemonError> {
    let Started {
        kernel,
        state,
        failures,
        listener,
        served,
        mut config,
    } = started;
    let notifier = Arc::new(Notifier::from_env()?);
    let progress = Arc::new(ReaderProgress::default());
    let reader = tokio::spawn(read_failures(failures, state.clone(), progress.clone()));

    let listener = TcpListener::from_std(listener).map_err(|source| DaemonError::Listen {
        addr: config.listen,
        source,
    })?;
    let mut signals = Signals::install().map_err(DaemonError::Signals)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics = Metrics::new(state.clone())?;
    let endpoints = crate::api::Endpoints::new(state.clone(), metrics, config.api);
    let server = tokio::spawn(http::serve(listener, Arc::new(endpoints), served, shutdown_rx));
    let watchdog = notify::watchdog_interval().map(|interval| {
        let probe_state = state.clone();
        watchdog::spawn(notifier.clone(), interval, progress, move || {
            probe_state.liveness()
        })
    });
    let status = format!(
        "{} programs attached, serving on {}",
        kernel.attached().len(),
        config.listen
    );
    tracing::info!(programs = kernel.attached().len(), "ready");
    let reconciler = tokio::spawn(reconcile(state.clone()));
    let reclaimer = tokio::spawn(reclaim(state.clone()));
    notifier.ready(&status);

    loop {
        match signals.next().await {
            Request::Reload => {
                notifier.reloading();
                match reload::reload(&state, &config, &source) {
                    Ok(applied) => config = applied,
                    Err(err) => tracing::error!(
                        "reload failed, the running configuration stays: {}",
                        error_line(&err)
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
    reclaimer.abort();
    reader.abort();
    let _ = server.await;
    let detach = tokio::task::spawn_blocking(move || kernel.detach());
    if tokio::time::timeout(DETACH_DEADLINE, detach).await.is_err() {
        tracing::warn!("detaching took longer than {DETACH_DEADLINE:?}; exiting, the kernel drops the links");
    }
    Ok(())
}

/// Rescans namespaces and reads the kernel maps on a schedule, so that
/// `/healthz` and the watchdog know both still answer when nobody scrapes.
async fn reconcile(state: Arc<State>) {
    let mut ticks = tokio::time::interval(RECONCILE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        netns_opener::check_helper();
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            state.rescan_namespaces();
            state.health();
            resources::trim_allocator();
        })
        .await;
    }
}

/// Gives back the kernel entries of gone namespaces on a schedule: often
/// while namespaces come and go, seldom while they stay.
async fn reclaim(state: Arc<State>) {
    let mut interval = RECLAIM_INTERVAL_CHURNING;
    loop {
        tokio::time::sleep(interval).await;
        let state = state.clone();
        let churning = tokio::task::spawn_blocking(move || state.reclaim())
            .await
            .unwrap_or(true);
        interval = if churning {
            RECLAIM_INTERVAL_CHURNING
        } else {
            RECLAIM_INTERVAL_SETTLED
        };
    }
}

/// Files failures as they come; a reader that cannot wait on the ring
/// buffer says so once, and the watchdog, seeing no progress, still pings
/// (the reader is idle, not stuck): the counters go on.
async fn read_failures(events: FailureEvents, state: Arc<State>, progress: Arc<ReaderProgress>) {
    if let Err(err) = failures::follow(events, state.failure_log(), progress).await {
        tracing::error!("failure events are no longer read: {}", error_line(&err));
    }
}
