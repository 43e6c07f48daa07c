//! TLS settings built from the config: the client side toward upstreams (built once at
//! start-up) and the listener's certificate (`[server.tls]`, read again on SIGHUP).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// `[server.tls]`, validated: the files and the server configuration read from them.
#[derive(Clone)]
pub struct ListenerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub config: Arc<rustls::ServerConfig>,
}

/// The paths only: the configuration holds the private key.
impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// Why the listener's certificate cannot be used, and which key of `[server.tls]` to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server.tls.{key}: {reason}")]
pub struct ListenerTlsError {
    /// `"cert_file"` or `"key_file"`.
    pub key: &'static str,
    pub reason: String,
}

impl ListenerTls {
    /// Reads both PEM files and builds the server configuration: ALPN `h2` and
    /// `http/1.1` (the listener serves both; WebSocket clients offer no ALPN and get
    /// HTTP/1.1), ring as the provider, as toward upstreams.
    pub fn load(cert_file: PathBuf, key_file: PathBuf) -> Result<ListenerTls, ListenerTlsError> {
        let cert_problem = |reason: String| ListenerTlsError {
            key: "cert_file",
            reason,
        };
        let key_problem = |reason: String| ListenerTlsError {
            key: "key_file",
            reason,
        };
        let certificates = CertificateDer::pem_file_iter(&cert_file)
            .map_err(|err| cert_problem(format!("cannot read \"{}\": {err}", cert_file.display())))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| {
                cert_problem(format!(
                    "\"{}\" is not a PEM certificate file: {err}",
                    cert_file.display()
                ))
            })?;
        if certificates.is_empty() {
            return Err(cert_problem(format!(
                "\"{}\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                cert_file.display()
            )));
        }
        // The error never quotes the file's content: it is a secret.
        let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|err| {
            key_problem(format!(
                "\"{}\" holds no usable PEM private key: {err}",
                key_file.display()
            ))
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| cert_problem(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|err| {
            key_problem(format!(
                "\"{}\" does not go with the certificate of \"{}\": {err}",
                key_file.display(),
                cert_file.display()
            ))
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ListenerTls {
            cert_file,
            key_file,
            config: Arc::new(config),
        })
    }
}

/// The two client configurations an upstream needs: WebSocket (no ALPN: the upgrade is
/// HTTP/1.1) and plain HTTP forwarding (ALPN h2 and http/1.1).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub websocket: Arc<rustls::ClientConfig>,
    pub http: Arc<rustls::ClientConfig>,
}

/// Trusts Mozilla's roots (webpki-roots) plus the certificates of `ca_file`, if given.
/// The error names the problem for the `tls_ca_file` key.
pub fn upstream_tls(ca_file: Option<&Path>) -> Result<UpstreamTls, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|err| format!("cannot read \"{}\": {err}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| {
                format!(
                    "\"{}\" is not a PEM certificate file: {err}",
                    path.display()
                )
            })?;
        if certificates.is_empty() {
            return Err(format!(
                "\"{}\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|err| {
                format!("a certificate in \"{}\" is unusable: {err}", path.display())
            })?;
        }
    }
    let build = |alpn: &[&[u8]]| -> Result<Arc<rustls::ClientConfig>, String> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    };
    Ok(UpstreamTls {
        websocket: build(&[])?,
        http: build(&[b"h2", b"http/1.1"])?,
    })
}
