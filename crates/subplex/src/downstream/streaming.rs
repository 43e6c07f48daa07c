//! Pieces every streamed HTTP response shares (SSE in both modes, multipart): reading the
//! GraphQL request, the one operation of a request, and a response body fed through a
//! small bounded queue by a task (where a task must own the stream: SSE with resume, SSE
//! single connection mode; a one-operation body is driven by its operation instead, see
//! `operation_body`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use subplex_protocol::{sse, GraphqlRequest, RawJson};
use tokio::sync::mpsc;

use super::hooks;
use super::operation::{ClientContext, Operation};

use crate::config::ServerConfig;
use crate::responses::{
    json_error, method_not_allowed, read_body, refuse_get_mutation, RequestBody, ResponseBody,
};
use crate::state::Upstream;

/// Encoded chunks queued toward one client of a task-fed stream. Small: each chunk is a whole event, and
/// a client that does not read lets its upstream queue overflow (slow-consumer policy).
pub(crate) const STREAM_QUEUE: usize = 16;

/// Reads a GraphQL request from GET query parameters or a POST JSON body, returning the
/// body too (empty for GET); 405 for other methods, 400 for an unusable request, 413 for
/// an oversized body, 408 for one that does not arrive in time.
pub(crate) async fn read_request(
    parts: &Parts,
    body: RequestBody,
    server: &ServerConfig,
) -> Result<(GraphqlRequest, Bytes), Response<ResponseBody>> {
    let (request, body) = match parts.method {
        Method::GET => (
            sse::request_from_query(parts.uri.query().unwrap_or("")),
            Bytes::new(),
        ),
        Method::POST => {
            let body = read_body(body, server).await?;
            (sse::request_from_body(&body), body)
        }
        _ => {
            return Err(method_not_allowed(
                "event streams are opened with GET or POST",
                "GET, POST",
            ))
        }
    };
    match request {
        Ok(request) => Ok((request, body)),
        Err(err) => Err(json_error(
            StatusCode::BAD_REQUEST,
            &err.to_string(),
            "BAD_REQUEST",
        )),
    }
}

/// Reads the one operation of a streamed request (SSE distinct mode, multipart) and
/// refuses a mutation sent with GET.
pub(crate) async fn read_operation(
    parts: &Parts,
    body: RequestBody,
    server: &ServerConfig,
) -> Result<(GraphqlRequest, Bytes), Response<ResponseBody>> {
    let (request, body) = read_request(parts, body, server).await?;
    match refuse_get_mutation(&parts.method, &request) {
        Some(refusal) => Err(refusal),
        None => Ok((request, body)),
    }
}

/// The one operation of a streamed request (SSE distinct mode, multipart), not started
/// yet, and the span it runs in; the refusal of the `on_connection_init` hook instead, if
/// it refuses (see `hooks::refusal_response`). SSE and multipart have no
/// `connection_init`: the payload is `{}` and the request's keyed headers carry identity;
/// the upstream's `on_connection_init` hook runs with that `{}`.
pub(crate) fn http_operation(
    parts: &Parts,
    peer: SocketAddr,
    protocol: &'static str,
    upstream: Arc<Upstream>,
    request: GraphqlRequest,
) -> Result<(Operation, tracing::Span), hooks::InitRefusal> {
    let client = http_client_context(parts, peer, protocol, &upstream);
    let connect = hooks::connect_params(&upstream, &client)?;
    let span =
        tracing::info_span!("downstream", route = %parts.uri.path(), protocol, ctx = %connect.key);
    let operation = Operation {
        id: Arc::from(""),
        request,
        client,
        connect,
        upstream,
    };
    Ok((operation, span))
}

/// The client of an HTTP request (SSE, multipart): no `connection_init`, so the payload
/// is `{}` and the request's headers carry identity.
pub(crate) fn http_client_context(
    parts: &Parts,
    peer: SocketAddr,
    transport: &'static str,
    upstream: &Upstream,
) -> Arc<ClientContext> {
    Arc::new(
        ClientContext {
            transport,
            path: parts.uri.path().to_owned(),
            peer,
            headers: upstream.client_headers(parts.uri.path(), &parts.headers),
            init_payload: RawJson::empty_object(),
            hooks: None,
        }
        .with_hooks(upstream),
    )
}

/// Whether any `Accept` header value passes `test`.
pub(crate) fn any_accept(headers: &HeaderMap, test: impl Fn(&str) -> bool) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|value| value.to_str().is_ok_and(&test))
}

/// A streaming body of whatever a feeding task queues (SSE with resume, SSE single
/// connection mode); it ends when the task drops its sender, and the task sees the queue
/// close when the client goes.
pub(crate) fn queued_body(rx: mpsc::Receiver<Bytes>) -> ResponseBody {
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    BodyExt::boxed_unsync(StreamBody::new(chunks))
}

/// Queues encoded text for the response body; false once the client has gone.
pub(crate) async fn push(tx: &mpsc::Sender<Bytes>, text: String) -> bool {
    tx.send(Bytes::from(text)).await.is_ok()
}
