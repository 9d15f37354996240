//! The realistic workload: Debian's nginx on loopback under wrk, a new
//! connection per request (`Connection: close`), as a web server behind a
//! load balancer that does not keep connections sees it.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where nginx listens, in the bench's namespace.
const ADDR: &str = "127.0.0.1:18080";
/// Connections wrk keeps busy: enough to keep nginx's one worker fed on a
/// small VM, few enough not to queue on the listener.
pub const CONNECTIONS: &str = "16";

/// An nginx of its own, with its configuration in a directory of its own,
/// answering every request with a short body; stopped on drop.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in the calling thread's network namespace and waits
    /// until it accepts connections.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("portmon-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).expect("nginx directory");
        let conf = dir.join("nginx.conf");
        // One worker: the machine's other core is wrk's. No log written per
        // request; the temporary paths inside the directory.
        let text = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {dir}/nginx.pid;\n\
             error_log {dir}/logs/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
             \x20 fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
             \x20 server {{\n    listen {ADDR};\n    location / {{ return 200 \"portmon bench\\n\"; }}\n  }}\n}}\n",
            dir = dir.display()
        );
        std::fs::write(&conf, text).expect("nginx.conf");
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx (`cargo xtask setup` installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(ADDR).is_err() {
            assert!(Instant::now() < deadline, "nginx does not answer on {ADDR}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir }
    }

    /// Requests per second of one run of wrk for `seconds` (wrk counts in
    /// whole seconds).
    pub fn load(&self, seconds: u32) -> f64 {
        let out = Command::new("/usr/bin/wrk")
            .args(["-t1", "-c", CONNECTIONS, "-d"])
            .arg(format!("{seconds}s"))
            .args(["-H", "Connection: close"])
            .arg(format!("http://{ADDR}/"))
            .output()
            .expect("run wrk (`cargo xtask setup` installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "wrk failed: {text}");
        assert!(
            !text.contains("Socket errors") && !text.contains("Non-2xx"),
            "wrk met errors: {text}"
        );
        requests_per_second(&text).unwrap_or_else(|| panic!("no Requests/sec in wrk's output: {text}"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGQUIT is nginx's graceful stop.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The figure of wrk's `Requests/sec:` line.
fn requests_per_second(wrk_output: &str) -> Option<f64> {
    wrk_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse().ok())
}
