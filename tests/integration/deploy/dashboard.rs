//! The dashboard's structure: it imports as it is, every panel has a place,
//! a description and queries on the chosen data source, and what it shows
//! reads right (rates in ops, counts over the time range, the variables in
//! every selector).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{dashboard, panels, variable};

#[test]
fn the_dashboard_imports_as_is_and_is_templated_on_datasource_job_cluster_instance_and_netns() {
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
    for name in ["job", "cluster", "instance", "netns"] {
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
        if name == "job" {
            // All as .* would make up{job=~"$job"} count every target of
            // every job.
            assert_eq!(
                (&v["multi"], &v["includeAll"]),
                (&Value::from(true), &Value::from(false)),
                "variable job: multi-value, no All"
            );
            continue;
        }
        // .* matches an empty value too: a Prometheus without a cluster
        // label still gets data.
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
        "portmon_listeners_in_ephemeral_range",
        "portmon_listener_in_ephemeral_range_info",
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

/// Every query of panels and annotations.
fn queries(d: &Value) -> Vec<(String, &str)> {
    let mut all = Vec::new();
    for panel in panels(d) {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let source = format!("panel {} {}", panel["title"], t["refId"]);
            all.push((source, t["expr"].as_str().unwrap_or_default()));
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            all.push((format!("annotation {}", a["name"]), expr));
        }
    }
    all
}

#[test]
fn every_selector_follows_the_job_and_cluster_variables_and_no_job_is_hard_coded() {
    let d = dashboard();
    for (source, expr) in queries(&d) {
        assert!(!expr.contains("job=\""), "{source}: a hard-coded job: {expr}");
        let selectors = expr.matches("instance=~\"$instance\"").count();
        assert!(selectors > 0, "{source}: not filtered by $instance: {expr}");
        for matcher in ["job=~\"$job\"", "cluster=~\"$cluster\""] {
            assert_eq!(
                expr.matches(matcher).count(),
                selectors,
                "{source}: a selector without {matcher}: {expr}"
            );
        }
    }
}

/// Where each occurrence of a counter (`*_total`) stands in `expr`: the
/// text after its selector.
fn after_counters(expr: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(end) = rest.find("_total") {
        let name_start = rest[..end]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let name = format!("{}_total", &rest[name_start..end]);
        let mut after = &rest[end + "_total".len()..];
        if after.starts_with('{') {
            after = after.find('}').map_or("", |close| &after[close + 1..]);
        }
        found.push((name, after.trim_start().to_owned()));
        rest = after;
    }
    found
}

#[test]
fn no_stat_panel_shows_a_raw_counter_and_rates_are_in_ops() {
    let d = dashboard();
    for panel in panels(&d) {
        let title = &panel["title"];
        let exprs: Vec<&str> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .collect();
        if matches!(panel["type"].as_str(), Some("stat" | "bargauge" | "gauge")) {
            for expr in &exprs {
                // A counter is read through a range ([..]) or in the
                // new-series term `X unless X offset $__range`; its raw
                // value counts from an unknown start (the daemon's).
                for (name, after) in after_counters(expr) {
                    assert!(
                        after.starts_with('[') || after.starts_with("unless") || after.starts_with("offset"),
                        "panel {title}: shows the raw counter {name}: {expr}"
                    );
                }
                if expr.contains("_total") {
                    assert!(
                        expr.contains("[$__range]"),
                        "panel {title}: a count over something else than the time range: {expr}"
                    );
                }
            }
        }
        // A quantile of a histogram's rates is in the histogram's unit.
        if !exprs.is_empty()
            && exprs
                .iter()
                .all(|e| e.contains("rate(") && !e.starts_with("histogram_quantile("))
        {
            assert_eq!(
                panel["fieldConfig"]["defaults"]["unit"], "ops",
                "panel {title}: a rate per second is in ops"
            );
        }
    }
    let raw = after_counters(r#"sum(a_total{x="1"}) + increase(b_total[5m])"#);
    assert_eq!(
        raw[0],
        ("a_total".to_owned(), ") + increase(b_total[5m])".to_owned())
    );
    assert_eq!(raw[1], ("b_total".to_owned(), "[5m])".to_owned()));
}

#[test]
fn the_dashboard_links_the_runbooks_and_a_node_dashboard_and_marks_restarts() {
    let d = dashboard();
    let links: Vec<&str> = d["links"]
        .as_array()
        .expect("links")
        .iter()
        .filter_map(|l| l["url"].as_str())
        .collect();
    assert!(
        links.iter().any(|u| u.ends_with("docs/runbooks.md")),
        "no link to the runbooks: {links:?}"
    );
    assert!(
        links.iter().any(|u| u.contains("node-exporter")),
        "no link to a node dashboard: {links:?}"
    );
    let restarts = d["annotations"]["list"]
        .as_array()
        .expect("annotations")
        .iter()
        .find(|a| {
            a["expr"]
                .as_str()
                .is_some_and(|e| e.contains("process_start_time_seconds"))
        })
        .expect("an annotation on daemon restarts");
    assert_eq!(restarts["datasource"]["uid"], "${datasource}");
    assert_eq!(restarts["enable"], true);
}
