//! Apollo's multipart HTTP subscriptions: one request, one operation, one
//! `multipart/mixed` response (framing in `subplex_protocol::multipart`).
//!
//! The response body polls the operation's events itself (`operation_body`), as for SSE.
//! It writes a heartbeat part at once and then whenever the
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
use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use subplex_protocol::{multipart, Event, OperationType};
use subplex_upstream::UpstreamError;
use tracing::debug;

use super::hooks;
use super::operation::is_slow_consumer_cut;
use super::operation_body::{Framing, OperationBody};
use super::streaming::{any_accept, http_operation, read_operation};
use crate::responses::{RequestBody, ResponseBody};
use crate::state::{DownstreamStats, GatewayState, Upstream};

/// Whether the request asks for multipart subscriptions (`subscriptionSpec=1.0`).
pub(crate) fn is_multipart<B>(req: &Request<B>) -> bool {
    any_accept(req.headers(), multipart::accepts_subscriptions)
}

pub(crate) async fn handle(
    req: Request<RequestBody>,
    upstream: Arc<Upstream>,
    state: Arc<GatewayState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let (request, body) = match read_operation(&parts, body, &state.server).await {
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

    let (operation, span) = match http_operation(&parts, peer, "multipart", upstream, request) {
        Ok(prepared) => prepared,
        Err(refusal) => return hooks::refusal_response(refusal),
    };
    let body = OperationBody::new(
        operation.outcomes(),
        MultipartFraming {
            stats: state.stats.clone(),
        },
        state.server.multipart_heartbeat_interval,
        state.downstream_shutdown.clone().cancelled_owned(),
        span,
    );
    let mut response = Response::new(BodyExt::boxed_unsync(body));
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

/// Multipart framing of one operation's outcomes: the opening delimiter and a heartbeat
/// at once, then a heartbeat whenever the subscription has been idle for the interval; an
/// upstream failure, a slow-consumer cut (counted in `stats`) or the gateway draining as a
/// transport error, which ends the body.
struct MultipartFraming {
    stats: Arc<DownstreamStats>,
}

impl Framing for MultipartFraming {
    type Item = Result<Event, UpstreamError>;
    const KEEP_ALIVE_FILLS_IDLE_TIME: bool = true;

    /// The first heartbeat at once, as Apollo Router does: it gets the headers and the
    /// first delimiter through proxies before the first event.
    fn opening(&self) -> Bytes {
        Bytes::from([multipart::OPENING, multipart::HEARTBEAT].concat())
    }

    fn keep_alive(&self) -> Bytes {
        Bytes::from_static(multipart::HEARTBEAT.as_bytes())
    }

    fn encode(&self, outcome: Result<Event, UpstreamError>) -> (Bytes, bool) {
        match outcome {
            Ok(event) => (
                Bytes::from(multipart::encode_event(&event)),
                event.is_terminal(),
            ),
            Err(error) => {
                if is_slow_consumer_cut(&error) {
                    self.stats.slow_consumer_cut();
                }
                (transport_error(&error), true)
            }
        }
    }

    fn shutdown(&self) -> Bytes {
        transport_error(&UpstreamError::ShuttingDown)
    }

    /// Not reached: the stream ends only after a terminal event or a failure.
    fn end(&self) -> Option<Bytes> {
        Some(Bytes::from_static(multipart::CLOSING.as_bytes()))
    }
}

fn transport_error(error: &UpstreamError) -> Bytes {
    debug!(%error, "operation failed upstream");
    Bytes::from(multipart::encode_transport_error(
        &error.to_graphql_errors(),
    ))
}
