//! Path → upstream, and dispatch of each request by kind: WebSocket upgrade, SSE (distinct
//! or single-connection), multipart, or plain HTTP; browser origins are checked here for
//! every subscription transport.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::cors::{add_cors, preflight};
use crate::downstream;
use crate::metrics::ClientTransport;
use crate::responses::{full, json_error, method_not_allowed, text, RequestBody, ResponseBody};
use crate::state::GatewayState;

/// Liveness: answers `200` as long as the process serves at all.
pub(crate) const HEALTHZ_PATH: &str = "/healthz";
/// Readiness: `200` while serving, `503` from the moment shutdown starts.
pub(crate) const READYZ_PATH: &str = "/readyz";
/// Prometheus metrics (`docs/observability.md`).
pub(crate) const METRICS_PATH: &str = "/metrics";
/// Paths the gateway answers itself; no route may use them.
pub(crate) const RESERVED_PATHS: [&str; 3] = [HEALTHZ_PATH, READYZ_PATH, METRICS_PATH];

/// Handles one request, adding CORS headers for allowed browser origins.
pub(crate) async fn handle(
    req: Request<RequestBody>,
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

async fn dispatch(
    req: Request<RequestBody>,
    state: Arc<GatewayState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    // Probes come first: they must answer while draining, and no route may shadow them
    // (config validation reserves their paths).
    match req.uri().path() {
        HEALTHZ_PATH => return text(StatusCode::OK, "ok\n"),
        READYZ_PATH if state.is_ready() => return text(StatusCode::OK, "ready\n"),
        READYZ_PATH => return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        METRICS_PATH => return metrics_response(&state),
        _ => {}
    }
    if !state.is_ready() {
        // Mostly connections accepted during the drain (open ones are being closed by the
        // graceful shutdown): a clear refusal rather than a reset.
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down; try another instance",
            "SHUTTING_DOWN",
        );
    }
    // Read once: a reload meanwhile does not move this request to another upstream.
    let Some(upstream) = state.routes().get(req.uri().path()).cloned() else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("no route for path {}", req.uri().path()),
            "NOT_FOUND",
        );
    };
    let transport = Transport::of(&req);
    if transport != Transport::PlainHttp {
        if let Some(refusal) =
            downstream::origins::refuse(req.headers(), &state.server.allowed_origins)
        {
            return refusal;
        }
    }
    // On HTTP/1 a stream holds its connection's place; on HTTP/2 it needs one of its own.
    let stream_slot = match transport {
        Transport::Sse | Transport::SseSingleConnection | Transport::Multipart
            if req.version() == http::Version::HTTP_2 =>
        {
            match state.connection_slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many connections and HTTP/2 streams (server.max_connections); try again later",
                        "TOO_MANY_CONNECTIONS",
                    )
                }
            }
        }
        _ => None,
    };
    let metrics_state = state.clone();
    let response = match transport {
        Transport::WebSocket => downstream::ws::upgrade(req, upstream, state, peer),
        Transport::SseSingleConnection => {
            downstream::sse_single::handle(req, upstream, state, peer).await
        }
        Transport::Sse => downstream::sse::handle(req, upstream, state, peer).await,
        Transport::Multipart => downstream::multipart::handle(req, upstream, state, peer).await,
        Transport::PlainHttp => match *req.method() {
            Method::GET | Method::POST => downstream::http::forward(req, upstream, &state, peer).await,
            _ => method_not_allowed(
                "use GET or POST (with Accept: text/event-stream for subscriptions), or a WebSocket",
                "GET, POST",
            ),
        },
    };
    let open_stream = transport
        .streamed_as()
        .filter(|_| is_stream(&response))
        .map(|streamed| metrics_state.metrics.client_connected(streamed));
    if stream_slot.is_none() && open_stream.is_none() {
        return response;
    }
    // Both live as long as the body: hyper drops it when the stream ends or the client
    // resets it.
    response.map(|body| {
        body.map_frame(move |frame| {
            let _held = (&stream_slot, &open_stream);
            frame
        })
        .boxed_unsync()
    })
}

/// Whether a response is an event stream (SSE) or a multipart stream, as opposed to an
/// error, a token or a single result.
fn is_stream<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.starts_with("text/event-stream") || value.starts_with("multipart/mixed")
        })
}

/// Whether a request asks for a long-lived streamed response: an SSE stream (either mode)
/// or a multipart subscription. The HTTP/1 front (`server::http1_streams`) serves these
/// itself.
pub(crate) fn is_streamed<B>(req: &Request<B>) -> bool {
    Transport::of(req).streamed_as().is_some()
}

/// `/metrics`, on the main listener and on the admin one.
pub(crate) fn metrics_response(state: &GatewayState) -> Response<ResponseBody> {
    let mut response = Response::new(full(state.encode_metrics()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

/// How a request on a route is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    /// graphql-sse single-connection mode: a stream token, `PUT` or `DELETE`.
    SseSingleConnection,
    /// graphql-sse distinct-connections mode: `Accept: text/event-stream`.
    Sse,
    /// Apollo multipart subscriptions: `Accept: multipart/mixed;subscriptionSpec=1.0`.
    Multipart,
    /// Queries and mutations forwarded to the upstream's `url`; not subject to
    /// `allowed_origins` (CORS covers what a page may read).
    PlainHttp,
}

impl Transport {
    /// The `transport` label of a streamed response on this transport (WebSocket
    /// sessions are counted by the session, plain HTTP is not a stream).
    fn streamed_as(self) -> Option<ClientTransport> {
        match self {
            Transport::Sse => Some(ClientTransport::Sse),
            Transport::SseSingleConnection => Some(ClientTransport::SseSingleConnection),
            Transport::Multipart => Some(ClientTransport::Multipart),
            Transport::WebSocket | Transport::PlainHttp => None,
        }
    }

    fn of<B>(req: &Request<B>) -> Transport {
        if is_websocket_upgrade(req) {
            Transport::WebSocket
        } else if downstream::sse_single::is_single_connection(req) {
            Transport::SseSingleConnection
        } else if accepts_event_stream(req.headers()) {
            Transport::Sse
        } else if downstream::multipart::is_multipart(req) {
            Transport::Multipart
        } else {
            Transport::PlainHttp
        }
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

pub(crate) fn accepts_event_stream(headers: &HeaderMap) -> bool {
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
