//! portmon's HTTP server: hyper's HTTP/1.1 connection handling, with the
//! limits an exporter that answers on every node IP needs around it (see
//! [`Limits`]), TLS and basic auth from an exporter-toolkit web
//! configuration file ([`WebConfig`]), and a small blocking client for the
//! CLI ([`get`]).
//!
//! What answers is a [`Service`]: cheap answers (`/healthz`) come from the
//! connection's own task, everything else from the blocking pool, where it
//! may read kernel maps and take an inventory.

use std::sync::Arc;

use bytes::Bytes;

mod basic_auth;
mod budget;
mod client;
mod deadlines;
mod encoding;
mod limits;
mod server;
mod tls;
mod web_config;

pub use client::get;
pub use limits::Limits;
pub use server::{serve, Served};
pub use tls::TlsError;
pub use web_config::{WebConfig, WebConfigError};

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Shared, so that requests answered from one snapshot share one body.
    pub body: Bytes,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(body.into()),
        }
    }

    /// A JSON answer, compact (a large host's inventory runs to megabytes;
    /// `jq` shows it to people); a value that cannot be encoded is a 500.
    pub fn json(body: &impl serde::Serialize) -> Self {
        match serde_json::to_vec(body) {
            Ok(body) => Self {
                status: 200,
                content_type: "application/json",
                body: Bytes::from(body),
            },
            Err(err) => Self::text(500, format!("cannot encode JSON: {err}\n")),
        }
    }
}

/// A request: the path, and the query string's parameters percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    params: Vec<(String, String)>,
}

impl Request {
    /// A request for `path` with the query string `query` (without `?`).
    pub fn new(path: &str, query: &str) -> Self {
        Self {
            path: path.to_owned(),
            params: form_urlencoded::parse(query.as_bytes()).into_owned().collect(),
        }
    }

    /// The first value of a query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What answers requests.
pub trait Service: Send + Sync + 'static {
    /// An answer that needs no blocking work (no lock a scrape may hold),
    /// given on the connection's task; `None` sends the request to [`answer`].
    ///
    /// [`answer`]: Service::answer
    fn answer_now(&self, request: &Request) -> Option<Response>;

    /// Any other answer; called on a blocking thread, so it may read maps.
    fn answer(&self, request: &Request) -> Response;
}

/// A [`Service`] shared by every connection.
pub type SharedService = Arc<dyn Service>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_percent_decoded() {
        let req = Request::new("/api/v1/ports", "netns=my%20ns&port=80&proto=tcp&x=a+b&port=81");
        assert_eq!(req.param("netns"), Some("my ns"));
        assert_eq!(req.param("port"), Some("80"));
        assert_eq!(req.param("x"), Some("a b"));
        assert_eq!(req.param("missing"), None);
        assert_eq!(Request::new("/", "").param("a"), None);
        assert_eq!(Request::new("/", "%ff=%zz").param("\u{fffd}"), Some("%zz"));
    }
}
