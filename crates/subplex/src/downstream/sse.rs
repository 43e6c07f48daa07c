//! GraphQL over SSE, distinct-connections mode: one request, one operation, one stream.
//!
//! A task owns the upstream subscription and feeds the response body through a small
//! queue. A client that disconnects drops the body; the task sees the queue close, and
//! dropping the subscription stops the operation upstream.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use subplex_protocol::{sse, GraphqlRequest, RawJson};
use tokio::sync::mpsc;
use tokio::time::{self, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use super::operation;
use crate::routes::{
    json_error, method_not_allowed, read_body, refuse_get_mutation, GatewayState, ResponseBody,
    Upstream,
};

/// Encoded chunks queued toward one SSE client. Small: each chunk is a whole event, and
/// a client that does not read lets its upstream queue overflow (slow-consumer policy).
const STREAM_QUEUE: usize = 16;

pub(crate) async fn handle(
    req: Request<Incoming>,
    upstream: Arc<Upstream>,
    state: Arc<GatewayState>,
) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let request = match parts.method {
        Method::GET => sse::request_from_query(parts.uri.query().unwrap_or("")),
        Method::POST => match read_body(body, state.server.max_message_bytes).await {
            Ok(body) => sse::request_from_body(&body),
            Err(response) => return response,
        },
        _ => return method_not_allowed("event streams are opened with GET or POST", "GET, POST"),
    };
    let request = match request {
        Ok(request) => request,
        Err(err) => return json_error(StatusCode::BAD_REQUEST, &err.to_string(), "BAD_REQUEST"),
    };
    if let Some(refusal) = refuse_get_mutation(&parts.method, &request) {
        return refusal;
    }

    // SSE has no `connection_init`: the payload is `{}` and the headers carry identity.
    let params = upstream.connect_params(&parts.headers, RawJson::empty_object());
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
    let span = tracing::info_span!("downstream", route = %parts.uri.path(), protocol = "sse", ctx = %params.key);
    state.sessions.spawn(
        feed(
            upstream,
            params,
            request,
            tx,
            state.server.keepalive_interval,
            state.downstream_shutdown.clone(),
        )
        .instrument(span),
    );

    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(chunks)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(sse::CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("none"));
    // nginx and similar proxies buffer responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

async fn feed(
    upstream: Arc<Upstream>,
    params: subplex_upstream::ConnectParams,
    request: GraphqlRequest,
    tx: mpsc::Sender<Bytes>,
    keepalive_every: time::Duration,
    shutdown: CancellationToken,
) {
    // Sent at once: some browsers and proxies stall until the first bytes arrive.
    if !push(&tx, sse::KEEP_ALIVE.to_owned()).await {
        return;
    }
    let events = operation::events(upstream, params, request);
    tokio::pin!(events);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut keepalive = time::interval_at(Instant::now() + keepalive_every, keepalive_every);
    loop {
        // Biased: a closed client or a draining gateway ends the stream before anything
        // else is read from the upstream.
        let text = tokio::select! {
            biased;
            _ = tx.closed() => {
                debug!("client left; stopping the operation");
                return;
            }
            _ = &mut cancelled => return,
            event = events.next() => match event {
                Some(event) => sse::encode_event(&event),
                None => return,
            },
            _ = keepalive.tick() => sse::KEEP_ALIVE.to_owned(),
        };
        if !push(&tx, text).await {
            return;
        }
    }
}

/// Queues encoded text for the response body; false once the client has gone.
async fn push(tx: &mpsc::Sender<Bytes>, text: String) -> bool {
    tx.send(Bytes::from(text)).await.is_ok()
}
