//! GraphQL over SSE, distinct-connections mode: one request, one operation, one stream.
//!
//! A task owns the upstream subscription and feeds the response body through a small
//! queue. A client that disconnects drops the body; the task sees the queue close, and
//! dropping the subscription stops the operation upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use subplex_protocol::{sse, Event};
use tokio::sync::mpsc;
use tokio::time::{self, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::hooks;
use super::operation::shutdown_event;
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
    let rx = match spawn_feed(
        &state,
        &parts,
        peer,
        "sse",
        upstream,
        request,
        |operation, tx| feed(operation.events(), tx, keepalive, shutdown),
    ) {
        Ok(rx) => rx,
        Err(refusal) => return hooks::refusal_response(refusal),
    };
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

/// Feeds one operation's `events` to the client as SSE events, with a keep-alive comment
/// at once and every `keepalive_every` after.
async fn feed(
    events: impl Stream<Item = Event>,
    tx: mpsc::Sender<Bytes>,
    keepalive_every: time::Duration,
    shutdown: CancellationToken,
) {
    // Sent at once: some browsers and proxies stall until the first bytes arrive.
    if !push(&tx, sse::KEEP_ALIVE.to_owned()).await {
        return;
    }
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
            _ = &mut cancelled => {
                push(&tx, sse::encode_event(&shutdown_event())).await;
                return;
            }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::stream;

    use super::*;

    /// Keep-alives on paused time: exact instants, no wall-clock wait.
    #[tokio::test(start_paused = true)]
    async fn keep_alive_at_once_then_every_interval_until_the_operation_ends() {
        let started = Instant::now();
        let (tx, mut rx) = mpsc::channel(8);
        // One event, 2.5 intervals in: keep-alives come before it and none after.
        let events = stream::once(async {
            time::sleep(Duration::from_millis(2500)).await;
            Event::Complete
        });
        let feed = tokio::spawn(feed(
            events,
            tx,
            Duration::from_millis(1000),
            CancellationToken::new(),
        ));
        let mut received = Vec::new();
        while let Some(chunk) = rx.recv().await {
            received.push((started.elapsed().as_millis(), chunk));
        }
        let keep_alive = Bytes::from_static(sse::KEEP_ALIVE.as_bytes());
        let complete = Bytes::from(sse::encode_event(&Event::Complete));
        assert_eq!(
            received,
            [
                (0, keep_alive.clone()),
                (1000, keep_alive.clone()),
                (2000, keep_alive),
                (2500, complete),
            ]
        );
        feed.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
    }
}
