//! One entry per parser of input portmon does not control: what the kernel
//! sends over netlink and writes into the ring buffer and BTF, what procfs
//! shows of other processes' cgroups and mounts, the files an operator
//! or a download hands it, and the messages between the daemon and its
//! privileged namespace helper. The fuzz targets in `fuzz/` call these, and the
//! tests below replay every committed input of `fuzz/seeds/` through them,
//! so an input that once crashed a parser stays a regression test.
//!
//! Each entry takes arbitrary bytes and must return, whatever they are:
//! an error is an answer, a panic or a hang is the bug.

use std::path::Path;

use portmon_common::Proto;

use crate::{
    cgroups,
    config::Config,
    exhaustion,
    failures::Decoded,
    http::WebConfig,
    kernel::bpf::btf::Btf,
    kernel::bpf::events,
    kernel::mounts::Mounts,
    kernel::procfs,
    kernel::sock_diag,
    registry::{Format, Registry},
    workload::Workload,
};

/// A target's entry: any bytes in, nothing out.
pub type Entry = fn(&[u8]);

/// Every target by its name in `fuzz/fuzz_targets/` and `fuzz/seeds/`.
pub const TARGETS: &[(&str, Entry)] = &[
    ("sock_diag", sock_diag),
    ("failure_event", failure_event),
    ("btf", btf),
    ("mountinfo", mountinfo),
    ("cgroup_path", cgroup_path),
    ("iana_csv", iana_csv),
    ("etc_services", etc_services),
    ("config", config),
    ("web_config", web_config),
    ("privsep_wire", privsep_wire),
];

/// A datagram of a sock_diag dump's answer, read as a TCP and as a UDP dump.
pub fn sock_diag(data: &[u8]) {
    let mut out = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        sock_diag::read_datagram(data, proto, &mut out);
    }
}

/// A ring-buffer record, decoded and read as the failure it describes.
pub fn failure_event(data: &[u8]) {
    let Some(event) = events::decode(data) else {
        return;
    };
    let _ = procfs::comm_text(&event.comm);
    if let Some(decoded) = Decoded::of(&event) {
        if let Some(errno) = decoded.errno {
            let _ = exhaustion::exhausted(decoded.op, decoded.proto, errno, event.port);
        }
    }
}

/// A BTF blob, and the lookups the loader makes in it.
pub fn btf(data: &[u8]) {
    if let Ok(btf) = Btf::parse(data) {
        let _ = btf.kernel_layout();
        let _ = btf.member_offset("sock_common", "skc_cookie");
    }
}

/// `/proc/self/mountinfo` text.
pub fn mountinfo(data: &[u8]) {
    let mounts = Mounts::parse(&String::from_utf8_lossy(data));
    let _ = mounts.cgroup2();
    let _ = mounts.find("tracefs");
}

/// A cgroup path as `/proc/PID/cgroup` shows it: names any user with a
/// delegated subtree chooses, in any bytes.
pub fn cgroup_path(data: &[u8]) {
    let _ = cgroups::systemd_unit(&String::from_utf8_lossy(data));
    let _ = cgroups::workload_name(data);
    let _ = Workload::from_cgroup_path(data);
}

/// A registry file read as IANA's CSV.
pub fn iana_csv(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Registry::parse_as(Format::IanaCsv, text);
    }
}

/// A registry file read as `/etc/services`.
pub fn etc_services(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Registry::parse_as(Format::EtcServices, text);
    }
}

/// A message of the namespace helper's protocol: what the privileged
/// helper reads from the daemon, and what the daemon reads back.
pub fn privsep_wire(data: &[u8]) {
    crate::kernel::netns_opener::decode_every_message(data);
}

/// portmon's TOML configuration.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, Path::new("fuzz.toml"));
    }
}

/// An exporter-toolkit web configuration file.
pub fn web_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = WebConfig::parse(text);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        fs,
        path::{Path, PathBuf},
    };

    use super::TARGETS;

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    #[test]
    fn every_seed_replays() {
        for (name, entry) in TARGETS {
            let dir = fuzz_dir().join("seeds").join(name);
            let inputs: Vec<_> = fs::read_dir(&dir)
                .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
                .map(|e| e.unwrap().path())
                .collect();
            assert!(!inputs.is_empty(), "{} has no seeds", dir.display());
            for input in inputs {
                entry(&fs::read(&input).unwrap());
            }
        }
    }

    /// A target file without an entry here (or the reverse) would be fuzzed
    /// but never replayed.
    #[test]
    fn every_target_file_has_an_entry() {
        let files: BTreeSet<String> = fs::read_dir(fuzz_dir().join("fuzz_targets"))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let entries: BTreeSet<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
        assert_eq!(files, entries);
    }
}
