//! The accept loop and each connection: a permit per connection (the
//! cap), deadlines on its I/O, TLS if configured, then hyper's HTTP/1.1 with
//! a head limit; each request is checked (method, auth), answered by the
//! [`Service`](super::Service), gzipped when asked, and sent without a body
//! to HEAD.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, Notify, Semaphore},
};
use tokio_rustls::TlsAcceptor;

use super::{
    basic_auth::BasicAuth,
    budget::{Budget, BudgetedBody},
    deadlines::Deadlines,
    encoding,
    limits::MIN_HEAD_BYTES,
    tls, Limits, Request, Response, SharedService, TlsError, WebConfig,
};

/// How the server serves: its limits, TLS, basic auth and extra headers.
#[derive(Clone)]
pub struct Served {
    limits: Limits,
    tls: Option<TlsAcceptor>,
    auth: Option<Arc<BasicAuth>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    budget: Arc<Budget>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("limits", &self.limits)
            .field("tls", &self.tls.is_some())
            .field("auth", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

impl Served {
    /// Plain HTTP within `limits`.
    pub fn plain(limits: Limits) -> Self {
        Self {
            limits,
            tls: None,
            auth: None,
            headers: Vec::new(),
            budget: Budget::new(limits.held_response_bytes),
        }
    }

    /// As `web` asks: certificates and keys are read now (while the daemon
    /// may still read files only root can).
    pub fn new(limits: Limits, web: &WebConfig) -> Result<Self, TlsError> {
        let headers = web
            .http_server_config
            .iter()
            .flat_map(|http| &http.headers)
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::try_from(name).ok()?,
                    HeaderValue::try_from(value).ok()?,
                ))
            })
            .collect();
        Ok(Self {
            limits,
            tls: tls::acceptor(web)?,
            auth: (!web.basic_auth_users.is_empty()).then(|| BasicAuth::new(web.basic_auth_users.clone())),
            headers,
            budget: Budget::new(limits.held_response_bytes),
        })
    }

    /// Whether connections speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    service: SharedService,
    served: Served,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(served.limits.max_connections.max(1)));
    let served = Arc::new(served);
    let mut last_warned: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors, mostly: say so now and then, and
                    // let connections close before trying again.
                    if last_warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!("accept failed: {err}");
                        last_warned = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (service, served) = (service.clone(), served.clone());
        tokio::spawn(async move {
            let _permit = permit;
            connection(stream, service, served).await;
        });
    }
}

async fn connection(stream: TcpStream, service: SharedService, served: Arc<Served>) {
    let _ = stream.set_nodelay(true);
    let limits = served.limits;
    // hyper gives a connection its 8 KiB read buffer at once: a client that
    // connects and says nothing gets none, and is let go after the timeout.
    // Readiness alone proves nothing: tokio may report a new socket ready
    // before any byte has come.
    let mut first = [0u8; 1];
    if !matches!(
        tokio::time::timeout(limits.read_timeout, stream.peek(&mut first)).await,
        Ok(Ok(1))
    ) {
        return;
    }
    // Boxed: the waiting task above stays as small as a socket, and only a
    // connection with a request carries hyper's state.
    Box::pin(speak_http(stream, service, served)).await;
}

async fn speak_http(stream: TcpStream, service: SharedService, served: Arc<Served>) {
    let limits = served.limits;
    let io = Deadlines::new(stream, limits.read_timeout, limits.write_timeout);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_header_size(limits.max_head_bytes)
        .max_buf_size(limits.max_head_bytes.max(MIN_HEAD_BYTES));
    // Told to close when the answers it holds must make room (see `budget`).
    let closer = Arc::new(Notify::new());
    let answer = {
        let (served, closer) = (served.clone(), closer.clone());
        service_fn(move |request| {
            let (service, served, closer) = (service.clone(), served.clone(), closer.clone());
            async move { Ok::<_, Infallible>(respond(request, service, &served, &closer).await) }
        })
    };
    // Errors here are the client's (gone, too slow, not HTTP): nothing to log.
    let served_connection = async {
        match &served.tls {
            Some(acceptor) => {
                if let Ok(Ok(tls)) = tokio::time::timeout(limits.read_timeout, acceptor.accept(io)).await {
                    let _ = http.serve_connection(TokioIo::new(tls), answer).await;
                }
            }
            None => {
                let _ = http.serve_connection(TokioIo::new(io), answer).await;
            }
        }
    };
    tokio::select! {
        () = served_connection => {}
        () = closer.notified() => {}
    }
}

type HttpResponse = hyper::Response<BudgetedBody>;

async fn respond(
    request: hyper::Request<Incoming>,
    service: SharedService,
    served: &Served,
    closer: &Arc<Notify>,
) -> HttpResponse {
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        let mut response = finish(
            Response::text(405, "only GET and HEAD\n"),
            false,
            false,
            served,
            closer,
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if let Some(auth) = &served.auth {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !auth.allows(given).await {
            let mut response = finish(Response::text(401, "Unauthorized\n"), head, false, served, closer);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"portmon\""),
            );
            return response;
        }
    }
    let gzip = request
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(encoding::accepts_gzip);
    let uri = request.uri();
    let req = Request::new(uri.path(), uri.query().unwrap_or(""));
    if let Some(response) = service.answer_now(&req) {
        return finish(response, head, false, served, closer);
    }
    let answered = tokio::task::spawn_blocking(move || {
        let response = service.answer(&req);
        let packed = if gzip && !head && response.status == 200 {
            encoding::gzip(&response.body)
        } else {
            None
        };
        (response, packed)
    })
    .await;
    match answered {
        Ok((mut response, Some(packed))) => {
            response.body = packed;
            finish(response, head, true, served, closer)
        }
        Ok((response, None)) => finish(response, head, false, served, closer),
        Err(_) => finish(
            Response::text(500, "internal error\n"),
            head,
            false,
            served,
            closer,
        ),
    }
}

/// The hyper response: headers, and the body unless for HEAD.
fn finish(
    response: Response,
    head: bool,
    gzipped: bool,
    served: &Served,
    closer: &Arc<Notify>,
) -> HttpResponse {
    let length = response.body.len();
    let body = if head { Bytes::new() } else { response.body };
    let mut out = hyper::Response::new(served.budget.body(body, closer));
    *out.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzipped {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    for (name, value) in &served.headers {
        headers.insert(name.clone(), value.clone());
    }
    out
}
