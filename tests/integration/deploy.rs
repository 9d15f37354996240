//! The deployment material in `deploy/`, tested for real: the alert rules
//! through promtool (syntax and unit tests), the dashboard's structure, every
//! query of the dashboard and of the rules against a live Prometheus scraping
//! a live daemon whose namespace runs out of ephemeral ports, and the
//! Kubernetes manifests through a schema validator (`cargo xtask setup`
//! installs it).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use portmon_tests::{http_get, serial, url_encode, write_sysctl, Daemon, NamedNetns, Prometheus};
use serde_json::Value;

const DAEMON: &str = "127.0.0.1:17490";
/// A second target of the job where nothing listens: `up` is 0 there.
const DEAD_TARGET: &str = "127.0.0.1:17491";
const PROMETHEUS: &str = "127.0.0.1:19095";

/// A listener port with an IANA service name (http-alt), in the test's namespace.
const SERVICE_PORT: u16 = 8080;
/// A UDP listener (mdns).
const UDP_PORT: u16 = 5353;

/// Alerts no workload can raise on a healthy daemon: for these the live
/// test checks that every metric they read has series, not that they fire.
const HEALTHY_SILENT_ALERTS: &[&str] = &[
    "PortmonTargetAbsent",
    "PortmonProgramNotAttached",
    "PortmonEventsDropped",
    "PortmonMapOverflow",
    "PortmonMapNearlyFull",
    "PortmonInventoryErrors",
    "PortmonConfigReloadFailed",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .canonicalize()
        .expect("deploy/ beside tests/")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs a command; (success, stdout and stderr).
fn run(command: &mut Command) -> (bool, String) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// --- Alert rules ------------------------------------------------------------

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let dir = deploy_dir().join("prometheus");
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules", "portmon.rules.yml"])
        .current_dir(&dir));
    assert!(ok && out.contains("SUCCESS"), "promtool check rules: {out}");
    let (ok, out) = run(Command::new("promtool")
        .args(["test", "rules", "portmon.rules.test.yml"])
        .current_dir(&dir));
    assert!(ok, "promtool test rules: {out}");

    let rules = read(&dir.join("portmon.rules.yml"));
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 5, "alerts in portmon.rules.yml: {alerts:?}");
    let cases = alert_cases(&read(&dir.join("portmon.rules.test.yml")));
    for alert in alerts {
        let (fires, silent) = cases.get(alert).copied().unwrap_or_default();
        assert!(
            fires && silent,
            "{alert}: the unit tests need a case where it fires ({fires}) and one where it stays silent ({silent})"
        );
    }
}

/// Per alert name in a promtool test file: (has a firing case, has a silent case).
fn alert_cases(tests: &str) -> BTreeMap<String, (bool, bool)> {
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut current = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname: ") {
            current = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts follows an alertname");
            let case = cases.entry(name).or_default();
            if rest.trim() == "[]" {
                case.1 = true;
            } else {
                case.0 = true;
            }
        }
    }
    cases
}

// --- Dashboard structure ----------------------------------------------------

fn dashboard() -> Value {
    let path = deploy_dir().join("grafana/portmon.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> &'a Value {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("dashboard variable {name} missing"))
}

#[test]
fn the_dashboard_imports_as_is_and_is_templated_on_datasource_instance_and_netns() {
    let d = dashboard();
    assert!(
        d.get("__inputs").is_none(),
        "no __inputs: it must import as it is"
    );
    assert_eq!(d["schemaVersion"], 39, "schemaVersion");
    assert!(
        d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40),
        "uid: {}",
        d["uid"]
    );
    let datasource = variable(&d, "datasource");
    assert_eq!(
        (&datasource["type"], &datasource["query"]),
        (&Value::from("datasource"), &Value::from("prometheus")),
        "datasource variable"
    );
    for name in ["instance", "netns"] {
        let v = variable(&d, name);
        assert_eq!(v["type"], "query", "variable {name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "variable {name}");
        assert!(
            v["definition"]
                .as_str()
                .is_some_and(|q| q.starts_with("label_values(")),
            "variable {name}: {}",
            v["definition"]
        );
        assert_eq!(
            (&v["multi"], &v["includeAll"], &v["allValue"]),
            (&Value::from(true), &Value::from(true), &Value::from(".*")),
            "variable {name}: multi-value with All as .*"
        );
    }

    let mut ids = BTreeSet::new();
    let mut cells = BTreeMap::new();
    let mut exprs = Vec::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().expect("every panel has a title");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title}: id"));
        assert!(ids.insert(id), "panel {title}: id {id} used twice");
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            grid[k]
                .as_u64()
                .unwrap_or_else(|| panic!("panel {title}: gridPos.{k}"))
        });
        assert!(w > 0 && h > 0 && x + w <= 24, "panel {title}: gridPos {grid}");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title) {
                    panic!("panel {title} overlaps panel {other} at ({cx}, {cy})");
                }
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].as_str().is_some_and(|s| s.len() > 20),
            "panel {title}: say what it shows in its description"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            let reference = t["refId"].as_str().expect("refId");
            assert!(refs.insert(reference), "panel {title}: refId {reference} twice");
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel {title} {reference}"
            );
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "panel {title} {reference}: empty expr");
            exprs.push(expr);
        }
    }
    for metric in [
        "portmon_ephemeral_utilization_ratio",
        "portmon_ephemeral_ports_in_use",
        "portmon_ephemeral_pool_ports",
        "portmon_ephemeral_destination_utilization_ratio",
        "portmon_ephemeral_exhaustion_errors_total",
        "portmon_bind_errors_total",
        "portmon_listening_ports",
        "portmon_binds_total",
        "portmon_connects_total",
        "portmon_bind_before_connect_total",
        "portmon_events_dropped_total",
        "portmon_map_overflows_total",
        "portmon_scrape_duration_seconds",
        "portmon_program_attached",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel shows {metric}"
        );
    }
    let utilization = panels(&d)
        .into_iter()
        .find(|p| p["title"] == "Ephemeral pool utilization by namespace")
        .expect("the utilization panel");
    let steps: Vec<&Value> = utilization["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .expect("thresholds")
        .iter()
        .map(|s| &s["value"])
        .collect();
    assert_eq!(
        steps,
        [&Value::Null, &Value::from(0.8), &Value::from(0.95)],
        "utilization thresholds"
    );
}

// --- Every query, live --------------------------------------------------------

/// Sockets a workload keeps open until dropped.
struct Workload {
    _keep: Vec<Box<dyn Send>>,
}

/// In a namespace whose pool is 10 ports: a TCP and a UDP listener, a bind
/// to the taken TCP port (EADDRINUSE), a bind-before-connect, connects to
/// one destination until no port is left (EADDRNOTAVAIL), and a bind(0)
/// that finds none (EADDRINUSE). Says when the connect failed on `failed`,
/// and waits on `filed`.
fn exhaust_the_pool(failed: mpsc::Sender<()>, filed: mpsc::Receiver<()>) -> Workload {
    write_sysctl("net/ipv4/ip_local_port_range", "40000 40009");
    let mut keep: Vec<Box<dyn Send>> = Vec::new();
    let listener = TcpListener::bind(("127.0.0.1", SERVICE_PORT)).expect("listen");
    let udp = UdpSocket::bind(("127.0.0.1", UDP_PORT)).expect("udp bind");
    let conflict = TcpListener::bind(("127.0.0.1", SERVICE_PORT)).expect_err("the port is taken");
    assert_eq!(conflict.kind(), ErrorKind::AddrInUse, "{conflict}");
    keep.push(Box::new(bind_zero_then_connect(SERVICE_PORT)));
    let mut clients = Vec::new();
    let err = loop {
        match TcpStream::connect(("127.0.0.1", SERVICE_PORT)) {
            Ok(client) => clients.push(client),
            Err(err) => break err,
        }
        assert!(clients.len() < 10, "more connects than local ports");
    };
    assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");
    // The daemon finds the namespace of this failure through the thread
    // (the kernel does not say): this thread lives until it has.
    failed.send(()).expect("signal the failed connect");
    filed.recv().expect("wait for the daemon to file it");
    let err = TcpListener::bind("127.0.0.1:0").expect_err("no port left for bind(0)");
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "bind(0): {err}");
    keep.push(Box::new(clients));
    keep.push(Box::new(listener));
    keep.push(Box::new(udp));
    Workload { _keep: keep }
}

/// A TCP socket bound to 127.0.0.1:0, then connected to 127.0.0.1:`port`.
fn bind_zero_then_connect(port: u16) -> OwnedFd {
    let sockaddr = |port: u16| {
        // SAFETY: sockaddr_in is plain data; zero is a valid value.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        sin
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) returns a new descriptor we then own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let local = sockaddr(0);
    // SAFETY: a valid sockaddr_in and its length.
    let rc = unsafe { libc::bind(fd, (&raw const local).cast(), len) };
    assert_eq!(rc, 0, "bind(0): {}", std::io::Error::last_os_error());
    let remote = sockaddr(port);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, (&raw const remote).cast(), len) };
    assert_eq!(
        rc,
        0,
        "connect after bind(0): {}",
        std::io::Error::last_os_error()
    );
    socket
}

/// One query to run, and where it comes from.
#[derive(Debug)]
struct Query {
    source: String,
    promql: String,
    /// Must return at least one series (else: every metric it reads must exist).
    expect_data: bool,
}

/// A value as Grafana puts it into a regex matcher: special characters
/// escaped, the backslash itself escaped for the PromQL string.
fn regex_value(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                format!("\\\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Replaces Grafana's variables, `$name` and `${name}`; longest names first.
fn substitute(expr: &str, variables: &[(&str, &str)]) -> String {
    let mut variables = variables.to_vec();
    variables.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = expr.to_owned();
    for (name, value) in variables {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// Metric names a PromQL expression reads: identifiers outside strings and
/// label matchers that name a portmon metric or open a `{` selector.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = promql.chars().collect();
    let (mut i, mut braces, mut quoted) = (0, 0, false);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' if !(i > 0 && chars[i - 1] == '\\') => quoted = !quoted,
            '{' if !quoted => braces += 1,
            '}' if !quoted => braces -= 1,
            c if !quoted && braces == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if word.starts_with("portmon_") || chars.get(i) == Some(&'{') {
                    names.insert(word);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// An instant query: the number of series it returns, or Prometheus' error.
fn series_count(prometheus: &Prometheus, promql: &str) -> Result<usize, String> {
    let answer = prometheus.api(&format!("/api/v1/query?query={}", url_encode(promql)));
    if answer["status"] != "success" {
        return Err(answer["error"].as_str().unwrap_or("no error text").to_owned());
    }
    Ok(match answer["data"]["resultType"].as_str() {
        Some("vector" | "matrix") => answer["data"]["result"].as_array().map_or(0, Vec::len),
        _ => 1,
    })
}

#[test]
fn every_dashboard_and_rule_query_returns_data_from_a_live_daemon() {
    let _serial = serial();
    let ns = NamedNetns::create("deploy");
    let daemon = Daemon::start(DAEMON.parse().unwrap(), &[]);
    let rules = deploy_dir().join("prometheus/portmon.rules.yml");
    let dead: SocketAddr = DEAD_TARGET.parse().unwrap();
    let prometheus = Prometheus::start_scraping(PROMETHEUS.parse().unwrap(), &[daemon.addr, dead], &[rules]);
    let (failed_tx, failed_rx) = mpsc::channel();
    let (filed_tx, filed_rx) = mpsc::channel();
    let work = std::thread::scope(|scope| {
        let worker = scope.spawn(|| ns.enter(move || exhaust_the_pool(failed_tx, filed_rx)));
        if failed_rx.recv().is_ok() {
            let listed = portmon_tests::wait_until(Duration::from_secs(10), || {
                let Ok((200, body)) = http_get(daemon.addr, "/api/v1/failures") else {
                    return false;
                };
                let failures: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
                failures.iter().any(|f| {
                    f["pid"] == std::process::id()
                        && f["port"] == SERVICE_PORT
                        && f["errno"].to_string().to_uppercase().contains("ADDRNOTAVAIL")
                })
            });
            assert!(listed, "the daemon never listed the EADDRNOTAVAIL connect");
            filed_tx.send(()).expect("let the workload go on");
        }
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });

    let d = dashboard();
    let mut queries = Vec::new();
    for panel in panels(&d) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(Query {
                source: format!("panel '{}' query {}", panel["title"], target["refId"]),
                promql: target["expr"].as_str().unwrap_or_default().to_owned(),
                expect_data: true,
            });
        }
    }
    let rule_list = loaded_rules(&prometheus);
    for rule in &rule_list {
        let name = rule["name"].as_str().unwrap_or_default();
        queries.push(Query {
            source: format!("{} rule {name}", rule["type"]),
            promql: rule["query"].as_str().unwrap_or_default().to_owned(),
            expect_data: !HEALTHY_SILENT_ALERTS.contains(&name),
        });
    }

    // As Grafana fills them in: one host, then all namespaces and the test's.
    let instance = regex_value(DAEMON);
    let netns = regex_value(&ns.name);
    let all: [(&str, &str); 5] = [
        ("instance", &instance),
        ("netns", ".*"),
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "5m"),
    ];
    let mut one_netns = all;
    one_netns[1] = ("netns", &netns);
    let mut pending: Vec<(String, String, bool)> = Vec::new();
    for q in &queries {
        for (label, variables) in [("all namespaces", &all), ("netns of the test", &one_netns)] {
            if label != "all namespaces" && !q.promql.contains("$netns") {
                continue;
            }
            let promql = substitute(&q.promql, variables);
            assert!(
                !promql.contains('$'),
                "{}: a variable left unset: {promql}",
                q.source
            );
            pending.push((format!("{} ({label})", q.source), promql, q.expect_data));
        }
    }

    // Counters need two samples for rate(): poll until every query answers.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut errors = Vec::new();
    loop {
        pending.retain(
            |(source, promql, expect_data)| match series_count(&prometheus, promql) {
                Err(e) => {
                    errors.push(format!("{source}: {e}\n    {promql}"));
                    false
                }
                Ok(n) if *expect_data => n == 0,
                Ok(_) => metric_names(promql).iter().any(|name| {
                    let selector = format!(r#"{name}{{instance="{DAEMON}"}}"#);
                    !matches!(series_count(&prometheus, &selector), Ok(n) if n > 0)
                }),
            },
        );
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        errors.is_empty(),
        "queries Prometheus refused:\n{}",
        errors.join("\n")
    );
    let no_data: Vec<String> = pending
        .iter()
        .map(|(source, promql, expect_data)| {
            let why = if *expect_data {
                "no data"
            } else {
                "a metric it reads has no series"
            };
            format!("{source}: {why}\n    {promql}")
        })
        .collect();
    assert!(no_data.is_empty(), "\"No data\":\n{}", no_data.join("\n"));

    for rule in loaded_rules(&prometheus) {
        assert_eq!(
            rule["health"], "ok",
            "rule {} evaluates with an error: {}",
            rule["name"], rule["lastError"]
        );
    }
    check_variables(&prometheus, &d, &instance, &ns.name);
    drop(work);
}

/// The rules Prometheus loaded from the rule file, once it has evaluated them.
fn loaded_rules(prometheus: &Prometheus) -> Vec<Value> {
    let mut rules = Vec::new();
    let evaluated = portmon_tests::wait_until(Duration::from_secs(30), || {
        let answer = prometheus.api("/api/v1/rules");
        rules = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        !rules.is_empty()
            && rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            })
    });
    assert!(
        evaluated,
        "Prometheus did not load and evaluate the rules: {rules:#?}"
    );
    rules
}

/// The instance and netns variables list the daemon and the test's namespace.
fn check_variables(prometheus: &Prometheus, d: &Value, instance: &str, netns: &str) {
    for (name, want) in [("instance", DAEMON), ("netns", netns)] {
        let definition = variable(d, name)["definition"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: {definition}"));
        let (selector, label) = inner.rsplit_once(',').expect("label_values(selector, label)");
        let selector = substitute(selector.trim(), &[("instance", instance)]);
        let answer = prometheus.api(&format!("/api/v1/series?match[]={}", url_encode(&selector)));
        let values: BTreeSet<&str> = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s[label.trim()].as_str())
            .collect();
        assert!(
            values.contains(want),
            "variable {name} ({definition}) lacks {want}: {values:?}"
        );
    }
}

// --- Kubernetes ------------------------------------------------------------------

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
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "PERFMON", "NET_ADMIN"]),
        "DaemonSet: the systemd unit's capabilities, no more"
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
    let host_paths: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for path in ["/sys/fs/bpf", "/sys/kernel/tracing", "/sys/fs/cgroup"] {
        assert!(host_paths.contains(path), "DaemonSet: no hostPath {path}");
    }
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
