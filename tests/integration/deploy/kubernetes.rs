//! The Kubernetes manifests, through a schema validator and house rules.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use super::{deploy_dir, read};

/// Validates manifests with the venv `cargo xtask setup` made; the parsed
/// documents with their errors.
fn validate_manifests(paths: &[PathBuf]) -> Vec<Value> {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/integration-… → target
    let target = exe.ancestors().nth(3).expect("target dir");
    let python = target.join("k8s-validate/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `cargo xtask setup` (it installs the validator)",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/validate.py");
    let out = Command::new(&python)
        .arg(&script)
        .args(paths)
        .output()
        .expect("run the manifest validator");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "validator output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn manifests() -> Vec<PathBuf> {
    let dir = deploy_dir().join("kubernetes");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
}

#[test]
fn the_kubernetes_manifests_pass_the_schema_validator() {
    let results = validate_manifests(&manifests());
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r["errors"].as_array().is_some_and(|e| !e.is_empty()))
        .map(|r| format!("{} {} ({}): {}", r["kind"], r["name"], r["file"], r["errors"]))
        .collect();
    assert!(failed.is_empty(), "invalid manifests:\n{}", failed.join("\n"));
    let by_kind: BTreeMap<&str, &Value> = results
        .iter()
        .map(|r| (r["kind"].as_str().unwrap_or_default(), &r["document"]))
        .collect();
    for kind in ["DaemonSet", "Service", "ServiceMonitor"] {
        assert!(by_kind.contains_key(kind), "no {kind} among {:?}", by_kind.keys());
    }
    check_daemonset(by_kind["DaemonSet"]);
    check_scrape_path(
        by_kind["DaemonSet"],
        by_kind["Service"],
        by_kind["ServiceMonitor"],
    );
}

fn check_daemonset(ds: &Value) {
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        (&pod["hostNetwork"], &pod["hostPID"]),
        (&Value::from(true), &Value::from(true)),
        "DaemonSet: host network and PID namespaces"
    );
    let c = &pod["containers"][0];
    let security = &c["securityContext"];
    assert_ne!(security["privileged"], true, "DaemonSet: never privileged");
    let added: BTreeSet<&str> = security["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let unit = std::fs::read_to_string(portmon_tests::supervised::unit_file()).expect("read the unit file");
    let unit_caps = portmon_tests::supervised::unit_values(&unit, "AmbientCapabilities");
    assert_eq!(
        added,
        unit_caps
            .iter()
            .map(|c| c.trim_start_matches("CAP_"))
            .collect::<BTreeSet<_>>(),
        "DaemonSet: the systemd unit's capabilities, no more"
    );
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"])
    );
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--listen", "0.0.0.0:7455"]),
        "DaemonSet args: {args:?}"
    );
    // Every node IP answers: the per-process API must not be open there.
    assert!(
        args.windows(2).any(|w| w == ["--api", "false"]),
        "DaemonSet args: {args:?}"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "DaemonSet {probe}");
    }
    for (kind, resource) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "cpu"),
        ("limits", "memory"),
    ] {
        assert!(
            c["resources"][kind][resource].is_string(),
            "DaemonSet: resources.{kind}.{resource}"
        );
    }
    assert_eq!(
        pod["priorityClassName"], "system-node-critical",
        "DaemonSet: a node agent is evicted last"
    );
    let host_paths: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    // Only what portmon reads: the cgroup v2 root it attaches to, the
    // registry, the runtimes' bundles; never a runtime's socket.
    assert_eq!(
        host_paths,
        BTreeSet::from([
            "/sys/fs/cgroup",
            "/var/lib/portmon",
            "/run/containerd/io.containerd.runtime.v2.task",
            "/var/lib/containers/storage/overlay-containers",
        ]),
        "DaemonSet hostPath volumes"
    );
    for mount in c["volumeMounts"].as_array().expect("volumeMounts") {
        assert_eq!(mount["readOnly"], true, "DaemonSet: {mount} read-only");
    }
    let profile = &security["seccompProfile"];
    assert!(
        profile["type"] == "RuntimeDefault"
            || (profile["type"] == "Localhost" && profile["localhostProfile"] == "portmon-seccomp.json"),
        "DaemonSet seccomp profile: {profile}"
    );
}

/// The ServiceMonitor selects the Service, which selects the pods, on the port named metrics.
fn check_scrape_path(ds: &Value, service: &Value, monitor: &Value) {
    let subset = |want: &Value, have: &Value| {
        want.as_object()
            .is_some_and(|w| !w.is_empty() && w.iter().all(|(k, v)| &have[k] == v))
    };
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert!(
        subset(&service["spec"]["selector"], pod_labels),
        "Service selects no portmon pod"
    );
    let port = &service["spec"]["ports"][0];
    assert_eq!(
        (&port["name"], &port["port"]),
        (&Value::from("metrics"), &Value::from(7455))
    );
    let pod_port = &ds["spec"]["template"]["spec"]["containers"][0]["ports"][0];
    assert!(
        port["targetPort"] == pod_port["name"] || port["targetPort"] == pod_port["containerPort"],
        "Service targetPort {} is not the pod's port {pod_port}",
        port["targetPort"]
    );
    let spec = &monitor["spec"];
    assert!(
        subset(&spec["selector"]["matchLabels"], &service["metadata"]["labels"]),
        "ServiceMonitor selects no portmon Service"
    );
    let namespaces = spec["namespaceSelector"]["matchNames"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        namespaces.contains(&service["metadata"]["namespace"]),
        "ServiceMonitor looks in {namespaces:?}"
    );
    assert_eq!(
        spec["endpoints"][0]["port"], "metrics",
        "ServiceMonitor endpoint port"
    );
}

#[test]
fn the_manifest_validator_rejects_broken_manifests() {
    let dir = std::env::temp_dir().join(format!("portmon-k8s-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let source = deploy_dir().join("kubernetes");
    let breakages = [
        (
            "daemonset.yaml",
            "readOnlyRootFilesystem:",
            "readOnlyRootFilesytem:",
            "unknown field",
        ),
        ("service.yaml", "port: 7455", "port: seven-thousand", "wrong type"),
        (
            "servicemonitor.yaml",
            "scheme: http",
            "scheme: gopher",
            "value outside the CRD's enum",
        ),
        (
            "servicemonitor.yaml",
            "interval: 30s",
            "interval: 30 seconds",
            "duration the CRD's pattern refuses",
        ),
        (
            "servicemonitor.yaml",
            "targetLabel:",
            "targetLable:",
            "field the CRD does not know",
        ),
        (
            "servicemonitor.yaml",
            "  endpoints:",
            "  endpoint:",
            "required field missing",
        ),
    ];
    for (i, (file, from, to, what)) in breakages.iter().enumerate() {
        let text = read(&source.join(file));
        assert!(
            text.contains(from),
            "{file} no longer contains {from:?}: update this test"
        );
        let broken = dir.join(format!("{i}-{file}"));
        std::fs::write(&broken, text.replacen(from, to, 1)).expect("write broken manifest");
        let results = validate_manifests(std::slice::from_ref(&broken));
        assert!(
            results
                .iter()
                .any(|r| r["errors"].as_array().is_some_and(|e| !e.is_empty())),
            "{file} with {to:?} ({what}) passed the validator"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The system calls `systemd-analyze syscall-filter` puts in each group,
/// groups named inside others expanded.
fn syscall_groups() -> BTreeMap<String, BTreeSet<String>> {
    let (ok, out) = super::run(Command::new("systemd-analyze").arg("syscall-filter"));
    assert!(ok, "systemd-analyze syscall-filter: {out}");
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in out.lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_owned());
            direct.insert(line.trim().to_owned(), Vec::new());
        } else if let Some(group) = &current {
            let entry = line.trim();
            if !entry.is_empty() && !entry.starts_with('#') {
                direct.get_mut(group).expect("group").push(entry.to_owned());
            }
        }
    }
    fn expand(name: &str, direct: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
        match direct.get(name) {
            Some(entries) => entries.iter().flat_map(|e| expand(e, direct)).collect(),
            None => BTreeSet::from([name.to_owned()]),
        }
    }
    direct.keys().map(|g| (g.clone(), expand(g, &direct))).collect()
}

#[test]
fn the_shipped_seccomp_profile_is_the_units_system_call_filter() {
    let groups = syscall_groups();
    let expand = |entry: &str| {
        groups
            .get(entry)
            .cloned()
            .unwrap_or_else(|| BTreeSet::from([entry.to_owned()]))
    };
    // In order, as systemd applies them: an allow list, `~` takes away, later
    // entries add again.
    let unit = read(&deploy_dir().join("systemd/portmon.service"));
    let mut allowed: BTreeSet<String> = BTreeSet::new();
    for value in unit.lines().filter_map(|l| l.strip_prefix("SystemCallFilter=")) {
        match value.strip_prefix('~') {
            Some(denied) => {
                for entry in denied.split_whitespace() {
                    allowed.retain(|s| !expand(entry).contains(s));
                }
            }
            None => allowed.extend(value.split_whitespace().flat_map(expand)),
        }
    }
    let path = deploy_dir().join("kubernetes/portmon-seccomp.json");
    let profile: Value = serde_json::from_str(&read(&path)).expect("the profile is JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let rules = profile["syscalls"].as_array().expect("syscalls");
    assert_eq!(rules.len(), 1, "one allow list");
    assert_eq!(rules[0]["action"], "SCMP_ACT_ALLOW");
    let shipped: BTreeSet<String> = rules[0]["names"]
        .as_array()
        .expect("names")
        .iter()
        .map(|n| n.as_str().expect("a name").to_owned())
        .collect();
    assert!(allowed.contains("bpf") && allowed.contains("read"), "{allowed:?}");
    assert_eq!(
        shipped.symmetric_difference(&allowed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "portmon-seccomp.json and the unit's SystemCallFilter differ"
    );
}
