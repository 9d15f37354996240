//! The container image, run as the DaemonSet runs it: `cargo xtask image`,
//! then podman with the DaemonSet's host namespaces, user, capabilities,
//! mounts, read-only root and no-new-privileges (all read from
//! `deploy/kubernetes/daemonset.yaml`), and the seccomp profile shipped
//! beside it (podman's own default refuses bpf() without CAP_SYS_ADMIN, as
//! older CRI-O's does); scraped, and a real container started beside it is
//! named by its container id.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use portmon_tests::{http_get, metric_value, podman::Container, serial, wait_until};
use serde_json::Value;

/// Where the containerised daemon listens (host network): not the
/// DaemonSet's 0.0.0.0:7455, which another portmon on this machine may hold.
const LISTEN: &str = "127.0.0.1:17481";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `portmon:<version>`, built once per test run by `cargo xtask image`.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["run", "--locked", "--package", "xtask", "--", "image"])
            .current_dir(repo())
            .status()
            .expect("run cargo xtask image");
        assert!(status.success(), "cargo xtask image failed");
        format!("localhost/portmon:{}", env!("CARGO_PKG_VERSION"))
    })
}

/// The DaemonSet as JSON, through the validator's Python (it has PyYAML).
fn daemonset() -> Value {
    let exe = std::env::current_exe().expect("test binary path");
    let python = exe
        .ancestors()
        .nth(3)
        .expect("target dir")
        .join("k8s-validate/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `cargo xtask setup`",
        python.display()
    );
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(repo().join("deploy/kubernetes/daemonset.yaml"))
        .output()
        .expect("run python");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("daemonset.yaml as JSON: {e}"))
}

/// `podman run` arguments that give the container what the DaemonSet gives its pod.
fn as_the_daemonset_runs_it(ds: &Value) -> Vec<String> {
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let security = &c["securityContext"];
    let mut args: Vec<String> = Vec::new();
    let mut arg = |a: &str| args.push(a.to_owned());
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    for a in ["--network", "host", "--pid", "host"] {
        arg(a);
    }
    arg("--user");
    arg(&format!("{}:{}", security["runAsUser"], security["runAsGroup"]));
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    arg("--cap-drop=ALL");
    for cap in security["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
    {
        arg(&format!("--cap-add=CAP_{}", cap.as_str().expect("a capability")));
    }
    if security["allowPrivilegeEscalation"] == false {
        arg("--security-opt=no-new-privileges");
    }
    if security["readOnlyRootFilesystem"] == true {
        arg("--read-only");
    }
    // RuntimeDefault where the runtime's default allows bpf() with CAP_BPF,
    // the shipped profile elsewhere: podman's default is of the second kind.
    let profile = repo().join("deploy/kubernetes/portmon-seccomp.json");
    arg(&format!("--security-opt=seccomp={}", profile.display()));
    let volumes = pod["volumes"].as_array().expect("volumes");
    for mount in c["volumeMounts"].as_array().expect("volumeMounts") {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for {mount}"));
        let host = volume["hostPath"]["path"].as_str().expect("a hostPath volume");
        if volume["hostPath"]["type"] == "DirectoryOrCreate" {
            std::fs::create_dir_all(host).unwrap_or_else(|e| panic!("mkdir {host}: {e}"));
        }
        let mode = if mount["readOnly"] == true { "ro" } else { "rw" };
        arg("--volume");
        arg(&format!(
            "{host}:{}:{mode}",
            mount["mountPath"].as_str().expect("mountPath")
        ));
    }
    args.push(image().to_owned());
    let mut given: Vec<String> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("an argument").to_owned())
        .collect();
    let at = given.iter().position(|a| a == "--listen").expect("--listen") + 1;
    given[at] = LISTEN.to_owned();
    args.extend(given);
    args
}

/// A scratch image of busybox alone, to run something that binds a port.
fn busybox_image() -> &'static str {
    const NAME: &str = "localhost/portmon-test-busybox:latest";
    let context = std::env::temp_dir().join(format!("portmon-test-busybox-{}", std::process::id()));
    std::fs::create_dir_all(context.join("bin")).expect("context");
    std::fs::copy("/bin/busybox", context.join("bin/busybox")).expect("busybox-static (`cargo xtask setup`)");
    std::fs::write(
        context.join("Containerfile"),
        "FROM scratch\nCOPY bin/busybox /bin/busybox\n",
    )
    .expect("Containerfile");
    let out = Command::new("buildah")
        .args(["build", "--tag", NAME])
        .arg(&context)
        .output()
        .expect("run buildah");
    assert!(
        out.status.success(),
        "buildah: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&context);
    NAME
}

#[test]
fn the_image_runs_as_the_daemonset_runs_it_and_names_a_podman_container() {
    let _serial = serial();
    let args = as_the_daemonset_runs_it(&daemonset());
    let portmon = Container::run(&format!("portmon-test-{}", std::process::id()), &args);
    let addr = LISTEN.parse().expect("address");
    let up = wait_until(Duration::from_secs(30), || {
        matches!(http_get(addr, "/healthz"), Ok((200, _))) || !portmon.running()
    });
    assert!(
        up && portmon.running(),
        "the container did not answer /healthz: {}",
        portmon.logs()
    );
    let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("portmon_build_info{"), "{body}");
    // As the DaemonSet runs it, the per-process API is off.
    let (status, _) = http_get(addr, "/api/v1/ports").expect("GET /api/v1/ports");
    assert_eq!(status, 404, "the DaemonSet serves /api/v1/ports");
    let attached: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("portmon_program_attached{"))
        .collect();
    assert!(
        !attached.is_empty() && attached.iter().all(|l| l.ends_with(" 1")),
        "{attached:?}"
    );

    // A real container in a namespace of its own binds a port; portmon
    // names that namespace from the bind's cgroup, and its namespace
    // helper opens the container's namespace for the inventory.
    let server = Container::run(
        &format!("portmon-test-server-{}", std::process::id()),
        &[
            "--network".into(),
            "none".into(),
            busybox_image().into(),
            "/bin/busybox".into(),
            "nc".into(),
            "-l".into(),
            "-p".into(),
            "8080".into(),
        ],
    );
    let id = server.id();
    let netns = format!("libpod-{}", &id[..12]);
    let info = [
        ("netns", netns.as_str()),
        ("container_id", id.as_str()),
        ("runtime", "podman"),
    ];
    let mut last = String::new();
    let named = wait_until(Duration::from_secs(15), || {
        last = http_get(addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
        metric_value(&last, "portmon_netns_info", &info) == Some(1.0)
    });
    assert!(
        named,
        "no portmon_netns_info for container {id}:\n{}\ncontainer log: {}",
        last.lines()
            .filter(|l| l.contains("netns"))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
        portmon.logs()
    );
    assert_eq!(
        metric_value(
            &last,
            "portmon_binds_total",
            &[("netns", netns.as_str()), ("port", "8080")]
        ),
        Some(1.0),
        "the container's bind, under its name"
    );
    let listening = [("netns", netns.as_str()), ("proto", "tcp"), ("port", "8080")];
    let inventoried = wait_until(Duration::from_secs(15), || {
        last = http_get(addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
        metric_value(&last, "portmon_listening_ports", &listening) == Some(1.0)
    });
    assert!(
        inventoried,
        "the container's listener is not in the inventory:\n{}\ncontainer log: {}",
        last.lines()
            .filter(|l| l.starts_with("portmon_listening_ports"))
            .collect::<Vec<_>>()
            .join("\n"),
        portmon.logs()
    );
    let logs = portmon.logs();
    assert!(logs.contains("namespace helper started"), "{logs}");
}

/// podman's stock profile allows bpf() only to a container with
/// CAP_SYS_ADMIN: on a cluster that refuses the namespace helper's
/// capability, it refuses the maps.
#[test]
fn podmans_default_seccomp_profile_refuses_the_maps_and_the_image_says_so() {
    let _serial = serial();
    let args: Vec<String> = as_the_daemonset_runs_it(&daemonset())
        .into_iter()
        .filter(|a| !a.starts_with("--security-opt=seccomp=") && a != "--cap-add=CAP_SYS_ADMIN")
        .collect();
    let portmon = Container::run(&format!("portmon-test-default-{}", std::process::id()), &args);
    let exited = wait_until(Duration::from_secs(30), || !portmon.running());
    let logs = portmon.logs();
    assert!(exited, "portmon ran under podman's default profile: {logs}");
    assert!(
        logs.contains("refused portmon's maps") && logs.contains("Operation not permitted"),
        "{logs}"
    );
}
