//! portmon short of file descriptors: with `RLIMIT_NOFILE` at 256 and more
//! namespaces than it can hold handles for, it keeps serving, never lets
//! the inventory empty silently, and counts the namespaces it left out.

use std::{
    net::{TcpListener, TcpStream},
    time::Duration,
};

use portmon_tests::{http_get, metric_value, portmon_bin, serial, supervised::Supervised, NamedNetns};

const LISTEN: &str = "127.0.0.1:17493";
const PORT: u16 = 17_494;
const CONNECTIONS: usize = 1000;
/// Enough namespaces that their handles (seven descriptors each) would not
/// fit under the limit beside what the daemon keeps free for serving.
const NAMESPACES: usize = 40;

/// The sum of `portmon_sockets` series of `port`.
fn sockets_on(exposition: &str, port: u16) -> f64 {
    let label = format!("port=\"{port}\"");
    exposition
        .lines()
        .filter(|l| l.starts_with("portmon_sockets{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn short_of_descriptors_it_serves_keeps_the_inventory_and_counts_what_it_left_out() {
    let _serial = serial();
    // Our own connections' descriptors, past a soft limit of 1,024.
    portmon::kernel::resources::raise_descriptor_limit().expect("raise RLIMIT_NOFILE");
    let listener = TcpListener::bind(("127.0.0.1", PORT)).expect("listen");
    let mut held = Vec::with_capacity(2 * CONNECTIONS);
    for _ in 0..CONNECTIONS {
        held.push(TcpStream::connect(("127.0.0.1", PORT)).expect("connect"));
        held.push(listener.accept().expect("accept").0);
    }
    let namespaces: Vec<NamedNetns> = (0..NAMESPACES)
        .map(|i| NamedNetns::create(&format!("fd{i}")))
        .collect();

    let args: Vec<String> = ["--nofile=256:256", "--"]
        .into_iter()
        .map(str::to_owned)
        .chain([portmon_bin().display().to_string()])
        .chain(["run", "--listen", LISTEN].map(str::to_owned))
        .collect();
    let mut daemon = Supervised::spawn(
        "descriptors",
        "prlimit".as_ref(),
        &args,
        &[("PORTMON_LOG", "warn")],
    );
    daemon
        .wait_for("READY=1", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no READY=1:\n{}", daemon.log_text()));
    let addr = LISTEN.parse().unwrap();

    // Scrapes go on succeeding, each with every socket of the host's
    // namespace, however many namespaces could not be given handles.
    let mut last = String::new();
    for _ in 0..5 {
        let (status, body) = http_get(addr, "/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        let seen = sockets_on(&body, PORT);
        assert!(
            seen >= (CONNECTIONS + 1) as f64,
            "the inventory lost sockets: {seen} on port {PORT}:\n{}",
            daemon.log_text()
        );
        last = body;
        std::thread::sleep(Duration::from_millis(500));
    }
    let unwatched = metric_value(&last, "portmon_netns_unwatched", &[]).expect("portmon_netns_unwatched");
    assert!(unwatched >= 1.0, "no namespace counted as left out");
    assert!(
        unwatched <= NAMESPACES as f64,
        "more left out than there are: {unwatched}"
    );
    let open = std::fs::read_dir(format!("/proc/{}/fd", daemon.child.id()))
        .map(Iterator::count)
        .unwrap_or(0);
    eprintln!("descriptors: {unwatched} of {NAMESPACES} namespaces left out, {open} descriptors open of 256");
    assert!(
        daemon.log_text().contains("raise LimitNOFILE"),
        "the shortfall was not logged:\n{}",
        daemon.log_text()
    );
    drop((namespaces, held, listener));
}
