//! A storm of failed binds from an unprivileged user, in network
//! namespaces it makes for the purpose, against the daemon as the unit runs
//! it: the daemon keeps pinging its watchdog, every failure the kernel
//! programs saw is counted or its drop is, memory stays bounded and the
//! log gets summary lines instead of a line per failure.

use std::{
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use portmon_tests::{
    http_get, metric_value, portmon_bin, serial,
    supervised::{setpriv_args, unit_file, unit_values, Supervised},
    wait_until,
};

const LISTEN: &str = "127.0.0.1:17491";
/// A tighter watchdog than the unit's, so that a stall shows within the storm.
const WATCHDOG: Duration = Duration::from_secs(4);
const STORM: Duration = Duration::from_secs(60);
/// Storming processes at a time; each lives in a namespace of its own for
/// `ROUND` and is followed by another in a new one.
const WORKERS: usize = 2;
const ROUND: Duration = Duration::from_secs(10);
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// A worker failing binds for `seconds` (see `storm-worker`), as `nobody`,
/// in a user and network namespace of its own.
fn storm_worker(seconds: f64) -> Child {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["unshare", "--user", "--map-root-user", "--net", "--"])
        .arg(env!("CARGO_BIN_EXE_storm-worker"))
        .arg(seconds.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a storm worker (setpriv, unshare)")
}

/// A worker's outcome: binds that failed, and binds that succeeded (none
/// should).
fn storm_outcome(worker: Child) -> (u64, u64) {
    let out = worker.wait_with_output().expect("storm worker");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "storm worker: {}: {text}", out.status);
    let mut words = text.split_whitespace();
    let failed = words.next().and_then(|w| w.parse().ok());
    let bound = words.nth(1).and_then(|w| w.parse().ok());
    failed
        .zip(bound)
        .unwrap_or_else(|| panic!("storm worker said {text:?}"))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The sum of every series of `name`.
fn total(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_failure_storm_keeps_the_watchdog_counts_and_memory() {
    let _serial = serial();
    let unit = std::fs::read_to_string(unit_file()).expect("read the unit file");
    let caps = unit_values(&unit, "AmbientCapabilities");
    let mut args = setpriv_args("65534", &caps);
    args.push(portmon_bin().display().to_string());
    args.extend(["run", "--listen", LISTEN].map(str::to_owned));
    let watchdog_usec = WATCHDOG.as_micros().to_string();
    let mut daemon = Supervised::spawn(
        "storm",
        "setpriv".as_ref(),
        &args,
        &[("PORTMON_LOG", "warn"), ("WATCHDOG_USEC", &watchdog_usec)],
    );
    daemon
        .wait_for("READY=1", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no READY=1:\n{}", daemon.log_text()));
    let addr = LISTEN.parse().unwrap();
    let pid = daemon.child.id();
    let before = http_get(addr, "/metrics").expect("scrape").1;
    let seen_before = metric_value(&before, "portmon_failure_events_total", &[]).expect("failure events");

    let storming = AtomicBool::new(true);
    let (gaps, peak_rss, (failed, bound), stormed) = std::thread::scope(|scope| {
        let storm = scope.spawn(|| {
            let started = Instant::now();
            let mut outcome = (0, 0);
            while started.elapsed() < STORM {
                let round = ROUND.min(STORM - started.elapsed()).as_secs_f64();
                let workers: Vec<Child> = (0..WORKERS).map(|_| storm_worker(round)).collect();
                for worker in workers {
                    let (failed, bound) = storm_outcome(worker);
                    outcome = (outcome.0 + failed, outcome.1 + bound);
                }
            }
            storming.store(false, Ordering::Relaxed);
            (outcome, started.elapsed())
        });
        // Every watchdog ping must come within the interval the daemon was given.
        let mut gaps = Vec::new();
        let mut peak_rss = 0;
        let mut last = Instant::now();
        while storming.load(Ordering::Relaxed) {
            let ping = daemon.wait_for("WATCHDOG=1", WATCHDOG * 2);
            gaps.push(last.elapsed());
            last = Instant::now();
            peak_rss = peak_rss.max(rss_kib(pid));
            assert!(
                ping.is_some(),
                "no watchdog ping for {:?} during the storm",
                WATCHDOG * 2
            );
        }
        let (outcome, stormed) = storm.join().expect("the storm");
        (gaps, peak_rss, outcome, stormed)
    });
    let worst = gaps.iter().max().copied().unwrap_or_default();
    assert!(
        worst < WATCHDOG,
        "a watchdog ping came {worst:?} after the one before"
    );

    // Once the reader has caught up, every failure the programs saw is a
    // counted failure, a counted drop, or an undecodable event.
    let mut last = String::new();
    let settled = wait_until(Duration::from_secs(60), || {
        last = http_get(addr, "/metrics").expect("scrape").1;
        let seen = metric_value(&last, "portmon_failure_events_total", &[]).unwrap_or(0.0);
        let accounted = total(&last, "portmon_bind_errors_total")
            + total(&last, "portmon_connect_errors_total")
            + total(&last, "portmon_events_dropped_total")
            + total(&last, "portmon_failure_events_undecodable_total");
        seen > seen_before && seen == accounted
    });
    let seen = metric_value(&last, "portmon_failure_events_total", &[]).unwrap_or(0.0) - seen_before;
    let dropped = total(&last, "portmon_events_dropped_total");
    let suppressed = total(&last, "portmon_log_lines_suppressed_total");
    let logged = log_failure_lines(&daemon);
    eprintln!(
        "storm: {WORKERS} workers failed {failed} binds in {stormed:.1?} ({:.0}/s; {bound} bound); \
         the daemon saw {seen} failures ({:.0}/s), {dropped} dropped in the ring buffer and counted; \
         {logged} failure lines logged one by one, {suppressed} held back in summary lines; \
         peak RSS {peak_rss} KiB; worst watchdog gap {worst:?}",
        failed as f64 / stormed.as_secs_f64(),
        seen / stormed.as_secs_f64()
    );
    assert!(settled, "failures seen and accounted for differ:\n{last}");
    assert_eq!(bound, 0, "binds meant to fail succeeded");
    let overflows: Vec<&str> = last
        .lines()
        .filter(|l| l.starts_with("portmon_map_overflows_total{") && !l.ends_with(" 0"))
        .collect();
    let skipped: Vec<&str> = last
        .lines()
        .filter(|l| l.starts_with("portmon_bpf_program_recursion_misses_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(
        seen >= failed as f64,
        "the workers failed {failed} binds, the daemon saw {seen}; maps that overflowed: {overflows:?}; \
         program runs the kernel skipped: {skipped:?}"
    );
    assert!(
        seen > 100_000.0,
        "the storm was too weak to test anything: {seen} failures"
    );
    assert!(peak_rss < RSS_LIMIT_KIB, "RSS reached {peak_rss} KiB");
    assert!(
        rss_kib(pid) < RSS_LIMIT_KIB,
        "RSS after the storm: {} KiB",
        rss_kib(pid)
    );

    // The log: a bounded number of failure lines and a summary per interval.
    let log = daemon.log_text();
    let lines = log_failure_lines(&daemon);
    let intervals = (STORM.as_secs() / portmon::failures::LOG_INTERVAL.as_secs()) as usize + 8;
    assert!(
        lines <= intervals * portmon::failures::LOG_LINES as usize,
        "{lines} failure lines logged one by one"
    );
    assert!(suppressed > 0.0, "nothing was held back from the log");
    assert!(
        log.contains("were not logged one by one"),
        "no summary line:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
}

/// Failures the daemon logged one by one.
fn log_failure_lines(daemon: &Supervised) -> usize {
    daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("bind failed"))
        .count()
}
