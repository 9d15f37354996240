//! Running PromQL as Grafana and the rules would: variables filled in,
//! metric names found, series counted.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use portmon_tests::{url_encode, Prometheus};
use serde_json::Value;

use super::{panels, variable};

/// One query to run, and where it comes from.
#[derive(Debug)]
pub(super) struct Query {
    pub source: String,
    pub promql: String,
    /// Must return at least one series (else: every metric it reads must exist).
    pub expect_data: bool,
}

/// Every panel's queries, which must return data, and the annotations',
/// which mark rare events: only the metrics they read must exist.
pub(super) fn dashboard_queries(d: &Value) -> Vec<Query> {
    let mut queries = Vec::new();
    for panel in panels(d) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(Query {
                source: format!("panel '{}' query {}", panel["title"], target["refId"]),
                promql: target["expr"].as_str().unwrap_or_default().to_owned(),
                expect_data: true,
            });
        }
    }
    for annotation in d["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = annotation["expr"].as_str() {
            queries.push(Query {
                source: format!("annotation '{}'", annotation["name"]),
                promql: expr.to_owned(),
                expect_data: false,
            });
        }
    }
    queries
}

/// The dashboard's variables as Grafana fills them in for the one daemon
/// `instance` of the job `portmon`, in every cluster, and `netns`.
pub(super) fn grafana_variables(instance: &str, netns: &str) -> Vec<(&'static str, String)> {
    vec![
        ("job", "portmon".to_owned()),
        ("cluster", ".*".to_owned()),
        ("instance", regex_value(instance)),
        ("netns", netns.to_owned()),
        ("__rate_interval", "1m".to_owned()),
        ("__interval", "15s".to_owned()),
        ("__range", "5m".to_owned()),
    ]
}

/// Runs `queries` against `prometheus`, filled in for the daemon at `daemon`
/// with every namespace, then with `netns` alone (if some) where a query
/// reads it; polls until each answers (counters need two samples for
/// rate()), then fails with every query Prometheus refused or that found
/// no data.
pub(super) fn poll(prometheus: &Prometheus, queries: &[Query], daemon: &str, netns: Option<&str>) {
    let all = grafana_variables(daemon, ".*");
    let one = netns.map(|n| grafana_variables(daemon, &regex_value(n)));
    let mut pending: Vec<(String, String, bool)> = Vec::new();
    for q in queries {
        let sets = [
            ("all namespaces", Some(&all)),
            ("netns of the test", one.as_ref()),
        ];
        for (label, variables) in sets {
            let Some(variables) = variables else { continue };
            if label != "all namespaces" && !q.promql.contains("$netns") {
                continue;
            }
            let variables: Vec<(&str, &str)> = variables.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let promql = substitute(&q.promql, &variables);
            assert!(
                !promql.contains('$'),
                "{}: a variable left unset: {promql}",
                q.source
            );
            pending.push((format!("{} ({label})", q.source), promql, q.expect_data));
        }
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut errors = Vec::new();
    loop {
        pending.retain(
            |(source, promql, expect_data)| match series_count(prometheus, promql) {
                Err(e) => {
                    errors.push(format!("{source}: {e}\n    {promql}"));
                    false
                }
                Ok(n) if *expect_data => n == 0,
                Ok(_) => metric_names(promql).iter().any(|name| {
                    let selector = format!(r#"{name}{{instance="{daemon}"}}"#);
                    !matches!(series_count(prometheus, &selector), Ok(n) if n > 0)
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
}

/// A value as Grafana puts it into a regex matcher: special characters
/// escaped, the backslash itself escaped for the PromQL string.
pub(super) fn regex_value(value: &str) -> String {
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
pub(super) fn substitute(expr: &str, variables: &[(&str, &str)]) -> String {
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
pub(super) fn metric_names(promql: &str) -> BTreeSet<String> {
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
pub(super) fn series_count(prometheus: &Prometheus, promql: &str) -> Result<usize, String> {
    let answer = prometheus.api(&format!("/api/v1/query?query={}", url_encode(promql)));
    if answer["status"] != "success" {
        return Err(answer["error"].as_str().unwrap_or("no error text").to_owned());
    }
    Ok(match answer["data"]["resultType"].as_str() {
        Some("vector" | "matrix") => answer["data"]["result"].as_array().map_or(0, Vec::len),
        _ => 1,
    })
}

/// The rules Prometheus loaded from the rule file, once it has evaluated them.
pub(super) fn loaded_rules(prometheus: &Prometheus) -> Vec<Value> {
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

/// The job, instance and netns variables list the job, the daemon at
/// `daemon` and the namespace `netns`.
pub(super) fn check_variables(prometheus: &Prometheus, d: &Value, daemon: &str, netns: &str) {
    let variables = grafana_variables(daemon, ".*");
    let variables: Vec<(&str, &str)> = variables.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (name, want) in [("job", "portmon"), ("instance", daemon), ("netns", netns)] {
        let definition = variable(d, name)["definition"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: {definition}"));
        let (selector, label) = inner.rsplit_once(',').expect("label_values(selector, label)");
        let selector = substitute(selector.trim(), &variables);
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
