//! The web configuration file of the Prometheus exporter-toolkit
//! (node_exporter's `--web.config.file`): TLS and basic auth, so operators
//! reuse the file they already have. Keys portmon does not know are refused
//! with the file, line and reason, never ignored: an ignored TLS or auth
//! key would serve less safely than its author meant.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// A parsed web configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// TLS; absent (or without `cert_file` and `key_file`) serves plain HTTP.
    #[serde(default)]
    pub tls_server_config: Option<TlsServerConfig>,
    /// HTTP options.
    #[serde(default)]
    pub http_server_config: Option<HttpServerConfig>,
    /// User → bcrypt hash of the password; empty means no authentication.
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
    /// Where relative file names are taken from: the file's directory.
    #[serde(skip)]
    pub base: PathBuf,
}

/// `tls_server_config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// The server's certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// The server's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CAs that sign client certificates (PEM).
    pub client_ca_file: Option<PathBuf>,
    /// Whether clients present a certificate.
    #[serde(default)]
    pub client_auth_type: ClientAuthType,
    /// Oldest TLS version accepted; TLS 1.2 when absent.
    pub min_version: Option<TlsVersion>,
    /// Newest TLS version accepted; TLS 1.3 when absent.
    pub max_version: Option<TlsVersion>,
    /// Accepted for compatibility: rustls always follows the server's order.
    pub prefer_server_cipher_suites: Option<bool>,
}

/// `client_auth_type`, by exporter-toolkit's (Go's) names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ClientAuthType {
    /// No client certificate asked for.
    #[default]
    NoClientCert,
    /// A certificate signed by `client_ca_file`, if the client sends one.
    VerifyClientCertIfGiven,
    /// A certificate signed by `client_ca_file`, always.
    RequireAndVerifyClientCert,
}

/// `min_version` and `max_version`: rustls speaks TLS 1.2 and 1.3 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

/// `http_server_config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    /// Accepted for compatibility: portmon serves HTTP/1.1 only.
    pub http2: Option<bool>,
    /// Headers added to every response (`Strict-Transport-Security`, …).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad web config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl WebConfig {
    /// Reads and checks a web configuration file.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| WebConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        config.base = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(config)
    }

    /// Parses and checks web configuration text; the error says where and why.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = serde_saphyr::from_str(text).map_err(|err| {
            let reason = first_line(&err.without_snippet().to_string());
            match err.location() {
                Some(at) => format!("line {}, column {}: {reason}", at.line(), at.column()),
                None => reason,
            }
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        for (user, hash) in &self.basic_auth_users {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(format!(
                    "basic_auth_users: the password of {user:?} is not a bcrypt hash \
                     (make one with `htpasswd -nBC 10 {user}`)"
                ));
            }
        }
        if let Some(tls) = &self.tls_server_config {
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) | (None, Some(_)) => {
                    return Err("tls_server_config: give both cert_file and key_file".into())
                }
                (None, None)
                    if tls.client_ca_file.is_some()
                        || tls.client_auth_type != ClientAuthType::NoClientCert =>
                {
                    return Err("tls_server_config: client certificates need cert_file and key_file".into())
                }
                _ => {}
            }
            if tls.client_auth_type != ClientAuthType::NoClientCert && tls.client_ca_file.is_none() {
                return Err(format!(
                    "tls_server_config: client_auth_type {:?} needs client_ca_file",
                    tls.client_auth_type
                ));
            }
            if let (Some(min), Some(max)) = (tls.min_version, tls.max_version) {
                if min > max {
                    return Err("tls_server_config: min_version is newer than max_version".into());
                }
            }
        }
        Ok(())
    }

    /// The TLS settings, when TLS is on.
    pub fn tls(&self) -> Option<&TlsServerConfig> {
        self.tls_server_config
            .as_ref()
            .filter(|tls| tls.cert_file.is_some() && tls.key_file.is_some())
    }

    /// `path` as the file names it: relative to the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base.join(path)
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("not valid YAML").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    // `htpasswd -nbBC 4 prometheus secret`
    const HASH: &str = "$2y$04$uNKEmNqGPcqCxY9zXbnSXOnGeKMRDMuHTeYyy9Wke0eM4QjlQWGNy";

    #[test]
    fn node_exporters_file_reads() {
        let text = format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS12\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n\
             basic_auth_users:\n  prometheus: '{HASH}'\n"
        );
        let config = WebConfig::parse(&text).unwrap();
        let tls = config.tls().expect("TLS on");
        assert_eq!(tls.client_auth_type, ClientAuthType::RequireAndVerifyClientCert);
        assert_eq!(tls.min_version, Some(TlsVersion::Tls12));
        assert_eq!(config.basic_auth_users["prometheus"], HASH);
        assert_eq!(WebConfig::parse("").unwrap(), WebConfig::default());
        assert!(WebConfig::parse("tls_server_config: {}\n")
            .unwrap()
            .tls()
            .is_none());
    }

    #[test]
    fn mistakes_name_line_and_reason() {
        let cases = [
            ("tls_server_config:\n  cert_file: a\n  keyfile: b\n", "line 3", "keyfile"),
            ("basic_auth_user:\n  a: b\n", "line 1", "basic_auth_user"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n", "line 4", "TLS10"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n", "line 4", "Sometimes"),
            ("basic_auth_users:\n  a: plaintext\n", "", "not a bcrypt hash"),
            ("tls_server_config:\n  cert_file: a\n", "", "both cert_file and key_file"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
                "",
                "needs client_ca_file",
            ),
            ("tls_server_config: [\n", "line", ""),
        ];
        for (text, line, word) in cases {
            let err = WebConfig::parse(text).unwrap_err();
            assert!(err.contains(line) && err.contains(word), "{text:?} gave {err}");
            assert!(!err.contains('\n'), "{err:?}");
        }
    }
}
