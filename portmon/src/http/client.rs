//! The CLI's client for the daemon's API, on ureq.

use std::{net::SocketAddr, time::Duration};

/// A blocking GET of `path` from a portmon daemon: (status, body). An
/// error only when no answer came (nothing listens, a timeout).
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(format!("http://{addr}{path}")).call()?;
    let status = response.status().as_u16();
    // A large host's /api/v1/ports runs to tens of MB.
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()?;
    Ok((status, body))
}
