//! Path → upstream, and dispatch of each request by kind: WebSocket upgrade, SSE, or
//! plain HTTP. Also the shared state every request handler sees.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use subplex_protocol::RawJson;
use subplex_upstream::http::{HttpClient, HttpSettings};
use subplex_upstream::{ConnectParams, ProbingPool, SecurityContext};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ServerConfig, UpstreamConfig};
use crate::downstream;

/// Every response body the gateway produces.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// One upstream as the request handlers use it.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub config: UpstreamConfig,
    pub pool: ProbingPool,
    pub http: HttpClient,
}

impl Upstream {
    /// The request headers that can matter upstream (`security_context` and
    /// `forward_headers`): what a WebSocket session keeps until `connection_init`, instead
    /// of the whole header map.
    pub fn relevant_headers(&self, headers: &HeaderMap) -> HeaderMap {
        let mut kept = HeaderMap::new();
        for name in &self.config.keyed_headers {
            for value in headers.get_all(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        kept
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

/// State shared by every request.
#[derive(Debug)]
pub(crate) struct GatewayState {
    pub routes: HashMap<String, Arc<Upstream>>,
    pub server: ServerConfig,
    /// Cancelled when the gateway starts draining: sessions close, streams end.
    pub downstream_shutdown: CancellationToken,
    /// Upgraded WebSocket sessions, which hyper's graceful shutdown does not see.
    pub sessions: TaskTracker,
}

impl GatewayState {
    /// Builds the per-upstream pools and HTTP clients. Fails only if an HTTP client cannot
    /// be built (the TLS settings were refused).
    pub fn new(config: &Config, upstream_shutdown: &CancellationToken) -> std::io::Result<Self> {
        let mut upstreams: Vec<Arc<Upstream>> = Vec::with_capacity(config.upstreams.len());
        for upstream in &config.upstreams {
            let http = HttpClient::new(HttpSettings {
                name: upstream.settings.name.clone(),
                url: upstream.http_url.clone(),
                connect_timeout: upstream.settings.connect_timeout,
                request_timeout: upstream.request_timeout,
                tls: upstream.http_tls.clone(),
            })
            .map_err(std::io::Error::other)?;
            upstreams.push(Arc::new(Upstream {
                config: upstream.clone(),
                pool: ProbingPool::new(upstream.settings.clone(), upstream_shutdown.child_token()),
                http,
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
        })
    }
}

/// Handles one request, adding CORS headers for allowed browser origins.
pub(crate) async fn handle(
    req: Request<Incoming>,
    state: Arc<GatewayState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return preflight(&req, &state);
    }
    let mut response = dispatch(req, state.clone(), peer).await;
    if let Some(origin) = origin {
        add_cors(&mut response, &origin, &state);
    }
    response
}

/// Answers a CORS preflight: which methods and headers a browser may use.
fn preflight(req: &Request<Incoming>, state: &GatewayState) -> Response<ResponseBody> {
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return response;
    };
    if add_cors(&mut response, origin, state) {
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            header::HeaderValue::from_static("600"),
        );
    }
    response
}

/// Adds `Access-Control-Allow-Origin` (and credentials) when `origin` is allowed.
fn add_cors(
    response: &mut Response<ResponseBody>,
    origin: &header::HeaderValue,
    state: &GatewayState,
) -> bool {
    let cors = &state.server.cors;
    let allowed = origin
        .to_str()
        .ok()
        .and_then(|origin| cors.allow_origin(origin));
    let h = response.headers_mut();
    let same_for_everyone = cors.any_origin && !cors.allow_credentials;
    if !same_for_everyone && !cors.allow_origins.is_empty() {
        h.append(header::VARY, header::HeaderValue::from_static("origin"));
    }
    let Some(value) = allowed.and_then(|a| header::HeaderValue::from_str(a).ok()) else {
        return false;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::HeaderValue::from_static("true"),
        );
    }
    true
}

async fn dispatch(
    req: Request<Incoming>,
    state: Arc<GatewayState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let Some(upstream) = state.routes.get(req.uri().path()).cloned() else {
        if req.uri().path() == "/healthz" {
            return text(StatusCode::OK, "ok\n");
        }
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("no route for path {}", req.uri().path()),
            "NOT_FOUND",
        );
    };
    if is_websocket_upgrade(&req) {
        return downstream::ws::upgrade(req, upstream, state, peer);
    }
    if accepts_event_stream(req.headers()) {
        return downstream::sse::handle(req, upstream, state).await;
    }
    match *req.method() {
        Method::GET | Method::POST => downstream::http::forward(req, upstream, &state).await,
        _ => method_not_allowed(
            "use GET or POST (with Accept: text/event-stream for subscriptions), or a WebSocket",
            "GET, POST",
        ),
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|value| {
            value
                .to_str()
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    req.method() == Method::GET
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|value| {
        value
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().starts_with("text/event-stream"))
            })
            .unwrap_or(false)
    })
}

/// A full body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed_unsync()
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A GraphQL-over-HTTP error response: `{"errors":[{"message", "extensions":{"code"}}]}`.
pub(crate) fn json_error(status: StatusCode, message: &str, code: &str) -> Response<ResponseBody> {
    let body = format!(
        "{{\"errors\":{}}}",
        subplex_protocol::graphql_errors(message, code).as_str()
    );
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// 405 with the methods that would work.
pub(crate) fn method_not_allowed(message: &str, allow: &'static str) -> Response<ResponseBody> {
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        message,
        "METHOD_NOT_ALLOWED",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

/// Reads a request body of at most `limit` bytes, or answers 413.
pub(crate) async fn read_body(
    body: Incoming,
    limit: usize,
) -> Result<Bytes, Response<ResponseBody>> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is unreadable or over the {limit} byte limit (server.max_message_bytes)"),
            "PAYLOAD_TOO_LARGE",
        )),
    }
}

/// GET must be safe (GraphQL over HTTP, graphql-sse): a mutation sent with GET gets 405
/// naming POST, before anything reaches the upstream.
pub(crate) fn refuse_get_mutation(
    method: &Method,
    request: &subplex_protocol::GraphqlRequest,
) -> Option<Response<ResponseBody>> {
    let mutation =
        subplex_protocol::operation_type(&request.query, request.operation_name.as_deref())
            == Some(subplex_protocol::OperationType::Mutation);
    (method == Method::GET && mutation)
        .then(|| method_not_allowed("mutations cannot be sent with GET; use POST", "POST"))
}
