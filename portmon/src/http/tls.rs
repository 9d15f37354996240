//! The rustls server configuration a web configuration file asks for.

use std::{path::PathBuf, sync::Arc};

use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    TlsAcceptor,
};

use super::web_config::{ClientAuthType, TlsServerConfig, TlsVersion, WebConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: is it a PEM file portmon may read?")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the client CA certificates of {path} are not usable")]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the TLS certificate and key do not make a server configuration")]
    Server(#[source] rustls::Error),
}

/// A TLS acceptor for `web`'s `tls_server_config`, or `None` without TLS.
pub fn acceptor(web: &WebConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let Some(tls) = web.tls() else {
        return Ok(None);
    };
    Ok(Some(TlsAcceptor::from(Arc::new(server_config(web, tls)?))))
}

fn server_config(web: &WebConfig, tls: &TlsServerConfig) -> Result<ServerConfig, TlsError> {
    let cert_path = web.resolve(tls.cert_file.as_deref().unwrap_or_else(|| "".as_ref()));
    let key_path = web.resolve(tls.key_file.as_deref().unwrap_or_else(|| "".as_ref()));
    let chain = certificates(&cert_path, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|source| TlsError::Pem {
        what: "private key",
        path: key_path.clone(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| {
        tls.min_version.is_none_or(|min| *v >= min) && tls.max_version.is_none_or(|max| *v <= max)
    })
    .map(|(_, version)| version)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(TlsError::Server)?;
    let builder = match (tls.client_auth_type, &tls.client_ca_file) {
        (ClientAuthType::NoClientCert, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca_file)) => {
            let ca_path = web.resolve(ca_file);
            let mut roots = RootCertStore::empty();
            for cert in certificates(&ca_path, "client CA")? {
                roots.add(cert).map_err(TlsError::Server)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuthType::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|source| TlsError::ClientCa {
                path: ca_path.clone(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(TlsError::Server)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn certificates(
    path: &std::path::Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}
