//! Queries and mutations over plain HTTP, forwarded to the upstream's `url` through the
//! upstream's [`HttpClient`](subplex_upstream::http::HttpClient).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use http::{header, Request, Response, StatusCode};
use subplex_upstream::http::HttpRequest;

use super::hooks;
use super::streaming::http_client_context;
use crate::responses::{
    full, json_error, read_body, refuse_get_mutation, RequestBody, ResponseBody,
};
use crate::state::{GatewayState, Upstream};

/// Request headers passed through besides the configured `forward_headers`.
const PASSED_THROUGH: [header::HeaderName; 2] = [header::CONTENT_TYPE, header::ACCEPT];

pub(crate) async fn forward(
    req: Request<RequestBody>,
    upstream: Arc<Upstream>,
    state: &GatewayState,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    if let Some(refusal) = refused_by_hook(&parts, peer, &upstream) {
        return refusal;
    }
    // A GET that does not read as a GraphQL request (a persisted-query extension, say) is
    // the upstream's to judge; one that reads as a mutation is refused here.
    if let Ok(request) = subplex_protocol::sse::request_from_query(parts.uri.query().unwrap_or(""))
    {
        if let Some(refusal) = refuse_get_mutation(&parts.method, &request) {
            return refusal;
        }
    }
    let body = match read_body(body, &state.server).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    forward_body(parts, body, upstream).await
}

/// The answer to a request the route's `on_connection_init` refuses (403, or 500 when
/// the script fails), as for SSE and multipart. Plain HTTP has no `connection_init`: the
/// hook runs with `{}` only to decide, and its payload goes nowhere.
pub(crate) fn refused_by_hook(
    parts: &http::request::Parts,
    peer: SocketAddr,
    upstream: &Upstream,
) -> Option<Response<ResponseBody>> {
    let script = upstream.hooks_for(parts.uri.path())?;
    if !script.has_connection_init() {
        return None;
    }
    let client = http_client_context(parts, peer, "http", upstream);
    hooks::connect_params(upstream, &client)
        .err()
        .map(hooks::refusal_response)
}

/// Forwards a request whose body was already read.
pub(crate) async fn forward_body(
    parts: http::request::Parts,
    body: Bytes,
    upstream: Arc<Upstream>,
) -> Response<ResponseBody> {
    let headers = PASSED_THROUGH
        .iter()
        .chain(&upstream.config.forward_headers)
        .flat_map(|name| {
            parts
                .headers
                .get_all(name)
                .iter()
                .map(move |value| (name.clone(), value.clone()))
        })
        .collect();
    let request = HttpRequest {
        method: parts.method.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body,
    };
    let response = match upstream.http.send(request).await {
        Ok(response) => response,
        Err(error) => return json_error(StatusCode::BAD_GATEWAY, &error.to_string(), error.code()),
    };
    let mut out = Response::new(full(response.body));
    *out.status_mut() = response.status;
    for (name, value) in &response.headers {
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
