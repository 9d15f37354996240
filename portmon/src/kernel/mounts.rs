//! Where the kernel file systems portmon needs are mounted, read from
//! `/proc/self/mountinfo` (never assumed: cgroup v2 lives at
//! `/sys/fs/cgroup` on unified hosts and `/sys/fs/cgroup/unified` on
//! hybrid ones).

use std::path::PathBuf;

/// One line of mountinfo, the fields portmon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Root of the mount within its file system (`/` unless a subtree is mounted).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// File system type (`cgroup2`, `tracefs`, `bpf`, …).
    pub fs_type: String,
}

/// The mounts of the current mount namespace.
#[derive(Debug, Clone, Default)]
pub struct Mounts(Vec<Mount>);

impl Mounts {
    /// Reads `/proc/self/mountinfo`.
    pub fn read() -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
    }

    /// Parses mountinfo text; malformed lines are skipped (the kernel writes
    /// this file, so a bad line means a format change, not bad input).
    pub fn parse(text: &str) -> Self {
        Self(text.lines().filter_map(parse_line).collect())
    }

    /// The first mount of a file system type.
    pub fn find(&self, fs_type: &str) -> Option<&Mount> {
        self.0.iter().find(|m| m.fs_type == fs_type)
    }

    /// The cgroup v2 hierarchy.
    pub fn cgroup2(&self) -> Option<&Mount> {
        self.find("cgroup2")
    }
}

// Format: ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let root = fields.nth(3)?;
    let mount_point = fields.next()?;
    let fs_type = after.split(' ').next()?;
    Some(Mount {
        root: PathBuf::from(unescape(root)),
        mount_point: PathBuf::from(unescape(mount_point)),
        fs_type: fs_type.to_owned(),
    })
}

/// Undoes the kernel's octal escapes of space, tab, newline and backslash
/// (`mangle` in fs/proc_namespace.c).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // Three octal digits of a byte's value: `\777` is no escape the
        // kernel writes, and would not fit in a byte.
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                u8::try_from(value).ok()
            });
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Found by the fuzz target: a backslash and three octal digits above
    /// `\377` overflowed a byte.
    #[test]
    fn an_escape_beyond_a_byte_is_kept_as_text() {
        assert_eq!(unescape("a\\777b"), "a\\777b");
        assert_eq!(unescape("with\\040space"), "with space");
        assert_eq!(unescape("\\377"), "\u{fffd}");
    }

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
34 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
35 34 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
40 25 0:12 / /sys/kernel/tracing rw,nosuid,nodev,noexec,relatime shared:20 - tracefs tracefs rw
41 30 0:50 / /mnt/with\\040space rw - bpf bpf rw
";

    #[test]
    fn finds_hybrid_cgroup2() {
        let mounts = Mounts::parse(HYBRID);
        assert_eq!(
            mounts.cgroup2().map(|m| m.mount_point.as_path()),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            mounts.find("tracefs").map(|m| m.mount_point.as_path()),
            Some(Path::new("/sys/kernel/tracing"))
        );
        assert_eq!(
            mounts.find("bpf").map(|m| m.mount_point.as_path()),
            Some(Path::new("/mnt/with space"))
        );
    }

    #[test]
    fn tolerates_garbage() {
        for text in ["", "garbage", " - ", "1 2 3\n- x", "\\\\\\"] {
            assert!(Mounts::parse(text).cgroup2().is_none(), "{text:?}");
        }
    }

    #[test]
    fn unescapes_octal() {
        for (raw, want) in [
            ("a\\040b", "a b"),
            ("tab\\011", "tab\t"),
            ("\\134", "\\"),
            ("end\\", "end\\"),
            ("\\09", "\\09"),
        ] {
            assert_eq!(unescape(raw), want);
        }
    }
}
