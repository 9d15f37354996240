//! The only owner of the kernel object: loads it, attaches every program,
//! and hands out the maps. Dropping `Kernel` detaches everything; every
//! attachment is a bpf link owned by this process, so a killed daemon
//! leaves nothing behind either.

use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    path::PathBuf,
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData, MapError, Queue, RingBuf},
    programs::{
        cgroup_sock::CgroupSockLink, cgroup_sock_addr::CgroupSockAddrLink,
        raw_trace_point::RawTracePointLink, sock_ops::SockOpsLink, CgroupAttachMode, Program, ProgramError,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use portmon_common::{capacity, global, map, OwnerQuota, SLOTS_PER_GROUP, SOCKETS_PER_GROUP};

use super::{
    attached::AttachedCheck,
    btf::{Btf, BtfError},
    connect_search::ConnectSearch,
    counters::PortCounters,
    events::FailureEvents,
    mapped_array::{MappedArray, MappedArrayError},
    maps::{Capacities, KernelMaps},
    pools::PoolCounters,
    program_stats::ProgramIds,
    programs::{Hook, OPTIONAL, OPT_IN, PROGRAMS},
    reclaim::{FreeQueues, Owners, Reclaim},
    reserve::Split,
    socket_table::{SocketTable, SocketTableError},
    walk::{self, EhashWalk},
};

/// The kernel programs, built by build.rs from `portmon-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portmon.bpf.o"));

/// How to load the kernel programs: map sizes, and the benchmark's floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Entries of `PORT_STATS`: blocks of 64 ports, per namespace,
    /// protocol, family and kind of counter.
    pub port_stats: u32,
    /// Entries of `PORT_TABLES`: one per namespace, protocol, family and
    /// kind of counter in use; `port_tables(port_stats)` unless a test
    /// wants them few.
    pub port_tables: u32,
    /// Slots of `SOCKETS`: sockets followed at once (bound, listening,
    /// connected outbound). Rounded up to a power of two.
    pub sockets: u32,
    /// Entries of `POOL_KEYS`: pools counted (namespace, protocol, family
    /// and way of handing out a port).
    pub pools: u32,
    /// Blocks of `PORT_STATS` only the host's namespace takes, on top of
    /// `port_stats`; its tables and pools have entries of their own too.
    pub host_blocks: u32,
    /// Blocks any other namespace may hold, split over its tables.
    pub blocks_per_namespace: u32,
    /// The share, in percent, of each map's shared entries one
    /// unprivileged user's namespaces may hold.
    pub owner_percent: u32,
    /// Every program returns at once (the overhead benchmark's floor: what
    /// the hooks cost with nothing done in them).
    pub hooks_only: bool,
    /// Time how long each TCP connect spends finding a local port
    /// (`sock_ops`, and a hash insert per connect in the state tracepoint).
    pub connect_search: bool,
    /// List every sharing namespace's connections with the established-table
    /// walk, where the kernel loads it.
    pub established_walk: bool,
}

impl LoadOptions {
    /// How the entries of each map are split between the namespaces.
    pub fn split(&self) -> Split {
        Split::new(self.port_stats.max(1), self.port_tables, self.pools)
    }

    /// The most one unprivileged user may hold of each map shared.
    pub fn owner_quota(&self) -> OwnerQuota {
        let groups = socket_slots(self.sockets) / SLOTS_PER_GROUP as u32;
        self.split()
            .owner_quota(self.owner_percent, groups * SOCKETS_PER_GROUP as u32)
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            port_stats: capacity::PORT_STATS,
            port_tables: port_tables(capacity::PORT_STATS),
            sockets: capacity::SOCKETS,
            pools: capacity::POOLS,
            host_blocks: capacity::HOST_BLOCKS,
            blocks_per_namespace: capacity::BLOCKS_PER_NAMESPACE,
            owner_percent: capacity::OWNER_PERCENT,
            hooks_only: false,
            connect_search: false,
            established_walk: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    SocketTable(#[from] SocketTableError),
    #[error(transparent)]
    MappedArray(#[from] MappedArrayError),
    #[error("the kernel refused portmon's maps or object")]
    Object(#[source] EbpfError),
    #[error("the kernel object has no program {program}")]
    MissingProgram { program: &'static str },
    #[error("program {program} is not of the type its hook needs")]
    WrongProgramType { program: &'static str },
    #[error("the kernel rejected program {program}")]
    Load {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("failed to attach {program} to {target}")]
    Attach {
        program: &'static str,
        target: String,
        #[source]
        source: ProgramError,
    },
    #[error("cannot open cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel object has no map {map}")]
    MissingMap { map: &'static str },
    #[error("cannot tell portmon's own network namespace (SO_NETNS_COOKIE, Linux 5.14)")]
    HostNetns(#[source] crate::kernel::netns::NetnsError),
    #[error("the established-table walk cannot run here, each namespace's dump walks the table")]
    Walk(#[source] walk::WalkSetupError),
    #[error("map {map} does not have the layout portmon expects")]
    MapLayout {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// A program's name and whether it attached (to the target named) here.
pub type ProbeOutcome = (&'static str, Result<String, LoadError>);

/// The loaded, attached kernel programs.
///
/// Loading and attaching are separate steps so that [`suspend`](Self::suspend)
/// and [`resume`](Self::resume) can switch the links alone.
#[derive(Debug)]
pub struct Kernel {
    // Before `ebpf`: links go first on drop, as on `detach`.
    links: Vec<Attachment>,
    ebpf: Ebpf,
    /// Programs to attach: every one but the opt-in ones not asked for.
    wanted: Vec<&'static str>,
    attached: Vec<&'static str>,
    /// Optional programs this kernel has no hook for.
    skipped: Vec<&'static str>,
    cgroup: File,
    cgroup_root: PathBuf,
}

/// One program's link to its hook; dropping it detaches the program.
#[derive(Debug)]
#[expect(dead_code, reason = "a link is held for its drop, which detaches")]
enum Attachment {
    SockAddr(CgroupSockAddrLink),
    Sock(CgroupSockLink),
    SockOps(SockOpsLink),
    RawTracepoint(RawTracePointLink),
}

impl Kernel {
    /// Loads the object and attaches every program, attaching cgroup
    /// programs to `cgroup_root`; hands out the maps the readers use and
    /// the ring buffer failures arrive on.
    pub fn load(
        cgroup_root: &std::path::Path,
        options: LoadOptions,
    ) -> Result<(Self, KernelMaps, FailureEvents), LoadError> {
        let host = crate::kernel::netns::current_cookie().map_err(LoadError::HostNetns)?;
        let (mut ebpf, walkable) = open_object(options, host)?;
        let cgroup = open_cgroup(cgroup_root)?;
        for &(name, _) in PROGRAMS {
            load(&mut ebpf, name)?;
        }
        let walk = walkable
            .and_then(|()| {
                if options.established_walk {
                    EhashWalk::attach(&mut ebpf)
                } else {
                    Err(walk::WalkSetupError::Off)
                }
            })
            .inspect_err(|err| {
                tracing::info!(
                    "each namespace's sock_diag dump walks the established-socket table itself: {}",
                    crate::report::error_line(err)
                );
            })
            .ok();
        let (mut maps, events) = take_maps(&mut ebpf, options, host)?;
        maps.walk = walk;
        let wanted = PROGRAMS
            .iter()
            .map(|&(name, _)| name)
            .filter(|name| options.connect_search || !OPT_IN.contains(name))
            .collect();
        let mut kernel = Self {
            links: Vec::with_capacity(PROGRAMS.len()),
            ebpf,
            wanted,
            attached: Vec::with_capacity(PROGRAMS.len()),
            skipped: Vec::new(),
            cgroup,
            cgroup_root: cgroup_root.to_owned(),
        };
        kernel.resume()?;
        Ok((kernel, maps, events))
    }

    /// Tries each program on its own and reports, per program, whether it
    /// loads and attaches here (and where). Everything is detached again on
    /// return.
    pub fn probe(cgroup_root: &std::path::Path) -> Result<Vec<ProbeOutcome>, LoadError> {
        let host = crate::kernel::netns::current_cookie().map_err(LoadError::HostNetns)?;
        let (mut ebpf, walkable) = open_object(LoadOptions::default(), host)?;
        let cgroup = open_cgroup(cgroup_root)?;
        let mut outcomes: Vec<ProbeOutcome> = PROGRAMS
            .iter()
            .map(|&(name, hook)| {
                let outcome = load(&mut ebpf, name)
                    .and_then(|()| attach(&mut ebpf, name, hook, &cgroup, cgroup_root))
                    .map(|_link| target(hook, cgroup_root));
                (name, outcome)
            })
            .collect();
        let walk = walkable
            .and_then(|()| EhashWalk::attach(&mut ebpf))
            .map(|_| format!("iterator over {}", map::WALK_CHUNKS))
            .map_err(LoadError::Walk);
        outcomes.push((portmon_common::program::WALK_ESTABLISHED, walk));
        Ok(outcomes)
    }

    /// Names of the attached programs.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Detaches every program but keeps them loaded, their maps as they
    /// are, until `resume`. The overhead bench switches portmon off and on
    /// this way, several times a second: loading takes longer than a slice
    /// (figures in docs/performance.md).
    pub fn suspend(&mut self) {
        self.links.clear();
        self.attached.clear();
    }

    /// Attaches every program not attached.
    pub fn resume(&mut self) -> Result<(), LoadError> {
        for &(name, hook) in PROGRAMS {
            if self.attached.contains(&name) || !self.wanted.contains(&name) {
                continue;
            }
            let link = match attach(&mut self.ebpf, name, hook, &self.cgroup, &self.cgroup_root) {
                Ok(link) => link,
                Err(err) if OPTIONAL.contains(&name) => {
                    if !self.skipped.contains(&name) {
                        tracing::info!(
                            program = name,
                            "not attached, this kernel has no such hook (older than Linux 6.3): {}",
                            crate::report::error_line(&err)
                        );
                        self.skipped.push(name);
                    }
                    continue;
                }
                Err(err) => return Err(err),
            };
            tracing::info!(
                program = name,
                target = target(hook, &self.cgroup_root),
                "attached"
            );
            self.links.push(link);
            self.attached.push(name);
        }
        Ok(())
    }

    /// Detaches every program (the same happens on drop).
    pub fn detach(self) {
        let Self {
            links,
            ebpf,
            attached,
            ..
        } = self;
        drop(links);
        drop(ebpf);
        tracing::info!(programs = attached.len(), "detached");
    }
}

/// Takes the maps out of a loaded object: the readers' bundle, and the
/// ring buffer failures arrive on.
fn take_maps(
    ebpf: &mut Ebpf,
    options: LoadOptions,
    host_netns: u64,
) -> Result<(KernelMaps, FailureEvents), LoadError> {
    fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        let map = ebpf.take_map(name).ok_or(LoadError::MissingMap { map: name })?;
        T::try_from(map).map_err(|source| LoadError::MapLayout { map: name, source })
    }
    let mut array = |name: &'static str| match ebpf.take_map(name) {
        Some(Map::Array(data)) => Ok(data),
        Some(_) => Err(LoadError::MapLayout {
            map: name,
            source: MapError::InvalidMapType { map_type: 0 },
        }),
        None => Err(LoadError::MissingMap { map: name }),
    };
    let sockets = SocketTable::new(array(map::SOCKET_COOKIES)?, array(map::SOCKETS)?)?;
    let ports = PortCounters::new(array(map::PORT_TABLES)?, array(map::PORT_STATS)?)?;
    let owner_held = MappedArray::new(
        array(map::OWNER_HELD)?,
        map::OWNER_HELD,
        size_of::<portmon_common::OwnerHeld>(),
    )?;
    // Every program is loaded by now: each has its id.
    let ids: Vec<(&'static str, u32, RawFd)> = PROGRAMS
        .iter()
        .filter_map(|&(name, _)| {
            let program = ebpf.program(name)?;
            let fd = program.fd().ok()?.as_fd().as_raw_fd();
            Some((name, program.info().ok()?.id(), fd))
        })
        .collect();
    let attached = AttachedCheck::new(ids.iter().map(|&(name, id, _)| (name, id)).collect());
    let mut queue = |name: &'static str| take::<Queue<MapData, u32>>(ebpf, name);
    let free = FreeQueues {
        tables: queue(map::FREE_PORT_TABLES)?,
        blocks: queue(map::FREE_PORT_BLOCKS)?,
        pools: queue(map::FREE_POOLS)?,
        reserved_tables: queue(map::FREE_RESERVED_PORT_TABLES)?,
        reserved_blocks: queue(map::FREE_RESERVED_PORT_BLOCKS)?,
        reserved_pools: queue(map::FREE_RESERVED_POOLS)?,
    };
    let owners = Owners {
        held: owner_held,
        of_pools: take(ebpf, map::POOL_OWNERS)?,
    };
    let reclaim = Reclaim::new(
        take::<BpfHashMap<MapData, _, _>>(ebpf, map::PORT_TABLE_INDEX)?,
        take::<BpfHashMap<MapData, _, _>>(ebpf, map::POOL_INDEX)?,
        free,
        options.split(),
        owners,
    );
    let maps = KernelMaps {
        programs: ProgramIds(ids),
        attached,
        ports,
        sockets,
        pools: PoolCounters {
            keys: take(ebpf, map::POOL_KEYS)?,
            counts: take(ebpf, map::POOL_COUNTS)?,
            split: options.split(),
        },
        bind_before_connect: take(ebpf, map::BIND_BEFORE_CONNECT)?,
        health: take(ebpf, map::HEALTH)?,
        connect_search: ConnectSearch {
            histograms: take(ebpf, map::CONNECT_SEARCH)?,
            overflow: take(ebpf, map::CONNECT_SEARCH_OVERFLOW)?,
        },
        capacities: Capacities {
            port_stats: options.port_stats.saturating_add(options.host_blocks),
            port_tables: options.port_tables.saturating_add(capacity::HOST_ENTRIES),
            pools: options.pools.saturating_add(capacity::HOST_ENTRIES),
        },
        host_netns,
        reclaim,
        retired: Default::default(),
        walk: None,
    };
    let events = FailureEvents::new(take::<RingBuf<MapData>>(ebpf, map::FAILURES)?);
    Ok((maps, events))
}

/// Opens the object; the second part says whether the established-table
/// walk can run here, or why not.
fn open_object(
    options: LoadOptions,
    host_netns: u64,
) -> Result<(Ebpf, Result<(), walk::WalkSetupError>), LoadError> {
    raise_memlock_limit();
    let btf = Btf::vmlinux()?;
    let layout = btf.kernel_layout()?;
    let walk_setup = walk::layout(&btf).and_then(|l| Ok((l, walk::chunks()?)));
    let (walk_layout, walk_chunks) = walk_setup.as_ref().map_or((Default::default(), 1), |&s| s);
    let hooks_only = u8::from(options.hooks_only);
    let connect_search = u8::from(options.connect_search);
    let slots = socket_slots(options.sockets);
    let groups = slots / SLOTS_PER_GROUP as u32;
    // The host's entries: tables and pools at fixed entries before the
    // shared ones, blocks in a reserve after every other.
    let host = capacity::HOST_ENTRIES;
    let split = options.split();
    let shared_blocks = split.shared_blocks;
    let reserved_blocks = split.reserved_blocks - split.shared_blocks;
    let reserved_tables = options.port_tables + host - split.shared_tables;
    let reserved_pools = options.pools + host - split.shared_pools;
    let quota = (options.blocks_per_namespace / capacity::HOST_ENTRIES).max(1);
    let owner_quota = options.owner_quota();
    EbpfLoader::new()
        // Entry 0 marks a block not yet taken: it is never handed out.
        .map_max_entries(
            map::PORT_STATS,
            split
                .reserved_blocks
                .saturating_add(options.host_blocks)
                .saturating_add(1),
        )
        // Entry 0 again: a cached index that no table has.
        .map_max_entries(
            map::PORT_TABLES,
            options.port_tables.saturating_add(host).saturating_add(1),
        )
        .map_max_entries(map::PORT_TABLE_INDEX, options.port_tables.max(1))
        // Entry 0 again, as for PORT_TABLES.
        .map_max_entries(
            map::POOL_KEYS,
            options.pools.saturating_add(host).saturating_add(1),
        )
        .map_max_entries(
            map::POOL_COUNTS,
            options.pools.saturating_add(host).saturating_add(1),
        )
        .map_max_entries(map::POOL_INDEX, options.pools.max(1))
        .map_max_entries(
            map::POOL_OWNERS,
            options.pools.saturating_add(host).saturating_add(1),
        )
        // Room for every entry of the part: an index is given back once.
        .map_max_entries(map::FREE_PORT_TABLES, (split.shared_tables - host).max(1))
        .map_max_entries(map::FREE_PORT_BLOCKS, shared_blocks.max(1))
        .map_max_entries(map::FREE_POOLS, (split.shared_pools - host).max(1))
        .map_max_entries(map::FREE_RESERVED_PORT_TABLES, reserved_tables.max(1))
        .map_max_entries(map::FREE_RESERVED_PORT_BLOCKS, reserved_blocks.max(1))
        .map_max_entries(map::FREE_RESERVED_POOLS, reserved_pools.max(1))
        .override_global(global::HOST_NETNS, &host_netns, true)
        .override_global(global::TABLE_BLOCK_QUOTA, &quota, true)
        .override_global(global::SHARED_BLOCKS, &split.shared_blocks, true)
        .override_global(global::RESERVED_BLOCKS, &split.reserved_blocks, true)
        .override_global(global::SHARED_TABLES, &split.shared_tables, true)
        .override_global(global::SHARED_POOLS, &split.shared_pools, true)
        .override_global(global::OWNER_QUOTA, &owner_quota, true)
        .map_max_entries(map::SOCKETS, slots)
        .map_max_entries(map::SOCKET_OWNERS, slots)
        .map_max_entries(map::SOCKET_COOKIES, groups)
        .override_global(global::HOOKS_ONLY, &hooks_only, true)
        .override_global(global::CONNECT_SEARCH, &connect_search, true)
        .override_global(global::SOCKET_GROUPS_MASK, &(groups - 1), true)
        .override_global(global::KERNEL_LAYOUT, &layout, true)
        .override_global(global::WALK_LAYOUT, &walk_layout, true)
        .map_max_entries(map::WALK_CHUNKS, walk_chunks)
        .load(OBJECT)
        .map(|ebpf| (ebpf, walk_setup.map(|_| ())))
        .map_err(LoadError::Object)
}

/// Entries of `PORT_TABLES` for `blocks` blocks of `PORT_STATS`.
pub fn port_tables(blocks: u32) -> u32 {
    (blocks / capacity::BLOCKS_PER_TABLE_ENTRY).max(capacity::MIN_PORT_TABLES)
}

/// Slots of the socket table for a wanted capacity: a power of two, whole
/// groups, at least one group.
pub fn socket_slots(wanted: u32) -> u32 {
    wanted
        .max(SLOTS_PER_GROUP as u32)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to
/// the cgroup, where this is harmless.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct; failure only matters on old kernels.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {}", io::Error::last_os_error());
    }
}

fn open_cgroup(cgroup_root: &std::path::Path) -> Result<File, LoadError> {
    File::open(cgroup_root).map_err(|source| LoadError::Cgroup {
        path: cgroup_root.to_owned(),
        source,
    })
}

/// Where `hook` is, for people.
fn target(hook: Hook, cgroup_root: &std::path::Path) -> String {
    match hook {
        Hook::CgroupRoot => cgroup_root.display().to_string(),
        Hook::RawTracepoint { name } => format!("raw tracepoint {name}"),
    }
}

/// Hands the program to the kernel's verifier.
fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<(), LoadError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram { program: name })?;
    match program {
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::RawTracePoint(p) => p.load(),
        Program::SockOps(p) => p.load(),
        _ => return Err(LoadError::WrongProgramType { program: name }),
    }
    .map_err(|source| LoadError::Load {
        program: name,
        source,
    })
}

/// Attaches a loaded program to its hook.
fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    hook: Hook,
    cgroup: &File,
    cgroup_root: &std::path::Path,
) -> Result<Attachment, LoadError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram { program: name })?;
    let attach_err = |source| LoadError::Attach {
        program: name,
        target: target(hook, cgroup_root),
        source,
    };
    // aya attaches through bpf links on every kernel portmon supports (5.7+), and a
    // cgroup link always runs next to other programs (`cgroup_bpf_link_attach`,
    // kernel/bpf/cgroup.c, passes BPF_F_ALLOW_MULTI itself); 6.18 refuses the flag
    // from user space, so the mode passed here must be the flag-less one.
    let mode = CgroupAttachMode::Single;
    // Each link is taken from aya, so that dropping it alone detaches.
    let link = match (program, hook) {
        (Program::CgroupSockAddr(p), Hook::CgroupRoot) => {
            let id = p.attach(cgroup, mode).map_err(attach_err)?;
            Attachment::SockAddr(p.take_link(id).map_err(attach_err)?)
        }
        (Program::CgroupSock(p), Hook::CgroupRoot) => {
            let id = p.attach(cgroup, mode).map_err(attach_err)?;
            Attachment::Sock(p.take_link(id).map_err(attach_err)?)
        }
        (Program::SockOps(p), Hook::CgroupRoot) => {
            let id = p.attach(cgroup, mode).map_err(attach_err)?;
            Attachment::SockOps(p.take_link(id).map_err(attach_err)?)
        }
        (Program::RawTracePoint(p), Hook::RawTracepoint { name: tp }) => {
            let id = p.attach(tp).map_err(attach_err)?;
            Attachment::RawTracepoint(p.take_link(id).map_err(attach_err)?)
        }
        _ => return Err(LoadError::WrongProgramType { program: name }),
    };
    Ok(link)
}
