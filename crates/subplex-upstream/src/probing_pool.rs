//! A [`Pool`] whose protocol is configured, or found by [`probe`] (`protocol = "auto"`).
//!
//! With `auto`, the gateway probes each upstream at start-up without credentials
//! ([`ProbingPool::probe_at_start`]), so the log says at once what each upstream speaks.
//! If that probe fails (the upstream is not up yet, or refuses anonymous callers), the
//! first subscribe probes with that caller's headers and init payload, and the pool is
//! built for the protocol found: either WebSocket dialect, or GraphQL over SSE.
//! Concurrent first subscribers wait on that one probe. A probe that fails (unreachable,
//! credentials refused) is not cached: the next subscriber probes again.
//!
//! The result is cached until a connection made with it fails in a protocol way (an
//! undecodable frame, a 4400/4406/1002 close, an SSE answer that is not an event stream;
//! see [`UpstreamError::is_protocol_mismatch`]): the server behind the URL changed, so
//! the next subscriber probes again. A subscribe refused that way is retried once on the
//! freshly probed pool, so the subscriber that found out does not see the error.
//! Connections of the stale pool run on until they end by themselves.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use subplex_protocol::{GraphqlRequest, RawJson};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::probe::{evidence_line, probe, DetectedProtocol, ProbeError, ProbeReport};
use crate::{ConnectParams, Pool, Subscription, UpstreamError, UpstreamProtocol, UpstreamSettings};

/// What the latest probe of an upstream found, for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSummary {
    /// The protocol found (its config value), or `None` when the probe failed.
    pub protocol: Option<&'static str>,
    /// The probe's evidence, one line, as the log shows it.
    pub evidence: String,
}

/// The upstream connections of one upstream, once its protocol is known.
#[derive(Debug)]
pub struct ProbingPool {
    settings: UpstreamSettings,
    shutdown: CancellationToken,
    /// Set after each probe; never held across an await.
    last_probe: std::sync::Mutex<Option<ProbeSummary>>,
    /// Every connection task of every pool this one built, stale ones included.
    tasks: TaskTracker,
    /// The pool for the configured or probed protocol; `None` until the first probe, or
    /// after a protocol failure made the probed one stale. Locked across a probe, so
    /// concurrent subscribers wait on one probe (single flight).
    current: Mutex<Option<Arc<Pool>>>,
}

impl ProbingPool {
    /// A pool for one upstream. With an explicit protocol it is the plain [`Pool`]; with
    /// `Auto` the pool is built after the first probe. Cancelling `shutdown` closes every
    /// connection.
    pub fn new(settings: UpstreamSettings, shutdown: CancellationToken) -> Self {
        let tasks = TaskTracker::new();
        let current = match settings.configured_protocol {
            UpstreamProtocol::Auto => None,
            _ => Some(Arc::new(Pool::new(
                settings.clone(),
                shutdown.child_token(),
                tasks.clone(),
            ))),
        };
        ProbingPool {
            settings,
            shutdown,
            last_probe: std::sync::Mutex::new(None),
            tasks,
            current: Mutex::new(current),
        }
    }

    /// The upstream's settings as configured (for `Auto`, before any probe).
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// Starts `request` as [`Pool::subscribe`] does, probing the upstream first if its
    /// protocol is not known (yet, or any more).
    pub async fn subscribe(
        &self,
        params: &ConnectParams,
        request: GraphqlRequest,
    ) -> Result<Subscription, UpstreamError> {
        let pool = self.pool(params).await?;
        match pool.subscribe(params, request.clone()).await {
            Err(error) if self.is_auto() && error.is_protocol_mismatch() => {
                info!(upstream = %self.settings.name, reason = %error, "upstream no longer speaks the probed protocol; probing again");
                self.forget(&pool).await;
                // Boxed, as the probe below: rare, and it would double this future.
                Box::pin(async { self.pool(params).await?.subscribe(params, request).await }).await
            }
            other => other,
        }
    }

    /// With `protocol = "auto"`, probes the upstream once without credentials and caches
    /// what it finds. A failure is logged at info and changes nothing: the first
    /// subscriber probes again with its own credentials. Subscribers arriving meanwhile
    /// wait on this probe (the same single flight as any probe).
    pub async fn probe_at_start(&self) {
        if !self.is_auto() {
            return;
        }
        let mut current = self.current.lock().await;
        if current.is_some() {
            return;
        }
        let Some(report) = self
            .probe_until_shutdown(&[], &RawJson::empty_object())
            .await
        else {
            return;
        };
        match report {
            Ok(report) => *current = Some(Arc::new(self.pool_for(&report))),
            Err(error) => info!(
                upstream = %self.settings.name,
                reason = %error,
                evidence = %evidence_line(&error.evidence),
                "protocol probe at start-up failed; the first subscription probes with its credentials"
            ),
        }
    }

    fn is_auto(&self) -> bool {
        self.settings.configured_protocol == UpstreamProtocol::Auto
    }

    /// The pool to use: the cached one, unless it is stale; otherwise probe.
    async fn pool(&self, params: &ConnectParams) -> Result<Arc<Pool>, UpstreamError> {
        let mut current = self.current.lock().await;
        if let Some(pool) = current.as_ref() {
            if !(self.is_auto() && pool.protocol_mismatch_seen()) {
                return Ok(pool.clone());
            }
            info!(upstream = %self.settings.name, "a connection failed in a protocol way; probing again");
        }
        // Boxed: probing takes kilobytes of future, and every subscribe future would
        // carry them while it waits for its connection, though only the first probes.
        // 10,000 clients subscribing 10 times each held 7.5 KiB per subscribe in flight
        // (massif), which the allocator kept after the burst.
        let pool = Arc::new(Box::pin(self.resolve(params)).await?);
        *current = Some(pool.clone());
        Ok(pool)
    }

    /// Drops `stale` from the cache, unless another subscriber already replaced it.
    async fn forget(&self, stale: &Arc<Pool>) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|pool| Arc::ptr_eq(pool, stale))
        {
            *current = None;
        }
    }

    /// Probes the upstream with these credentials; `None` if the gateway shuts down first.
    async fn probe_until_shutdown(
        &self,
        headers: &[(HeaderName, HeaderValue)],
        init_payload: &RawJson,
    ) -> Option<Result<ProbeReport, ProbeError>> {
        let report = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            report = probe(&self.settings, headers, init_payload) => Some(report),
        }?;
        let summary = match &report {
            Ok(report) => ProbeSummary {
                protocol: Some(report.protocol.config_name()),
                evidence: evidence_line(&report.evidence),
            },
            Err(error) => ProbeSummary {
                protocol: None,
                evidence: evidence_line(&error.evidence),
            },
        };
        *self
            .last_probe
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(summary);
        Some(report)
    }

    /// What the latest probe found; `None` before any probe, and always for an upstream
    /// whose protocol is configured.
    pub fn last_probe(&self) -> Option<ProbeSummary> {
        self.last_probe
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    async fn resolve(&self, params: &ConnectParams) -> Result<Pool, UpstreamError> {
        let name = &self.settings.name;
        let report = self
            .probe_until_shutdown(&params.headers, &params.init_payload)
            .await
            .ok_or(UpstreamError::ShuttingDown)?;
        let report = report
            .map_err(|error| {
                warn!(upstream = %name, reason = %error, evidence = %evidence_line(&error.evidence), "protocol probe failed; the next subscription probes again");
                error.to_upstream_error(name)
            })?;
        Ok(self.pool_for(&report))
    }

    /// Logs what a probe found, and builds the pool for it.
    fn pool_for(&self, report: &ProbeReport) -> Pool {
        info!(upstream = %self.settings.name, protocol = %report.protocol, evidence = %evidence_line(&report.evidence), "upstream protocol found by probing");
        let mut settings = self.settings.clone();
        match report.protocol {
            DetectedProtocol::WebSocket(dialect) => settings.protocol = dialect,
            DetectedProtocol::Sse => settings.configured_protocol = UpstreamProtocol::Sse,
        }
        Pool::new(settings, self.shutdown.child_token(), self.tasks.clone())
    }

    /// Waits until every upstream connection task has ended. Once `shutdown` is
    /// cancelled that is when each has sent `complete` (or `stop`) for its operations and
    /// closed its socket, bounded by the connection's own goodbye timeout.
    pub async fn closed(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The protocol of the current pool as its config value (`"graphql-transport-ws"`,
    /// `"graphql-ws"` or `"sse"`); `None` before the first probe, or while one runs.
    pub fn current_protocol(&self) -> Option<&'static str> {
        let current = self.current.try_lock().ok()?;
        let settings = current.as_ref()?.settings();
        Some(match settings.configured_protocol {
            UpstreamProtocol::Sse => UpstreamProtocol::Sse.config_name(),
            _ => settings.protocol.wire_name(),
        })
    }

    /// Upstream connections currently open in the current pool, per security context.
    pub fn open_connections_by_context(&self) -> Vec<(crate::SecurityContext, usize)> {
        self.current
            .try_lock()
            .ok()
            .and_then(|current| {
                current
                    .as_ref()
                    .map(|pool| pool.open_connections_by_context())
            })
            .unwrap_or_default()
    }

    /// Upstream connections currently open in the current pool.
    pub fn open_connections(&self) -> usize {
        self.current
            .try_lock()
            .ok()
            .and_then(|current| current.as_ref().map(|pool| pool.open_connections()))
            .unwrap_or(0)
    }
}
