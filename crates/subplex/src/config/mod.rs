//! The `gateway.toml` schema: raw serde structs with their defaults, and the typed
//! [`Config`] that [`validate`](validate::validate) turns them into.
//!
//! Every key is documented here; `docs/configuration.md` mirrors these comments.

pub mod tls;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};
use subplex_upstream::UpstreamSettings;

pub use validate::{validate, ConfigError, Problem};

/// The whole file: `gateway.toml`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "subplex gateway.toml")]
pub struct RawConfig {
    /// `[server]`: the listener clients connect to.
    #[serde(default)]
    pub server: RawServer,
    /// Upstream GraphQL servers by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Which path serves which upstream.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// `[admin]`: the admin listener (status page, metrics).
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[hooks]`: the sandbox limits of every hook script.
    #[serde(default)]
    pub hooks: RawHooks,
}

/// `[admin]`: a second listener for operators, off by default. It serves the status page
/// (`/status`, `/status.json`) and `/metrics`, read-only, and nothing else.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Serve the admin listener. Default false.
    pub enabled: bool,
    /// Address of the admin listener; must differ from `server.listen`. Default
    /// `127.0.0.1:9090`.
    pub listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            enabled: false,
            listen: "127.0.0.1:9090".into(),
        }
    }
}

/// `[hooks]`: what one hook call may use at most. A call past a limit fails: only that
/// client or operation is refused, and the gateway logs the script and line.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawHooks {
    /// Rhai operations (roughly, expressions evaluated) per call. Default 100000
    /// (a runaway loop stops after about 4 ms).
    pub max_operations: u64,
    /// Nested function calls. Default 32.
    pub max_call_depth: usize,
    /// Nesting of expressions, in the script's text and at run time. Default 64.
    pub max_expr_depth: usize,
    /// Bytes of any one string. Default 65536.
    pub max_string_size: usize,
    /// Elements of any one array. Default 10000.
    pub max_array_size: usize,
    /// Entries of any one object map. Default 10000.
    pub max_map_size: usize,
}

impl Default for RawHooks {
    fn default() -> Self {
        let limits = subplex_hooks::Limits::default();
        RawHooks {
            max_operations: limits.max_operations,
            max_call_depth: limits.max_call_depth,
            max_expr_depth: limits.max_expr_depth,
            max_string_size: limits.max_string_size,
            max_array_size: limits.max_array_size,
            max_map_size: limits.max_map_size,
        }
    }
}

/// `[server]`: the downstream listener.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    /// Length of the listener's accept queue (`listen(2)` backlog; the kernel caps it at
    /// `net.core.somaxconn`). Connections beyond it are dropped by the kernel and retried
    /// by the client a second later. Default 4096.
    pub listen_backlog: u32,
    /// A write to a client (an event, a ping, a close frame) that has not completed after
    /// this long cuts the client: it stopped reading. Default 10000.
    pub client_write_timeout_ms: u64,
    /// How long a client connection may take to send a whole request (its head, and its
    /// body) from when it opens or its previous response ended; a connection that has not
    /// by then is closed, idle kept-alive ones included. Default 30000.
    pub client_request_timeout_ms: u64,
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
    /// `[server.tls]`: serve HTTPS and `wss://` on `listen`. Default: none (plain TCP).
    pub tls: Option<RawServerTls>,
    /// `[server.sse]`: GraphQL over SSE, distinct connections mode (resume).
    pub sse: RawSse,
}

/// `[server.sse]`: resuming a distinct-connections SSE stream with `Last-Event-ID`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawSse {
    /// How long an operation whose client was cut waits for the client to come back with
    /// `Last-Event-ID`; 0 turns resume off (no `id:` fields, no buffer). Default 0.
    pub resume_window_ms: u64,
    /// Most recent events kept per stream for a resume. Default 100.
    pub resume_buffer_events: usize,
    /// Most bytes of encoded events kept per stream for a resume. Default 262144.
    pub resume_buffer_bytes: usize,
}

impl Default for RawSse {
    fn default() -> Self {
        RawSse {
            resume_window_ms: 0,
            resume_buffer_events: 100,
            resume_buffer_bytes: 256 * 1024,
        }
    }
}

/// `[server.tls]`: the listener's certificate. Both files are read again on SIGHUP.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    /// PEM file with the certificate chain, leaf first; relative to the config file.
    pub cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1); relative to the config file.
    pub key_file: String,
}

/// `[server.sse_single_connection]`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
            listen_backlog: 4096,
            client_write_timeout_ms: 10_000,
            client_request_timeout_ms: 30_000,
            max_operations_per_connection: 200,
            max_operation_id_bytes: 128,
            cors: RawCors::default(),
            allowed_origins: vec!["*".into()],
            sse_single_connection: RawSseSingleConnection::default(),
            multipart: RawMultipart::default(),
            tls: None,
            sse: RawSse::default(),
        }
    }
}

/// `[upstreams.<name>]`: one GraphQL server. `Serialize` feeds the settings fingerprint
/// (`UpstreamSettings::fingerprint`), which tells a config reload whether it changed.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
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
    /// Events buffered per subscription before a slow client is cut off (WebSocket close
    /// 1013; SSE and multipart: a `SLOW_CONSUMER` error, then the end); for a WebSocket
    /// client on plain TCP, frames waiting for its socket. Default 128.
    #[serde(default = "default_subscriber_queue")]
    pub subscriber_queue: usize,
    /// Payload bytes buffered per subscription (beyond its first queued event) before a
    /// slow client is cut off, as for `subscriber_queue`. Default 1 MiB.
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
    /// The `connection_init` payload template (see docs/hooks.md): its keys are set in the
    /// client's payload, `{header.NAME}` and `{init.FIELD}` filled in. Default: none.
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub init_payload: Option<toml::Table>,
    /// `[upstreams.<name>.reconnect]`: what happens when the upstream connection fails in a
    /// retryable way.
    #[serde(default)]
    pub reconnect: RawReconnect,
}

/// `[upstreams.<name>.reconnect]`: backoff and give-up window after a retryable failure
/// (a restart, a reset, a keep-alive timeout). Operations survive the outage; clients
/// notice nothing unless it outlasts `give_up_after_ms`.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
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
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Exact request path, starting with `/`.
    pub path: String,
    /// Name of an `[upstreams.<name>]` table.
    pub upstream: String,
    /// Rhai hook script for this route's clients, in place of the upstream's `hooks`;
    /// relative to the config file. Default: the upstream's.
    pub hooks: Option<String>,
}

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// The admin listener's address; `None` when `admin.enabled` is false.
    pub admin_listen: Option<SocketAddr>,
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
    pub listen_backlog: u32,
    pub client_write_timeout: Duration,
    pub client_request_timeout: Duration,
    pub operation_limits: subplex_protocol::OperationLimits,
    pub cors: CorsConfig,
    pub allowed_origins: AllowedOrigins,
    pub sse_single_connection: SseSingleConnectionConfig,
    pub multipart_heartbeat_interval: Duration,
    /// `[server.tls]`, checked at start-up: both files read and the key matching.
    pub tls: Option<tls::ListenerTls>,
    /// `[server.sse]` resume; `None` when `resume_window_ms` is 0.
    pub sse_resume: Option<SseResumeConfig>,
}

/// Validated `[server.sse]` with resume on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseResumeConfig {
    pub window: Duration,
    pub buffer_events: usize,
    pub buffer_bytes: usize,
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
    /// The parsed `init_payload` template.
    pub init_template: Option<subplex_hooks::InitTemplate>,
}

/// Validated `[[routes]]`: `upstream` indexes [`Config::upstreams`].
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub path: String,
    pub upstream: usize,
    /// The script this route's clients run: the route's own `hooks`, else the upstream's.
    pub hooks: Option<Arc<subplex_hooks::HookScript>>,
}

/// The JSON Schema of `gateway.toml`, derived from the raw structs above (their doc
/// comments become descriptions): `gateway.schema.json` at the repository root, which
/// `subplex schema` prints.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RawConfig);
    // Serialising a schema (plain JSON values) cannot fail.
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
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
