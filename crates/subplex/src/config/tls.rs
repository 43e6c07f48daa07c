//! TLS client settings toward upstreams, built once at start-up from the config.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

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
