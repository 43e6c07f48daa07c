//! GraphQL over SSE, single-connection mode
//! ([graphql-sse PROTOCOL.md](https://github.com/enisdenjo/graphql-sse/blob/master/PROTOCOL.md)):
//! one event stream per client carries the events of many operations.
//!
//! - `PUT` reserves a stream: 201 with the token as a `text/plain` body.
//! - `GET`/`POST` with `Accept: text/event-stream` and the token opens it (200; 409 if it
//!   is open already).
//! - `GET`/`POST` with the token and `extensions.operationId` starts an operation: 202, and
//!   its events arrive on the stream as `{"id","payload"}`.
//! - `DELETE ?operationId=` with the token stops one: 200.
//!
//! The token travels in `X-GraphQL-Event-Stream-Token` or the `token` query parameter and
//! only works with the credentials that reserved it ([`Reservations`]). The stream's task
//! polls every operation's event stream itself, as a WebSocket session does; dropping the
//! stream (the client left, or the gateway drains) drops them and stops them upstream.
//!
//! A client too slow for one of its operations (the slow-consumer cut) loses the whole
//! stream, as a WebSocket client loses its socket: every unfinished operation gets the
//! `SLOW_CONSUMER` error, then the stream ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::Abortable;
use futures_util::{Stream, StreamExt};
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use subplex_protocol::{sse, Event};
use tokio::sync::mpsc;
use tokio::time::{self, Instant};
use tracing::{debug, Instrument};

use super::hooks;
use super::operation::{ending_event, shutdown_event, Delivery, Operation};
use super::operation_streams::OperationStreams;
use super::reservations::{OpenStream, PendingOperation, Reservations, StreamError};
use super::sse::event_stream_response;
use super::streaming::{
    any_accept, http_client_context, push, queued_body, read_request, STREAM_QUEUE,
};
use crate::responses::{
    full, json_error, method_not_allowed, refuse_get_mutation, RequestBody, ResponseBody,
};
use crate::routes::accepts_event_stream;
use crate::state::{GatewayState, Upstream};

/// Longest `operationId` accepted; graphql-sse's client sends 36-character UUIDs.
const MAX_OPERATION_ID_LEN: usize = 128;

/// An operation's deliveries, each with its tag; abortable by `DELETE`.
type OperationStream =
    Abortable<Pin<Box<dyn Stream<Item = (Arc<StreamedOperation>, Delivery)> + Send>>>;

/// What each delivery of a running operation comes with: which operation it is (id and
/// run serial), and its framing, built once when it starts.
struct StreamedOperation {
    id: Arc<str>,
    serial: u64,
    framer: sse::OperationFramer,
}

/// Whether a request belongs to single-connection mode: it carries a stream token, or it
/// is a `PUT` (reserve) or `DELETE` (stop), which no other transport uses.
pub(crate) fn is_single_connection<B>(req: &Request<B>) -> bool {
    matches!(*req.method(), Method::PUT | Method::DELETE)
        || stream_token(req.headers(), req.uri().query()).is_some()
}

fn stream_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    headers
        .get(sse::STREAM_TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| sse::query_parameter(query?, sse::STREAM_TOKEN_PARAMETER))
        .filter(|token| !token.is_empty())
}

pub(crate) async fn handle(
    req: Request<RequestBody>,
    upstream: Arc<Upstream>,
    state: Arc<GatewayState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    // No `connection_init` here either: identity is the keyed headers, as in SSE, and
    // what the upstream's `on_connection_init` hook makes of `{}`. Every request of a
    // stream (reserve, open, operations, stop) computes the same key.
    let client = http_client_context(&parts, peer, "sse-single-connection", &upstream);
    let params = match hooks::connect_params(&upstream, &client) {
        Ok(params) => params,
        Err(refusal) => return hooks::refusal_response(refusal),
    };
    let streams = &state.sse_streams;
    if parts.method == Method::PUT {
        if !accepts(&parts.headers, &["*/*", "text/*", "text/plain"]) {
            return not_acceptable("a stream is reserved with Accept: text/plain");
        }
        // A token sent along is ignored: tokens are always the gateway's own.
        return match streams.reserve(params.key) {
            Ok(token) => {
                debug!(ctx = %params.key, "stream reserved");
                let mut response = Response::new(full(token.to_string()));
                *response.status_mut() = StatusCode::CREATED;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
            Err(err) => refusal(err),
        };
    }
    let Some(token) = stream_token(&parts.headers, parts.uri.query()) else {
        return refusal(StreamError::NotFound);
    };
    if parts.method == Method::DELETE {
        let operation_id = sse::query_parameter(parts.uri.query().unwrap_or(""), "operationId");
        let stopped = match operation_id {
            Some(id) => streams.stop(&token, &params.key, &id),
            None => streams
                .check(&token, &params.key)
                .and(Err(StreamError::MissingOperationId)),
        };
        return match stopped {
            Ok(()) => Response::new(full("")),
            Err(err) => refusal(err),
        };
    }
    if !matches!(parts.method, Method::GET | Method::POST) {
        return method_not_allowed(
            "single-connection streams use GET, POST, PUT and DELETE",
            "GET, POST, PUT, DELETE",
        );
    }
    if accepts_event_stream(&parts.headers) {
        return match streams.open(&token, &params.key) {
            Ok(open) => open_stream(&parts, upstream, state.clone(), open),
            Err(err) => refusal(err),
        };
    }
    if let Err(err) = streams.check(&token, &params.key) {
        return refusal(err);
    }
    if !accepts(
        &parts.headers,
        &["*/*", "application/*", "application/json"],
    ) {
        return not_acceptable("operations are posted with Accept: application/json");
    }
    let request = match read_request(&parts, body, &state.server).await {
        Ok((request, _)) => request,
        Err(response) => return response,
    };
    let Some(id) = sse::operation_id(request.extensions.as_ref()) else {
        return refusal(StreamError::MissingOperationId);
    };
    if id.len() > MAX_OPERATION_ID_LEN {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("operationId is longer than {MAX_OPERATION_ID_LEN} bytes"),
            "BAD_REQUEST",
        );
    }
    if let Some(refusal) = refuse_get_mutation(&parts.method, &request) {
        return refusal;
    }
    let key = params.key;
    let pending = PendingOperation {
        client,
        params,
        request,
    };
    match streams.post(&token, &key, &id, pending) {
        Ok(()) => {
            let mut response = Response::new(full(""));
            *response.status_mut() = StatusCode::ACCEPTED;
            response
        }
        Err(err) => refusal(err),
    }
}

/// Starts the task that feeds an opened stream and returns the streaming response.
fn open_stream(
    parts: &Parts,
    upstream: Arc<Upstream>,
    state: Arc<GatewayState>,
    open: OpenStream,
) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
    let span = tracing::info_span!(
        "downstream",
        route = %parts.uri.path(),
        protocol = "sse-single-connection",
    );
    state
        .sessions
        .clone()
        .spawn(feed(upstream, state, open, tx).instrument(span));
    event_stream_response(queued_body(rx))
}

/// Forgets the stream when its task ends, however it ends.
struct Forget<'a> {
    streams: &'a Reservations,
    token: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.streams.close(self.token);
    }
}

async fn feed(
    upstream: Arc<Upstream>,
    state: Arc<GatewayState>,
    open: OpenStream,
    tx: mpsc::Sender<Bytes>,
) {
    let streams = &state.sse_streams;
    let _forget = Forget {
        streams,
        token: &open.token,
    };
    debug!("stream opened");
    // Sent at once: some browsers and proxies stall until the first bytes arrive.
    if !push(&tx, sse::KEEP_ALIVE.to_owned()).await {
        return;
    }
    let mut operations: OperationStreams<OperationStream> = OperationStreams::new();
    let cancelled = state.downstream_shutdown.cancelled();
    tokio::pin!(cancelled);
    let every = state.server.keepalive_interval;
    let mut keepalive = time::interval_at(Instant::now() + every, every);
    loop {
        // Biased: a closed client or a draining gateway ends the stream before anything
        // else; posted operations start before more events are read, so a burst of events
        // cannot delay them.
        let text = tokio::select! {
            biased;
            _ = tx.closed() => {
                debug!("client left; stopping the stream's operations");
                return;
            }
            _ = &mut cancelled => {
                end_unfinished(streams, &open.token, &shutdown_event(), &tx).await;
                return;
            }
            _ = open.posted.notified() => {
                for started in streams.take_pending(&open.token) {
                    debug!(id = %started.id, "operation started");
                    let (id, serial) = (started.id, started.serial);
                    let pending = started.pending;
                    let operation = Operation {
                        id: id.clone(),
                        request: pending.request,
                        client: pending.client,
                        connect: pending.params,
                        upstream: upstream.clone(),
                    };
                    let tag = Arc::new(StreamedOperation {
                        framer: sse::OperationFramer::new(&id),
                        id,
                        serial,
                    });
                    let events = operation
                        .deliveries()
                        .map(move |delivery| (tag.clone(), delivery));
                    let events: Pin<Box<dyn Stream<Item = _> + Send>> = Box::pin(events);
                    operations.push(Abortable::new(events, started.abort));
                }
                continue;
            }
            Some((operation, delivery)) = operations.next(), if !operations.is_empty() => {
                let event = match delivery {
                    Delivery::Event(event) => event,
                    Delivery::TooSlow(error) => {
                        let id = &operation.id;
                        debug!(%id, %error, "operation cut off as too slow; ending the stream");
                        state.stats.slow_consumer_cut();
                        end_unfinished(streams, &open.token, &ending_event(&error), &tx).await;
                        return;
                    }
                };
                if event.is_terminal() {
                    streams.finished(&open.token, &operation.id, operation.serial);
                }
                operation.framer.frame(&event)
            }
            _ = keepalive.tick() => sse::KEEP_ALIVE.to_owned(),
        };
        if !push(&tx, text).await {
            return;
        }
    }
}

/// Sends `ending` (a terminal error) for every operation of the stream that has not ended,
/// in one chunk, before the stream ends.
async fn end_unfinished(
    streams: &Reservations,
    token: &str,
    ending: &Event,
    tx: &mpsc::Sender<Bytes>,
) {
    let mut text = String::new();
    for id in streams.unfinished(token) {
        text.push_str(&sse::encode_operation_event(&id, ending));
    }
    if !text.is_empty() {
        push(tx, text).await;
    }
}

/// Whether the request's `Accept` (absent: anything) names one of `types`.
fn accepts(headers: &HeaderMap, types: &[&str]) -> bool {
    !headers.contains_key(header::ACCEPT)
        || any_accept(headers, |value| {
            value.split(',').any(|range| {
                let essence = range.split(';').next().unwrap_or("").trim();
                types.iter().any(|t| essence.eq_ignore_ascii_case(t))
            })
        })
}

fn not_acceptable(message: &str) -> Response<ResponseBody> {
    json_error(StatusCode::NOT_ACCEPTABLE, message, "NOT_ACCEPTABLE")
}

/// The response for each refusal, with the status code graphql-sse's handler uses.
fn refusal(err: StreamError) -> Response<ResponseBody> {
    let (status, message, code) = match err {
        StreamError::NotFound => (StatusCode::NOT_FOUND, err.to_string(), "STREAM_NOT_FOUND"),
        StreamError::AlreadyOpen => (
            StatusCode::CONFLICT,
            err.to_string(),
            "STREAM_ALREADY_OPEN",
        ),
        StreamError::MissingOperationId => (
            StatusCode::BAD_REQUEST,
            err.to_string(),
            "MISSING_OPERATION_ID",
        ),
        StreamError::DuplicateOperation => (
            StatusCode::CONFLICT,
            err.to_string(),
            "DUPLICATE_OPERATION_ID",
        ),
        StreamError::TooManyOperations { limit } => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("at most {limit} operations per stream (server.sse_single_connection.max_operations_per_stream)"),
            "TOO_MANY_OPERATIONS",
        ),
        StreamError::TooManyStreams { limit } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("at most {limit} single-connection streams at once (server.sse_single_connection.max_streams)"),
            "TOO_MANY_STREAMS",
        ),
        StreamError::Random => (
            StatusCode::INTERNAL_SERVER_ERROR,
            err.to_string(),
            "INTERNAL_SERVER_ERROR",
        ),
    };
    json_error(status, &message, code)
}
