//! One namespace's ephemeral port pool: `ip_local_port_range` minus
//! `ip_local_reserved_ports`, and `tcp_tw_reuse`, which decides when a
//! TIME_WAIT socket's 4-tuple is free again. Read through the sysctl files
//! of the namespace, opened inside it once.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::Serialize;

use crate::{
    kernel::{
        netns_opener::{NetnsFile, Opened},
        procfs::{ProcError, ProcFile, PROC_SYS_NET_IPV4},
    },
    port_class::PortClass,
    port_set::PortSet,
};

/// File name of the ephemeral range inside [`PROC_SYS_NET_IPV4`].
pub const LOCAL_PORT_RANGE_FILE: &str = "ip_local_port_range";

/// File name of the reserved ports inside [`PROC_SYS_NET_IPV4`].
pub const RESERVED_PORTS_FILE: &str = "ip_local_reserved_ports";

/// Errors reading a namespace's ephemeral port settings.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A file could not be opened or read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not what the kernel writes there.
    #[error("unexpected content {content:?} in {path}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it held (trimmed).
        content: String,
        /// What is wrong with it.
        #[source]
        reason: ProcValueError,
    },
}

/// What is wrong with the text of `ip_local_port_range` or
/// `ip_local_reserved_ports`; [`PoolError::Malformed`] adds the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcValueError {
    /// `ip_local_port_range` holds two numbers separated by white space.
    #[error("expected two port numbers, found {found}")]
    FieldCount {
        /// How many fields there were.
        found: usize,
    },
    /// A field is not a number from 0 to 65535.
    #[error("{text:?} is not a port number (0-65535)")]
    NotAPort {
        /// The field.
        text: String,
    },
    /// A range whose first port is above its last.
    #[error("range {low}-{high} is reversed")]
    Reversed {
        /// First port given.
        low: u16,
        /// Last port given.
        high: u16,
    },
}

fn parse_port(text: &str) -> Result<u16, ProcValueError> {
    text.parse().map_err(|_| ProcValueError::NotAPort {
        text: text.to_owned(),
    })
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`),
/// inclusive at both ends; it applies to TCP, UDP, SCTP and DCCP alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct LocalPortRange {
    /// First ephemeral port.
    pub low: u16,
    /// Last ephemeral port.
    pub high: u16,
}

impl LocalPortRange {
    /// Linux's default (`inet_init_net` in net/ipv4/af_inet.c).
    pub const LINUX_DEFAULT: LocalPortRange = LocalPortRange {
        low: 32768,
        high: 60999,
    };

    /// Whether `port` lies in the range.
    pub const fn contains(self, port: u16) -> bool {
        self.low <= port && port <= self.high
    }

    /// Number of ports in the range.
    pub const fn port_count(self) -> u32 {
        self.high as u32 - self.low as u32 + 1
    }
}

impl FromStr for LocalPortRange {
    type Err = ProcValueError;

    /// Parses the file's format, `"32768\t60999\n"`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [low, high] = fields[..] else {
            return Err(ProcValueError::FieldCount { found: fields.len() });
        };
        let (low, high) = (parse_port(low)?, parse_port(high)?);
        if low > high {
            return Err(ProcValueError::Reversed { low, high });
        }
        Ok(LocalPortRange { low, high })
    }
}

impl fmt::Display for LocalPortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

/// The ports listed in `net.ipv4.ip_local_reserved_ports`: the kernel never
/// picks them as ephemeral ports, though an explicit `bind()` may use them.
///
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct ReservedPorts {
    ports: PortSet,
}

impl ReservedPorts {
    /// No reserved ports (the kernel's default).
    pub fn none() -> Self {
        ReservedPorts::default()
    }

    /// Marks `low..=high` reserved.
    pub fn insert_range(&mut self, low: u16, high: u16) {
        self.ports.insert_range(low, high);
    }

    /// Whether `port` is reserved.
    pub fn contains(&self, port: u16) -> bool {
        self.ports.contains(port)
    }

    /// Number of reserved ports.
    pub fn len(&self) -> u32 {
        self.ports.len()
    }

    /// Whether no port is reserved.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Number of reserved ports in `low..=high`.
    pub fn count_in(&self, low: u16, high: u16) -> u32 {
        self.ports.count_between(low, high)
    }

    /// The reserved ports as maximal inclusive ranges, lowest first.
    pub fn ranges(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        let mut next: u32 = 0;
        std::iter::from_fn(move || {
            let start = (next..=65535).find(|&p| self.contains(p as u16))?;
            let end = (start..=65535)
                .find(|&p| !self.contains(p as u16))
                .unwrap_or(65536);
            next = end;
            // Both bounds come from 0..=65535 ranges, so they fit a u16.
            Some((start as u16, (end - 1) as u16))
        })
    }
}

impl FromStr for ReservedPorts {
    type Err = ProcValueError;

    /// Parses the file's format: comma-separated ports and ranges,
    /// `"8000-8100,9000\n"`; an empty file means none.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut reserved = ReservedPorts::none();
        for item in text.split(',').map(str::trim) {
            if item.is_empty() {
                continue;
            }
            let (low, high) = match item.split_once('-') {
                Some((low, high)) => (parse_port(low.trim())?, parse_port(high.trim())?),
                None => {
                    let port = parse_port(item)?;
                    (port, port)
                }
            };
            if low > high {
                return Err(ProcValueError::Reversed { low, high });
            }
            reserved.insert_range(low, high);
        }
        Ok(reserved)
    }
}

/// Writes the kernel's format, e.g. `8000-8100,9000`.
impl fmt::Display for ReservedPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (low, high)) in self.ranges().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            if low == high {
                write!(f, "{sep}{low}")?;
            } else {
                write!(f, "{sep}{low}-{high}")?;
            }
        }
        Ok(())
    }
}

// The derived form would print 1024 words.
impl fmt::Debug for ReservedPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReservedPorts({self})")
    }
}

/// The ports the kernel may hand out as ephemeral ports in one network
/// namespace: the local port range minus the reserved ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EphemeralPool {
    /// `ip_local_port_range`.
    pub range: LocalPortRange,
    /// `ip_local_reserved_ports`.
    pub reserved: ReservedPorts,
}

impl EphemeralPool {
    /// The ports the kernel can hand out, as a set.
    pub fn ports(&self) -> PortSet {
        let mut ports = PortSet::range(self.range.low, self.range.high);
        ports.remove_all(&self.reserved.ports);
        ports
    }

    /// Number of ports the kernel can hand out: ports in the range that are
    /// not reserved.
    pub fn size(&self) -> u32 {
        self.range.port_count() - self.reserved.count_in(self.range.low, self.range.high)
    }

    /// Whether the kernel may hand out `port` as an ephemeral port.
    pub fn contains(&self, port: u16) -> bool {
        self.range.contains(port) && !self.reserved.contains(port)
    }

    /// Whether `port` is listed in `ip_local_reserved_ports`.
    pub fn is_reserved(&self, port: u16) -> bool {
        self.reserved.contains(port)
    }

    /// Number of ports of the pool that lie in IANA's `class`: with Linux's
    /// default range, 16384 of them are IANA user ports.
    pub fn size_in(&self, class: PortClass) -> u32 {
        let (class_low, class_high) = class.bounds();
        let (low, high) = (self.range.low.max(class_low), self.range.high.min(class_high));
        if low > high {
            return 0;
        }
        (u32::from(high) - u32::from(low) + 1) - self.reserved.count_in(low, high)
    }
}

/// Parses what was read from the sysctl file at `path` (named in errors).
fn parse_value<T: FromStr<Err = ProcValueError>>(path: &Path, text: &str) -> Result<T, PoolError> {
    text.parse().map_err(|reason| PoolError::Malformed {
        path: path.into(),
        content: text.trim().to_owned(),
        reason,
    })
}

impl From<ProcError> for PoolError {
    fn from(err: ProcError) -> Self {
        PoolError::Read {
            path: err.path,
            source: err.source,
        }
    }
}

const TW_REUSE_FILE: &str = "tcp_tw_reuse";

/// `net.ipv4.tcp_tw_reuse`: may `connect()` take over a TIME_WAIT socket's 4-tuple?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TwReuse {
    /// `0`.
    Off,
    /// `1`.
    On,
    /// `2`, the default: only when either end is a loopback address.
    Loopback,
}

impl TwReuse {
    fn from_sysctl(value: u8) -> Self {
        match value {
            0 => TwReuse::Off,
            1 => TwReuse::On,
            _ => TwReuse::Loopback,
        }
    }

    /// Whether a TIME_WAIT socket between these ends is free for `connect()`.
    pub fn frees(self, local: IpAddr, remote: IpAddr) -> bool {
        match self {
            TwReuse::Off => false,
            TwReuse::On => true,
            TwReuse::Loopback => is_loopback(local) || is_loopback(remote),
        }
    }
}

fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// What decides one namespace's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub pool: EphemeralPool,
    pub tw_reuse: TwReuse,
}

/// The sysctl files of one namespace, opened inside it: once open they read
/// that namespace from any thread (see `kernel::procfs`), and reading them
/// at each scrape follows every change.
#[derive(Debug)]
pub struct PoolSysctls {
    range: ProcFile,
    reserved: ProcFile,
    /// Absent on kernels without it: the default applies.
    tw_reuse: Option<ProcFile>,
}

impl PoolSysctls {
    /// Opens the calling thread's namespace's files.
    pub fn open() -> Result<Self, PoolError> {
        Self::open_in(Path::new(PROC_SYS_NET_IPV4))
    }

    /// Opens the files in `dir` (normally [`PROC_SYS_NET_IPV4`]).
    pub fn open_in(dir: &Path) -> Result<Self, PoolError> {
        Ok(Self {
            range: ProcFile::open(dir.join(LOCAL_PORT_RANGE_FILE))?,
            reserved: ProcFile::open(dir.join(RESERVED_PORTS_FILE))?,
            tw_reuse: ProcFile::open(dir.join(TW_REUSE_FILE)).ok(),
        })
    }

    /// The files of a namespace opened elsewhere (by the namespace helper).
    pub fn from_opened(opened: &mut Opened) -> Result<Self, PoolError> {
        let mut take = |file: NetnsFile| {
            let path = file.path().unwrap_or_default();
            opened
                .take(file)
                .map(|fd| ProcFile::from_fd(fd, path))
                .ok_or_else(|| PoolError::Read {
                    path: path.into(),
                    source: std::io::ErrorKind::NotFound.into(),
                })
        };
        Ok(Self {
            range: take(NetnsFile::PortRange)?,
            reserved: take(NetnsFile::ReservedPorts)?,
            tw_reuse: take(NetnsFile::TwReuse).ok(),
        })
    }

    /// The namespace's settings as of now.
    pub fn read(&self) -> Result<PoolSettings, PoolError> {
        let value = |file: &ProcFile| -> Result<String, PoolError> { Ok(file.read()?) };
        let pool = EphemeralPool {
            range: parse_value(self.range.path(), &value(&self.range)?)?,
            reserved: parse_value(self.reserved.path(), &value(&self.reserved)?)?,
        };
        // Unreadable, or a value this code does not know: the default.
        let tw_reuse = self
            .tw_reuse
            .as_ref()
            .and_then(|file| file.read().ok())
            .and_then(|text| text.trim().parse().ok())
            .map_or(TwReuse::Loopback, TwReuse::from_sysctl);
        Ok(PoolSettings { pool, tw_reuse })
    }
}

/// The pool the exhaustion unit tests share: 100 ports (40000–40099),
/// 10 of them reserved (40000–40009).
#[cfg(test)]
pub(crate) fn test_pool() -> EphemeralPool {
    let mut reserved = ReservedPorts::none();
    reserved.insert_range(40000, 40009);
    EphemeralPool {
        range: LocalPortRange {
            low: 40000,
            high: 40099,
        },
        reserved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_port_range_parses_kernel_format() {
        let ok = [
            ("32768\t60999\n", (32768, 60999)),
            ("1024 65535", (1024, 65535)),
            ("  50000   50000  ", (50000, 50000)),
        ];
        for (text, (low, high)) in ok {
            assert_eq!(text.parse(), Ok(LocalPortRange { low, high }), "{text:?}");
        }
        let bad = [
            ("", ProcValueError::FieldCount { found: 0 }),
            ("32768", ProcValueError::FieldCount { found: 1 }),
            ("1 2 3", ProcValueError::FieldCount { found: 3 }),
            ("32768 70000", ProcValueError::NotAPort { text: "70000".into() }),
            ("-1 5", ProcValueError::NotAPort { text: "-1".into() }),
            (
                "60999 32768",
                ProcValueError::Reversed {
                    low: 60999,
                    high: 32768,
                },
            ),
        ];
        for (text, err) in bad {
            assert_eq!(text.parse::<LocalPortRange>(), Err(err), "{text:?}");
        }
    }

    #[test]
    fn reserved_ports_parse_and_print() {
        let cases = [
            ("", 0, ""),
            ("\n", 0, ""),
            ("9000\n", 1, "9000"),
            ("8000-8100,9000\n", 102, "8000-8100,9000"),
            ("9000,8000-8100", 102, "8000-8100,9000"),
            ("0,65535", 2, "0,65535"),
            ("1-3,3-5", 5, "1-5"),
            ("0-65535", 65536, "0-65535"),
        ];
        for (text, len, printed) in cases {
            let reserved: ReservedPorts = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(reserved.len(), len, "{text:?}");
            assert_eq!(reserved.to_string(), printed, "{text:?}");
            assert_eq!(reserved.is_empty(), len == 0);
        }
        let bad = [
            (
                "8100-8000",
                ProcValueError::Reversed {
                    low: 8100,
                    high: 8000,
                },
            ),
            ("x", ProcValueError::NotAPort { text: "x".into() }),
            ("1-", ProcValueError::NotAPort { text: "".into() }),
            ("65536", ProcValueError::NotAPort { text: "65536".into() }),
        ];
        for (text, err) in bad {
            assert_eq!(text.parse::<ReservedPorts>(), Err(err), "{text:?}");
        }
    }

    #[test]
    fn reserved_count_in_matches_naive_count() {
        let reserved: ReservedPorts = "0-3,63-64,127,128,1000-2000,65535".parse().unwrap();
        let spans = [
            (0, 0),
            (0, 65535),
            (1, 63),
            (63, 63),
            (64, 127),
            (129, 999),
            (500, 1500),
            (65535, 65535),
        ];
        for (low, high) in spans {
            let naive = (low..=high).filter(|&p| reserved.contains(p)).count() as u32;
            assert_eq!(reserved.count_in(low, high), naive, "{low}-{high}");
        }
        assert_eq!(reserved.count_in(10, 5), 0);
    }

    #[test]
    fn pool_size_and_membership() {
        let pool = EphemeralPool {
            range: LocalPortRange::LINUX_DEFAULT,
            reserved: "8000-8100,32768,40000-40009,61000".parse().unwrap(),
        };
        assert_eq!(pool.size(), 28232 - 1 - 10);
        let cases = [
            (32767, false, false),
            (32768, false, true),
            (32769, true, false),
            (40005, false, true),
            (60999, true, false),
            (61000, false, true),
            (8050, false, true),
        ];
        for (port, ephemeral, reserved) in cases {
            assert_eq!(
                (pool.contains(port), pool.is_reserved(port)),
                (ephemeral, reserved),
                "{port}"
            );
        }
        let by_class: Vec<u32> = PortClass::ALL.iter().map(|&c| pool.size_in(c)).collect();
        assert_eq!(by_class, [0, 16384 - 11, 60999 - 49152 + 1]);
        assert_eq!(by_class.iter().sum::<u32>(), pool.size());
    }

    #[test]
    fn read_from_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCAL_PORT_RANGE_FILE), "32768\t60999\n").unwrap();
        std::fs::write(dir.path().join(RESERVED_PORTS_FILE), "\n").unwrap();
        let pool = PoolSysctls::open_in(dir.path()).unwrap().read().unwrap().pool;
        assert_eq!(
            pool,
            EphemeralPool {
                range: LocalPortRange::LINUX_DEFAULT,
                reserved: ReservedPorts::none()
            }
        );
        assert_eq!(pool.size(), 28232);

        std::fs::write(dir.path().join(RESERVED_PORTS_FILE), "9000-8000\n").unwrap();
        let err = PoolSysctls::open_in(dir.path()).unwrap().read().unwrap_err();
        let message = format!("{:#}", anyhow::Error::from(err));
        assert!(
            message.contains("ip_local_reserved_ports") && message.contains("9000-8000"),
            "{message}"
        );

        std::fs::remove_file(dir.path().join(LOCAL_PORT_RANGE_FILE)).unwrap();
        let err = PoolSysctls::open_in(dir.path()).unwrap_err();
        assert!(matches!(&err, PoolError::Read { path, .. } if path.ends_with(LOCAL_PORT_RANGE_FILE)));
    }

    #[test]
    fn host_values_parse() {
        // Every Linux host has these files; this reads the test's own namespace.
        let pool = PoolSysctls::open().unwrap().read().unwrap().pool;
        assert!(pool.size() <= pool.range.port_count());
    }
}
