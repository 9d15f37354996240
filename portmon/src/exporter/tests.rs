//! The exposition as a scrape sees it, from fixture inputs.

use std::collections::BTreeMap;

use super::{
    fixture::{Fixture, Host},
    *,
};
use crate::kernel::sock_diag::SocketState;
use portmon_common::{Family, Proto, Role};

const HOST: u64 = 1;
const BLUE: u64 = 2;

fn start(host: Host) -> (Arc<Fixture>, Metrics) {
    let fixture = Arc::new(Fixture {
        host: std::sync::Mutex::new(host),
    });
    let metrics = Metrics::new(fixture.clone()).expect("a valid collector");
    (fixture, metrics)
}

fn scrape(metrics: &Metrics) -> String {
    metrics.render().expect("an exposition")
}

/// Every series of the exposition: `name{labels}` → value.
fn series(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(name, value)| (name.to_owned(), value.parse().expect(name)))
        .collect()
}

fn counters(text: &str) -> BTreeMap<String, f64> {
    series(text)
        .into_iter()
        .filter(|(name, _)| name.split('{').next().is_some_and(|n| n.ends_with("_total")))
        .collect()
}

#[test]
fn ports_past_the_limit_fold_into_their_class_and_are_counted() {
    let mut host = Host {
        port_series_limit: 2,
        ..Host::default()
    };
    // Two listeners (ranked first), three busy client ports.
    host.socket(HOST, 80, SocketState::Listen);
    host.socket(HOST, 8080, SocketState::Listen);
    for port in [50_000, 50_001, 50_002] {
        host.socket(HOST, port, SocketState::Established);
    }
    let (_, metrics) = start(host);
    let text = scrape(&metrics);
    assert!(
        text.contains(
            r#"portmon_listening_ports{proto="tcp",family="ipv4",port="80",class="system",service="",scope="loopback",assignment="unassigned"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"port="8080""#), "{text}");
    assert!(!text.contains(r#"port="50000""#), "{text}");
    assert!(
        text.contains(r#"portmon_sockets{proto="tcp",family="ipv4",port="other",class="dynamic",service="",state="established"} 3"#),
        "{text}"
    );
    assert!(text.contains("portmon_port_series_folded 3"), "{text}");
    assert!(
        text.contains(r#"portmon_ports_in_use{proto="tcp",class="dynamic"} 3"#),
        "{text}"
    );
}

#[test]
fn under_the_limit_nothing_folds_and_no_netns_label_for_one_namespace() {
    let mut host = Host::default();
    host.socket(HOST, 22, SocketState::Listen);
    host.socket(HOST, 22, SocketState::Established);
    let (_, metrics) = start(host);
    let text = scrape(&metrics);
    assert!(text.contains("portmon_port_series_folded 0"), "{text}");
    assert!(
        text.contains(r#"port="22",class="system",service="",state="established"} 1"#),
        "{text}"
    );
    assert!(!text.contains("netns="), "{text}");
}

#[test]
fn counters_never_go_back_and_never_vanish_when_the_ranking_changes() {
    // Ports 1000..=1005 under a limit of 3: the busiest three get their
    // own series, the rest fold into the `user` class.
    let mut host = Host {
        port_series_limit: 3,
        ..Host::default()
    };
    for (i, port) in (1000..=1005).enumerate() {
        host.binds(HOST, port, 1 + i as u64);
        host.bind_errors(HOST, port, 1 + i as u64);
    }
    let (fixture, metrics) = start(host);
    let first = counters(&scrape(&metrics));
    assert!(first.keys().any(|s| s.contains(r#"port="1005""#)), "{first:?}");
    assert!(first.keys().any(|s| s.contains(r#"port="other""#)), "{first:?}");
    assert!(!first.keys().any(|s| s.contains(r#"port="""#)), "{first:?}");

    // The folded ports become the busiest, listeners appear on them, a
    // new port comes: none of it may move a counter between series.
    fixture.change(|host| {
        for port in 1000..=1002 {
            host.binds(HOST, port, 1_000);
            host.bind_errors(HOST, port, 1_000);
            host.socket(HOST, port, SocketState::Listen);
        }
        host.binds(HOST, 1100, 5_000);
    });
    let second = counters(&scrape(&metrics));
    for (name, before) in &first {
        let after = second
            .get(name)
            .unwrap_or_else(|| panic!("{name} vanished: {second:?}"));
        assert!(after >= before, "{name} went from {before} to {after}");
    }
    let own: Vec<&String> = second.keys().filter(|s| s.contains(r#"port="1"#)).collect();
    assert!(own.iter().all(|s| !s.contains(r#"port="1000""#)), "{own:?}");

    // And when a port's numbers are gone from one read, its series stays.
    fixture.change(|host| host.ports.clear());
    let third = counters(&scrape(&metrics));
    for (name, before) in &second {
        assert!(
            third.get(name).is_some_and(|after| after >= before),
            "{name}: {third:?}"
        );
    }
}

#[test]
fn the_netns_label_stays_once_a_second_namespace_was_seen() {
    let mut host = Host::default();
    host.socket(HOST, 22, SocketState::Listen);
    host.binds(HOST, 22, 1);
    let (fixture, metrics) = start(host);
    assert!(!scrape(&metrics).contains("netns="));
    fixture.change(|host| host.socket(BLUE, 8080, SocketState::Listen));
    let two = scrape(&metrics);
    assert!(
        two.contains(r#"portmon_binds_total{proto="tcp",family="ipv4",port="22",class="system",service="",netns="host"} 1"#),
        "{two}"
    );
    fixture.change(|host| host.sockets.retain(|s| s.netns == HOST));
    let one_again = scrape(&metrics);
    for line in one_again.lines().filter(|l| l.starts_with("portmon_sockets{")) {
        assert!(line.contains(r#"netns="host""#), "{line}");
    }
    assert_eq!(
        counters(&one_again).keys().collect::<Vec<_>>(),
        counters(&two).keys().collect::<Vec<_>>(),
        "counter series changed identity"
    );
}

#[test]
fn the_folded_count_is_every_port_in_a_folded_series() {
    let mut host = Host {
        port_series_limit: 2,
        ..Host::default()
    };
    host.binds(HOST, 1001, 1);
    host.binds(HOST, 1002, 1);
    let (fixture, metrics) = start(host);
    assert!(scrape(&metrics).contains("portmon_port_series_folded 0"));
    // Three new listeners: their gauges rank first, but the counters'
    // room is taken, so 3000's binds fold; 5000's socket ranks third.
    fixture.change(|host| {
        for port in [3000, 4000, 5000] {
            host.socket(HOST, port, SocketState::Listen);
        }
        host.binds(HOST, 3000, 4);
    });
    let text = scrape(&metrics);
    let all = series(&text);
    let value = |name: &str| all.get(name).copied().unwrap_or_else(|| panic!("{name}: {text}"));
    assert_eq!(
        value("portmon_port_series_folded"),
        2.0,
        "3000 (binds) and 5000 (sockets)"
    );
    assert_eq!(
        value(r#"portmon_binds_total{proto="tcp",family="ipv4",port="other",class="user",service=""}"#),
        4.0
    );
    assert_eq!(
        value(
            r#"portmon_listening_ports{proto="tcp",family="ipv4",port="other",class="user",service="",scope="loopback",assignment=""}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            r#"portmon_listening_ports{proto="tcp",family="ipv4",port="3000",class="user",service="",scope="loopback",assignment="unassigned"}"#
        ),
        1.0
    );
}

#[test]
fn overflow_counts_in_the_class_series_and_a_gone_namespace_leaves_nothing() {
    use crate::kernel::bpf::counters::PortOverflow;
    let mut host = Host {
        netns_label: NetnsLabel::Always,
        ..Host::default()
    };
    host.binds(HOST, 1001, 1);
    host.binds(BLUE, 1002, 2);
    host.overflow.push(PortOverflow {
        netns: BLUE,
        proto: Proto::Tcp,
        family: Family::Inet,
        role: Role::Local,
        kind: portmon_common::kind::BINDS,
        class: portmon_common::range_class::USER,
        count: 3,
    });
    let (fixture, metrics) = start(host);
    let all = series(&scrape(&metrics));
    let folded =
        r#"portmon_binds_total{proto="tcp",family="ipv4",port="other",class="user",service="",netns="blue"}"#;
    assert_eq!(all.get(folded), Some(&3.0), "{all:#?}");
    assert_eq!(
        all.get(r#"portmon_port_overflow_total{netns="blue",proto="tcp",family="ipv4",class="user"}"#),
        Some(&3.0)
    );
    // Its grace over, the namespace's counters are no longer read.
    fixture.change(|host| {
        host.ports.retain(|p| p.netns != BLUE);
        host.overflow.clear();
    });
    let text = scrape(&metrics);
    assert!(!text.contains(r#"netns="blue""#), "{text}");
    assert!(text.contains(r#"port="1001""#), "{text}");
}

#[test]
fn listening_ports_count_ports_by_scope_not_sockets() {
    let mut host = Host {
        port_series_limit: 2,
        ..Host::default()
    };
    // An SO_REUSEPORT group of three on loopback, one wildcard socket on
    // the same port, a specific address, and over the limit two folded
    // ports of two sockets each.
    for _ in 0..3 {
        host.listener(HOST, "127.0.0.1:80");
    }
    host.listener(HOST, "0.0.0.0:80");
    host.listener(HOST, "[::]:443");
    host.listener(HOST, "10.0.0.1:8080");
    for local in [
        "10.0.0.1:9000",
        "10.0.0.2:9000",
        "[::ffff:10.0.0.3]:9001",
        "10.0.0.4:9001",
    ] {
        host.listener(HOST, local);
    }
    let (_, metrics) = start(host);
    let text = scrape(&metrics);
    let all = series(&text);
    let value = |name: &str| all.get(name).copied().unwrap_or_else(|| panic!("{name}: {text}"));
    let listening = |family: &str, port: &str, class: &str, scope: &str| {
        // The fixture's registry is empty: a port is unassigned, a folded series has none.
        let assignment = if port == "other" { "" } else { "unassigned" };
        value(&format!(
            r#"portmon_listening_ports{{proto="tcp",family="{family}",port="{port}",class="{class}",service="",scope="{scope}",assignment="{assignment}"}}"#
        ))
    };
    assert_eq!(listening("ipv4", "80", "system", "loopback"), 1.0);
    assert_eq!(listening("ipv4", "80", "system", "wildcard"), 1.0);
    assert_eq!(
        listening("ipv4", "9000", "user", "specific"),
        1.0,
        "two addresses, one port"
    );
    // Past the limit (80 and 9000 have the most listeners).
    assert_eq!(listening("ipv6", "other", "system", "wildcard"), 1.0, "443");
    assert_eq!(
        listening("ipv4", "other", "user", "specific"),
        2.0,
        "8080 and 9001"
    );
    assert_eq!(
        listening("ipv6", "other", "user", "specific"),
        1.0,
        "9001 over IPv6"
    );
    assert_eq!(
        value(
            r#"portmon_sockets{proto="tcp",family="ipv4",port="80",class="system",service="",state="listen"}"#
        ),
        4.0,
        "the sockets are still there to count"
    );
    let wildcard: f64 = all
        .iter()
        .filter(|(name, _)| {
            name.starts_with("portmon_listening_ports{") && name.contains(r#"scope="wildcard""#)
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(wildcard, 2.0, "80 and 443 listen on every interface: {text}");
}

#[test]
fn skipped_runs_are_exported_whether_or_not_runs_are_counted() {
    use crate::kernel::bpf::program_stats::ProgramMisses;
    let (fixture, metrics) = start(Host::default());
    fixture.change(|host| {
        host.program_misses = vec![ProgramMisses {
            program: "inet_sock_set_state",
            misses: 2,
        }];
    });
    let all = series(&scrape(&metrics));
    assert_eq!(
        all.get(r#"portmon_bpf_program_recursion_misses_total{program="inet_sock_set_state"}"#),
        Some(&2.0)
    );
    assert!(!all
        .keys()
        .any(|k| k.starts_with("portmon_bpf_program_runs_total")));
}

#[test]
fn program_runs_are_exported_while_the_kernel_counts_them_and_absent_otherwise() {
    use crate::kernel::bpf::program_stats::ProgramRuns;
    let (fixture, metrics) = start(Host::default());
    let off = scrape(&metrics);
    assert!(!off.contains("portmon_bpf_program_run"), "{off}");
    fixture.change(|host| {
        host.program_runs = Some(vec![ProgramRuns {
            program: "connect4",
            runs: 3,
            run_time: std::time::Duration::from_micros(1500),
        }]);
    });
    let all = series(&scrape(&metrics));
    assert_eq!(
        all.get(r#"portmon_bpf_program_runs_total{program="connect4"}"#),
        Some(&3.0)
    );
    assert_eq!(
        all.get(r#"portmon_bpf_program_run_seconds_total{program="connect4"}"#),
        Some(&0.0015)
    );
}

#[test]
fn ports_the_kernel_chose_count_per_pool_with_no_port_label() {
    use crate::kernel::bpf::pools::AssignedCount;
    use portmon_common::{Assignment, Family, Proto};
    let mut host = Host::default();
    host.assigned.push(AssignedCount {
        netns: HOST,
        proto: Proto::Udp,
        family: Family::Inet6,
        how: Assignment::Autobind,
        count: 10_000,
    });
    let (_, metrics) = start(host);
    let text = scrape(&metrics);
    assert!(
        text.contains(
            r#"portmon_ephemeral_ports_assigned_total{netns="host",proto="udp",family="ipv6",op="autobind"} 10000"#
        ),
        "{text}"
    );
    assert!(!text.contains("portmon_binds_total"), "{text}");
}

#[test]
fn the_process_families_are_exported_beside_portmons() {
    let (_, metrics) = start(Host::default());
    let all = series(&scrape(&metrics));
    // A test process may not have used a whole clock tick of CPU yet.
    for (name, least) in [
        ("process_resident_memory_bytes", 1.0),
        ("process_cpu_seconds_total", 0.0),
        ("process_open_fds", 1.0),
        ("process_start_time_seconds", 1.0),
    ] {
        assert!(all.get(name).is_some_and(|v| *v >= least), "{name}: {all:?}");
    }
}

#[test]
fn build_info_names_the_revision_and_the_compiler() {
    let (_, metrics) = start(Host::default());
    let text = scrape(&metrics);
    let line = text
        .lines()
        .find(|l| l.starts_with("portmon_build_info{"))
        .unwrap_or_else(|| panic!("no build info: {text}"));
    assert!(line.ends_with(" 1"), "{line}");
    for label in ["version", "revision", "rustc_version"] {
        assert!(line.contains(&format!("{label}=\"")), "{label}: {line}");
        assert!(!line.contains(&format!("{label}=\"\"")), "{label} empty: {line}");
    }
    assert!(
        line.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
}

#[test]
fn a_refused_reload_reads_0_and_keeps_the_time_of_the_last_success() {
    let (fixture, metrics) = start(Host::default());
    let all = series(&scrape(&metrics));
    assert_eq!(all.get("portmon_config_last_reload_successful"), Some(&1.0));
    assert_eq!(
        all.get("portmon_config_last_reload_success_timestamp_seconds"),
        Some(&1_700_000_000.0)
    );
    fixture.change(|host| host.reload.last_successful = false);
    let all = series(&scrape(&metrics));
    assert_eq!(all.get("portmon_config_last_reload_successful"), Some(&0.0));
    assert_eq!(
        all.get("portmon_config_last_reload_success_timestamp_seconds"),
        Some(&1_700_000_000.0)
    );
}

#[test]
fn port_searches_are_a_cumulative_histogram_in_seconds_per_namespace() {
    let mut buckets = [0; portmon_common::SEARCH_BUCKETS];
    // Three searches of at most 256 ns, one of at most 512 ns, one past
    // the last bound.
    buckets[0] = 3;
    buckets[1] = 1;
    buckets[portmon_common::SEARCH_BUCKETS - 1] = 1;
    let host = Host {
        connect_search: vec![crate::kernel::bpf::connect_search::SearchTimes {
            netns: BLUE,
            buckets,
            sum_ns: 2_000_001_000,
        }],
        ..Host::default()
    };
    let (_, metrics) = start(host);
    let all = series(&scrape(&metrics));
    let at = |suffix: &str| {
        all.get(&format!("portmon_connect_port_search_seconds{suffix}"))
            .copied()
    };
    assert_eq!(
        at(r#"_bucket{netns="blue",le="0.000000256"}"#),
        Some(3.0),
        "{all:?}"
    );
    assert_eq!(at(r#"_bucket{netns="blue",le="0.000000512"}"#), Some(4.0));
    assert_eq!(at(r#"_bucket{netns="blue",le="1.073741824"}"#), Some(4.0));
    assert_eq!(at(r#"_bucket{netns="blue",le="+Inf"}"#), Some(5.0));
    assert_eq!(at(r#"_count{netns="blue"}"#), Some(5.0));
    assert_eq!(at(r#"_sum{netns="blue"}"#), Some(2.000001));
}

#[test]
fn every_series_carries_the_labels_its_definition_names() {
    for label in [NetnsLabel::Auto, NetnsLabel::Always] {
        let mut host = Host {
            port_series_limit: 1,
            netns_label: label,
            ..Host::default()
        };
        host.socket(HOST, 22, SocketState::Listen);
        host.socket(HOST, 40_000, SocketState::Established);
        host.binds(HOST, 22, 1);
        host.bind_errors(HOST, 80, 1);
        let (_, metrics) = start(host);
        let text = scrape(&metrics);
        let mut types = 0;
        for line in text
            .lines()
            .filter(|l| l.starts_with("portmon_") || l.starts_with("# TYPE portmon_"))
        {
            if let Some(typed) = line.strip_prefix("# TYPE ") {
                let (name, kind) = typed.split_once(' ').unwrap();
                let def = definition(name).unwrap_or_else(|| panic!("{name} has no definition"));
                assert_eq!(kind, format!("{:?}", def.kind).to_lowercase(), "{name}");
                types += 1;
                continue;
            }
            let (sample, _) = line.rsplit_once(' ').unwrap();
            let (name, labels) = sample.split_once('{').unwrap_or((sample, "}"));
            let (def, extra) = definition(name)
                .map(|d| (d, None))
                .or_else(|| {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))?;
                    let def =
                        definition(base).filter(|d| d.kind == prometheus::proto::MetricType::HISTOGRAM)?;
                    Some((def, name.ends_with("_bucket").then_some("le")))
                })
                .unwrap_or_else(|| panic!("{name} has no definition"));
            let mut want: Vec<&str> = def.label_names(label == NetnsLabel::Always).collect();
            want.extend(extra);
            assert_eq!(label_names(labels), want, "{line}");
        }
        assert!(types > 10, "{text}");
    }
}

fn definition(name: &str) -> Option<&'static definitions::Definition> {
    definitions::ALL.iter().find(|d| d.name == name)
}

/// The names of `labels`, the text after a sample's `{`.
fn label_names(labels: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = labels;
    while let Some((name, value)) = rest.split_once("=\"") {
        names.push(name.trim_start_matches(','));
        let mut escaped = false;
        let end = value
            .char_indices()
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })
            .map_or(value.len(), |(i, _)| i);
        rest = &value[end + 1..];
    }
    assert_eq!(rest, "}", "{labels}");
    names
}
