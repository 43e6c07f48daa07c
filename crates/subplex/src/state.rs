//! The state every request handler shares: the route table with its upstreams (pool, HTTP
//! client, settings), the server settings, and the handles of shutdown and of the places
//! under `server.max_connections`.
//!
//! The route table is swapped whole by a config reload (`reload.rs`); a request reads it
//! once ([`GatewayState::routes`]) and keeps the table it started with. An [`Upstream`]
//! whose settings did not change is carried into the new table as the same object, with
//! its pool, connections and operations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use subplex_hooks::HookScript;
use subplex_protocol::RawJson;
use subplex_upstream::http::{HttpClient, HttpSettings};
use subplex_upstream::{ConnectParams, ProbingPool, SecurityContext, UpstreamError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ServerConfig, UpstreamConfig};
use crate::downstream;
use crate::metrics::{Metrics, UpstreamMetrics};

/// One upstream as the request handlers use it.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub config: UpstreamConfig,
    pub pool: ProbingPool,
    pub http: HttpClient,
    /// `subplex_operations_active` for this upstream.
    pub operations_active: Gauge,
    /// Cancelled when a reload retires this upstream (its settings changed, or it is gone):
    /// every operation on it ends with `UPSTREAM_CONFIG_CHANGED`. Parent of the route tokens.
    retired: CancellationToken,
    /// The pool's own shutdown, cancelled right after `retired` so the old connections
    /// close now rather than after `idle_timeout_ms`.
    pool_shutdown: CancellationToken,
    /// One token per route path that leads here, cancelled (and removed) when a reload
    /// removes the route or points it elsewhere. Operations watch theirs.
    route_tokens: Mutex<HashMap<String, CancellationToken>>,
    /// Events, latency, reconnects and hook errors of this upstream.
    pub metrics: Arc<UpstreamMetrics>,
    /// The hook script of each route path served by this upstream (the route's own, else
    /// the upstream's); `None` for routes without one.
    pub route_hooks: HashMap<String, Option<Arc<HookScript>>>,
}

impl Upstream {
    /// Builds the pool and HTTP client of one upstream. Fails only if the HTTP client
    /// cannot be built (the TLS settings were refused).
    fn new(
        config: &UpstreamConfig,
        route_hooks: HashMap<String, Option<Arc<HookScript>>>,
        upstream_shutdown: &CancellationToken,
        metrics: &Metrics,
    ) -> std::io::Result<Upstream> {
        let upstream_metrics = metrics.upstream(&config.settings.name);
        // The upstream's tasks count into the stats the metrics read.
        let mut config = config.clone();
        config.settings.stats = upstream_metrics.stats.clone();
        let http = HttpClient::new(HttpSettings {
            name: config.settings.name.clone(),
            url: config.http_url.clone(),
            connect_timeout: config.settings.connect_timeout,
            request_timeout: config.request_timeout,
            max_response_bytes: config.max_response_bytes,
            tls: config.http_tls.clone(),
        })
        .map_err(std::io::Error::other)?;
        let pool_shutdown = upstream_shutdown.child_token();
        Ok(Upstream {
            pool: ProbingPool::new(config.settings.clone(), pool_shutdown.clone()),
            http,
            operations_active: metrics.operations_active(&config.settings.name),
            metrics: upstream_metrics,
            route_hooks,
            config,
            retired: CancellationToken::new(),
            pool_shutdown,
            route_tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The token an operation arriving on `path` watches: cancelled once a reload ends
    /// that route for this upstream or retires the upstream. Already cancelled if that
    /// happened before the operation started (a WebSocket session outlives its route).
    pub fn route_token(&self, path: &str) -> CancellationToken {
        let tokens = self.route_tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(path).cloned().unwrap_or_else(|| {
            let ended = CancellationToken::new();
            ended.cancel();
            ended
        })
    }

    /// Why an operation on `path` ended once its route token was cancelled.
    pub fn route_end_error(&self, path: &str) -> UpstreamError {
        if self.retired.is_cancelled() {
            UpstreamError::ConfigChanged {
                upstream: self.config.settings.name.clone(),
            }
        } else {
            UpstreamError::RouteRemoved {
                path: path.to_owned(),
            }
        }
    }

    /// Marks `path` as leading here (again); a route it already serves keeps its token.
    fn serve_route(&self, path: &str) {
        let mut tokens = self.route_tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .entry(path.to_owned())
            .or_insert_with(|| self.retired.child_token());
    }

    /// Ends the operations that came in on `path`, which no longer leads here.
    fn end_route(&self, path: &str) {
        let mut tokens = self.route_tokens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(token) = tokens.remove(path) {
            token.cancel();
        }
    }

    /// Ends every operation on this upstream, then closes its connections. In this order:
    /// an operation polled after this sees its route token first, so it reports the
    /// reload, not the pool's shutdown.
    fn retire(&self) {
        self.retired.cancel();
        self.pool_shutdown.cancel();
    }

    /// The request headers a client's operations keep: those that can matter upstream
    /// (`security_context` and `forward_headers`), plus `cookie` and `origin`, which hooks
    /// read; not the whole header map, which would cost memory per client. Only the keyed
    /// ones enter the security context. With a hook script on the route, or an
    /// `init_payload` template, every header is kept: a script may read any of them, and
    /// which it reads is not known before it runs.
    ///
    /// The values are copies (see [`detached`]), in a map of exactly their size.
    pub fn client_headers(&self, path: &str, headers: &HeaderMap) -> HeaderMap {
        if self.hooks_for(path).is_some() || self.config.init_template.is_some() {
            let mut kept = HeaderMap::with_capacity(headers.len());
            for (name, value) in headers {
                kept.append(name.clone(), detached(value));
            }
            return kept;
        }
        let for_hooks = [http::header::COOKIE, http::header::ORIGIN];
        let mut names: Vec<&HeaderName> = Vec::new();
        for name in self.config.keyed_headers.iter().chain(&for_hooks) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let count = names
            .iter()
            .map(|name| headers.get_all(*name).iter().count())
            .sum();
        let mut kept = HeaderMap::with_capacity(count);
        for name in names {
            for value in headers.get_all(name) {
                kept.append(name.clone(), detached(value));
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
            key: SecurityContext::compute(
                &self.config.settings.name,
                &self.config.settings.fingerprint,
                keyed,
                &init_payload,
            ),
            headers: forwarded,
            init_payload,
        }
    }
}

/// A copy of `value` in an allocation of its own. hyper parses a request's header values
/// as slices of the connection's read buffer (16 KiB once hyper-util's protocol sniff has
/// read the first bytes), so a kept clone would keep that whole buffer alive for as long
/// as the client stays: it did so for every WebSocket client, long after the upgrade had
/// released the HTTP connection (16 KiB of heap per idle subscriber, `valgrind
/// --tool=massif`; see docs/benchmarks.md).
fn detached(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// Counts of what happened to clients, for logs, tests and metrics.
#[derive(Debug, Default)]
pub struct DownstreamStats {
    /// Clients cut off because a write to them did not complete within
    /// `server.client_write_timeout_ms`, on any transport. It is the counter that
    /// `subplex_client_cuts_total{reason="write_timeout"}` exposes, so the two agree.
    stuck_clients_cut: Counter,
    /// Clients closed for going over a limit (`reason="limit"`).
    limit_cuts: Counter,
    /// Clients ended because one of their operations was cut off by the slow-consumer
    /// policy (`reason="slow_consumer"`): one per client, however many of its operations
    /// were cut.
    slow_consumer_cuts: Counter,
}

impl DownstreamStats {
    /// Counts into the metrics' counters.
    pub(crate) fn new(metrics: &Metrics) -> DownstreamStats {
        DownstreamStats {
            stuck_clients_cut: metrics.write_timeout_cuts(),
            limit_cuts: metrics.limit_cuts(),
            slow_consumer_cuts: metrics.slow_consumer_cuts(),
        }
    }

    /// Stuck clients cut so far.
    pub fn stuck_clients_cut(&self) -> u64 {
        self.stuck_clients_cut.get()
    }

    pub(crate) fn stuck_client_cut(&self) {
        self.stuck_clients_cut.inc();
    }

    /// A client closed because a message of its went over `server.max_message_bytes`.
    pub(crate) fn limit_cut(&self) {
        self.limit_cuts.inc();
    }

    /// Clients ended as too slow so far.
    pub fn slow_consumers_cut(&self) -> u64 {
        self.slow_consumer_cuts.get()
    }

    /// A client ended because it fell behind an operation's events: WebSocket closed
    /// 1013, SSE or multipart stream ended after its error event.
    pub(crate) fn slow_consumer_cut(&self) {
        self.slow_consumer_cuts.inc();
    }
}

/// Which path is served by which upstream: what a reload swaps.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    routes: HashMap<String, Arc<Upstream>>,
}

impl RouteTable {
    /// The upstream serving `path`.
    pub fn get(&self, path: &str) -> Option<&Arc<Upstream>> {
        self.routes.get(path)
    }

    /// Each upstream once, however many routes lead to it, by name.
    pub fn upstreams(&self) -> Vec<&Arc<Upstream>> {
        let mut upstreams: Vec<&Arc<Upstream>> = Vec::new();
        for upstream in self.routes.values() {
            if !upstreams.iter().any(|seen| Arc::ptr_eq(seen, upstream)) {
                upstreams.push(upstream);
            }
        }
        upstreams.sort_by(|a, b| a.config.settings.name.cmp(&b.config.settings.name));
        upstreams
    }

    /// The table for `config`. An upstream of `previous` with the same name and the same
    /// settings fingerprint is carried over as it is; the others are built anew. Nothing
    /// changes for `previous` here: see [`GatewayState::swap_routes`].
    fn build(
        config: &Config,
        previous: &RouteTable,
        upstream_shutdown: &CancellationToken,
        metrics: &Metrics,
    ) -> std::io::Result<RouteTable> {
        let old = previous.upstreams();
        let mut upstreams: Vec<Arc<Upstream>> = Vec::with_capacity(config.upstreams.len());
        for (index, upstream) in config.upstreams.iter().enumerate() {
            let same = old.iter().find(|old| {
                old.config.settings.name == upstream.settings.name
                    && old.config.settings.fingerprint == upstream.settings.fingerprint
            });
            upstreams.push(match same {
                Some(same) => Arc::clone(same),
                None => {
                    // A route's own script is in the upstream's fingerprint, so a kept
                    // upstream's scripts are current too.
                    let route_hooks = config
                        .routes
                        .iter()
                        .filter(|route| route.upstream == index)
                        .map(|route| (route.path.clone(), route.hooks.clone()))
                        .collect();
                    Arc::new(Upstream::new(
                        upstream,
                        route_hooks,
                        upstream_shutdown,
                        metrics,
                    )?)
                }
            });
        }
        let routes = config
            .routes
            .iter()
            .map(|route| (route.path.clone(), upstreams[route.upstream].clone()))
            .collect();
        Ok(RouteTable { routes })
    }
}

/// What a route-table swap did, for the reload's log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RouteChanges {
    /// Upstreams carried over with their connections and operations.
    pub upstreams_kept: Vec<Arc<str>>,
    /// Upstreams built anew: new names, or changed settings.
    pub upstreams_started: Vec<Arc<str>>,
    /// Upstreams whose operations were ended: changed settings, or gone.
    pub upstreams_retired: Vec<Arc<str>>,
    /// Paths that no longer lead to the same upstream object (gone or re-pointed), whose
    /// upstream itself was kept.
    pub routes_ended: Vec<String>,
}

/// State shared by every request.
#[derive(Debug)]
pub(crate) struct GatewayState {
    /// Read once per request ([`GatewayState::routes`]); replaced whole by a reload.
    routes: RwLock<Arc<RouteTable>>,
    /// The `[server]` settings the gateway started with: a reload does not change them.
    pub server: ServerConfig,
    /// Parent of every pool's shutdown; cancelled last, after clients drained.
    upstream_shutdown: CancellationToken,
    /// Cancelled when the gateway starts draining: sessions close, streams end.
    pub downstream_shutdown: CancellationToken,
    /// Upgraded WebSocket sessions, which hyper's graceful shutdown does not see.
    pub sessions: TaskTracker,
    /// graphql-sse single-connection streams, reserved or open.
    pub sse_streams: downstream::reservations::Reservations,
    /// Distinct-mode SSE streams that can be resumed (`[server.sse]`).
    pub resumable_sse: Arc<downstream::sse::ResumableStreams>,
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

    /// The route table now. A request reads it once and keeps it: a reload meanwhile
    /// does not move it to another upstream halfway.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the route table with the one for `config` (see [`RouteTable::build`]):
    /// unchanged upstreams go on untouched, new ones serve the next request, operations of
    /// retired upstreams and ended routes get their error. Fails, changing nothing, only
    /// if an upstream's HTTP client cannot be built. Reloads run one at a time (`reload.rs`).
    pub fn swap_routes(&self, config: &Config) -> std::io::Result<RouteChanges> {
        let old = self.routes();
        let new = Arc::new(RouteTable::build(
            config,
            &old,
            &self.upstream_shutdown,
            &self.metrics,
        )?);
        // Tokens first: an operation that reads the new table must find its route.
        for (path, upstream) in &new.routes {
            upstream.serve_route(path);
        }
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = new.clone();

        let mut changes = RouteChanges::default();
        let new_upstreams = new.upstreams();
        let kept =
            |upstream: &Arc<Upstream>| new_upstreams.iter().any(|new| Arc::ptr_eq(new, upstream));
        for upstream in old.upstreams() {
            if kept(upstream) {
                changes
                    .upstreams_kept
                    .push(upstream.config.settings.name.clone());
            } else {
                upstream.retire();
                changes
                    .upstreams_retired
                    .push(upstream.config.settings.name.clone());
            }
        }
        for (path, upstream) in &old.routes {
            let same = new.get(path).is_some_and(|new| Arc::ptr_eq(new, upstream));
            if !same && kept(upstream) {
                upstream.end_route(path);
                changes.routes_ended.push(path.clone());
            }
        }
        let old_upstreams = old.upstreams();
        for upstream in new_upstreams {
            if !old_upstreams.iter().any(|old| Arc::ptr_eq(old, upstream)) {
                changes
                    .upstreams_started
                    .push(upstream.config.settings.name.clone());
                let upstream = upstream.clone();
                tokio::spawn(async move { upstream.pool.probe_at_start().await });
            }
        }
        changes.routes_ended.sort();
        Ok(changes)
    }

    /// The `/metrics` exposition, with each upstream's connections counted now.
    pub fn encode_metrics(&self) -> String {
        let routes = self.routes();
        self.metrics
            .encode(routes.upstreams().into_iter().filter_map(|upstream| {
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
        let routes =
            RouteTable::build(config, &RouteTable::default(), upstream_shutdown, &metrics)?;
        for (path, upstream) in &routes.routes {
            upstream.serve_route(path);
        }
        Ok(GatewayState {
            routes: RwLock::new(Arc::new(routes)),
            server: config.server.clone(),
            upstream_shutdown: upstream_shutdown.clone(),
            downstream_shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            stats: Arc::new(DownstreamStats::new(&metrics)),
            metrics,
            connection_slots: Arc::new(tokio::sync::Semaphore::new(config.server.max_connections)),
            resumable_sse: Arc::default(),
            sse_streams: downstream::reservations::Reservations::new(
                config.server.sse_single_connection.clone(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(upstreams: &[(&str, &str)], routes: &[(&str, &str)]) -> Config {
        let mut text = String::new();
        for (name, extra) in upstreams {
            text += &format!(
                "[upstreams.{name}]\nurl = \"http://127.0.0.1:9/graphql\"\nprotocol = \"graphql-transport-ws\"\n{extra}\n"
            );
        }
        for (path, upstream) in routes {
            text += &format!("[[routes]]\npath = \"{path}\"\nupstream = \"{upstream}\"\n");
        }
        Config::parse(&text, "gateway.toml").unwrap()
    }

    /// A request's header values as hyper hands them over: slices of one shared buffer.
    fn request_headers(raw: &'static [u8], values: &[(&str, std::ops::Range<usize>)]) -> HeaderMap {
        let buffer = bytes::Bytes::from_static(raw);
        let mut headers = HeaderMap::new();
        for (name, range) in values {
            let value = HeaderValue::from_maybe_shared(buffer.slice(range.clone())).unwrap();
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
        }
        headers
    }

    #[test]
    fn kept_headers_are_the_ones_that_matter_copied_out_of_the_request() {
        const RAW: &[u8] = b"Bearer t|a=1|https://app.example|x";
        let mut headers = request_headers(
            RAW,
            &[
                ("authorization", 0..8),
                ("cookie", 9..12),
                ("origin", 13..32),
                ("x-other", 33..34),
            ],
        );
        headers
            .get_mut("authorization")
            .unwrap()
            .set_sensitive(true);
        let state = GatewayState::new(
            &config(&[("up", "")], &[("/graphql", "up")]),
            &CancellationToken::new(),
        )
        .unwrap();
        let kept = state
            .routes()
            .get("/graphql")
            .unwrap()
            .client_headers("/graphql", &headers);

        let names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["authorization", "cookie", "origin"]);
        assert_eq!(kept["authorization"], "Bearer t");
        assert!(kept["authorization"].is_sensitive());
        assert_eq!(kept["origin"], "https://app.example");
        // None of them points into the request's buffer, which they would otherwise keep
        // alive for as long as the client stays.
        let buffer = RAW.as_ptr_range();
        for value in kept.values() {
            assert!(!buffer.contains(&value.as_bytes().as_ptr()), "{value:?}");
        }
    }

    #[tokio::test]
    async fn a_swap_keeps_unchanged_upstreams_and_ends_the_rest() {
        let before = config(
            &[
                ("keep", ""),
                ("change", "idle_timeout_ms = 1000"),
                ("gone", ""),
            ],
            &[
                ("/keep", "keep"),
                ("/moved", "keep"),
                ("/dropped", "keep"),
                ("/change", "change"),
                ("/gone", "gone"),
            ],
        );
        let state = GatewayState::new(&before, &CancellationToken::new()).unwrap();
        let old = state.routes();
        let token = |path: &str| old.get(path).unwrap().route_token(path);
        let (keep, moved, dropped, change, gone) = (
            token("/keep"),
            token("/moved"),
            token("/dropped"),
            token("/change"),
            token("/gone"),
        );

        let after = config(
            &[
                ("keep", ""),
                ("change", "idle_timeout_ms = 2000"),
                ("fresh", ""),
            ],
            &[
                ("/keep", "keep"),
                ("/moved", "fresh"),
                ("/change", "change"),
                ("/fresh", "fresh"),
            ],
        );
        let changes = state.swap_routes(&after).unwrap();
        assert_eq!(changes.upstreams_kept, [Arc::from("keep")]);
        assert_eq!(changes.routes_ended, ["/dropped", "/moved"]);
        let mut started = changes.upstreams_started.clone();
        started.sort();
        assert_eq!(started, [Arc::from("change"), Arc::from("fresh")]);
        let mut retired = changes.upstreams_retired.clone();
        retired.sort();
        assert_eq!(retired, [Arc::from("change"), Arc::from("gone")]);

        let new = state.routes();
        // The same object, with its pool: its operations go on.
        assert!(Arc::ptr_eq(
            new.get("/keep").unwrap(),
            old.get("/keep").unwrap()
        ));
        assert!(!keep.is_cancelled());
        // Changed settings: a new object, and a new security context for equal clients.
        let (old_change, new_change) = (old.get("/change").unwrap(), new.get("/change").unwrap());
        assert!(!Arc::ptr_eq(old_change, new_change));
        let headers = HeaderMap::new();
        assert_ne!(
            old_change
                .connect_params(&headers, RawJson::empty_object())
                .key,
            new_change
                .connect_params(&headers, RawJson::empty_object())
                .key
        );
        assert!(!new_change.route_token("/change").is_cancelled());
        assert!(new.get("/gone").is_none() && new.get("/dropped").is_none());
        assert!(!new
            .get("/fresh")
            .unwrap()
            .route_token("/fresh")
            .is_cancelled());

        for (ended, path, code) in [
            (moved, "/moved", "ROUTE_REMOVED"),
            (dropped, "/dropped", "ROUTE_REMOVED"),
            (change, "/change", "UPSTREAM_CONFIG_CHANGED"),
            (gone, "/gone", "UPSTREAM_CONFIG_CHANGED"),
        ] {
            assert!(ended.is_cancelled(), "{path}");
            let upstream = old.get(path).unwrap();
            assert_eq!(upstream.route_end_error(path).code(), code, "{path}");
            // A session still holding the old upstream starts nothing on it any more.
            assert!(upstream.route_token(path).is_cancelled(), "{path}");
        }
    }
}
