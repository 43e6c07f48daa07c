//! GraphQL over SSE, distinct-connections mode: one request, one operation, one stream.
//!
//! The response body polls the operation's events itself (`operation_body`), with no task
//! or queue in between. A client that disconnects drops the body, and with it the
//! upstream subscription, which stops the operation upstream. With `[server.sse]` resume
//! on, a task (`sse_resume::feed`) feeds the body through a small queue instead: it numbers
//! the events and outlives a cut for `resume_window_ms` (see `sse_resume.rs`).
//!
//! A client too slow for its operation (the slow-consumer cut) gets the `SLOW_CONSUMER`
//! error as the stream's last event (a `next` carrying it, then `complete`), and the
//! stream ends; see `Operation::events`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use subplex_protocol::{sse, Event, GraphqlRequest};
use tokio::sync::mpsc;
use tracing::{debug, Instrument};

use super::hooks;
use super::operation::shutdown_event;
use super::operation_body::{Framing, OperationBody};
pub(crate) use super::sse_resume::ResumableStreams;
use super::sse_resume::{self, parse_last_event_id};
use super::streaming::{http_operation, queued_body, read_operation, STREAM_QUEUE};
use crate::config::SseResumeConfig;
use crate::responses::{json_error, RequestBody, ResponseBody};
use crate::state::{GatewayState, Upstream};

pub(crate) async fn handle(
    req: Request<RequestBody>,
    upstream: Arc<Upstream>,
    state: Arc<GatewayState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let request = match read_operation(&parts, body, &state.server).await {
        Ok((request, _)) => request,
        Err(response) => return response,
    };

    if let Some(settings) = state.server.sse_resume.clone() {
        return resumable(&parts, peer, upstream, request, &state, settings).await;
    }
    let (operation, span) = match http_operation(&parts, peer, "sse", upstream, request) {
        Ok(prepared) => prepared,
        Err(refusal) => return hooks::refusal_response(refusal),
    };
    let body = OperationBody::new(
        operation.events(state.stats.clone()),
        SseFraming,
        state.server.keepalive_interval,
        state.downstream_shutdown.clone().cancelled_owned(),
        span,
    );
    event_stream_response(BodyExt::boxed_unsync(body))
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
            return event_stream_response(queued_body(rx));
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
    event_stream_response(queued_body(rx))
}

/// A `text/event-stream` response of `body`, with the headers graphql-sse sends.
pub(crate) fn event_stream_response(body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
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

/// SSE framing of one operation's events: a keep-alive comment at once and every
/// keep-alive interval, whatever the events; the shutdown event when the gateway drains.
struct SseFraming;

impl Framing for SseFraming {
    type Item = Event;
    const KEEP_ALIVE_FILLS_IDLE_TIME: bool = false;

    fn opening(&self) -> Bytes {
        Bytes::from_static(sse::KEEP_ALIVE.as_bytes())
    }

    fn keep_alive(&self) -> Bytes {
        Bytes::from_static(sse::KEEP_ALIVE.as_bytes())
    }

    /// Never the last: the operation's stream ends after its terminal event.
    fn encode(&self, event: Event) -> (Bytes, bool) {
        (Bytes::from(sse::encode_event(&event)), false)
    }

    fn shutdown(&self) -> Bytes {
        Bytes::from(sse::encode_event(&shutdown_event()))
    }

    fn end(&self) -> Option<Bytes> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::stream;
    use http_body_util::BodyExt;
    use tokio::time::{self, Instant};
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Keep-alives on paused time: exact instants, no wall-clock wait.
    #[tokio::test(start_paused = true)]
    async fn keep_alive_at_once_then_every_interval_until_the_operation_ends() {
        let started = Instant::now();
        // One event, 2.5 intervals in: keep-alives come before it and none after.
        let events = stream::once(async {
            time::sleep(Duration::from_millis(2500)).await;
            Event::Complete
        });
        let body = OperationBody::new(
            events,
            SseFraming,
            Duration::from_millis(1000),
            CancellationToken::new().cancelled_owned(),
            tracing::Span::none(),
        );
        let mut body = std::pin::pin!(body);
        let mut received = Vec::new();
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
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
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
    }
}
