//! GraphQL over SSE, distinct-connections mode: one request, one operation, one stream.
//!
//! A task owns the upstream subscription and feeds the response body through a small
//! queue. A client that disconnects drops the body; the task sees the queue close, and
//! dropping the subscription stops the operation upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use subplex_protocol::sse;
use tokio::sync::mpsc;
use tokio::time::{self, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::operation::Operation;
use super::streaming::{push, queued_response, read_operation, spawn_feed};
use crate::responses::ResponseBody;
use crate::state::{GatewayState, Upstream};

pub(crate) async fn handle(
    req: Request<Incoming>,
    upstream: Arc<Upstream>,
    state: Arc<GatewayState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let request = match read_operation(&parts, body, state.server.max_message_bytes).await {
        Ok((request, _)) => request,
        Err(response) => return response,
    };

    let keepalive = state.server.keepalive_interval;
    let shutdown = state.downstream_shutdown.clone();
    let rx = spawn_feed(
        &state,
        &parts,
        peer,
        "sse",
        upstream,
        request,
        |operation, tx| feed(operation, tx, keepalive, shutdown),
    );
    event_stream_response(rx)
}

/// A `text/event-stream` response fed from `rx`, with the headers graphql-sse sends.
pub(crate) fn event_stream_response(rx: mpsc::Receiver<Bytes>) -> Response<ResponseBody> {
    let mut response = queued_response(rx);
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
    operation: Operation,
    tx: mpsc::Sender<Bytes>,
    keepalive_every: time::Duration,
    shutdown: CancellationToken,
) {
    // Sent at once: some browsers and proxies stall until the first bytes arrive.
    if !push(&tx, sse::KEEP_ALIVE.to_owned()).await {
        return;
    }
    let events = operation.events();
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
