//! Containers and pods as portmon names them: processes in cgroups laid
//! out as the kubelet and the runtimes lay them out, each in a namespace of
//! its own, seen by the real daemon.

use std::{io::ErrorKind, path::PathBuf};

use portmon_tests::{cgroup::CgroupProcess, http_get, metric_value, portmon_ports, serial, Daemon};

use crate::exhaustion::{connect_until_refused, narrow_pool, wait_metric, Server, POOL};

const POD_UID: &str = "3c5a2a8e-6f0b-4e0c-9a57-1d2e3f4a5b6c";

fn container_id() -> String {
    "c0ffee".repeat(10) + "abcd"
}

/// `<root>/run/containerd/io.containerd.runtime.v2.task/k8s.io/<id>/config.json`
/// as containerd's CRI plugin writes a sandbox's, in a fresh directory.
fn containerd_state(id: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("portmon-test-runtime-{}", std::process::id()));
    let bundle = root
        .join("run/containerd/io.containerd.runtime.v2.task/k8s.io")
        .join(id);
    std::fs::create_dir_all(&bundle).expect("bundle dir");
    let config = serde_json::json!({
        "ociVersion": "1.1.0",
        "process": {"args": ["/pause"]},
        "annotations": {
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": id,
            "io.kubernetes.cri.sandbox-name": "checkout-7d9f-x2x4q",
            "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.sandbox-uid": POD_UID,
        },
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).expect("config.json");
    root
}

#[test]
fn a_pods_pool_runs_out_and_portmon_names_the_pod() {
    let _serial = serial();
    let id = container_id();
    let path = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
        POD_UID.replace('-', "_")
    );
    let pod = CgroupProcess::start("pod", path.as_bytes());
    pod.enter(narrow_pool);
    let state = containerd_state(&id);
    let daemon = Daemon::start(
        "127.0.0.1:17471".parse().unwrap(),
        &["--runtime-state-root", state.to_str().expect("UTF-8 temp dir")],
    );
    let netns = format!("cri-containerd-{}", &id[..12]);
    let netns = netns.as_str();
    assert_eq!(
        wait_metric(
            &daemon,
            "portmon_ephemeral_pool_ports",
            &[("netns", netns)],
            f64::from(POOL)
        ),
        Some(f64::from(POOL)),
        "the pod's own pool"
    );
    let info = [
        ("netns", netns),
        ("pod_uid", POD_UID),
        ("container_id", id.as_str()),
        ("runtime", "containerd"),
        ("pod", "checkout-7d9f-x2x4q"),
        ("namespace", "shop"),
    ];
    assert_eq!(
        metric_value(&daemon.scrape(), "portmon_netns_info", &info),
        Some(1.0),
        "{}",
        daemon
            .scrape()
            .lines()
            .filter(|l| l.starts_with("portmon_netns_info"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    pod.enter(|| {
        let server = Server::start(5000);
        let (clients, err) = connect_until_refused(server.addr, POOL as usize);
        assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
        assert_eq!(clients.len() as u32, POOL);
        let tcp_connect = [("netns", netns), ("proto", "tcp"), ("op", "connect")];
        assert_eq!(
            wait_metric(
                &daemon,
                "portmon_ephemeral_exhaustion_errors_total",
                &tcp_connect,
                1.0
            ),
            Some(1.0)
        );
        assert_eq!(
            metric_value(
                &daemon.scrape(),
                "portmon_ephemeral_utilization_ratio",
                &tcp_connect
            ),
            Some(1.0)
        );
        drop(clients);
    });
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn without_runtime_state_the_cgroup_path_still_names_pod_and_container() {
    let _serial = serial();
    let id = container_id();
    // The cgroupfs driver's layout: no scope, the runtime unknown.
    let path = format!("kubepods/burstable/pod{POD_UID}/{id}");
    let pod = CgroupProcess::start("cgroupfs", path.as_bytes());
    let daemon = Daemon::start("127.0.0.1:17472".parse().unwrap(), &[]);
    let netns = &id[..12];
    let info = [
        ("netns", netns),
        ("pod_uid", POD_UID),
        ("container_id", id.as_str()),
        ("runtime", ""),
        ("pod", ""),
        ("namespace", ""),
    ];
    assert_eq!(wait_metric(&daemon, "portmon_netns_info", &info, 1.0), Some(1.0));
    drop(pod);
}

#[test]
fn cgroup_names_of_any_bytes_never_break_a_scrape_or_portmon_ports() {
    let _serial = serial();
    let names: [&[u8]; 3] = [
        "tést-ünit-é.service".as_bytes(),
        b"bad-\xff\xfe-\xc3.service",
        b"quote\"back\\slash.scope",
    ];
    let processes: Vec<CgroupProcess> = names
        .iter()
        .enumerate()
        .map(|(i, name)| CgroupProcess::start(&format!("bytes{i}"), name))
        .collect();
    let daemon = Daemon::start("127.0.0.1:17473".parse().unwrap(), &[]);
    for want in [
        "tést-ünit-é.service",
        "bad-\u{fffd}\u{fffd}-\u{fffd}.service",
        "quote\"back\\slash.scope",
    ] {
        // As the exposition writes it: `"` and `\` escaped.
        let escaped = want.replace('\\', "\\\\").replace('"', "\\\"");
        let labels = [("netns", escaped.as_str()), ("unit", escaped.as_str())];
        assert_eq!(
            wait_metric(&daemon, "portmon_netns_info", &labels, 1.0),
            Some(1.0),
            "{want}"
        );
    }
    for path in ["/metrics", "/api/v1/ports", "/api/v1/ephemeral"] {
        let (status, body) = http_get(daemon.addr, path).expect(path);
        assert_eq!(status, 200, "{path}: {body}");
    }
    // A socket in one of them, so that `portmon ports` shows its namespace:
    // through the daemon, and taken by `portmon ports` itself (no daemon there).
    let listener = processes[1].enter(|| std::net::TcpListener::bind("127.0.0.1:7001").expect("listen"));
    for args in [["--daemon", "127.0.0.1:17473"], ["--daemon", "127.0.0.1:1"]] {
        let stdout = portmon_ports(&args);
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("bad-\u{fffd}\u{fffd}-\u{fffd}.service") && l.contains(":7001")),
            "portmon ports {args:?}:\n{stdout}"
        );
    }
    drop(listener);
    assert!(daemon_alive(daemon), "the daemon survived");
}

fn daemon_alive(mut daemon: Daemon) -> bool {
    matches!(daemon.child.try_wait(), Ok(None))
}
