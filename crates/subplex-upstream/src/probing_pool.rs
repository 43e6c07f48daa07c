//! A [`Pool`] whose WebSocket dialect is configured, or found by [`probe`] on first use.
//!
//! This is the bridge that makes `protocol = "auto"` work before the transport-neutral
//! pool exists: the first subscribe probes the upstream with that caller's headers and
//! init payload (an auth-protected upstream refuses a probe without them), and the pool
//! is then built for the dialect found. Concurrent first subscribers wait on that one
//! probe. A probe that fails (unreachable, credentials refused) is not cached: the next
//! subscriber probes again. A result subplex cannot use yet (an SSE-only upstream) is
//! cached and reported to every subscriber.
//!
//! Not done here (the pool integration's job): probing again when a connection made with
//! the found dialect fails in a protocol way, and serving an SSE upstream.

use subplex_protocol::GraphqlRequest;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::probe::{evidence_line, probe, DetectedProtocol};
use crate::{ConnectParams, Pool, Subscription, UpstreamError, UpstreamProtocol, UpstreamSettings};

/// What the configured or probed protocol allows.
#[derive(Debug)]
enum Resolved {
    Pool(Pool),
    /// The upstream speaks only something subplex cannot carry subscriptions over yet.
    Unusable(UpstreamError),
}

/// The upstream connections of one upstream, once its protocol is known.
#[derive(Debug)]
pub struct ProbingPool {
    settings: UpstreamSettings,
    shutdown: CancellationToken,
    resolved: OnceCell<Resolved>,
}

impl ProbingPool {
    /// A pool for one upstream. With an explicit WebSocket protocol it is the plain
    /// [`Pool`]; with `Auto` the pool is built after the first probe. Cancelling
    /// `shutdown` closes every connection.
    pub fn new(settings: UpstreamSettings, shutdown: CancellationToken) -> Self {
        let resolved = match settings.configured_protocol {
            UpstreamProtocol::GraphqlTransportWs | UpstreamProtocol::GraphqlWs => {
                OnceCell::new_with(Some(Resolved::Pool(Pool::new(
                    settings.clone(),
                    shutdown.child_token(),
                ))))
            }
            UpstreamProtocol::Sse => {
                OnceCell::new_with(Some(Resolved::Unusable(sse_not_yet(&settings))))
            }
            UpstreamProtocol::Auto => OnceCell::new(),
        };
        ProbingPool {
            settings,
            shutdown,
            resolved,
        }
    }

    /// The upstream's settings as configured (for `Auto`, before any probe).
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// Starts `request` as [`Pool::subscribe`] does, probing the upstream first if its
    /// protocol is not known yet.
    pub async fn subscribe(
        &self,
        params: &ConnectParams,
        request: GraphqlRequest,
    ) -> Result<Subscription, UpstreamError> {
        let resolved = self
            .resolved
            .get_or_try_init(|| self.resolve(params))
            .await?;
        match resolved {
            Resolved::Pool(pool) => pool.subscribe(params, request).await,
            Resolved::Unusable(error) => Err(error.clone()),
        }
    }

    async fn resolve(&self, params: &ConnectParams) -> Result<Resolved, UpstreamError> {
        let name = &self.settings.name;
        let report = probe(&self.settings, &params.headers, &params.init_payload)
            .await
            .map_err(|error| {
                warn!(upstream = %name, reason = %error, evidence = %evidence_line(&error.evidence), "protocol probe failed; the next subscription probes again");
                error.to_upstream_error(name)
            })?;
        info!(upstream = %name, protocol = %report.protocol, evidence = %evidence_line(&report.evidence), "upstream protocol found by probing");
        Ok(match report.protocol {
            DetectedProtocol::WebSocket(dialect) => {
                let mut settings = self.settings.clone();
                settings.protocol = dialect;
                Resolved::Pool(Pool::new(settings, self.shutdown.child_token()))
            }
            DetectedProtocol::Sse => Resolved::Unusable(sse_not_yet(&self.settings)),
        })
    }

    /// The WebSocket dialect in use: configured, or found by a probe; `None` before the
    /// probe or when no WebSocket dialect is usable.
    pub fn websocket_dialect(&self) -> Option<subplex_protocol::Subprotocol> {
        match self.resolved.get()? {
            Resolved::Pool(pool) => Some(pool.settings().protocol),
            Resolved::Unusable(_) => None,
        }
    }

    /// Upstream connections currently open.
    pub fn open_connections(&self) -> usize {
        match self.resolved.get() {
            Some(Resolved::Pool(pool)) => pool.open_connections(),
            _ => 0,
        }
    }
}

fn sse_not_yet(settings: &UpstreamSettings) -> UpstreamError {
    UpstreamError::Protocol {
        upstream: settings.name.clone(),
        reason: "it serves GraphQL over SSE only, and subplex cannot carry subscriptions to an SSE upstream yet".into(),
    }
}
