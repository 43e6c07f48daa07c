//! Queries and mutations over plain HTTP, forwarded to the upstream's `url`.

use std::sync::Arc;

use bytes::Bytes;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::debug;

use crate::responses::{full, json_error, read_body, refuse_get_mutation, ResponseBody};
use crate::state::{GatewayState, Upstream};

/// Request headers passed through besides the configured `forward_headers`.
const PASSED_THROUGH: [header::HeaderName; 2] = [header::CONTENT_TYPE, header::ACCEPT];

pub(crate) async fn forward(
    req: Request<Incoming>,
    upstream: Arc<Upstream>,
    state: &GatewayState,
) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    // A GET that does not read as a GraphQL request (a persisted-query extension, say) is
    // the upstream's to judge; one that reads as a mutation is refused here.
    if let Ok(request) = subplex_protocol::sse::request_from_query(parts.uri.query().unwrap_or(""))
    {
        if let Some(refusal) = refuse_get_mutation(&parts.method, &request) {
            return refusal;
        }
    }
    let body = match read_body(body, state.server.max_message_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    forward_body(parts, body, upstream).await
}

/// Forwards a request whose body was already read.
pub(crate) async fn forward_body(
    parts: http::request::Parts,
    body: Bytes,
    upstream: Arc<Upstream>,
) -> Response<ResponseBody> {
    let mut url = upstream.config.http_url.clone();
    url.set_query(parts.uri.query());
    let mut request = upstream.http.request(parts.method.clone(), url).body(body);
    for name in PASSED_THROUGH
        .iter()
        .chain(&upstream.config.forward_headers)
    {
        for value in parts.headers.get_all(name) {
            request = request.header(name, value);
        }
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) => {
            debug!(error = %err, "upstream HTTP request failed");
            let message = format!(
                "upstream \"{}\" is unavailable over HTTP: {}",
                upstream.config.settings.name,
                if err.is_timeout() {
                    "timed out (request_timeout_ms)"
                } else if err.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                }
            );
            return json_error(StatusCode::BAD_GATEWAY, &message, "UPSTREAM_UNAVAILABLE");
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(err) => {
            let message = if err.is_timeout() {
                "upstream response timed out (request_timeout_ms)"
            } else {
                "upstream response ended early"
            };
            return json_error(StatusCode::BAD_GATEWAY, message, "UPSTREAM_UNAVAILABLE");
        }
    };
    let mut out = Response::new(full(bytes));
    *out.status_mut() = status;
    for (name, value) in &headers {
        if !HOP_BY_HOP.contains(name) {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}

/// Response headers that describe the upstream hop, not the response: the gateway's own
/// connection sets them (the body is re-framed, so the length may be chunked differently).
const HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
];
