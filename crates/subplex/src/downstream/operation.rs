//! One client operation's way to and from its upstream, shared by every downstream kind.
//!
//! An [`Operation`] is what a downstream session hands to the upstream layer: the client's
//! id and request, who the client is ([`ClientContext`]: transport, path, peer, the request
//! headers that matter, its own init payload), and the connection parameters it reaches the
//! upstream with. It is the place hooks plug into: `on_subscribe` will rewrite `request`
//! before [`Operation::events`] starts it, `on_next` will see each event.
//!
//! Its events are a stream: it subscribes through the pool (waiting for an
//! upstream connection if there is none yet), then yields the upstream's events, and
//! turns an upstream failure into an error result followed by completion. The stream owns
//! the upstream [`Subscription`](subplex_upstream::Subscription): dropping the stream stops
//! the operation upstream.
//!
//! Sessions poll their operations' streams themselves, no task or queue in between: while
//! a client's socket is slow the session stops polling, the subscription's own queue fills,
//! and the upstream connection cuts it off (slow-consumer policy) instead of buffering.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use subplex_protocol::{Event, GraphqlRequest, RawJson};
use subplex_upstream::{ConnectParams, Subscription, UpstreamError};
use tracing::debug;

use crate::state::Upstream;
use crate::trace::OperationSpan;

/// Who a client is, as each of its operations sees it. Shared by every operation of one
/// connection (WebSocket) or stream (SSE single connection mode).
#[derive(Debug)]
pub(crate) struct ClientContext {
    /// `"graphql-transport-ws"`, `"graphql-ws"`, `"sse"`, `"multipart"`, ...
    pub transport: &'static str,
    /// The route path the client used.
    pub path: String,
    pub peer: SocketAddr,
    /// The request headers kept for the upstream and for hooks (see
    /// `Upstream::client_headers`): not the whole map, which would cost memory per client.
    pub headers: HeaderMap,
    /// The client's own `connection_init` payload; `{}` for transports without one.
    pub init_payload: RawJson,
}

/// One client operation: the unit a downstream session hands to the upstream layer.
#[derive(Debug)]
pub(crate) struct Operation {
    /// The client's id for it (`""` where the transport has none: SSE distinct mode,
    /// multipart).
    pub id: Arc<str>,
    pub request: GraphqlRequest,
    pub client: Arc<ClientContext>,
    /// The security context, forwarded headers and final init payload it reaches the
    /// upstream with.
    pub connect: ConnectParams,
    pub upstream: Arc<Upstream>,
}

impl Operation {
    /// The operation's events, ending after its terminal event. An upstream failure
    /// becomes an error result followed by `complete` (see [`failure_result`]).
    pub(crate) fn events(self) -> impl Stream<Item = Event> + Send + 'static {
        self.log_start();
        let span = OperationSpan::start(&self);
        events(self.upstream, self.connect, self.request, span)
    }

    /// The operation's events, or the upstream failure that ends it, for transports that
    /// report a failure differently from an operation's own result (multipart).
    pub(crate) fn outcomes(
        self,
    ) -> impl Stream<Item = Result<Event, UpstreamError>> + Send + 'static {
        self.log_start();
        let span = OperationSpan::start(&self);
        outcomes(self.upstream, self.connect, self.request, span)
    }

    /// One debug line per operation; never headers, payloads or variables.
    fn log_start(&self) {
        debug!(
            id = %self.id,
            transport = self.client.transport,
            path = %self.client.path,
            peer = %self.client.peer,
            ctx = %self.connect.key,
            operation = ?self.request.operation_name,
            "operation started"
        );
    }
}

/// Where an operation's stream is.
enum Stage {
    /// Not subscribed yet.
    Start {
        params: ConnectParams,
        request: GraphqlRequest,
        running: Running,
    },
    Active(Subscription, Running),
    Done,
}

/// An operation counted in `subplex_operations_active` until the stage moves on to `Done`
/// or the stream is dropped; it also leads to the upstream's other metrics, and carries
/// the operation's trace span. One pointer without the `otlp` feature (the span is then
/// zero-sized), like the gauge handle it replaces: idle operations are many, and each
/// byte counts.
struct Running {
    upstream: Arc<Upstream>,
    span: OperationSpan,
}

impl Running {
    fn start(upstream: Arc<Upstream>, span: OperationSpan) -> Running {
        upstream.operations_active.inc();
        Running { upstream, span }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.upstream.operations_active.dec();
    }
}

fn events(
    upstream: Arc<Upstream>,
    params: ConnectParams,
    request: GraphqlRequest,
    span: OperationSpan,
) -> impl Stream<Item = Event> + Send + 'static {
    outcomes(upstream, params, request, span).flat_map(|outcome| {
        let (first, second) = match outcome {
            Ok(event) => (event, None),
            Err(error) => (failure_result(&error), Some(Event::Complete)),
        };
        futures_util::stream::iter(std::iter::once(first).chain(second))
    })
}

fn outcomes(
    upstream: Arc<Upstream>,
    params: ConnectParams,
    request: GraphqlRequest,
    span: OperationSpan,
) -> impl Stream<Item = Result<Event, UpstreamError>> + Send + 'static {
    let start = Stage::Start {
        running: Running::start(upstream, span),
        params,
        request,
    };
    futures_util::stream::unfold(start, |stage| async move {
        match stage {
            Stage::Start {
                params,
                request,
                mut running,
            } => {
                // Boxed: this stream's future is as large as its largest await, and the
                // subscribe future (which may probe the upstream) takes kilobytes, while an
                // operation then waits on `recv` for its whole life. Unboxed, every idle
                // operation kept that space: 30 KiB instead of 20 per idle subscription
                // (`subplex-bench --scenarios idle`).
                let upstream = &running.upstream;
                let subscribing = Box::pin(
                    running
                        .span
                        .subscribing(upstream, upstream.pool.subscribe(&params, request)),
                );
                match subscribing.await {
                    Ok(subscription) => {
                        running
                            .span
                            .upstream_protocol(running.upstream.pool.current_protocol());
                        next_outcome(subscription, running).await
                    }
                    Err(error) => {
                        debug!(%error, "operation could not start upstream");
                        running.span.end(error.code());
                        Some((Err(error), Stage::Done))
                    }
                }
            }
            Stage::Active(subscription, running) => next_outcome(subscription, running).await,
            Stage::Done => None,
        }
    })
}

async fn next_outcome(
    mut subscription: Subscription,
    mut running: Running,
) -> Option<(Result<Event, UpstreamError>, Stage)> {
    match subscription.recv().await? {
        Ok(event) => {
            // The session writes what this stream yields at once, in the same task: the
            // event is handed to its client now.
            running
                .upstream
                .metrics
                .delivered(subscription.last_read_at());
            running.span.event();
            let next = match event {
                Event::Next(_) => Stage::Active(subscription, running),
                Event::Complete => {
                    running.span.end("complete");
                    Stage::Done
                }
                Event::Error(_) => {
                    running.span.end("error");
                    Stage::Done
                }
            };
            Some((Ok(event), next))
        }
        Err(error) => {
            running.span.end(error.code());
            Some((Err(error), Stage::Done))
        }
    }
}

/// An upstream failure as the client sees it: a result carrying the GraphQL error, then
/// (from the stream) completion. Every client library surfaces that as data plus a clean
/// end, in every dialect, rather than as a transport error some libraries would retry.
fn failure_result(error: &UpstreamError) -> Event {
    let errors = error.to_graphql_errors();
    let result = format!("{{\"errors\":{}}}", errors.as_str());
    // Built from a valid errors array, so it is valid JSON.
    Event::Next(RawJson::parse(&result).unwrap_or_else(|_| RawJson::empty_object()))
}
