//! The state every request handler shares: the routes with their upstreams (pool, HTTP
//! client, settings), the server settings, and the handles of shutdown and of the places
//! under `server.max_connections`.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use subplex_hooks::HookScript;
use subplex_protocol::RawJson;
use subplex_upstream::http::{HttpClient, HttpSettings};
use subplex_upstream::{ConnectParams, ProbingPool, SecurityContext};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ServerConfig, UpstreamConfig};
use crate::downstream;
use crate::metrics::Metrics;

/// One upstream as the request handlers use it.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub config: UpstreamConfig,
    pub pool: ProbingPool,
    pub http: HttpClient,
    /// `subplex_operations_active` for this upstream.
    pub operations_active: Gauge,
    /// The hook script of each route path served by this upstream (the route's own, else
    /// the upstream's); `None` for routes without one.
    pub route_hooks: HashMap<String, Option<Arc<HookScript>>>,
}

impl Upstream {
    /// The request headers a client's operations keep: those that can matter upstream
    /// (`security_context` and `forward_headers`), plus `cookie` and `origin`, which hooks
    /// read; not the whole header map, which would cost memory per client. Only the keyed
    /// ones enter the security context. With a hook script on the route, or an
    /// `init_payload` template, every header is kept: a script may read any of them, and
    /// which it reads is not known before it runs.
    pub fn client_headers(&self, path: &str, headers: &HeaderMap) -> HeaderMap {
        if self.hooks_for(path).is_some() || self.config.init_template.is_some() {
            return headers.clone();
        }
        let mut kept = HeaderMap::new();
        let for_hooks = [http::header::COOKIE, http::header::ORIGIN];
        for name in self.config.keyed_headers.iter().chain(&for_hooks) {
            if kept.contains_key(name) {
                continue;
            }
            for value in headers.get_all(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        kept
    }

    /// The hook script for clients of route `path`: the route's own, else the upstream's.
    pub fn hooks_for(&self, path: &str) -> Option<&Arc<HookScript>> {
        match self.route_hooks.get(path) {
            Some(hooks) => hooks.as_ref(),
            None => self.config.hooks.as_ref(),
        }
    }

    /// The connection parameters for a client with these request headers and this final
    /// init payload; the key hashes `keyed_headers` (see there why forwarded ones are in).
    pub fn connect_params(&self, headers: &HeaderMap, init_payload: RawJson) -> ConnectParams {
        let forwarded: Vec<_> = self
            .config
            .forward_headers
            .iter()
            .flat_map(|name| {
                headers
                    .get_all(name)
                    .iter()
                    .map(move |value| (name.clone(), value.clone()))
            })
            .collect();
        let keyed = self.config.keyed_headers.iter().flat_map(|name| {
            headers
                .get_all(name)
                .iter()
                .map(move |value| (name.as_str(), value.as_bytes()))
        });
        ConnectParams {
            key: SecurityContext::compute(&self.config.settings.name, keyed, &init_payload),
            headers: forwarded,
            init_payload,
        }
    }
}

/// Counts of what happened to clients, for logs, tests and metrics.
#[derive(Debug, Default)]
pub struct DownstreamStats {
    /// Clients cut off because a write to them did not complete within
    /// `server.client_write_timeout_ms`, on any transport. It is the counter that
    /// `subplex_client_cuts_total{reason="write_timeout"}` exposes, so the two agree.
    stuck_clients_cut: Counter,
}

impl DownstreamStats {
    /// Counts into the metrics' counters.
    pub(crate) fn new(metrics: &Metrics) -> DownstreamStats {
        DownstreamStats {
            stuck_clients_cut: metrics.write_timeout_cuts(),
        }
    }

    /// Stuck clients cut so far.
    pub fn stuck_clients_cut(&self) -> u64 {
        self.stuck_clients_cut.get()
    }

    pub(crate) fn stuck_client_cut(&self) {
        self.stuck_clients_cut.inc();
    }
}

/// State shared by every request.
#[derive(Debug)]
pub(crate) struct GatewayState {
    pub routes: HashMap<String, Arc<Upstream>>,
    pub server: ServerConfig,
    /// Cancelled when the gateway starts draining: sessions close, streams end.
    pub downstream_shutdown: CancellationToken,
    /// Upgraded WebSocket sessions, which hyper's graceful shutdown does not see.
    pub sessions: TaskTracker,
    /// graphql-sse single-connection streams, reserved or open.
    pub sse_streams: downstream::reservations::Reservations,
    /// Places under `server.max_connections`: one per client connection, and one more per
    /// streamed response on HTTP/2, where one connection can carry any number of them.
    pub connection_slots: Arc<tokio::sync::Semaphore>,
    pub stats: Arc<DownstreamStats>,
    pub metrics: Metrics,
}

impl GatewayState {
    /// Ready while serving: the state exists only once the config is loaded and the
    /// listener bound, and readiness ends the moment shutdown starts, before the drain, so
    /// load balancers stop sending new clients while the old ones finish.
    pub fn is_ready(&self) -> bool {
        !self.downstream_shutdown.is_cancelled()
    }

    /// The `/metrics` exposition, with each upstream's connections counted now.
    pub fn encode_metrics(&self) -> String {
        let mut upstreams: Vec<&Arc<Upstream>> = Vec::new();
        for upstream in self.routes.values() {
            if !upstreams.iter().any(|seen| Arc::ptr_eq(seen, upstream)) {
                upstreams.push(upstream);
            }
        }
        self.metrics
            .encode(upstreams.into_iter().filter_map(|upstream| {
                let protocol = upstream.pool.current_protocol()?;
                Some((
                    &*upstream.config.settings.name,
                    protocol,
                    upstream.pool.open_connections(),
                ))
            }))
    }

    /// Builds the per-upstream pools and HTTP clients. Fails only if an HTTP client cannot
    /// be built (the TLS settings were refused).
    pub fn new(config: &Config, upstream_shutdown: &CancellationToken) -> std::io::Result<Self> {
        let metrics = Metrics::new();
        let mut upstreams: Vec<Arc<Upstream>> = Vec::with_capacity(config.upstreams.len());
        for (index, upstream) in config.upstreams.iter().enumerate() {
            let route_hooks = config
                .routes
                .iter()
                .filter(|route| route.upstream == index)
                .map(|route| (route.path.clone(), route.hooks.clone()))
                .collect();
            let http = HttpClient::new(HttpSettings {
                name: upstream.settings.name.clone(),
                url: upstream.http_url.clone(),
                connect_timeout: upstream.settings.connect_timeout,
                request_timeout: upstream.request_timeout,
                max_response_bytes: upstream.max_response_bytes,
                tls: upstream.http_tls.clone(),
            })
            .map_err(std::io::Error::other)?;
            upstreams.push(Arc::new(Upstream {
                config: upstream.clone(),
                pool: ProbingPool::new(upstream.settings.clone(), upstream_shutdown.child_token()),
                http,
                operations_active: metrics.operations_active(&upstream.settings.name),
                route_hooks,
            }));
        }
        let routes = config
            .routes
            .iter()
            .map(|route| (route.path.clone(), upstreams[route.upstream].clone()))
            .collect();
        Ok(GatewayState {
            routes,
            server: config.server.clone(),
            downstream_shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            stats: Arc::new(DownstreamStats::new(&metrics)),
            metrics,
            connection_slots: Arc::new(tokio::sync::Semaphore::new(config.server.max_connections)),
            sse_streams: downstream::reservations::Reservations::new(
                config.server.sse_single_connection.clone(),
            ),
        })
    }
}
