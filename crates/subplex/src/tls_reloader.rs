//! TLS on the gateway's own listener (`[server.tls]`): the [`TlsReloader`] that holds the
//! current certificate, swaps it on [`reload`](TlsReloader::reload) (SIGHUP), and does
//! each client's handshake. Connections already open keep the certificate they were
//! accepted with; new ones get the reloaded one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::info;

use crate::config::tls::{ListenerTls, ListenerTlsError};

/// A client that has not finished its TLS handshake by then is dropped: it holds a place
/// under `server.max_connections` meanwhile.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's TLS configuration, swappable while the gateway serves.
#[derive(Debug)]
pub struct TlsReloader {
    /// Its files are the ones read again; its configuration is replaced by each reload.
    current: RwLock<ListenerTls>,
}

impl TlsReloader {
    /// Serves `tls` until the first reload.
    pub fn new(tls: ListenerTls) -> Self {
        TlsReloader {
            current: RwLock::new(tls),
        }
    }

    /// Reads `cert_file` and `key_file` again. On success new connections get the new
    /// certificate; on failure nothing changes and the error names the key and reason.
    pub fn reload(&self) -> Result<(), ListenerTlsError> {
        let (cert_file, key_file) = {
            let current = self.read();
            (current.cert_file.clone(), current.key_file.clone())
        };
        // Read outside the lock: a slow disk must not stall handshakes.
        let reloaded = ListenerTls::load(cert_file, key_file)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = reloaded;
        info!("listener tls certificate reloaded");
        Ok(())
    }

    /// The TLS handshake of one client, with the certificate current now.
    pub(crate) async fn accept<IO>(&self, io: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(self.config());
        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "tls handshake"))?
    }

    fn config(&self) -> Arc<rustls::ServerConfig> {
        self.read().config.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ListenerTls> {
        // Poisoning needs a panic while the lock is held; none of the holders can panic.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
