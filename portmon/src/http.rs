//! A small HTTP/1.1 server for portmon's few GET endpoints. It reads one
//! request per connection, answers, and closes: scrapes and API calls need
//! nothing more, and it keeps the dependency list to the design card.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// Largest request head portmon reads.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    pub fn json(body: &impl serde::Serialize) -> Self {
        match serde_json::to_vec_pretty(body) {
            Ok(body) => Self {
                status: 200,
                content_type: "application/json",
                body,
            },
            Err(err) => Self::text(500, format!("cannot encode JSON: {err}\n")),
        }
    }
}

/// A request: the path and the query string, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub query: String,
}

impl Request {
    /// Value of a query parameter (no percent-decoding: values are plain).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// What answers requests. Called on a blocking thread: it may read maps.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Serves until `shutdown` turns true.
pub async fn serve(listener: TcpListener, handler: Handler, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, handler.clone()));
                }
                Err(err) => {
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn answer(mut stream: TcpStream, handler: Handler) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => match parse_request_line(&head) {
            Ok(request) => tokio::task::spawn_blocking(move || handler(&request))
                .await
                .unwrap_or_else(|_| Response::text(500, "internal error\n")),
            Err(status) => Response::text(status, "bad request\n"),
        },
        Ok(Err(_)) | Err(_) => return,
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_ok() {
        let _ = stream.write_all(&response.body).await;
    }
    let _ = stream.shutdown().await;
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_HEAD {
            break;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `GET /path?query HTTP/1.1` → the request, or the status to refuse it with.
fn parse_request_line(head: &str) -> Result<Request, u16> {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return Err(405);
    }
    if !target.starts_with('/') {
        return Err(400);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        path: path.to_owned(),
        query: query.to_owned(),
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// A blocking GET, for the CLI talking to the daemon: (status, body).
pub fn get(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    // HTTP/1.0: the body comes whole up to the close, never in chunks
    // (Prometheus chunks its larger HTTP/1.1 answers).
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let ok = |path: &str, query: &str| {
            Ok(Request {
                path: path.into(),
                query: query.into(),
            })
        };
        let cases = [
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", ok("/metrics", "")),
            (
                "GET /api/v1/ports?port=80&proto=tcp HTTP/1.1\r\n\r\n",
                ok("/api/v1/ports", "port=80&proto=tcp"),
            ),
            ("POST /metrics HTTP/1.1\r\n\r\n", Err(405)),
            ("GET metrics HTTP/1.1\r\n\r\n", Err(400)),
            ("", Err(405)),
        ];
        for (head, want) in cases {
            assert_eq!(parse_request_line(head), want, "{head:?}");
        }
        let req = parse_request_line("GET /x?a=1&b=two HTTP/1.1").unwrap();
        assert_eq!((req.param("b"), req.param("c")), (Some("two"), None));
    }
}
