//! One client operation's way to and from its upstream, shared by every downstream kind.
//!
//! An [`Operation`] is what a downstream session hands to the upstream layer: the client's
//! id and request, who the client is ([`ClientContext`]: transport, path, peer, the request
//! headers that matter, its own init payload), and the connection parameters it reaches the
//! upstream with. It is the place hooks plug into (`hooks::OperationHooks`): `on_subscribe`
//! rewrites `request` before the operation starts, `on_next` sees each result for this
//! client, `on_complete` runs once when it ends.
//!
//! Its events are a stream: it subscribes through the pool (waiting for an
//! upstream connection if there is none yet), then yields the upstream's events, and
//! turns an upstream failure into an error result followed by completion. The stream owns
//! the upstream [`Subscription`](subplex_upstream::Subscription): dropping the stream stops
//! the operation upstream.
//!
//! A config reload that retires the operation's upstream, or removes its route, ends the
//! stream the same way, with `UPSTREAM_CONFIG_CHANGED` or `ROUTE_REMOVED` (see
//! [`RouteWatch`]).
//!
//! Sessions poll their operations' streams themselves, no task or queue in between: while
//! a client's socket is slow the session stops polling, the subscription's own queue fills,
//! and the upstream connection cuts it off (slow-consumer policy) instead of buffering.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::Either;
use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use subplex_protocol::{Event, GraphqlRequest, RawJson};
use subplex_upstream::{ConnectParams, Subscription, UpstreamError};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::hooks::{self, ClientHooks, OperationHooks};
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
    /// The route's hook script, if it has one (see [`ClientContext::with_hooks`]).
    pub hooks: Option<ClientHooks>,
}

impl ClientContext {
    /// The client with its route's hook script attached.
    pub(crate) fn with_hooks(mut self, upstream: &Upstream) -> ClientContext {
        self.hooks = hooks::client_hooks(upstream, &self);
        self
    }
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
        events(self.outcomes())
    }

    /// The operation's events, or the upstream failure that ends it, for transports that
    /// report a failure differently from an operation's own result (multipart).
    pub(crate) fn outcomes(
        self,
    ) -> impl Stream<Item = Result<Event, UpstreamError>> + Send + 'static {
        self.log_start();
        let watch = RouteWatch::new(&self.upstream, &self.client);
        let span = OperationSpan::start(&self);
        // Only operations whose route has operation hooks pay for them.
        match OperationHooks::for_operation(&self.upstream, &self.client, &self.request) {
            None => Either::Left(outcomes(
                self.upstream,
                self.connect,
                self.request,
                watch,
                span,
            )),
            Some(hooks) => {
                let (upstream, connect) = (self.upstream, self.connect);
                Either::Right(hooks.outcomes(self.request, move |request| {
                    outcomes(upstream, connect, request, watch, span)
                }))
            }
        }
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

/// What an operation watches to learn that a config reload ended its route or retired
/// its upstream (`Upstream::route_token`).
struct RouteWatch {
    ended: CancellationToken,
    upstream: Arc<Upstream>,
    client: Arc<ClientContext>,
}

impl RouteWatch {
    fn new(upstream: &Arc<Upstream>, client: &Arc<ClientContext>) -> RouteWatch {
        RouteWatch {
            ended: upstream.route_token(&client.path),
            upstream: upstream.clone(),
            client: client.clone(),
        }
    }

    /// Resolves, with the error the client gets, once a reload ends the operation.
    async fn ended(&self) -> UpstreamError {
        self.ended.cancelled().await;
        self.upstream.route_end_error(&self.client.path)
    }
}

/// Where an operation's stream is.
enum Stage {
    /// Not subscribed yet. Boxed: an operation spends its life `Active`, and the stream
    /// keeps room for its largest stage.
    Start(Box<Starting>),
    Active(Subscription, Running, RouteWatch),
    Done,
}

/// What an operation starts with.
struct Starting {
    params: ConnectParams,
    request: GraphqlRequest,
    running: Running,
    watch: RouteWatch,
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
    outcomes: impl Stream<Item = Result<Event, UpstreamError>> + Send + 'static,
) -> impl Stream<Item = Event> + Send + 'static {
    outcomes.flat_map(|outcome| {
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
    watch: RouteWatch,
    span: OperationSpan,
) -> impl Stream<Item = Result<Event, UpstreamError>> + Send + 'static {
    let start = Stage::Start(Box::new(Starting {
        running: Running::start(upstream, span),
        params,
        request,
        watch,
    }));
    futures_util::stream::unfold(start, |mut stage| async move {
        loop {
            match stage {
                // Boxed: subscribing is the largest part of the stream's future, and an
                // operation then waits on `recv` for its whole life; unboxed, every idle
                // operation would keep that space (30 KiB instead of 20 per idle
                // subscription when the probe was added: `subplex-bench --scenarios idle`).
                Stage::Start(starting) => match Box::pin(subscribe(*starting)).await {
                    Ok(active) => stage = active,
                    Err(error) => return Some((Err(error), Stage::Done)),
                },
                Stage::Active(subscription, running, watch) => {
                    return next_outcome(subscription, running, watch).await
                }
                Stage::Done => return None,
            }
        }
    })
}

/// Starts the operation upstream: the `Active` stage, or why it could not start.
async fn subscribe(starting: Starting) -> Result<Stage, UpstreamError> {
    let Starting {
        params,
        request,
        mut running,
        watch,
    } = starting;
    let upstream = &running.upstream;
    let subscribing = running
        .span
        .subscribing(upstream, upstream.pool.subscribe(&params, request));
    // Biased: a reload that ended the route wins over whatever the retired pool reports
    // as it shuts down.
    let subscribed = tokio::select! {
        biased;
        error = watch.ended() => Err(error),
        subscribed = subscribing => subscribed,
    };
    match subscribed {
        Ok(subscription) => {
            running
                .span
                .upstream_protocol(running.upstream.pool.current_protocol());
            Ok(Stage::Active(subscription, running, watch))
        }
        Err(error) => {
            debug!(%error, "operation could not start upstream");
            running.span.end(error.code());
            Err(error)
        }
    }
}

/// The operation's next outcome and the stage after it. Not an `async fn`, whose
/// arguments would be stored twice in the future that every idle operation keeps.
#[allow(clippy::manual_async_fn)]
fn next_outcome(
    mut subscription: Subscription,
    mut running: Running,
    watch: RouteWatch,
) -> impl std::future::Future<Output = Option<(Result<Event, UpstreamError>, Stage)>> + Send {
    async move {
        // Biased as above. Events already queued are not delivered once the route ended: the
        // client is told at once, and the subscription's drop stops the operation upstream.
        let received = tokio::select! {
            biased;
            error = watch.ended() => {
                debug!(%error, "config reload ended the operation");
                running.span.end(error.code());
                return Some((Err(error), Stage::Done));
            }
            received = subscription.recv() => received,
        };
        match received? {
            Ok(event) => {
                // The session writes what this stream yields at once, in the same task: the
                // event is handed to its client now.
                running
                    .upstream
                    .metrics
                    .delivered(subscription.last_read_at());
                running.span.event();
                let next = match event {
                    Event::Next(_) => Stage::Active(subscription, running, watch),
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
}

/// How a draining gateway ends an operation on a transport that has no close code for it
/// (SSE in both modes): a terminal error with [`UpstreamError::ShuttingDown`], which SSE
/// encodes as a result carrying the error, then `complete`. The client learns why its
/// operation ended, and every client library ends it cleanly.
pub(crate) fn shutdown_event() -> Event {
    Event::Error(UpstreamError::ShuttingDown.to_graphql_errors())
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
