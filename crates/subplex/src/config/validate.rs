//! Raw config → typed [`Config`], collecting every problem with its key path.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use subplex_hooks::Limits;
use subplex_protocol::Subprotocol;
use subplex_upstream::{
    ReconnectSettings, SettingsFingerprint, SseMethod, UpstreamProtocol, UpstreamSettings,
};

use super::{
    AllowedOrigins, Config, CorsConfig, RawConfig, RawCors, RawHooks, RawServer, RawUpstream,
    RouteConfig, ServerConfig, SseResumeConfig, SseSingleConnectionConfig, UpstreamConfig,
};

/// One thing wrong with the config: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `upstreams.chat.url` or `routes[1].path`.
    pub key: String,
    pub reason: String,
}

/// Why the gateway refuses to start with a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the configuration: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: {reason}")]
    Syntax { file: String, reason: String },
    #[error("{file}: invalid configuration:{}", list(.problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("\n  {}: {}", p.key, p.reason))
        .collect()
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Headers that describe one hop, or the WebSocket handshake itself: forwarding them
/// breaks the upstream connection (cosmo#1149), so they can never be forwarded.
const UNFORWARDABLE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// The longest duration any `*_ms` key accepts: one day.
const MAX_DURATION_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// A duration key that must be greater than 0 (see [`Problems::duration`]).
    fn positive(&mut self, key: String, value: u64) -> Duration {
        if value == 0 {
            self.add(key.clone(), "must be greater than 0");
        }
        self.duration(key, value)
    }

    /// A duration key, bounded so that deadline arithmetic (`Instant + Duration`, doubling
    /// backoffs) can never overflow, whatever the file says.
    fn duration(&mut self, key: String, value: u64) -> Duration {
        if value > MAX_DURATION_MS {
            self.add(
                key,
                format!("must be at most {MAX_DURATION_MS} (one day, in milliseconds)"),
            );
            return Duration::from_millis(MAX_DURATION_MS);
        }
        Duration::from_millis(value)
    }

    /// A count or size that must be greater than 0.
    fn at_least_one(&mut self, key: &str, value: usize) -> usize {
        if value == 0 {
            self.add(key, "must be greater than 0");
        }
        value.max(1)
    }
}

/// `[server.sse]`: resume is off with a window of 0; on, both buffer bounds must be > 0.
fn validate_sse_resume(raw: &RawServer, problems: &mut Problems) -> Option<SseResumeConfig> {
    let raw = &raw.sse;
    let window = problems.duration("server.sse.resume_window_ms".into(), raw.resume_window_ms);
    if window.is_zero() {
        return None;
    }
    Some(SseResumeConfig {
        window,
        buffer_events: problems
            .at_least_one("server.sse.resume_buffer_events", raw.resume_buffer_events),
        buffer_bytes: problems
            .at_least_one("server.sse.resume_buffer_bytes", raw.resume_buffer_bytes),
    })
}

/// `[server.tls]`: both files must be readable PEM and the key must match the certificate.
fn validate_listener_tls(
    raw: &RawServer,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<super::tls::ListenerTls> {
    let tls = raw.tls.as_ref()?;
    super::tls::ListenerTls::load(base_dir.join(&tls.cert_file), base_dir.join(&tls.key_file))
        .map_err(|err| problems.add(format!("server.tls.{}", err.key), err.reason))
        .ok()
}

/// Checks a raw config; `file` names it in errors.
pub fn validate(raw: RawConfig, file: &str) -> Result<Config, ConfigError> {
    let mut problems = Problems::default();
    // Files the config names are relative to the config file.
    let base_dir = Path::new(file).parent().unwrap_or(Path::new(""));

    let listen = resolve_listen(&raw.server.listen).unwrap_or_else(|| {
        problems.add(
            "server.listen",
            format!(
                "\"{}\" is not an address with a port, like \"127.0.0.1:4000\", \"0.0.0.0:4000\" or \"localhost:4000\"",
                raw.server.listen
            ),
        );
        SocketAddr::from(([127, 0, 0, 1], 4000))
    });
    if raw.server.max_message_bytes < 1024 {
        problems.add("server.max_message_bytes", "must be at least 1024");
    }
    if raw.server.max_connections == 0 {
        problems.add("server.max_connections", "must be greater than 0");
    }
    if raw.server.listen_backlog == 0 || raw.server.listen_backlog > 65_535 {
        problems.add(
            "server.listen_backlog",
            "must be between 1 and 65535 (the kernel caps it at net.core.somaxconn)",
        );
    }
    let server = ServerConfig {
        listen,
        max_message_bytes: raw.server.max_message_bytes,
        connection_init_timeout: problems.positive(
            "server.connection_init_timeout_ms".into(),
            raw.server.connection_init_timeout_ms,
        ),
        keepalive_interval: problems.positive(
            "server.keepalive_interval_ms".into(),
            raw.server.keepalive_interval_ms,
        ),
        shutdown_grace: problems.duration(
            "server.shutdown_grace_ms".into(),
            raw.server.shutdown_grace_ms,
        ),
        max_connections: raw.server.max_connections.max(1),
        listen_backlog: raw.server.listen_backlog.clamp(1, 65_535),
        client_write_timeout: problems.positive(
            "server.client_write_timeout_ms".into(),
            raw.server.client_write_timeout_ms,
        ),
        client_request_timeout: problems.positive(
            "server.client_request_timeout_ms".into(),
            raw.server.client_request_timeout_ms,
        ),
        operation_limits: subplex_protocol::OperationLimits {
            max_operations: problems.at_least_one(
                "server.max_operations_per_connection",
                raw.server.max_operations_per_connection,
            ),
            max_id_bytes: problems.at_least_one(
                "server.max_operation_id_bytes",
                raw.server.max_operation_id_bytes,
            ),
        },
        cors: validate_cors(&raw.server.cors, &mut problems),
        allowed_origins: validate_allowed_origins(&raw.server, &mut problems),
        sse_single_connection: validate_sse_single_connection(&raw.server, &mut problems),
        multipart_heartbeat_interval: problems.positive(
            "server.multipart.heartbeat_interval_ms".into(),
            raw.server.multipart.heartbeat_interval_ms,
        ),
        tls: validate_listener_tls(&raw.server, base_dir, &mut problems),
        sse_resume: validate_sse_resume(&raw.server, &mut problems),
    };

    let limits = validate_hook_limits(&raw.hooks, &mut problems);
    let mut upstreams = Vec::new();
    let mut upstream_index = HashMap::new();
    for (name, upstream) in &raw.upstreams {
        if let Some(config) = validate_upstream(name, upstream, base_dir, limits, &mut problems) {
            upstream_index.insert(name.clone(), upstreams.len());
            upstreams.push(config);
        }
    }

    refuse_cookies_from_any_origin(&server.allowed_origins, &upstreams, &mut problems);

    if raw.routes.is_empty() {
        problems.add(
            "routes",
            "no routes: add a [[routes]] table with a path and an upstream",
        );
    }
    let mut routes = Vec::new();
    let mut seen_paths: HashMap<&str, usize> = HashMap::new();
    for (i, route) in raw.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        if !route.path.starts_with('/') {
            problems.add(
                format!("{key}.path"),
                format!("\"{}\" must start with \"/\"", route.path),
            );
        } else if route.path.contains(['?', '#']) {
            problems.add(
                format!("{key}.path"),
                format!(
                    "\"{}\" must be a plain path without query or fragment",
                    route.path
                ),
            );
        } else if crate::routes::RESERVED_PATHS.contains(&route.path.as_str()) {
            problems.add(
                format!("{key}.path"),
                format!(
                    "\"{}\" is answered by the gateway itself (reserved: {}); choose another path",
                    route.path,
                    crate::routes::RESERVED_PATHS.join(", ")
                ),
            );
        }
        if let Some(first) = seen_paths.insert(&route.path, i) {
            problems.add(
                format!("{key}.path"),
                format!(
                    "\"{}\" is already routed by routes[{first}]; paths must be unique",
                    route.path
                ),
            );
        }
        let route_hooks = route.hooks.as_ref().and_then(|file| {
            load_hooks(
                base_dir,
                file,
                limits,
                format!("{key}.hooks"),
                &mut problems,
            )
        });
        match upstream_index.get(&route.upstream) {
            Some(&upstream) => routes.push(RouteConfig {
                // A route's own script changes what its upstream's clients run: it is
                // part of the upstream's settings (see below for the limits).
                hooks: route_hooks
                    .inspect(|script| {
                        let fingerprint = &mut upstreams[upstream].settings.fingerprint;
                        *fingerprint =
                            fingerprint.with([route.path.as_bytes(), script.source().as_bytes()]);
                    })
                    .or_else(|| upstreams[upstream].hooks.clone()),
                path: route.path.clone(),
                upstream,
            }),
            None if raw.upstreams.contains_key(&route.upstream) => {} // Reported under upstreams.
            None => {
                let known: Vec<&str> = raw.upstreams.keys().map(String::as_str).collect();
                problems.add(
                    format!("{key}.upstream"),
                    format!(
                        "no upstream named \"{}\"; define [upstreams.{}] (defined: {})",
                        route.upstream,
                        route.upstream,
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
    }

    // What an upstream's clients run is part of its settings: the `[hooks]` limits too,
    // besides the route scripts folded in above. A reload that changes either rebuilds
    // the upstream, so no client keeps a connection set up under the old scripts.
    let limits_text = format!("{limits:?}");
    for upstream in &mut upstreams {
        upstream.settings.fingerprint =
            upstream.settings.fingerprint.with([limits_text.as_bytes()]);
    }

    let admin_listen = validate_admin(&raw.admin, server.listen, &mut problems);

    if problems.0.is_empty() {
        Ok(Config {
            server,
            upstreams,
            routes,
            admin_listen,
        })
    } else {
        Err(ConfigError::Invalid {
            file: file.to_owned(),
            problems: problems.0,
        })
    }
}

/// `[admin]`: its address when enabled. It may not share the main listener's address
/// (port 0 excepted: each bind picks its own port).
fn validate_admin(
    raw: &super::RawAdmin,
    main_listen: SocketAddr,
    problems: &mut Problems,
) -> Option<SocketAddr> {
    if !raw.enabled {
        return None;
    }
    let Some(listen) = resolve_listen(&raw.listen) else {
        problems.add(
            "admin.listen",
            format!(
                "\"{}\" is not an address with a port, like \"127.0.0.1:9090\"",
                raw.listen
            ),
        );
        return None;
    };
    if listen == main_listen && listen.port() != 0 {
        problems.add(
            "admin.listen",
            format!("{listen} is server.listen too; give the admin listener its own port"),
        );
    }
    Some(listen)
}

/// Reads and compiles a `hooks` script named at `key`.
fn load_hooks(
    base_dir: &Path,
    file: &str,
    limits: Limits,
    key: String,
    problems: &mut Problems,
) -> Option<Arc<subplex_hooks::HookScript>> {
    match subplex_hooks::HookScript::load(&base_dir.join(file), limits) {
        Ok(script) => Some(Arc::new(script)),
        Err(reason) => {
            problems.add(key, reason.to_string());
            None
        }
    }
}

/// The most operations one hook call may be allowed: a call runs on a worker thread of
/// the gateway, and ten million operations take about half a second there.
const MAX_HOOK_OPERATIONS: u64 = 10_000_000;

/// `[hooks]`: each limit must be at least 1 and at most a bound that keeps one call from
/// stalling a worker thread or exhausting memory.
fn validate_hook_limits(raw: &RawHooks, problems: &mut Problems) -> Limits {
    let mut bounded = |field: &str, value: u64, max: u64, why: &str| -> u64 {
        let key = format!("hooks.{field}");
        if value == 0 {
            problems.add(key, "must be greater than 0");
            1
        } else if value > max {
            problems.add(key, format!("must be at most {max} ({why})"));
            max
        } else {
            value
        }
    };
    let memory = "one value of a script must stay small";
    let depth = "deeper nesting could overflow the stack of a worker thread";
    let size = |value: u64| value as usize;
    Limits {
        max_operations: bounded(
            "max_operations",
            raw.max_operations,
            MAX_HOOK_OPERATIONS,
            "a call must not stall a worker thread for more than about half a second",
        ),
        max_call_depth: size(bounded(
            "max_call_depth",
            raw.max_call_depth as u64,
            256,
            depth,
        )),
        max_expr_depth: size(bounded(
            "max_expr_depth",
            raw.max_expr_depth as u64,
            256,
            depth,
        )),
        max_string_size: size(bounded(
            "max_string_size",
            raw.max_string_size as u64,
            16 * 1024 * 1024,
            memory,
        )),
        max_array_size: size(bounded(
            "max_array_size",
            raw.max_array_size as u64,
            1_000_000,
            memory,
        )),
        max_map_size: size(bounded(
            "max_map_size",
            raw.max_map_size as u64,
            1_000_000,
            memory,
        )),
    }
}

/// An IP address with a port, or a host name that resolves to one (`localhost:4000`).
fn resolve_listen(listen: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    listen
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| listen.to_socket_addrs().ok()?.next())
}

/// Checks a list of origins (`"*"` or `scheme://host[:port]`); true when it holds `"*"`.
fn check_origins(key: &str, origins: &[String], problems: &mut Problems) -> bool {
    for (i, origin) in origins.iter().enumerate() {
        if origin == "*" {
            continue;
        }
        let valid = url::Url::parse(origin)
            .map(|url| url.origin().ascii_serialization() == *origin)
            .unwrap_or(false);
        if !valid {
            problems.add(
                format!("{key}[{i}]"),
                format!("\"{origin}\" is not an origin; write scheme://host[:port] with no path or trailing slash, or \"*\""),
            );
        }
    }
    origins.iter().any(|o| o == "*")
}

fn validate_allowed_origins(raw: &RawServer, problems: &mut Problems) -> AllowedOrigins {
    let any_origin = check_origins("server.allowed_origins", &raw.allowed_origins, problems);
    AllowedOrigins {
        any_origin,
        origins: raw
            .allowed_origins
            .iter()
            .filter(|o| *o != "*")
            .cloned()
            .collect(),
    }
}

/// A cookie is sent by the browser whichever page opens the connection, and a WebSocket
/// upgrade is not subject to CORS: with a cookie in the upstream identity and every origin
/// allowed, any site a user visits could subscribe with the user's session (cross-site
/// WebSocket hijacking). The same holds for SSE and multipart `GET`s.
fn refuse_cookies_from_any_origin(
    allowed: &AllowedOrigins,
    upstreams: &[UpstreamConfig],
    problems: &mut Problems,
) {
    if !allowed.any_origin {
        return;
    }
    for upstream in upstreams {
        if upstream.keyed_headers.contains(&http::header::COOKIE) {
            let name = &upstream.settings.name;
            let field = if upstream.forward_headers.contains(&http::header::COOKIE) {
                "forward_headers"
            } else {
                "security_context"
            };
            problems.add(
                "server.allowed_origins",
                format!(
                    "allows any origin (\"*\", the default), but upstreams.{name}.{field} uses the \"cookie\" header: \
                     any web site could open subscriptions with its visitors' cookies (cross-site WebSocket hijacking); \
                     list the origins of your own pages instead, e.g. allowed_origins = [\"https://app.example.com\"]"
                ),
            );
        }
    }
}

fn validate_sse_single_connection(
    raw: &RawServer,
    problems: &mut Problems,
) -> SseSingleConnectionConfig {
    let raw = &raw.sse_single_connection;
    let key = |field: &str| format!("server.sse_single_connection.{field}");
    for (field, value) in [
        ("max_streams", raw.max_streams),
        ("max_operations_per_stream", raw.max_operations_per_stream),
    ] {
        if value == 0 {
            problems.add(key(field), "must be greater than 0");
        }
    }
    SseSingleConnectionConfig {
        token_ttl: problems.positive(key("token_ttl_ms"), raw.token_ttl_ms),
        max_streams: raw.max_streams,
        max_operations_per_stream: raw.max_operations_per_stream,
    }
}

fn validate_cors(raw: &RawCors, problems: &mut Problems) -> CorsConfig {
    let any_origin = check_origins("server.cors.allow_origins", &raw.allow_origins, problems);
    if any_origin && raw.allow_credentials {
        problems.add(
            "server.cors.allow_credentials",
            "browsers refuse credentials with a \"*\" origin; list the allowed origins instead",
        );
    }
    CorsConfig {
        allow_origins: raw.allow_origins.clone(),
        any_origin,
        allow_credentials: raw.allow_credentials,
    }
}

fn validate_upstream(
    name: &str,
    raw: &RawUpstream,
    base_dir: &Path,
    limits: Limits,
    problems: &mut Problems,
) -> Option<UpstreamConfig> {
    let key = |field: &str| format!("upstreams.{name}.{field}");
    let before = problems.0.len();

    let http_url = match url::Url::parse(&raw.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
        Ok(url) => {
            problems.add(
                key("url"),
                format!(
                    "scheme \"{}\" is not http or https; put WebSocket URLs in ws_url",
                    url.scheme()
                ),
            );
            None
        }
        Err(err) => {
            // Not echoed: a URL can carry credentials.
            problems.add(key("url"), format!("is not a URL: {err}"));
            None
        }
    };
    let ws_url = match (&raw.ws_url, &http_url) {
        (Some(ws), _) => match url::Url::parse(ws) {
            Ok(url) if matches!(url.scheme(), "ws" | "wss") => Some(url),
            Ok(url) => {
                problems.add(
                    key("ws_url"),
                    format!("scheme \"{}\" is not ws or wss", url.scheme()),
                );
                None
            }
            Err(err) => {
                problems.add(key("ws_url"), format!("is not a URL: {err}"));
                None
            }
        },
        (None, Some(http)) => {
            let mut ws = http.clone();
            let scheme = if http.scheme() == "https" {
                "wss"
            } else {
                "ws"
            };
            // http→ws and https→wss are always valid scheme changes.
            ws.set_scheme(scheme).ok();
            Some(ws)
        }
        (None, None) => None,
    };
    let protocol = match UpstreamProtocol::from_config_name(&raw.protocol) {
        Some(protocol) => Some(protocol),
        None => {
            problems.add(
                key("protocol"),
                format!(
                    "\"{}\" is not a protocol; use \"auto\" (probe the upstream), \"graphql-transport-ws\" (graphql-ws library: Yoga, Apollo Server), \"graphql-ws\" (legacy subscriptions-transport-ws, Hasura) or \"sse\" (GraphQL over SSE)",
                    raw.protocol
                ),
            );
            None
        }
    };
    let sse_method = match raw.sse_method.to_ascii_uppercase().as_str() {
        "POST" => Some(SseMethod::Post),
        "GET" => Some(SseMethod::Get),
        _ => {
            problems.add(
                key("sse_method"),
                format!("\"{}\" is not \"POST\" or \"GET\"", raw.sse_method),
            );
            None
        }
    };

    let header_list = |field: &str, names: &[String], problems: &mut Problems, forwarded: bool| {
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let lower = name.to_ascii_lowercase();
            match HeaderName::from_bytes(lower.as_bytes()) {
                Ok(header) => {
                    if forwarded
                        && (UNFORWARDABLE.contains(&lower.as_str())
                            || lower.starts_with("sec-websocket-"))
                    {
                        problems.add(
                            format!("{}[{i}]", key(field)),
                            format!("\"{name}\" belongs to one hop or to the WebSocket handshake and cannot be forwarded"),
                        );
                    } else if !out.contains(&header) {
                        out.push(header);
                    }
                }
                Err(_) => problems.add(
                    format!("{}[{i}]", key(field)),
                    format!("\"{name}\" is not a valid header name"),
                ),
            }
        }
        out
    };
    let security_context = header_list("security_context", &raw.security_context, problems, false);
    let forward_headers = header_list("forward_headers", &raw.forward_headers, problems, true);
    let mut keyed_headers = security_context;
    for name in &forward_headers {
        if !keyed_headers.contains(name) {
            keyed_headers.push(name.clone());
        }
    }

    let idle_timeout = problems.positive(key("idle_timeout_ms"), raw.idle_timeout_ms);
    let connect_timeout = problems.positive(key("connect_timeout_ms"), raw.connect_timeout_ms);
    let ack_timeout = problems.positive(key("ack_timeout_ms"), raw.ack_timeout_ms);
    let keepalive_interval =
        problems.positive(key("keepalive_interval_ms"), raw.keepalive_interval_ms);
    let keepalive_timeout =
        problems.positive(key("keepalive_timeout_ms"), raw.keepalive_timeout_ms);
    if raw.max_message_bytes < 1024 {
        problems.add(key("max_message_bytes"), "must be at least 1024");
    }
    if raw.subscriber_queue == 0 {
        problems.add(key("subscriber_queue"), "must be greater than 0");
    }
    if raw.subscriber_queue_bytes == 0 {
        problems.add(key("subscriber_queue_bytes"), "must be greater than 0");
    }
    if raw.max_response_bytes < 1024 {
        problems.add(key("max_response_bytes"), "must be at least 1024");
    }
    let request_timeout = problems.positive(key("request_timeout_ms"), raw.request_timeout_ms);
    let reconnect = ReconnectSettings {
        initial: problems.positive(key("reconnect.initial_ms"), raw.reconnect.initial_ms),
        max: problems.positive(key("reconnect.max_ms"), raw.reconnect.max_ms),
        give_up_after: Duration::from_millis(raw.reconnect.give_up_after_ms),
    };
    if raw.reconnect.max_ms < raw.reconnect.initial_ms {
        problems.add(
            key("reconnect.max_ms"),
            format!(
                "{} is below reconnect.initial_ms ({}); the largest delay cannot be smaller than the first",
                raw.reconnect.max_ms, raw.reconnect.initial_ms
            ),
        );
    }

    let ca_file = raw.tls_ca_file.as_ref().map(|file| base_dir.join(file));
    let tls = match super::tls::upstream_tls(ca_file.as_deref()) {
        Ok(tls) => Some(tls),
        Err(reason) => {
            problems.add(key("tls_ca_file"), reason);
            None
        }
    };

    let hooks = raw
        .hooks
        .as_ref()
        .and_then(|file| load_hooks(base_dir, file, limits, key("hooks"), problems));
    let init_template = raw.init_payload.as_ref().and_then(|table| {
        // TOML tables are JSON-compatible except dates, which serialise as strings.
        let json = serde_json::to_value(table).unwrap_or_default();
        match subplex_hooks::InitTemplate::parse(&json) {
            Ok(template) => Some(template),
            Err(err) => {
                problems.add(format!("{}.{}", key("init_payload"), err.key), err.reason);
                None
            }
        }
    });

    if problems.0.len() != before {
        return None;
    }
    let tls = tls?;
    let protocol = protocol?;
    // For "auto" the dialect is a placeholder until the probe replaces it (ProbingPool).
    let dialect = match protocol {
        UpstreamProtocol::GraphqlWs => Subprotocol::GraphqlWs,
        _ => Subprotocol::GraphqlTransportWs,
    };
    let http_url = http_url?;
    let mut settings = UpstreamSettings::new(name, ws_url?, dialect);
    settings.configured_protocol = protocol;
    settings.http_url = http_url.clone();
    settings.sse_method = sse_method?;
    settings.tls = Some(tls.websocket);
    settings.idle_timeout = idle_timeout;
    settings.connect_timeout = connect_timeout;
    settings.ack_timeout = ack_timeout;
    settings.keepalive_interval = keepalive_interval;
    settings.keepalive_timeout = keepalive_timeout;
    settings.max_message_bytes = raw.max_message_bytes;
    settings.subscriber_queue = raw.subscriber_queue;
    settings.subscriber_queue_bytes = raw.subscriber_queue_bytes;
    settings.dedup = raw.dedup;
    settings.reconnect = reconnect;
    settings.fingerprint = settings_fingerprint(name, raw, ca_file.as_deref(), hooks.as_deref());
    Some(UpstreamConfig {
        settings,
        http_url,
        keyed_headers,
        forward_headers,
        request_timeout,
        max_response_bytes: raw.max_response_bytes,
        http_tls: tls.http,
        hooks,
        init_template,
    })
}

/// Everything configured for one upstream: its name, every key of its table (defaults
/// included, so writing out a default changes nothing), and the contents of the files it
/// names, so a reload notices a new CA certificate or hook script behind the same name.
/// The script's text is the one it was compiled from. Unreadable files were reported by
/// validation before this runs.
fn settings_fingerprint(
    name: &str,
    raw: &RawUpstream,
    ca_file: Option<&Path>,
    hooks: Option<&subplex_hooks::HookScript>,
) -> SettingsFingerprint {
    // Serialising plain strings, numbers and lists cannot fail.
    let table = serde_json::to_vec(raw).unwrap_or_default();
    let ca = ca_file
        .map(|path| std::fs::read(path).unwrap_or_default())
        .unwrap_or_default();
    let hooks = hooks.map_or("", |script| script.source());
    SettingsFingerprint::of([name.as_bytes(), &table, &ca, hooks.as_bytes()])
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(text: &str) -> String {
        Config::parse(text, "gateway.toml").unwrap_err().to_string()
    }

    const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:4000"
        [upstreams.chat]
        url = "http://127.0.0.1:4001/graphql"
        protocol = "graphql-ws"
        security_context = ["Authorization", "X-Tenant"]
        forward_headers = ["authorization"]
        idle_timeout_ms = 1500
        [[routes]]
        path = "/graphql"
        upstream = "chat"
    "#;

    #[test]
    fn good_config_derives_ws_url_and_lowercases_headers() {
        let config = Config::parse(GOOD, "gateway.toml").unwrap();
        let chat = &config.upstreams[0];
        assert_eq!(chat.settings.ws_url.as_str(), "ws://127.0.0.1:4001/graphql");
        assert_eq!(
            chat.settings.protocol,
            subplex_protocol::Subprotocol::GraphqlWs
        );
        assert_eq!(chat.settings.idle_timeout.as_millis(), 1500);
        assert_eq!(chat.keyed_headers, ["authorization", "x-tenant"]);
        assert_eq!(config.routes[0].path, "/graphql");
    }

    #[test]
    fn admin_is_off_by_default_and_needs_its_own_address() {
        assert_eq!(
            Config::parse(GOOD, "gateway.toml").unwrap().admin_listen,
            None
        );
        let enabled = format!("{GOOD}\n[admin]\nenabled = true\n");
        assert_eq!(
            Config::parse(&enabled, "gateway.toml")
                .unwrap()
                .admin_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        let same = format!("{GOOD}\n[admin]\nenabled = true\nlisten = \"127.0.0.1:4000\"\n");
        assert_eq!(
            problems(&same),
            "gateway.toml: invalid configuration:\n  admin.listen: 127.0.0.1:4000 is server.listen too; give the admin listener its own port"
        );
        let bad = format!("{GOOD}\n[admin]\nenabled = true\nlisten = \"9090\"\n");
        assert!(
            problems(&bad).contains("admin.listen: \"9090\" is not an address with a port"),
            "{}",
            problems(&bad)
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("idle_timeout_ms = 1500", "idle_timeout = 1500");
        let err = problems(&text);
        assert!(err.starts_with("gateway.toml: "), "{err}");
        assert!(err.contains("unknown field `idle_timeout`"), "{err}");
        assert!(err.contains("line 9"), "{err}");
    }

    #[test]
    fn the_listen_backlog_defaults_to_4096_and_must_fit_listen() {
        let config = Config::parse(GOOD, "gateway.toml").unwrap();
        assert_eq!(config.server.listen_backlog, 4096);
        for bad in ["0", "70000"] {
            let text = GOOD.replacen("[server]", &format!("[server]\nlisten_backlog = {bad}"), 1);
            let err = problems(&text);
            assert!(
                err.contains("server.listen_backlog: must be between 1 and 65535"),
                "{err}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = problems(
            r#"
            [server]
            listen = "localhost"
            [upstreams.a]
            url = "ftp://x"
            protocol = "mqtt"
            forward_headers = ["Connection", "sec-websocket-key", "bad header"]
            [upstreams.b]
            url = "http://127.0.0.1:1/graphql"
            ws_url = "http://nope"
            [[routes]]
            path = "graphql"
            upstream = "missing"
            [[routes]]
            path = "graphql"
            upstream = "b"
            "#,
        );
        for expected in [
            "server.listen: \"localhost\" is not an address with a port",
            "upstreams.a.url: scheme \"ftp\" is not http or https",
            "upstreams.a.protocol: \"mqtt\" is not a protocol",
            "upstreams.a.forward_headers[0]: \"Connection\" belongs to one hop",
            "upstreams.a.forward_headers[1]: \"sec-websocket-key\" belongs to one hop",
            "upstreams.a.forward_headers[2]: \"bad header\" is not a valid header name",
            "upstreams.b.ws_url: scheme \"http\" is not ws or wss",
            "routes[0].path: \"graphql\" must start with \"/\"",
            "routes[0].upstream: no upstream named \"missing\"; define [upstreams.missing] (defined: a, b)",
            "routes[1].path: \"graphql\" is already routed by routes[0]",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn the_probe_paths_cannot_be_routed() {
        let err = problems(
            "[upstreams.a]\nurl = \"http://127.0.0.1:1/graphql\"\n\
             [[routes]]\npath = \"/healthz\"\nupstream = \"a\"\n\
             [[routes]]\npath = \"/readyz\"\nupstream = \"a\"\n",
        );
        for index in [0, 1] {
            let path = ["/healthz", "/readyz"][index];
            let expected = format!(
                "routes[{index}].path: \"{path}\" is answered by the gateway itself (reserved: /healthz, /readyz, /metrics)"
            );
            assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn no_routes_and_a_bad_sse_method_are_explained() {
        let err = problems(
            "[upstreams.a]\nurl = \"http://127.0.0.1:1/\"\nprotocol = \"sse\"\nsse_method = \"PUT\"\n",
        );
        assert!(err.contains("routes: no routes"), "{err}");
        assert!(!err.contains("upstreams.a.protocol"), "{err}");
        assert!(
            err.contains("upstreams.a.sse_method: \"PUT\" is not \"POST\" or \"GET\""),
            "{err}"
        );
    }

    #[test]
    fn protocol_defaults_to_auto_and_sse_method_to_post() {
        let text = GOOD.replace("protocol = \"graphql-ws\"\n", "");
        let config = Config::parse(&text, "gateway.toml").unwrap();
        let settings = &config.upstreams[0].settings;
        assert_eq!(
            settings.configured_protocol,
            subplex_upstream::UpstreamProtocol::Auto
        );
        assert_eq!(settings.sse_method, subplex_upstream::SseMethod::Post);
        assert_eq!(settings.http_url.as_str(), "http://127.0.0.1:4001/graphql");
        let text = GOOD.replace(
            "protocol = \"graphql-ws\"",
            "protocol = \"auto\"\nsse_method = \"get\"",
        );
        let config = Config::parse(&text, "gateway.toml").unwrap();
        assert_eq!(
            config.upstreams[0].settings.sse_method,
            subplex_upstream::SseMethod::Get
        );
    }

    #[test]
    fn durations_and_session_limits_are_bounded() {
        let err = problems(&GOOD.replace(
            "listen = \"127.0.0.1:4000\"",
            "shutdown_grace_ms = 9223372036854775807\nclient_write_timeout_ms = 0\n\
             client_request_timeout_ms = 0\nmax_operations_per_connection = 0",
        ));
        assert!(
            err.contains(
                "server.shutdown_grace_ms: must be at most 86400000 (one day, in milliseconds)"
            ),
            "{err}"
        );
        assert!(
            err.contains("server.client_write_timeout_ms: must be greater than 0"),
            "{err}"
        );
        assert!(
            err.contains("server.client_request_timeout_ms: must be greater than 0"),
            "{err}"
        );
        assert!(
            err.contains("server.max_operations_per_connection: must be greater than 0"),
            "{err}"
        );
        let err = problems(&GOOD.replace("idle_timeout_ms = 1500", "idle_timeout_ms = 86400001"));
        assert!(
            err.contains("upstreams.chat.idle_timeout_ms: must be at most"),
            "{err}"
        );

        let config = Config::parse(GOOD, "gateway.toml").unwrap();
        assert_eq!(config.server.client_write_timeout.as_millis(), 10_000);
        assert_eq!(config.server.client_request_timeout.as_millis(), 30_000);
        assert_eq!(config.server.operation_limits.max_operations, 200);
        assert_eq!(config.server.operation_limits.max_id_bytes, 128);
    }

    #[test]
    fn cors_origins_are_checked() {
        let err = problems(&GOOD.replace(
            "[upstreams.chat]",
            "[server.cors]\nallow_origins = [\"*\", \"https://app.example.com/\"]\nallow_credentials = true\n[upstreams.chat]",
        ));
        assert!(
            err.contains(
                "server.cors.allow_origins[1]: \"https://app.example.com/\" is not an origin"
            ),
            "{err}"
        );
        assert!(
            err.contains("server.cors.allow_credentials: browsers refuse credentials"),
            "{err}"
        );
        let config = Config::parse(GOOD, "gateway.toml").unwrap();
        assert_eq!(
            config.server.cors.allow_origin("https://a.example"),
            Some("*")
        );
    }

    #[test]
    fn allowed_origins_are_checked_and_default_to_any() {
        let config = Config::parse(GOOD, "gateway.toml").unwrap();
        assert!(config.server.allowed_origins.any_origin);
        assert!(config
            .server
            .allowed_origins
            .allows(b"https://anywhere.example"));
        let config = Config::parse(
            &GOOD.replace(
                "listen = \"127.0.0.1:4000\"",
                "listen = \"127.0.0.1:4000\"\nallowed_origins = [\"https://app.example.com\"]",
            ),
            "gateway.toml",
        )
        .unwrap();
        let allowed = &config.server.allowed_origins;
        assert!(allowed.allows(b"https://app.example.com"));
        assert!(!allowed.allows(b"https://app.example.com.evil.example"));
        assert!(!allowed.allows(b"null"));
        let err = problems(&GOOD.replace(
            "listen = \"127.0.0.1:4000\"",
            "listen = \"127.0.0.1:4000\"\nallowed_origins = [\"app.example.com\"]",
        ));
        assert!(
            err.contains("server.allowed_origins[0]: \"app.example.com\" is not an origin"),
            "{err}"
        );
    }

    #[test]
    fn a_keyed_cookie_needs_explicit_origins() {
        for (field, list) in [
            (
                "forward_headers",
                "forward_headers = [\"authorization\", \"Cookie\"]",
            ),
            ("security_context", "security_context = [\"cookie\"]"),
        ] {
            let text = GOOD
                .replace("security_context = [\"Authorization\", \"X-Tenant\"]\n", "")
                .replace("forward_headers = [\"authorization\"]", list);
            let err = problems(&text);
            assert!(
                err.starts_with("gateway.toml: invalid configuration:"),
                "{err}"
            );
            assert!(
                err.contains(&format!(
                    "server.allowed_origins: allows any origin (\"*\", the default), but upstreams.chat.{field} uses the \"cookie\" header"
                )),
                "{err}"
            );
            assert!(
                err.contains("allowed_origins = [\"https://app.example.com\"]"),
                "{err}"
            );
            let fixed = text.replace(
                "listen = \"127.0.0.1:4000\"",
                "listen = \"127.0.0.1:4000\"\nallowed_origins = [\"https://app.example.com\"]",
            );
            Config::parse(&fixed, "gateway.toml").unwrap();
        }
    }

    #[test]
    fn transport_limits_are_checked() {
        let config = Config::parse(GOOD, "gateway.toml").unwrap();
        let single = &config.server.sse_single_connection;
        assert_eq!(single.token_ttl.as_millis(), 10_000);
        assert_eq!(single.max_streams, 10_000);
        assert_eq!(single.max_operations_per_stream, 100);
        assert_eq!(
            config.server.multipart_heartbeat_interval.as_millis(),
            5_000
        );
        let err = problems(&GOOD.replace(
            "[upstreams.chat]",
            "[server.sse_single_connection]\ntoken_ttl_ms = 0\nmax_streams = 0\nmax_operations_per_stream = 0\n\
             [server.multipart]\nheartbeat_interval_ms = 100000000000\n[upstreams.chat]",
        ));
        for expected in [
            "server.sse_single_connection.token_ttl_ms: must be greater than 0",
            "server.sse_single_connection.max_streams: must be greater than 0",
            "server.sse_single_connection.max_operations_per_stream: must be greater than 0",
            "server.multipart.heartbeat_interval_ms: must be at most 86400000 (one day, in milliseconds)",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn unparsable_urls_are_not_echoed_and_https_derives_wss() {
        let err =
            problems(&GOOD.replace("http://127.0.0.1:4001/graphql", "http://user:hunter2@[::1"));
        assert!(err.contains("upstreams.chat.url: is not a URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let config = Config::parse(
            &GOOD.replace(
                "http://127.0.0.1:4001/graphql",
                "https://127.0.0.1:4001/graphql",
            ),
            "gateway.toml",
        )
        .unwrap();
        assert_eq!(config.upstreams[0].settings.ws_url.scheme(), "wss");
        assert!(config.upstreams[0].settings.tls.is_some());
    }

    #[test]
    fn a_hooks_script_that_cannot_be_read_names_key_and_file() {
        let err = problems(&GOOD.replace(
            "idle_timeout_ms = 1500",
            "idle_timeout_ms = 1500\nhooks = \"no-such-hooks.rhai\"",
        ));
        assert!(
            err.contains("upstreams.chat.hooks: cannot read no-such-hooks.rhai: "),
            "{err}"
        );
    }

    #[test]
    fn hook_limits_init_templates_and_route_hooks_are_checked_with_their_keys() {
        let err = problems(
            &(GOOD
                .replace(
                    "idle_timeout_ms = 1500",
                    "idle_timeout_ms = 1500\ninit_payload = { headers = { Authorization = \"{header.authorization\" }, x = \"{env.HOME}\" }",
                )
                .replace("upstream = \"chat\"", "upstream = \"chat\"\nhooks = \"no-such-route.rhai\"")
                + "\n[hooks]\nmax_operations = 0\nmax_call_depth = 100000\n"),
        );
        for expected in [
            "hooks.max_operations: must be greater than 0",
            "hooks.max_call_depth: must be at most 256",
            "upstreams.chat.init_payload.headers.Authorization: \"{header.authorization\": a `{` without its `}`",
            "routes[0].hooks: cannot read no-such-route.rhai: ",
        ] {
            assert!(err.contains(expected), "{expected}\n{err}");
        }
        let err = problems(&GOOD.replace(
            "idle_timeout_ms = 1500",
            "init_payload = { x = \"{env.HOME}\" }",
        ));
        assert!(
            err.contains(
                "upstreams.chat.init_payload.x: \"{env.HOME}\": `{env.HOME}` is not a placeholder"
            ),
            "{err}"
        );
        let err = problems(&format!("{GOOD}\n[hooks]\nmax_stack = 1\n"));
        assert!(err.contains("unknown field `max_stack`"), "{err}");
    }

    #[test]
    fn a_route_script_overrides_the_upstreams_and_limits_reach_the_scripts() {
        let dir = std::env::temp_dir().join(format!("subplex-route-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("up.rhai"), "fn on_next(ctx, p) { p }").unwrap();
        std::fs::write(dir.join("route.rhai"), "fn on_subscribe(ctx, r) { r }").unwrap();
        let text = format!(
            "{}\n[[routes]]\npath = \"/own\"\nupstream = \"chat\"\nhooks = \"route.rhai\"\n",
            GOOD.replace("idle_timeout_ms = 1500", "hooks = \"up.rhai\"")
        );
        let file = dir.join("gateway.toml");
        let config = Config::parse(&text, &file.display().to_string()).unwrap();
        let script = |i: usize| config.routes[i].hooks.as_ref().unwrap().file().to_owned();
        assert!(script(0).ends_with("up.rhai"), "{}", script(0));
        assert!(script(1).ends_with("route.rhai"), "{}", script(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_ca_file_problems_name_the_file() {
        let err = problems(&GOOD.replace(
            "idle_timeout_ms = 1500",
            "idle_timeout_ms = 1500\ntls_ca_file = \"no-such-ca.pem\"",
        ));
        assert!(
            err.contains("upstreams.chat.tls_ca_file: cannot read \"no-such-ca.pem\""),
            "{err}"
        );
        let empty =
            std::env::temp_dir().join(format!("subplex-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = problems(&GOOD.replace(
            "idle_timeout_ms = 1500",
            &format!(
                "idle_timeout_ms = 1500\ntls_ca_file = {:?}",
                empty.display().to_string()
            ),
        ));
        let _ = std::fs::remove_file(&empty);
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }

    #[test]
    fn sse_resume_is_off_by_default_and_its_bounds_are_checked_when_on() {
        let config = Config::parse(GOOD, "gateway.toml").unwrap();
        assert_eq!(config.server.sse_resume, None);
        let on = GOOD.replace(
            "[upstreams.chat]",
            "[server.sse]\nresume_window_ms = 5000\n[upstreams.chat]",
        );
        let config = Config::parse(&on, "gateway.toml").unwrap();
        assert_eq!(
            config.server.sse_resume,
            Some(crate::config::SseResumeConfig {
                window: std::time::Duration::from_millis(5000),
                buffer_events: 100,
                buffer_bytes: 256 * 1024,
            })
        );
        let err = problems(&GOOD.replace(
            "[upstreams.chat]",
            "[server.sse]\nresume_window_ms = 5000\nresume_buffer_events = 0\nresume_buffer_bytes = 0\n[upstreams.chat]",
        ));
        assert!(
            err.contains("server.sse.resume_buffer_events: must be greater than 0"),
            "{err}"
        );
        assert!(
            err.contains("server.sse.resume_buffer_bytes: must be greater than 0"),
            "{err}"
        );
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let err = problems(&GOOD.replace("idle_timeout_ms = 1500", "idle_timeout_ms = 0"));
        assert!(
            err.contains("upstreams.chat.idle_timeout_ms: must be greater than 0"),
            "{err}"
        );
    }

    #[test]
    fn reconnect_keys_have_defaults_and_are_checked() {
        let config = Config::parse(GOOD, "gateway.toml").unwrap();
        let reconnect = config.upstreams[0].settings.reconnect;
        assert_eq!(reconnect.initial.as_millis(), 100);
        assert_eq!(reconnect.max.as_millis(), 5000);
        assert_eq!(reconnect.give_up_after.as_millis(), 30000);

        let tuned = GOOD.replace(
            "idle_timeout_ms = 1500",
            "idle_timeout_ms = 1500\n[upstreams.chat.reconnect]\ninitial_ms = 50\nmax_ms = 800\ngive_up_after_ms = 0",
        );
        let reconnect = Config::parse(&tuned, "gateway.toml").unwrap().upstreams[0]
            .settings
            .reconnect;
        assert_eq!(reconnect.initial.as_millis(), 50);
        assert_eq!(reconnect.max.as_millis(), 800);
        assert_eq!(reconnect.give_up_after.as_millis(), 0);

        let err = problems(&GOOD.replace(
            "idle_timeout_ms = 1500",
            "idle_timeout_ms = 1500\n[upstreams.chat.reconnect]\ninitial_ms = 0\nmax_ms = 50\nbackoff = 2",
        ));
        assert!(err.contains("unknown field `backoff`"), "{err}");
        let err = problems(&GOOD.replace(
            "idle_timeout_ms = 1500",
            "idle_timeout_ms = 1500\n[upstreams.chat.reconnect]\ninitial_ms = 0\nmax_ms = 50",
        ));
        assert!(
            err.contains("upstreams.chat.reconnect.initial_ms: must be greater than 0"),
            "{err}"
        );
        let err = problems(&GOOD.replace(
            "idle_timeout_ms = 1500",
            "idle_timeout_ms = 1500\n[upstreams.chat.reconnect]\ninitial_ms = 500\nmax_ms = 50",
        ));
        assert!(
            err.contains("gateway.toml: invalid configuration:\n  upstreams.chat.reconnect.max_ms: 50 is below reconnect.initial_ms (500)"),
            "{err}"
        );
    }

    #[test]
    fn the_settings_fingerprint_changes_with_any_upstream_key_and_only_then() {
        let fingerprint = |text: &str| {
            Config::parse(text, "gateway.toml").unwrap().upstreams[0]
                .settings
                .fingerprint
        };
        let base = fingerprint(GOOD);
        assert_eq!(base, fingerprint(GOOD));
        // A default written out is the same setting; a route or [server] change is not
        // the upstream's.
        assert_eq!(
            base,
            fingerprint(&GOOD.replace(
                "idle_timeout_ms = 1500",
                "idle_timeout_ms = 1500\nconnect_timeout_ms = 5000"
            ))
        );
        assert_eq!(
            base,
            fingerprint(&GOOD.replace("path = \"/graphql\"", "path = \"/other\""))
        );
        for changed in [
            GOOD.replace("idle_timeout_ms = 1500", "idle_timeout_ms = 1501"),
            GOOD.replace("127.0.0.1:4001", "127.0.0.1:4002"),
            GOOD.replace("\"X-Tenant\"", "\"X-Org\""),
            GOOD.replace(
                "protocol = \"graphql-ws\"",
                "protocol = \"graphql-transport-ws\"",
            ),
        ] {
            assert_ne!(base, fingerprint(&changed), "{changed}");
        }
    }

    #[test]
    fn the_settings_fingerprint_covers_the_hook_script_contents() {
        let script = std::env::temp_dir().join(format!(
            "subplex-fingerprint-hooks-{}.rhai",
            std::process::id()
        ));
        let text = GOOD.replace(
            "idle_timeout_ms = 1500",
            &format!(
                "idle_timeout_ms = 1500\nhooks = {:?}",
                script.display().to_string()
            ),
        );
        let fingerprint = |body: &str| {
            std::fs::write(&script, body).unwrap();
            Config::parse(&text, "gateway.toml").unwrap().upstreams[0]
                .settings
                .fingerprint
        };
        let payload = "fn on_connection_init(ctx, payload) {\n    payload\n}\n";
        let tagged = "fn on_connection_init(ctx, payload) {\n    payload.v = 2;\n    payload\n}\n";
        let first = fingerprint(payload);
        assert_eq!(first, fingerprint(payload));
        // Same file name, new script: a changed upstream.
        assert_ne!(first, fingerprint(tagged));
        let _ = std::fs::remove_file(&script);
    }

    #[test]
    fn a_routes_own_script_and_the_hook_limits_are_in_the_upstreams_fingerprint() {
        let script = std::env::temp_dir().join(format!(
            "subplex-fingerprint-route-hooks-{}.rhai",
            std::process::id()
        ));
        let with_route_script = GOOD.replace(
            "upstream = \"chat\"",
            &format!(
                "upstream = \"chat\"\nhooks = {:?}",
                script.display().to_string()
            ),
        );
        let fingerprint = |text: &str, body: &str| {
            std::fs::write(&script, body).unwrap();
            Config::parse(text, "gateway.toml").unwrap().upstreams[0]
                .settings
                .fingerprint
        };
        let payload = "fn on_connection_init(ctx, payload) {\n    payload\n}\n";
        let tagged = "fn on_connection_init(ctx, payload) {\n    payload.v = 2;\n    payload\n}\n";
        let without = fingerprint(GOOD, payload);
        let first = fingerprint(&with_route_script, payload);
        assert_ne!(without, first);
        assert_eq!(first, fingerprint(&with_route_script, payload));
        // Same file name, new script on the route: a changed upstream.
        assert_ne!(first, fingerprint(&with_route_script, tagged));
        // Other sandbox limits: a changed upstream too.
        let limited = format!("{GOOD}\n[hooks]\nmax_operations = 5000\n");
        assert_ne!(without, fingerprint(&limited, payload));
        let _ = std::fs::remove_file(&script);
    }

    #[test]
    fn config_errors_never_contain_header_values() {
        // Secrets live in requests, not in the config; but a URL with credentials must not
        // be echoed either when it is wrong for another reason.
        let err =
            problems(&GOOD.replace("http://127.0.0.1:4001/graphql", "ftp://user:hunter2@host/"));
        assert!(err.contains("scheme \"ftp\""), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
