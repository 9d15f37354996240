//! Serving under hostile and plentiful clients: the HTTP limits, TLS and
//! basic auth with a real Prometheus, floods of idle connections and slow
//! readers, and many clients sharing snapshots. Serial (`serial()`): each
//! starts a daemon whose programs count on the cgroup root.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _},
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use portmon_tests::{
    http_get, metric_value, reset_on_close, serial, wait_until, write_sysctl, Daemon, NamedNetns, Prometheus,
    PROMETHEUS_PATIENCE,
};

const PROTOCOL_DAEMON: &str = "127.0.0.1:17500";
const NO_API_DAEMON: &str = "127.0.0.1:17501";
const TLS_DAEMON: &str = "127.0.0.1:17502";
const TLS_PROMETHEUS: &str = "127.0.0.1:19100";
const FLOOD_DAEMON: &str = "127.0.0.1:17503";
const FLOOD_PROMETHEUS: &str = "127.0.0.1:19101";
const SHARING_DAEMON: &str = "127.0.0.1:17504";

/// The memory bound the issue sets for the daemon under any load.
const RSS_BOUND: u64 = 64 << 20;
/// How long the floods last.
const FLOOD: Duration = Duration::from_secs(60);
/// How long the clients sharing snapshots run.
const SHARING: Duration = Duration::from_secs(60);

/// One request on a fresh connection, read to the close: (head, body).
fn exchange(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect to the daemon");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).expect("send the request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&answer)));
    (
        String::from_utf8_lossy(&answer[..split]).into_owned(),
        answer[split + 4..].to_vec(),
    )
}

fn status(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn too_large_heads_other_methods_head_and_gzip_get_their_http_answers() {
    let _serial = serial();
    let addr: SocketAddr = PROTOCOL_DAEMON.parse().unwrap();
    let daemon = Daemon::start(addr, &[]);

    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(17 * 1024)
    );
    let (head, _) = exchange(addr, big.as_bytes());
    assert_eq!(status(&head), 431, "{head}");

    let (head, body) = exchange(
        addr,
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&head), 200, "{head}");
    let length: usize = header(&head, "content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    assert!(length > 1000, "HEAD tells the length of GET's body: {head}");
    assert!(body.is_empty(), "HEAD got a body of {} bytes", body.len());

    let (head, _) = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&head), 405, "{head}");
    assert_eq!(header(&head, "allow"), Some("GET, HEAD"), "{head}");

    let (head, body) = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(header(&head, "content-encoding"), Some("gzip"), "{head}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .expect("a gzip body");
    assert!(text.contains("portmon_snapshots_total"), "{text}");

    // Percent-encoded query values are decoded: `%74cp` is `tcp`.
    let (code, body) = http_get(addr, "/api/v1/ports?proto=%74cp&listening=1").unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(addr, "/api/v1/ports?proto=%78").unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"x\""), "the decoded value is named: {body}");
    drop(daemon);

    let addr: SocketAddr = NO_API_DAEMON.parse().unwrap();
    let _daemon = Daemon::start(addr, &["--api", "false"]);
    assert_eq!(http_get(addr, "/api/v1/ports").unwrap().0, 404);
    assert_eq!(http_get(addr, "/metrics").unwrap().0, 200);
}

/// Runs a command, which must succeed.
fn run(program: &str, args: &[&str], dir: &Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=portmon test CA",
    ]);
    run("openssl", &ca, dir);
    for (name, usage) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&ext), usage).unwrap();
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj"]);
        let subject = format!("/CN=portmon test {name}");
        req.push(&subject);
        run("openssl", &req, dir);
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
            dir,
        );
    }
}

/// `curl`'s HTTP status for `url` with extra arguments; `None` when no
/// HTTP answer came (refused handshake, not TLS).
fn curl(dir: &Path, url: &str, extra: &[&str]) -> Option<u16> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "--cacert",
            "ca.crt",
        ])
        .args(extra)
        .arg(url)
        .current_dir(dir)
        .output()
        .expect("run curl");
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (out.status.success() && code != 0).then_some(code)
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth_and_a_client_certificate() {
    let _serial = serial();
    let dir = tempfile_dir("tls");
    make_certificates(&dir);
    let hash = bcrypt::hash("s3cret", 6).expect("bcrypt");
    // Relative paths: taken from the web config's directory.
    std::fs::write(
        dir.join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt\n  \
             client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    )
    .unwrap();
    let addr: SocketAddr = TLS_DAEMON.parse().unwrap();
    let web = dir.join("web.yml");
    let url = format!("https://{addr}/metrics");
    let with_cert = ["--cert", "client.crt", "--key", "client.key"];
    let right = [&with_cert[..], &["-u", "prometheus:s3cret"]].concat();
    let _daemon = Daemon::start_when(addr, &["--web-config-file", web.to_str().unwrap()], || {
        curl(&dir, &url, &right) == Some(200)
    });

    let wrong = [&with_cert[..], &["-u", "prometheus:wrong"]].concat();
    assert_eq!(curl(&dir, &url, &wrong), Some(401), "a wrong password");
    assert_eq!(curl(&dir, &url, &with_cert), Some(401), "no password");
    assert_eq!(
        curl(&dir, &url, &["-u", "prometheus:s3cret"]),
        None,
        "no client certificate"
    );
    assert_eq!(
        curl(
            &dir,
            &format!("http://{addr}/metrics"),
            &["-u", "prometheus:s3cret"]
        ),
        None,
        "plain HTTP to the TLS port"
    );

    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {dir}/ca.crt\n      \
             cert_file: {dir}/client.crt\n      key_file: {dir}/client.key\n    basic_auth:\n      \
             username: prometheus\n      password: {password}\n    static_configs:\n      - targets: ['{addr}']\n",
            dir = dir.display()
        )
    };
    let jobs = job("portmon", "s3cret") + &job("intruder", "guess");
    let prometheus = Prometheus::start_with(TLS_PROMETHEUS.parse().unwrap(), &jobs, "");
    assert_eq!(
        prometheus.wait_for("up{job=\"portmon\"}", 1.0, PROMETHEUS_PATIENCE),
        Some(1.0),
        "Prometheus scrapes over TLS with basic auth"
    );
    assert_eq!(
        prometheus.wait_for(
            "count(portmon_build_info{job=\"portmon\"})",
            1.0,
            PROMETHEUS_PATIENCE
        ),
        Some(1.0)
    );
    assert_eq!(
        prometheus.wait_for("up{job=\"intruder\"}", 0.0, PROMETHEUS_PATIENCE),
        Some(0.0),
        "a wrong password scrapes nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portmon-serving-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
}

/// Sets this process's soft descriptor limit to the hard one; returns it.
fn raise_own_descriptor_limit() -> u64 {
    portmon::kernel::resources::raise_descriptor_limit().expect("raise RLIMIT_NOFILE")
}

/// A client that asks for a large answer with a tiny receive buffer and
/// never reads it.
fn slow_reader(addr: SocketAddr) -> TcpStream {
    // SAFETY: a fresh socket, set up before connect, then owned by TcpStream.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let size: libc::c_int = 1024;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        TcpStream::from_raw_fd(fd)
    };
    let socket = socket_addr(addr);
    // SAFETY: connect with a valid sockaddr_in of the right length.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            (&socket as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    (&stream)
        .write_all(b"GET /api/v1/ports HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    stream
}

fn socket_addr(addr: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// The `q` quantile of `values` (sorted in place).
fn quantile(values: &mut [Duration], q: f64) -> Duration {
    values.sort();
    values[((values.len() as f64 - 1.0) * q).round() as usize]
}

#[test]
fn idle_connections_and_slow_readers_stop_neither_scrapes_nor_health() {
    let _serial = serial();
    let limit = raise_own_descriptor_limit();
    // The daemon's connections and ours, on one host: fit the hard limit.
    let (idle_count, slow_count) = if limit >= 5000 {
        (2000, 200)
    } else {
        (limit as usize / 3, 50)
    };
    let addr: SocketAddr = FLOOD_DAEMON.parse().unwrap();
    let mut daemon = Daemon::start(addr, &[]);
    let prometheus = Prometheus::start(FLOOD_PROMETHEUS.parse().unwrap(), addr, &[]);
    assert_eq!(prometheus.wait_for("up", 1.0, PROMETHEUS_PATIENCE), Some(1.0));
    let before = daemon.rss();

    let idle: Vec<TcpStream> = (0..idle_count)
        .map(|_| TcpStream::connect(addr).expect("an idle connection"))
        .collect();
    let slow: Vec<TcpStream> = (0..slow_count).map(|_| slow_reader(addr)).collect();
    let started = Instant::now();
    let mut health = Vec::new();
    let (mut rss_max, mut rss_parts) = (0, String::new());
    while started.elapsed() < FLOOD {
        // A bare request on a fresh connection: what is timed is the
        // daemon and the kernel between it and us, not a client library
        // building its agent (which, unoptimized, takes longer than the
        // daemon's answer).
        let asked = Instant::now();
        let (head, _) = exchange(addr, HEALTHZ);
        health.push(asked.elapsed());
        assert_eq!(status(&head), 200, "{head}");
        let (rss, parts) = daemon.memory();
        if rss > rss_max {
            (rss_max, rss_parts) = (rss, parts);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let scrapes = prometheus.query("count_over_time(up[55s])").unwrap_or(0.0);
    let worst = prometheus.query("min_over_time(up[55s])").unwrap_or(0.0);
    assert!(daemon.running(), "the daemon died under the flood");
    drop((idle, slow));
    let after = wait_until(Duration::from_secs(20), || daemon.rss() < RSS_BOUND);
    let p50 = quantile(&mut health, 0.5);
    let p99 = quantile(&mut health, 0.99);
    let max = health.last().copied().unwrap_or_default();
    eprintln!(
        "{idle_count} idle + {slow_count} slow readers for {FLOOD:?}: /healthz p50 {p50:?}, p99 {p99:?}, max {max:?} over {} probes, \
         RSS {} MiB before, {} MiB at most, {} MiB after; {scrapes} scrapes, worst up {worst}",
        health.len(),
        before >> 20,
        rss_max >> 20,
        daemon.rss() >> 20
    );
    assert!(p99 < Duration::from_millis(100), "/healthz p99 {p99:?}");
    assert!(
        rss_max < RSS_BOUND,
        "RSS reached {} MiB ({rss_parts})",
        rss_max >> 20
    );
    assert!(after, "RSS stayed at {} MiB", daemon.rss() >> 20);
    assert!(
        scrapes >= 50.0 && worst == 1.0,
        "{scrapes} scrapes, worst up {worst}"
    );
}

#[test]
fn concurrent_clients_share_snapshots_and_memory_stays_bounded() {
    let _serial = serial();
    let limit = raise_own_descriptor_limit();
    let population = Population::start(limit);
    let (pairs, waiting) = (population.pairs, population.waiting);
    let addr: SocketAddr = SHARING_DAEMON.parse().unwrap();
    let mut daemon = Daemon::start(addr, &[]);
    let snapshots = || {
        let (_, text) = http_get(addr, "/metrics").expect("scrape");
        metric_value(&text, "portmon_snapshots_total", &[]).expect("portmon_snapshots_total")
    };
    let first = snapshots();
    let requests = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let (mut rss_max, mut rss_parts) = (0, String::new());
    std::thread::scope(|scope| {
        for client in 0..64 {
            let (requests, failures, done) = (&requests, &failures, &done);
            scope.spawn(move || {
                let paths = ["/api/v1/ports", "/metrics"];
                let mut i = client;
                while !done.load(Ordering::Relaxed) {
                    match http_get(addr, paths[i % 2]) {
                        Ok((200, _)) => requests.fetch_add(1, Ordering::Relaxed),
                        _ => failures.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            });
        }
        let started = Instant::now();
        while started.elapsed() < SHARING {
            let (rss, parts) = daemon.memory();
            if rss > rss_max {
                (rss_max, rss_parts) = (rss, parts);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        done.store(true, Ordering::Relaxed);
    });
    let taken = snapshots() - first - 1.0;
    let requests = requests.load(Ordering::Relaxed);
    let failures = failures.load(Ordering::Relaxed);
    let (_, body) = http_get(addr, "/metrics").unwrap();
    let sockets: f64 = body
        .lines()
        .filter(|l| l.starts_with("portmon_sockets{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    eprintln!(
        "64 clients for {SHARING:?} against {sockets} sockets ({pairs} open pairs, {waiting} never accepted): \
         {requests} answers, {failures} failures, {taken} snapshots, RSS at most {} MiB",
        rss_max >> 20
    );
    assert!(daemon.running(), "the daemon died under the clients");
    assert_eq!(failures, 0, "requests failed");
    assert!(sockets >= 15_000.0, "only {sockets} sockets in the inventory");
    assert!(
        taken * 4.0 <= requests as f64,
        "{taken} snapshots for {requests} requests: not shared"
    );
    assert!(
        rss_max < RSS_BOUND,
        "RSS reached {} MiB ({rss_parts})",
        rss_max >> 20
    );
    drop(population);
}

/// 20,000 TCP sockets in a named network namespace (which the daemon
/// finds as an operator's): open pairs up to the descriptor limit, with
/// room for the clients, and for the rest connections that the client
/// closed and the server never accepted. Those wait in the listener's queue
/// in CLOSE_WAIT, without a descriptor, for as long as the listener lives;
/// their clients' ends go within a second (`tcp_fin_timeout`). When it is
/// dropped, or the test fails, the namespace goes and every socket with it,
/// so that no test after inherits them.
struct Population {
    /// Reset on close; dropped before the namespace.
    _held: Vec<TcpStream>,
    _queue: TcpListener,
    _netns: NamedNetns,
    pairs: usize,
    waiting: usize,
}

impl Population {
    fn start(descriptor_limit: u64) -> Self {
        let pairs = ((descriptor_limit as usize).saturating_sub(1000) / 2).min(10_000);
        let waiting = 20_000usize.saturating_sub(2 * pairs);
        let netns = NamedNetns::create("population");
        let (held, queue) = netns.enter(|| {
            write_sysctl("net/core/somaxconn", "65535");
            write_sysctl("net/ipv4/tcp_fin_timeout", "1");
            let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
            let target = listener.local_addr().unwrap();
            let mut held = Vec::with_capacity(2 * pairs);
            for _ in 0..pairs {
                held.push(TcpStream::connect(target).expect("connect"));
                held.push(listener.accept().expect("accept").0);
            }
            for stream in &held {
                reset_on_close(stream.as_fd());
            }
            let queue = TcpListener::bind("127.0.0.1:0").expect("listen");
            // Again, with a queue for them all (std listens with a smaller one).
            // SAFETY: listen(2) on our listening socket.
            let rc = unsafe { libc::listen(queue.as_raw_fd(), 65_535) };
            assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
            let target = queue.local_addr().unwrap();
            for _ in 0..waiting {
                drop(TcpStream::connect(target).expect("connect"));
            }
            (held, queue)
        });
        Self {
            _held: held,
            _queue: queue,
            _netns: netns,
            pairs,
            waiting,
        }
    }
}

#[test]
fn a_bad_web_config_exits_64_with_file_line_and_reason() {
    let _serial = serial();
    let dir = tempfile_dir("bad-web");
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  cipher_suites: [x]\n",
    )
    .unwrap();
    let out = Command::new(portmon_tests::portmon_bin())
        .args(["run", "--listen", "127.0.0.1:17505", "--web-config-file"])
        .arg(&web)
        .env_remove("PORTMON_CONFIG")
        .output()
        .expect("run portmon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&web.display().to_string())
            && stderr.contains("line 4")
            && stderr.contains("cipher_suites"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
