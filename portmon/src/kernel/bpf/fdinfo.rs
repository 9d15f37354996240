//! The kernel's `fdinfo` of portmon's own BPF descriptors: what a program
//! or link is and how it fares, readable with no capability at all, where
//! the `bpf(2)` commands that say the same need CAP_SYS_ADMIN or
//! CAP_NET_ADMIN, which the daemon gives up after attaching.

/// The `fdinfo` text of every descriptor of this process that has a line
/// starting with `key` (`run_cnt:` for programs, `cgroup_id:` for cgroup
/// links), by descriptor number.
pub(super) fn own_with(key: &str) -> Vec<(u32, String)> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|fd| Some((fd, read(fd)?)))
        .filter(|(_, text)| text.lines().any(|l| l.starts_with(key)))
        .collect()
}

/// The `fdinfo` text of descriptor `fd` of this process.
pub(super) fn read(fd: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()
}

/// The number on the line of `fdinfo` that starts with `name`.
pub(super) fn field(fdinfo: &str, name: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields() {
        let link =
            "pos:\t0\nflags:\t02000000\nlink_type:\tcgroup\nlink_id:\t7\nprog_tag:\t0123456789abcdef\n\
                    prog_id:\t42\ncgroup_id:\t1\nattach_type:\t8\n";
        assert_eq!(field(link, "prog_id:"), Some(42));
        assert_eq!(field(link, "cgroup_id:"), Some(1));
        assert_eq!(field("link_type:\traw_tracepoint\n", "cgroup_id:"), None);
        let prog = "prog_type:\t18\nprog_jited:\t1\nprog_id:\t42\nrun_time_ns:\t1500000\nrun_cnt:\t3\n";
        assert_eq!(field(prog, "run_cnt:"), Some(3));
        assert_eq!(field(prog, "run_time_ns:"), Some(1_500_000));
    }

    /// This process's own descriptors are readable, and ones without the
    /// key are left out.
    #[test]
    fn own_descriptors_are_filtered_by_key() {
        assert!(own_with("no-such-key:").is_empty());
        assert!(!own_with("flags:").is_empty());
    }
}
