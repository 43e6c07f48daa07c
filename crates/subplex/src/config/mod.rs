//! The `gateway.toml` schema: raw serde structs with their defaults, and the typed
//! [`Config`] that [`validate`](validate::validate) turns them into.
//!
//! Every key is documented here; `docs/configuration.md` mirrors these comments.

pub(crate) mod tls;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;
use subplex_upstream::UpstreamSettings;

pub use validate::{validate, ConfigError, Problem};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    /// Upstream GraphQL servers by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Which path serves which upstream.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[server]`: the downstream listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Address to listen on. Default `127.0.0.1:4000`.
    pub listen: String,
    /// Largest WebSocket message or HTTP request body accepted from a client. Default 1 MiB.
    pub max_message_bytes: usize,
    /// graphql-transport-ws and legacy clients must send `connection_init` within this. Default 3000.
    pub connection_init_timeout_ms: u64,
    /// Interval of SSE keep-alive comments, legacy `ka` messages and WebSocket pings to
    /// clients; a WebSocket client silent for two intervals is disconnected. Default 12000.
    pub keepalive_interval_ms: u64,
    /// On SIGTERM/SIGINT, how long open connections get to finish. Default 10000.
    pub shutdown_grace_ms: u64,
    /// Most simultaneous client connections; more wait in the accept queue. Default 10000.
    pub max_connections: usize,
    /// A write to a client (an event, a ping, a close frame) that has not completed after
    /// this long cuts the client: it stopped reading. Default 10000.
    pub client_write_timeout_ms: u64,
    /// Operations running at once on one WebSocket connection; more are refused one by one
    /// with an `error` for their id. Default 200.
    pub max_operations_per_connection: usize,
    /// Longest operation id accepted from a WebSocket client, in bytes. Default 128.
    pub max_operation_id_bytes: usize,
    /// `[server.cors]`: which browser origins may read SSE and HTTP responses.
    pub cors: RawCors,
    /// Browser origins (the `Origin` request header) allowed to open a WebSocket, an SSE
    /// stream or a multipart subscription; `"*"` allows any. Requests without `Origin`
    /// (not from a browser) always pass. Default `["*"]`.
    pub allowed_origins: Vec<String>,
    /// `[server.sse_single_connection]`: graphql-sse single-connection mode.
    pub sse_single_connection: RawSseSingleConnection,
    /// `[server.multipart]`: Apollo multipart HTTP subscriptions.
    pub multipart: RawMultipart,
}

/// `[server.sse_single_connection]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSseSingleConnection {
    /// A reserved stream token not used to open its stream within this expires. Default 10000.
    pub token_ttl_ms: u64,
    /// Most single-connection streams, reserved or open, at once. Default 10000.
    pub max_streams: usize,
    /// Most operations running (or waiting for the stream to open) on one stream. Default 100.
    pub max_operations_per_stream: usize,
}

impl Default for RawSseSingleConnection {
    fn default() -> Self {
        RawSseSingleConnection {
            token_ttl_ms: 10_000,
            max_streams: 10_000,
            max_operations_per_stream: 100,
        }
    }
}

/// `[server.multipart]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMultipart {
    /// Interval of heartbeat `{}` parts while a subscription is idle. Default 5000 (Apollo's).
    pub heartbeat_interval_ms: u64,
}

impl Default for RawMultipart {
    fn default() -> Self {
        RawMultipart {
            heartbeat_interval_ms: 5_000,
        }
    }
}

/// `[server.cors]`. WebSocket upgrades are not subject to CORS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCors {
    /// Origins allowed to read responses, exactly as browsers send them
    /// (`https://app.example.com`), or `"*"` for any. `[]` sends no CORS headers.
    /// Default `["*"]`.
    pub allow_origins: Vec<String>,
    /// Let browsers send cookies and read the response. Needs explicit origins. Default false.
    pub allow_credentials: bool,
}

impl Default for RawCors {
    fn default() -> Self {
        RawCors {
            allow_origins: vec!["*".into()],
            allow_credentials: false,
        }
    }
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:4000".into(),
            max_message_bytes: 1024 * 1024,
            connection_init_timeout_ms: 3_000,
            keepalive_interval_ms: 12_000,
            shutdown_grace_ms: 10_000,
            max_connections: 10_000,
            client_write_timeout_ms: 10_000,
            max_operations_per_connection: 200,
            max_operation_id_bytes: 128,
            cors: RawCors::default(),
            allowed_origins: vec!["*".into()],
            sse_single_connection: RawSseSingleConnection::default(),
            multipart: RawMultipart::default(),
        }
    }
}

/// `[upstreams.<name>]`: one GraphQL server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// HTTP URL of the GraphQL endpoint (queries and mutations over HTTP go here). Required.
    pub url: String,
    /// WebSocket URL. Default: `url` with http→ws, https→wss.
    pub ws_url: Option<String>,
    /// `auto` (probe the upstream before its first connection), `graphql-transport-ws`,
    /// `graphql-ws` (legacy) or `sse` (GraphQL over SSE, one request per operation). Default `auto`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// HTTP method of GraphQL over SSE requests to this upstream (its operations, and the probe's SSE step):
    /// `POST` or `GET`. Default `POST`.
    #[serde(default = "default_sse_method")]
    pub sse_method: String,
    /// Request header names whose values are hashed into the security context. Default `["authorization"]`.
    #[serde(default = "default_auth_headers")]
    pub security_context: Vec<String>,
    /// Request header names copied to the upstream WebSocket handshake and HTTP requests. Default `["authorization"]`.
    #[serde(default = "default_auth_headers")]
    pub forward_headers: Vec<String>,
    /// Close an upstream connection this long after its last subscription ended. Default 30000.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// TCP + WebSocket handshake timeout. Default 5000.
    #[serde(default = "default_5000")]
    pub connect_timeout_ms: u64,
    /// How long to wait for `connection_ack`. Default 5000.
    #[serde(default = "default_5000")]
    pub ack_timeout_ms: u64,
    /// WebSocket ping interval toward the upstream. Default 10000.
    #[serde(default = "default_10000")]
    pub keepalive_interval_ms: u64,
    /// The upstream is declared dead after `keepalive_interval_ms` plus this without any frame. Default 10000.
    #[serde(default = "default_10000")]
    pub keepalive_timeout_ms: u64,
    /// Largest frame accepted from the upstream. Default 1 MiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Events buffered per subscription before a slow client's subscription is cut off. Default 128.
    #[serde(default = "default_subscriber_queue")]
    pub subscriber_queue: usize,
    /// Payload bytes buffered per subscription (beyond its first queued event) before a
    /// slow client's subscription is cut off. Default 1 MiB.
    #[serde(default = "default_subscriber_queue_bytes")]
    pub subscriber_queue_bytes: usize,
    /// Operations of one security context with the same normalised request share one
    /// upstream operation (WebSocket upstreams). Default true.
    #[serde(default = "default_dedup")]
    pub dedup: bool,
    /// Largest response body read from the upstream for a query or mutation forwarded over
    /// plain HTTP. Default 16 MiB.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Whole-request timeout for queries and mutations forwarded over plain HTTP. Default 30000.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// PEM file of extra CA certificates to trust for `https`/`wss` upstreams, besides
    /// Mozilla's roots; relative to the config file. Default: none.
    pub tls_ca_file: Option<String>,
    /// Rhai hook script for this upstream's clients (see docs/hooks.md); relative to the
    /// config file. Compiled at start-up. Default: none.
    pub hooks: Option<String>,
    /// `[upstreams.<name>.reconnect]`: what happens when the upstream connection fails in a
    /// retryable way.
    #[serde(default)]
    pub reconnect: RawReconnect,
}

/// `[upstreams.<name>.reconnect]`: backoff and give-up window after a retryable failure
/// (a restart, a reset, a keep-alive timeout). Operations survive the outage; clients
/// notice nothing unless it outlasts `give_up_after_ms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReconnect {
    /// Delay before the first redial. Doubles per failed attempt, with jitter (each delay
    /// is between half and all of its bound). Default 100.
    pub initial_ms: u64,
    /// Largest delay between redials. Default 5000.
    pub max_ms: u64,
    /// How long an outage may last before each affected operation gets an error and
    /// completes; 0 fails them at the first failure. Default 30000.
    pub give_up_after_ms: u64,
}

impl Default for RawReconnect {
    fn default() -> Self {
        RawReconnect {
            initial_ms: 100,
            max_ms: 5_000,
            give_up_after_ms: 30_000,
        }
    }
}

fn default_request_timeout_ms() -> u64 {
    30_000
}

fn default_protocol() -> String {
    "auto".into()
}
fn default_sse_method() -> String {
    "POST".into()
}
fn default_auth_headers() -> Vec<String> {
    vec!["authorization".into()]
}
fn default_idle_timeout_ms() -> u64 {
    30_000
}
fn default_5000() -> u64 {
    5_000
}
fn default_10000() -> u64 {
    10_000
}
fn default_max_message_bytes() -> usize {
    1024 * 1024
}
fn default_subscriber_queue_bytes() -> usize {
    1024 * 1024
}
fn default_max_response_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_subscriber_queue() -> usize {
    128
}
fn default_dedup() -> bool {
    true
}

/// `[[routes]]`: a path served by an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Exact request path, starting with `/`.
    pub path: String,
    /// Name of an `[upstreams.<name>]` table.
    pub upstream: String,
}

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
}

/// Validated `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_message_bytes: usize,
    pub connection_init_timeout: Duration,
    pub keepalive_interval: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub client_write_timeout: Duration,
    pub operation_limits: subplex_protocol::OperationLimits,
    pub cors: CorsConfig,
    pub allowed_origins: AllowedOrigins,
    pub sse_single_connection: SseSingleConnectionConfig,
    pub multipart_heartbeat_interval: Duration,
}

/// Validated `server.allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigins {
    pub any_origin: bool,
    /// Exact serialised origins (`https://app.example.com`).
    pub origins: Vec<String>,
}

impl AllowedOrigins {
    /// Whether a request with this `Origin` header value may use a subscription transport.
    pub fn allows(&self, origin: &[u8]) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.as_bytes() == origin)
    }
}

/// Validated `[server.sse_single_connection]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseSingleConnectionConfig {
    pub token_ttl: Duration,
    pub max_streams: usize,
    pub max_operations_per_stream: usize,
}

/// Validated `[server.cors]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// Empty: CORS off. `any_origin`: every origin.
    pub allow_origins: Vec<String>,
    pub any_origin: bool,
    pub allow_credentials: bool,
}

impl CorsConfig {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if allowed.
    pub fn allow_origin<'a>(&self, origin: &'a str) -> Option<&'a str> {
        if self.any_origin && !self.allow_credentials {
            Some("*")
        } else if self.any_origin || self.allow_origins.iter().any(|o| o == origin) {
            Some(origin)
        } else {
            None
        }
    }
}

/// Validated `[upstreams.<name>]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub settings: UpstreamSettings,
    pub http_url: url::Url,
    /// Every header hashed into the security context: `security_context` and
    /// `forward_headers` together (a forwarded header the key ignored would let two callers
    /// share one upstream identity). Lower-cased, each once, computed at start-up.
    pub keyed_headers: Vec<HeaderName>,
    /// Lower-cased; never hop-by-hop or `sec-websocket-*`.
    pub forward_headers: Vec<HeaderName>,
    /// For plain HTTP forwarding.
    pub request_timeout: Duration,
    /// For plain HTTP forwarding.
    pub max_response_bytes: usize,
    /// TLS client settings for plain HTTP forwarding (the WebSocket ones are in `settings`).
    pub http_tls: Arc<rustls::ClientConfig>,
    /// The compiled `hooks` script, shared by every client of this upstream.
    pub hooks: Option<Arc<subplex_hooks::HookScript>>,
}

/// Validated `[[routes]]`: `upstream` indexes [`Config::upstreams`].
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub path: String,
    pub upstream: usize,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            file: path.display().to_string(),
            reason: err.to_string(),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            file: file.to_owned(),
            reason: err.to_string(),
        })?;
        validate::validate(raw, file)
    }
}
