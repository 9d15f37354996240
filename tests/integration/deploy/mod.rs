//! The deployment material in `deploy/`, tested for real: the alert rules
//! through promtool (syntax and unit tests, here), the dashboard's structure
//! (`dashboard`), every query of the dashboard and of the rules against a
//! live Prometheus scraping a live daemon, one whose namespace runs out of
//! ephemeral ports and one fresh with no events (`live`), and the Kubernetes
//! manifests through a schema validator (`kubernetes`; `cargo xtask setup`
//! installs it).

mod dashboard;
mod kubernetes;
mod live;
mod promql;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

pub(super) fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .canonicalize()
        .expect("deploy/ beside tests/")
}

pub(super) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs a command; (success, stdout and stderr).
pub(super) fn run(command: &mut Command) -> (bool, String) {
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

// --- The dashboard, shared by the structure and the live tests ----------------

pub(super) fn dashboard() -> Value {
    let path = deploy_dir().join("grafana/portmon.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
pub(super) fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

pub(super) fn variable<'a>(dashboard: &'a Value, name: &str) -> &'a Value {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("dashboard variable {name} missing"))
}
