//! GraphQL over SSE, distinct-connections mode: one request, one operation, one stream.
//!
//! A task owns the upstream subscription and feeds the response body through a small
//! queue. A client that disconnects drops the body; the task sees the queue close, and
//! dropping the subscription stops the operation upstream. With `[server.sse]` resume on,
//! the task is `sse_resume::feed` instead, which numbers the events and outlives a cut for
//! `resume_window_ms` (see `sse_resume.rs`).
//!
//! A client too slow for its operation (the slow-consumer cut) gets the `SLOW_CONSUMER`
//! error as the stream's last event (a `next` carrying it, then `complete`), and the
//! stream ends; see `Operation::events`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::request::Parts;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use subplex_protocol::{sse, Event, GraphqlRequest};
use tokio::sync::mpsc;
use tokio::time::{self, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use super::hooks;
use super::operation::shutdown_event;
pub(crate) use super::sse_resume::ResumableStreams;
use super::sse_resume::{self, parse_last_event_id};
use super::streaming::{
    http_operation, push, queued_response, read_operation, spawn_feed, STREAM_QUEUE,
};
use crate::config::SseResumeConfig;
use crate::responses::{json_error, ResponseBody};
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

    if let Some(settings) = state.server.sse_resume.clone() {
        return resumable(&parts, peer, upstream, request, &state, settings).await;
    }
    let keepalive = state.server.keepalive_interval;
    let shutdown = state.downstream_shutdown.clone();
    let stats = state.stats.clone();
    let rx = match spawn_feed(
        &state,
        &parts,
        peer,
        "sse",
        upstream,
        request,
        |operation, tx| feed(Box::pin(operation.events(stats)), tx, keepalive, shutdown),
    ) {
        Ok(rx) => rx,
        Err(refusal) => return hooks::refusal_response(refusal),
    };
    event_stream_response(rx)
}

/// A stream with `[server.sse]` resume on: the stream named by `Last-Event-ID`, if it can
/// be resumed with this request's credentials, or else a fresh one.
async fn resumable(
    parts: &Parts,
    peer: SocketAddr,
    upstream: Arc<Upstream>,
    request: GraphqlRequest,
    state: &Arc<GatewayState>,
    settings: SseResumeConfig,
) -> Response<ResponseBody> {
    let (operation, span) = match http_operation(parts, peer, "sse", upstream, request) {
        Ok(prepared) => prepared,
        Err(refusal) => return hooks::refusal_response(refusal),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
    let last_event_id = parts
        .headers
        .get(sse::LAST_EVENT_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_last_event_id);
    if let Some((stream, after)) = last_event_id {
        let key = operation.connect.key;
        if state
            .resumable_sse
            .resume(stream, &key, after, tx.clone())
            .await
        {
            return event_stream_response(rx);
        }
        debug!(parent: &span, "stream cannot be resumed; starting a fresh subscription");
    }
    let registration = match state.resumable_sse.register(operation.connect.key) {
        Ok(registration) => registration,
        Err(_) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no randomness for a stream id",
                "INTERNAL_SERVER_ERROR",
            )
        }
    };
    let keepalive = state.server.keepalive_interval;
    let shutdown = state.downstream_shutdown.clone();
    state.sessions.spawn(
        sse_resume::feed(
            operation.events(state.stats.clone()),
            tx,
            registration,
            settings,
            keepalive,
            shutdown,
        )
        .instrument(span),
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

/// Feeds one operation's `events` to the client as SSE events, with a keep-alive comment
/// at once and every `keepalive_every` after.
///
/// Not an `async fn`, and the operation's stream comes boxed: an `async fn`'s arguments,
/// and anything pinned by moving it into a local, are stored twice in the task's future,
/// which every idle SSE subscriber keeps.
#[allow(clippy::manual_async_fn)]
fn feed(
    mut events: Pin<Box<dyn Stream<Item = Event> + Send>>,
    tx: mpsc::Sender<Bytes>,
    keepalive_every: time::Duration,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    async move {
        // Sent at once: some browsers and proxies stall until the first bytes arrive.
        if !push(&tx, sse::KEEP_ALIVE.to_owned()).await {
            return;
        }
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
            Box::pin(events),
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
