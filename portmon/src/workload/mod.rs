//! What runs in a network namespace, as people know it: the Kubernetes
//! pod, the container and its runtime, the systemd unit — read from the
//! cgroup path of a process inside it, and, where the runtime's state is
//! readable on the node, the pod's name and namespace (`runtime_state`).
//!
//! A cgroup name is any byte sequence but `/` (a user with a delegated
//! subtree picks it), so paths are parsed as bytes: what is taken from them
//! is ASCII by construction (ids, UIDs) or converted lossily (unit names),
//! and nothing indexes into text.

mod runtime_state;

pub use runtime_state::RuntimeState;

/// The container runtime a cgroup path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    /// The `runtime` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }
}

/// The workload behind a network namespace; every field may be unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// The Kubernetes pod's UID as the API server gives it (with dashes),
    /// what kube-state-metrics' `kube_pod_info{uid}` carries.
    pub pod_uid: Option<String>,
    /// The container's full id (64 hex digits).
    pub container_id: Option<String>,
    /// The runtime that made the container, when the path or its state says.
    pub runtime: Option<Runtime>,
    /// The innermost systemd unit of the path (`nginx.service`).
    pub unit: Option<String>,
    /// The pod's name, from the runtime's state.
    pub pod: Option<String>,
    /// The pod's Kubernetes namespace, from the runtime's state.
    pub namespace: Option<String>,
}

/// Length of a container id: a SHA-256 in hex, as every runtime here makes them.
const CONTAINER_ID_LEN: usize = 64;

/// Scope prefixes (systemd cgroup driver) and cgroupfs name prefixes of each runtime.
const CONTAINER_PREFIXES: &[(&[u8], Runtime)] = &[
    (b"cri-containerd-", Runtime::Containerd),
    (b"crio-", Runtime::CriO),
    (b"docker-", Runtime::Docker),
    (b"libpod-", Runtime::Podman),
];

/// Longest pod UID taken: a UUID is 36 characters, a static pod's UID (a
/// hash of its manifest) 32.
const POD_UID_MAX: usize = 64;

impl Workload {
    /// The workload a cgroup v2 path names (`/kubepods.slice/…/cri-containerd-<id>.scope`),
    /// relative paths of a cgroup namespace (`/../../kubepods/…`) included.
    pub fn from_cgroup_path(path: &[u8]) -> Self {
        let components: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b"." && *c != b"..")
            .collect();
        let mut workload = Self {
            unit: crate::cgroups::systemd_unit(&String::from_utf8_lossy(path)).map(str::to_owned),
            ..Self::default()
        };
        let mut under_kubepods = false;
        let mut parent: &[u8] = b"";
        for &component in &components {
            if let Some(uid) = pod_uid_of_slice(component) {
                workload.pod_uid = Some(uid);
            } else if under_kubepods {
                if let Some(uid) = component.strip_prefix(b"pod").and_then(pod_uid) {
                    workload.pod_uid = Some(uid);
                }
            }
            if let Some((id, runtime)) = container_of(component, parent) {
                // The innermost container wins (a container in a container).
                workload.container_id = Some(id);
                workload.runtime = runtime;
            }
            under_kubepods |= component == b"kubepods" || component.starts_with(b"kubepods.");
            parent = component;
        }
        workload
    }
}

/// The pod UID of a systemd-driver pod slice:
/// `kubepods-burstable-pod<UID>.slice`, dashes of the UID escaped as `_`.
fn pod_uid_of_slice(component: &[u8]) -> Option<String> {
    let name = component.strip_suffix(b".slice")?;
    if !name.starts_with(b"kubepods-") {
        return None;
    }
    let at = name.windows(4).rposition(|w| w == b"-pod")?;
    pod_uid(&name[at + 4..])
}

/// A pod UID as the API server writes it, if `raw` looks like one
/// (letters, digits, `-` or systemd's `_` for it).
fn pod_uid(raw: &[u8]) -> Option<String> {
    let valid = (1..=POD_UID_MAX).contains(&raw.len())
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    valid.then(|| {
        raw.iter()
            .map(|&b| if b == b'_' { '-' } else { char::from(b) })
            .collect()
    })
}

/// The container a cgroup name stands for: `cri-containerd-<id>.scope`
/// and the other runtimes' scopes, their cgroupfs forms (`crio-<id>`,
/// `libpod-<id>`), and a bare `<id>` (the runtime then told by `parent`,
/// `docker` for Docker's cgroupfs layout, else unknown).
fn container_of(component: &[u8], parent: &[u8]) -> Option<(String, Option<Runtime>)> {
    let name = component.strip_suffix(b".scope").unwrap_or(component);
    if let Some(id) = container_id(name) {
        let runtime = (parent == b"docker").then_some(Runtime::Docker);
        return Some((id, runtime));
    }
    CONTAINER_PREFIXES.iter().find_map(|&(prefix, runtime)| {
        let id = container_id(name.strip_prefix(prefix)?)?;
        Some((id, Some(runtime)))
    })
}

fn container_id(raw: &[u8]) -> Option<String> {
    let valid = raw.len() == CONTAINER_ID_LEN && raw.iter().all(u8::is_ascii_hexdigit);
    // All ASCII: the conversion cannot fail.
    valid.then(|| String::from_utf8_lossy(raw).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UID: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";

    fn id() -> String {
        "0123456789abcdef".repeat(4)
    }

    fn parse(path: &str) -> Workload {
        Workload::from_cgroup_path(path.as_bytes())
    }

    #[test]
    fn pods_and_containers_under_both_cgroup_drivers() {
        let id = id();
        let uid_ = UID.replace('-', "_");
        let cases: Vec<(String, Option<&str>, Option<Runtime>)> = vec![
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope"),
                Some(UID),
                Some(Runtime::Containerd),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{id}.scope"),
                Some(UID),
                Some(Runtime::CriO),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/docker-{id}.scope"),
                Some(UID),
                Some(Runtime::Docker),
            ),
            (format!("/kubepods/besteffort/pod{UID}/{id}"), Some(UID), None),
            (format!("/kubepods/pod{UID}/crio-{id}"), Some(UID), Some(Runtime::CriO)),
            (
                format!("/kubepods/burstable/pod{UID}/{id}"),
                Some(UID),
                None,
            ),
            (
                format!("/../../kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope"),
                Some(UID),
                Some(Runtime::Containerd),
            ),
            (format!("/system.slice/docker-{id}.scope"), None, Some(Runtime::Docker)),
            (format!("/docker/{id}"), None, Some(Runtime::Docker)),
            (
                format!("/machine.slice/libpod-{id}.scope/container"),
                None,
                Some(Runtime::Podman),
            ),
            (format!("/libpod_parent/libpod-{id}"), None, Some(Runtime::Podman)),
        ];
        for (path, uid, runtime) in cases {
            let w = parse(&path);
            assert_eq!(w.pod_uid.as_deref(), uid, "{path}");
            assert_eq!(w.container_id.as_deref(), Some(id.as_str()), "{path}");
            assert_eq!(w.runtime, runtime, "{path}");
        }
    }

    #[test]
    fn static_pods_have_hash_uids_and_pod_cgroups_without_containers_are_pods() {
        let w = parse("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d4e5f60718293a4b5c6d7e8f9.slice");
        assert_eq!(w.pod_uid.as_deref(), Some("0a1b2c3d4e5f60718293a4b5c6d7e8f9"));
        assert_eq!(w.container_id, None);
    }

    #[test]
    fn what_is_no_pod_or_container_stays_unknown() {
        let short = "abc123";
        let cases = [
            "/".to_owned(),
            "/system.slice/nginx.service".to_owned(),
            // A `pod…` directory outside kubepods is anyone's.
            format!("/user.slice/pod{UID}"),
            // conmon runs beside the container, not in it.
            format!("/machine.slice/libpod-conmon-{}.scope", id()),
            format!("/system.slice/crio-conmon-{}.scope", id()),
            format!("/system.slice/docker-{short}.scope"),
            format!("/kubepods.slice/kubepods-pod{}.slice", "x".repeat(65)),
        ];
        for path in cases {
            let w = parse(&path);
            assert_eq!(
                (w.pod_uid, w.container_id, w.runtime),
                (None, None, None),
                "{path}"
            );
        }
    }

    #[test]
    fn units_are_the_innermost_unit() {
        assert_eq!(
            parse("/system.slice/nginx.service").unit.as_deref(),
            Some("nginx.service")
        );
        let scope = format!("/system.slice/docker-{}.scope", id());
        assert_eq!(
            parse(&scope).unit.as_deref(),
            scope.strip_prefix("/system.slice/")
        );
        assert_eq!(parse("/kubepods/besteffort").unit, None);
    }

    #[test]
    fn multi_byte_and_invalid_bytes_give_valid_labels() {
        let w = parse("/tést-ünit-é.service");
        assert_eq!(w.unit.as_deref(), Some("tést-ünit-é.service"));
        let mut path = b"/system.slice/bad-\xff\xfe-\xc3.service/".to_vec();
        path.extend_from_slice(format!("docker-{}.scope", id()).as_bytes());
        let w = Workload::from_cgroup_path(&path);
        assert_eq!(w.unit.as_deref(), Some(&*format!("docker-{}.scope", id())));
        assert_eq!(w.container_id.as_deref(), Some(id().as_str()));
        let w = Workload::from_cgroup_path(b"/system.slice/bad-\xff\xfe-\xc3.service");
        assert_eq!(w.unit.as_deref(), Some("bad-\u{fffd}\u{fffd}-\u{fffd}.service"));
        // A UID with a multi-byte character is no UID.
        let w = parse("/kubepods.slice/kubepods-podé6f1c.slice");
        assert_eq!(w.pod_uid, None);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic_into_valid_labels(path in proptest::collection::vec(any::<u8>(), 0..300)) {
            let w = Workload::from_cgroup_path(&path);
            for value in [&w.pod_uid, &w.container_id, &w.unit].into_iter().flatten() {
                prop_assert!(!value.is_empty());
            }
            if let Some(id) = &w.container_id {
                prop_assert!(id.len() == CONTAINER_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }

        #[test]
        fn any_pod_and_container_names_are_found_in_noise(
            noise in "[^/]{0,20}",
            uid in "[a-f0-9-]{1,36}",
            id in "[a-f0-9]{64}",
        ) {
            let path = format!(
                "/{noise}/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope",
                uid.replace('-', "_")
            );
            let w = parse(&path);
            prop_assert_eq!(w.pod_uid.as_deref(), Some(uid.as_str()));
            prop_assert_eq!(w.container_id.as_deref(), Some(id.as_str()));
        }
    }
}
