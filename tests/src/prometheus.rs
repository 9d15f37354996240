//! A real Prometheus scraping the daemon, and reading an exposition.

use std::{path::PathBuf, process::Command, time::Duration};

use crate::{daemon::Home, http_get, url_encode, wait_until};

/// How long a test waits for Prometheus to see what the daemon exports:
/// long enough for a guest of `cargo xtask vm-test`, where Prometheus runs
/// emulated; a wait ends as soon as the value is there.
pub const PROMETHEUS_PATIENCE: Duration = Duration::from_secs(120);

/// A real Prometheus server (the Debian package) scraping `target` every
/// second, with its data in a temporary directory; stopped on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    dir: PathBuf,
    home: Home,
}

impl Prometheus {
    pub fn start(addr: std::net::SocketAddr, target: std::net::SocketAddr, rule_files: &[PathBuf]) -> Self {
        Self::start_scraping(addr, &[target], rule_files)
    }

    /// Like `start`, with every target in the one `portmon` job.
    pub fn start_scraping(
        addr: std::net::SocketAddr,
        targets: &[std::net::SocketAddr],
        rule_files: &[PathBuf],
    ) -> Self {
        // Prometheus reads `rule_files` as globs: a missing file would load
        // no rules, silently, and an alert test could only time out.
        for file in rule_files {
            assert!(file.is_file(), "rule file {} is missing", file.display());
        }
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let jobs = format!(
            "  - job_name: portmon\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        Self::start_with(addr, &jobs, &rules.concat())
    }

    /// A Prometheus with the scrape jobs `jobs` (YAML list items, indented
    /// two spaces) and the rule file lines `rules`.
    pub fn start_with(addr: std::net::SocketAddr, jobs: &str, rules: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portmon-prometheus-{}-{}",
            std::process::id(),
            addr.port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}scrape_configs:\n{jobs}",
            if rules.is_empty() { "  []\n" } else { rules },
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log file"))
            .spawn()
            .expect("start prometheus (apt-get install prometheus; cargo xtask test installs it)");
        let prometheus = Self {
            child,
            addr,
            dir,
            home: Home::here(),
        };
        let ready = wait_until(Duration::from_secs(60), || {
            matches!(http_get(addr, "/-/ready"), Ok((200, _)))
        });
        assert!(ready, "prometheus not ready; log in {}", prometheus.dir.display());
        prometheus
    }

    /// The value of an instant query's first result, if any.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = self.home.run(|| http_get(self.addr, &path)).ok()?;
        assert_eq!(status, 200, "query {promql}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["data"]["result"].get(0)?["value"][1].as_str()?.parse().ok()
    }

    /// The JSON answer of a GET on Prometheus' HTTP API (`/api/v1/...`).
    pub fn api(&self, path_and_query: &str) -> serde_json::Value {
        let (status, body) = self
            .home
            .run(|| http_get(self.addr, path_and_query))
            .unwrap_or_else(|e| panic!("GET {path_and_query} from prometheus: {e}"));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path_and_query}: status {status}, not JSON ({e}): {body}"))
    }

    /// Waits until `promql` returns `want`; returns the last value seen.
    pub fn wait_for(&self, promql: &str, want: f64, timeout: Duration) -> Option<f64> {
        let mut last = None;
        wait_until(timeout, || {
            last = self.query(promql);
            last == Some(want)
        });
        last
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the series `name` whose labels include all of `labels`, in
/// Prometheus text exposition; `None` if there is none.
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.rsplit_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
        all.then(|| value.trim().parse().ok()).flatten()
    })
}
