//! The pool: one upstream connection per security context, whatever the transport.
//!
//! Over WebSocket the pool keeps one [`UpstreamConnection`] task per security context,
//! multiplexing its operations. Over GraphQL over SSE every operation is its own HTTP
//! request, so each gets its own task ([`SseOperationTask`]); the key still decides the
//! headers it is sent with. Callers see [`Pool::subscribe`] and [`Subscription`] only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use http::{HeaderName, HeaderValue};
use subplex_protocol::{GraphqlRequest, RawJson};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{Dial, UpstreamConnection};
use crate::handle::{SubscribeRefused, UpstreamHandle};
use crate::registry::Registry;
use crate::request_key::RequestKey;
use crate::sse::SseClient;
use crate::sse_operation::{SseGate, SseOperationTask};
use crate::{SecurityContext, Subscription, UpstreamError, UpstreamProtocol, UpstreamSettings};

/// How often a subscribe may meet a connection that is closing (idle) before giving up.
/// Each retry opens a fresh connection, so more than a couple means something is wrong.
const MAX_CLOSING_RETRIES: usize = 3;

/// What a subscription needs from its client to reach the upstream.
///
/// `Debug` shows header names and the key only: the values are credentials.
#[derive(Clone)]
pub struct ConnectParams {
    /// The security context of these parameters (see [`SecurityContext::compute`]).
    pub key: SecurityContext,
    /// Headers for the upstream WebSocket handshake (already filtered by the gateway).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The final `connection_init` payload.
    pub init_payload: RawJson,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("key", &self.key)
            .field("headers", &crate::HeaderNames(&self.headers))
            .field("init_payload", &self.init_payload)
            .finish()
    }
}

/// How a pool reaches its upstream.
#[derive(Debug)]
enum Transport {
    /// One multiplexed WebSocket per security context, in `settings.protocol`.
    WebSocket,
    /// One HTTP request per operation; the client could not be built if `Err`. The gate
    /// makes the operations wait out an outage together.
    Sse(Result<SseClient, UpstreamError>, Arc<SseGate>),
}

/// The upstream connections of one upstream, keyed by security context.
#[derive(Debug)]
pub struct Pool {
    settings: Arc<UpstreamSettings>,
    transport: Transport,
    registry: Arc<Registry>,
    next_connection_id: AtomicU64,
    shutdown: CancellationToken,
}

impl Pool {
    /// A pool for one upstream: GraphQL over SSE when `configured_protocol` is `Sse`,
    /// otherwise WebSocket in `settings.protocol`. Cancelling `shutdown` closes every
    /// connection; `tasks` tracks every connection task (see [`Pool::closed`]).
    pub fn new(
        settings: UpstreamSettings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let settings = Arc::new(settings);
        let transport = match settings.configured_protocol {
            UpstreamProtocol::Sse => Transport::Sse(
                SseClient::new(settings.clone()),
                Arc::new(SseGate::new(settings.reconnect)),
            ),
            _ => Transport::WebSocket,
        };
        Pool {
            transport,
            settings,
            registry: Arc::new(Registry::new(tasks)),
            next_connection_id: AtomicU64::new(1),
            shutdown,
        }
    }

    /// The upstream's settings.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// Starts `request` on the connection for `params.key`, opening it if there is none.
    /// Returns once the operation was sent upstream.
    pub async fn subscribe(
        &self,
        params: &ConnectParams,
        request: GraphqlRequest,
    ) -> Result<Subscription, UpstreamError> {
        if let Transport::Sse(client, gate) = &self.transport {
            let client = client.clone()?;
            let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
            // Boxed: the operation task is built inside this future, which would
            // otherwise make every subscribe future (WebSocket ones too) that large.
            return Box::pin(SseOperationTask::start(
                client,
                gate.clone(),
                params.key,
                id,
                params.headers.clone(),
                request,
                self.registry.register(params.key, id),
                self.shutdown.child_token(),
            ))
            .await;
        }
        // Keyed on the request as it reaches the pool, i.e. after any rewrite by the
        // gateway (hooks): the key must describe what the upstream actually runs.
        let dedup_key = self
            .settings
            .dedup
            .then(|| RequestKey::for_subscription(&request))
            .flatten();
        for _ in 0..MAX_CLOSING_RETRIES {
            let handle = self.handle_for(params);
            match handle.subscribe(request.clone(), dedup_key).await {
                Ok(subscription) => return Ok(subscription),
                Err(SubscribeRefused::Failed(error)) => return Err(error),
                Err(SubscribeRefused::Closing) => self.registry.remove(&params.key, handle.id),
            }
        }
        Err(UpstreamError::Connect {
            upstream: self.settings.name.clone(),
            reason: "every connection attempt was closing; try again".into(),
            cause: crate::error::ConnectCause::Network,
        })
    }

    fn handle_for(&self, params: &ConnectParams) -> UpstreamHandle {
        // The entry guard is a shard lock: it is released before any await, and the
        // connection is established inside the spawned task, not here.
        match self.registry.connections.entry(params.key) {
            Entry::Occupied(entry) => entry.get().clone(),
            Entry::Vacant(entry) => {
                let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
                let handle = UpstreamConnection::spawn(
                    id,
                    params.key,
                    Dial {
                        headers: params.headers.clone(),
                        init_payload: params.init_payload.clone(),
                    },
                    self.settings.clone(),
                    self.registry.register(params.key, id),
                    self.shutdown.child_token(),
                );
                entry.insert(handle.clone());
                handle
            }
        }
    }

    /// Whether a connection of this pool failed in a way that says the upstream does not
    /// speak the pool's protocol (see [`UpstreamError::is_protocol_mismatch`]).
    pub fn protocol_mismatch_seen(&self) -> bool {
        self.registry.protocol_mismatch_seen()
    }

    /// Upstream connection tasks currently running (connecting, serving, reconnecting or
    /// closing).
    pub fn open_connections(&self) -> usize {
        self.registry.open_connections()
    }

    /// Upstream connection tasks running per security context (over GraphQL over SSE:
    /// operations, each its own request).
    pub fn open_connections_by_context(&self) -> Vec<(SecurityContext, usize)> {
        self.registry.open_by_context()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_header_values_or_payloads() {
        let init_payload = RawJson::parse(r#"{"token":"payload-secret"}"#).unwrap();
        let params = ConnectParams {
            key: SecurityContext::compute(
                "up",
                &crate::SettingsFingerprint::default(),
                [("authorization", &b"Bearer header-secret"[..])],
                &init_payload,
            ),
            headers: vec![(
                HeaderName::from_static("authorization"),
                HeaderValue::from_static("Bearer header-secret"),
            )],
            init_payload,
        };
        let shown = format!("{params:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
