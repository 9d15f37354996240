//! Pod names from the container runtimes' own state on the node: each
//! container's OCI bundle (`config.json`) carries annotations the kubelet
//! and the runtime put there — containerd's CRI plugin
//! `io.kubernetes.cri.sandbox-name`/`-namespace`/`-uid`, CRI-O
//! `io.kubernetes.pod.name`/`.namespace`/`.uid` — on the sandbox and on
//! every container of the pod alike.
//!
//! Read from files rather than the runtimes' APIs: portmon then needs no
//! socket of a runtime (access to which is root on the node), only a
//! read-only view of these directories.

use std::{
    collections::HashMap,
    io::Read as _,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{Runtime, Workload};

/// Where each runtime keeps a container's bundle, below the state root:
/// containerd's task directories (one per containerd namespace, `k8s.io`
/// for Kubernetes), and CRI-O's container storage, run and persistent.
const CONTAINERD_TASKS: &str = "run/containerd/io.containerd.runtime.v2.task";
const CRIO_CONTAINERS: &[&str] = &[
    "run/containers/storage/overlay-containers",
    "var/lib/containers/storage/overlay-containers",
];

/// Largest bundle read: an OCI spec is a few tens of kilobytes; a bigger
/// file is no bundle of a runtime's.
const MOST_BYTES: u64 = 1 << 20;

const POD_NAME: &[&str] = &["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"];
const POD_NAMESPACE: &[&str] = &[
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.pod.namespace",
];
const POD_UID: &[&str] = &["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"];

/// The pod a container belongs to, by its runtime's annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Pod {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    runtime: Option<Runtime>,
}

#[derive(Debug, Deserialize)]
struct Bundle {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The runtimes' state under one root (`/`, or where a container mounts
/// the host's directories), with what was read kept while the container
/// is seen.
#[derive(Debug)]
pub struct RuntimeState {
    root: PathBuf,
    by_container: HashMap<String, Pod>,
}

impl Default for RuntimeState {
    fn default() -> Self {
        Self::new(PathBuf::from("/"))
    }
}

impl RuntimeState {
    /// The state of the runtimes whose directories are under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            by_container: HashMap::new(),
        }
    }

    /// Adds what the runtime's state says about `workload`'s container:
    /// the pod's name and namespace, its UID and the runtime where the
    /// cgroup path did not tell them.
    pub fn complete(&mut self, workload: &mut Workload) {
        let Some(id) = &workload.container_id else {
            return;
        };
        let root = &self.root;
        let pod = self
            .by_container
            .entry(id.clone())
            .or_insert_with(|| read_pod(root, id));
        workload.pod.clone_from(&pod.name);
        workload.namespace.clone_from(&pod.namespace);
        if workload.pod_uid.is_none() {
            workload.pod_uid.clone_from(&pod.uid);
        }
        if workload.runtime.is_none() {
            workload.runtime = pod.runtime;
        }
    }

    /// Forgets the containers not in `live`, so that the cache holds no
    /// more than the containers seen.
    pub fn retain(&mut self, live: &[&str]) {
        self.by_container.retain(|id, _| live.contains(&id.as_str()));
    }
}

/// The pod of container `id` from the first bundle of it found; an
/// unreadable or foreign file says nothing.
fn read_pod(root: &Path, id: &str) -> Pod {
    let containerd = std::fs::read_dir(root.join(CONTAINERD_TASKS))
        .into_iter()
        .flatten()
        .flatten()
        .map(|ns| (ns.path().join(id).join("config.json"), Runtime::Containerd));
    let crio = CRIO_CONTAINERS.iter().map(|dir| {
        (
            root.join(dir).join(id).join("userdata/config.json"),
            Runtime::CriO,
        )
    });
    containerd
        .chain(crio)
        .find_map(|(path, runtime)| {
            let bundle = read_bundle(&path)?;
            let first = |keys: &[&str]| {
                keys.iter()
                    .find_map(|k| bundle.annotations.get(*k))
                    .filter(|v| !v.is_empty())
                    .cloned()
            };
            Some(Pod {
                name: first(POD_NAME),
                namespace: first(POD_NAMESPACE),
                uid: first(POD_UID),
                runtime: Some(runtime),
            })
        })
        .unwrap_or_default()
}

fn read_bundle(path: &Path) -> Option<Bundle> {
    let file = std::fs::File::open(path).ok()?;
    let mut text = Vec::new();
    file.take(MOST_BYTES).read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text)
        .inspect_err(|err| tracing::debug!(path = %path.display(), "not a runtime's bundle: {err}"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn write(root: &Path, relative: &str, text: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn pods_are_named_from_containerd_and_crio_bundles() {
        let root = tempfile::tempdir().unwrap();
        let (a, b, c) = (id('a'), id('b'), id('c'));
        write(
            root.path(),
            &format!("{CONTAINERD_TASKS}/k8s.io/{a}/config.json"),
            r#"{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-type":"sandbox",
               "io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop",
               "io.kubernetes.cri.sandbox-uid":"u-1"}}"#,
        );
        write(
            root.path(),
            &format!("var/lib/containers/storage/overlay-containers/{b}/userdata/config.json"),
            r#"{"annotations":{"io.kubernetes.pod.name":"dns-7","io.kubernetes.pod.namespace":"kube-system"}}"#,
        );
        // Not JSON, and a bundle without annotations: nothing known, no error.
        write(
            root.path(),
            &format!("{CONTAINERD_TASKS}/moby/{c}/config.json"),
            "{not json",
        );
        let mut state = RuntimeState::new(root.path().to_owned());

        let mut w = Workload {
            container_id: Some(a.clone()),
            ..Workload::default()
        };
        state.complete(&mut w);
        assert_eq!(
            (
                w.pod.as_deref(),
                w.namespace.as_deref(),
                w.pod_uid.as_deref(),
                w.runtime
            ),
            (
                Some("web-0"),
                Some("shop"),
                Some("u-1"),
                Some(Runtime::Containerd)
            )
        );

        let mut w = Workload {
            container_id: Some(b.clone()),
            pod_uid: Some("from-cgroup".into()),
            runtime: Some(Runtime::CriO),
            ..Workload::default()
        };
        state.complete(&mut w);
        assert_eq!(
            (w.pod.as_deref(), w.namespace.as_deref(), w.pod_uid.as_deref()),
            (Some("dns-7"), Some("kube-system"), Some("from-cgroup"))
        );

        for unknown in [c, id('d')] {
            let mut w = Workload {
                container_id: Some(unknown.clone()),
                ..Workload::default()
            };
            state.complete(&mut w);
            assert_eq!((w.pod, w.namespace, w.runtime), (None, None, None), "{unknown}");
        }
        state.retain(&[&a]);
        assert_eq!(state.by_container.len(), 1);
    }

    #[test]
    fn oversized_files_are_no_bundles() {
        let root = tempfile::tempdir().unwrap();
        let a = id('a');
        let padding = " ".repeat(MOST_BYTES as usize);
        write(
            root.path(),
            &format!("{CONTAINERD_TASKS}/k8s.io/{a}/config.json"),
            &format!(r#"{{"annotations":{{"io.kubernetes.pod.name":"x"}}{padding}}}"#),
        );
        let mut w = Workload {
            container_id: Some(a),
            ..Workload::default()
        };
        RuntimeState::new(root.path().to_owned()).complete(&mut w);
        assert_eq!(w.pod, None);
    }
}
