//! Apollo's multipart HTTP subscriptions: one request, one operation, one
//! `multipart/mixed` response (framing in `subplex_protocol::multipart`).
//!
//! A task polls the operation's events and feeds the response body through a small
//! queue, as for SSE. It writes a heartbeat part at once and then whenever the
//! subscription has been idle for `server.multipart.heartbeat_interval_ms`. An upstream
//! failure (or the gateway draining, or the client being cut off as too slow, counted as
//! a `slow_consumer` cut) is a transport error: a part with a `null` payload and top-level
//! `errors`, then the end of the body.
//!
//! Queries and mutations sent with this `Accept` are answered as Apollo Router answers
//! them: when the client also takes JSON they are forwarded over plain HTTP and answered
//! with JSON; otherwise they run like a subscription and give one part and the end.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use subplex_protocol::{multipart, OperationType};
use subplex_upstream::UpstreamError;
use tokio::sync::mpsc;
use tokio::time::{self, Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::hooks;
use super::operation::{is_slow_consumer_cut, Operation};
use super::streaming::{any_accept, push, queued_response, read_operation, spawn_feed};
use crate::responses::ResponseBody;
use crate::state::{DownstreamStats, GatewayState, Upstream};

/// Whether the request asks for multipart subscriptions (`subscriptionSpec=1.0`).
pub(crate) fn is_multipart<B>(req: &Request<B>) -> bool {
    any_accept(req.headers(), multipart::accepts_subscriptions)
}

pub(crate) async fn handle(
    req: Request<Incoming>,
    upstream: Arc<Upstream>,
    state: Arc<GatewayState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let (request, body) = match read_operation(&parts, body, state.server.max_message_bytes).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let subscription =
        subplex_protocol::operation_type(&request.query, request.operation_name.as_deref())
            == Some(OperationType::Subscription);
    if !subscription && any_accept(&parts.headers, multipart::accepts_json) {
        if let Some(refusal) = super::http::refused_by_hook(&parts, peer, &upstream) {
            return refusal;
        }
        return super::http::forward_body(parts, body, upstream).await;
    }

    let heartbeat = state.server.multipart_heartbeat_interval;
    let shutdown = state.downstream_shutdown.clone();
    let stats = state.stats.clone();
    let rx = match spawn_feed(
        &state,
        &parts,
        peer,
        "multipart",
        upstream,
        request,
        |operation, tx| feed(operation, tx, heartbeat, shutdown, stats),
    ) {
        Ok(rx) => rx,
        Err(refusal) => return hooks::refusal_response(refusal),
    };
    let mut response = queued_response(rx);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(multipart::CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx and similar proxies buffer responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

async fn feed(
    operation: Operation,
    tx: mpsc::Sender<Bytes>,
    heartbeat_every: Duration,
    shutdown: CancellationToken,
    stats: Arc<DownstreamStats>,
) {
    // The first heartbeat at once, as Apollo Router does: it gets the headers and the
    // first delimiter through proxies before the first event.
    let opening = [multipart::OPENING, multipart::HEARTBEAT].concat();
    if !push(&tx, opening).await {
        return;
    }
    let outcomes = operation.outcomes();
    tokio::pin!(outcomes);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut heartbeat = time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
    loop {
        // Biased: a closed client or a draining gateway ends the body before anything
        // else is read from the upstream.
        let (text, last) = tokio::select! {
            biased;
            _ = tx.closed() => {
                debug!("client left; stopping the operation");
                return;
            }
            _ = &mut cancelled => (transport_error(&UpstreamError::ShuttingDown), true),
            outcome = outcomes.next() => match outcome {
                Some(Ok(event)) => {
                    // Heartbeats fill idle time only.
                    heartbeat.reset();
                    (multipart::encode_event(&event), event.is_terminal())
                }
                Some(Err(error)) => {
                    if is_slow_consumer_cut(&error) {
                        stats.slow_consumer_cut();
                    }
                    (transport_error(&error), true)
                }
                // Not reached: the stream ends only after a terminal event or a failure.
                None => (multipart::CLOSING.to_owned(), true),
            },
            _ = heartbeat.tick() => (multipart::HEARTBEAT.to_owned(), false),
        };
        if !push(&tx, text).await || last {
            return;
        }
    }
}

fn transport_error(error: &UpstreamError) -> String {
    debug!(%error, "operation failed upstream");
    multipart::encode_transport_error(&error.to_graphql_errors())
}
