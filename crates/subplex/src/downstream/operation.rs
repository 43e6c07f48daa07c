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
//! One failure is not the operation's but the client's: the slow-consumer cut. The stream
//! yields it as [`Delivery::TooSlow`], and the session ends the client's whole connection
//! (WebSocket close 1013; SSE and multipart: an error event, then the end of the stream),
//! counting it once in `subplex_client_cuts_total{reason="slow_consumer"}`.
//!
//! A config reload that retires the operation's upstream, or removes its route, ends the
//! stream the same way, with `UPSTREAM_CONFIG_CHANGED` or `ROUTE_REMOVED` (see
//! [`RouteWatch`]).
//!
//! Sessions poll their operations' streams themselves, no task or queue in between: while
//! a client's socket is slow the session stops polling, the subscription's own queue fills,
//! and the upstream connection cuts it off (slow-consumer policy) instead of buffering.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::future::Either;
use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use pin_project_lite::pin_project;
use subplex_protocol::{Event, GraphqlRequest, RawJson};
use subplex_upstream::{ConnectParams, Subscription, UpstreamError, WriteThrough};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::debug;

use super::hooks::{self, ClientHooks, OperationHooks};
use crate::state::{DownstreamStats, Upstream};
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

    /// Whether the client's script has a hook point that runs per operation or per
    /// result: its operations then go through the hooks, not straight to the socket.
    pub(crate) fn has_operation_hooks(&self) -> bool {
        self.hooks
            .as_ref()
            .is_some_and(|hooks| hooks.script.points().any_operation_hook())
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

/// What an operation's stream hands the session that polls it.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// An event for the client. An upstream failure arrives as an error result, then
    /// `complete` (see [`failure_result`]).
    Event(Event),
    /// The client fell behind and the upstream layer cut this operation off (the
    /// slow-consumer policy); nothing more of it comes. A verdict on the client, not an
    /// event of the operation: the session ends the client's connection with it.
    /// Boxed: rare, and the error is several times the size of an event, which every
    /// session's future would otherwise keep room for.
    TooSlow(Box<UpstreamError>),
}

impl Operation {
    /// The operation's deliveries, ending after its terminal event or a
    /// [`Delivery::TooSlow`], for sessions that carry several operations (WebSocket, SSE
    /// single connection mode).
    pub(crate) fn deliveries(self) -> impl Stream<Item = Delivery> + Send + 'static {
        deliveries(self.outcomes())
    }

    /// [`deliveries`](Self::deliveries); with a `writer`, the `next` results are written
    /// by it on the upstream connection's task instead (see
    /// `Subscription::write_through`), and the stream yields only the terminal event or
    /// the cut. Routes with operation hooks ignore `writer`: their hooks see every
    /// result, in the session.
    pub(crate) fn deliveries_through(
        self,
        writer: Option<Arc<dyn WriteThrough>>,
    ) -> impl Stream<Item = Delivery> + Send + 'static {
        deliveries(self.outcomes_through(writer))
    }

    /// The operation's events, for a stream that carries this operation alone (SSE
    /// distinct mode): a slow-consumer cut becomes the terminal error event (see
    /// [`ending_event`]) that ends the stream, and is counted in `stats`.
    pub(crate) fn events(
        self,
        stats: Arc<DownstreamStats>,
    ) -> impl Stream<Item = Event> + Send + 'static {
        self.deliveries().map(move |delivery| match delivery {
            Delivery::Event(event) => event,
            Delivery::TooSlow(error) => {
                stats.slow_consumer_cut();
                ending_event(&error)
            }
        })
    }

    /// The operation's events, or the upstream failure that ends it, for transports that
    /// report a failure differently from an operation's own result (multipart).
    pub(crate) fn outcomes(
        self,
    ) -> impl Stream<Item = Result<Event, UpstreamError>> + Send + 'static {
        self.outcomes_through(None)
    }

    fn outcomes_through(
        self,
        writer: Option<Arc<dyn WriteThrough>>,
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
                writer,
            )),
            Some(hooks) => {
                let (upstream, connect) = (self.upstream, self.connect);
                Either::Right(hooks.outcomes(self.request, move |request| {
                    outcomes(upstream, connect, request, watch, span, None)
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
/// its upstream (`Upstream::route_token`), and the error it then gets.
struct RouteWatch {
    upstream: Arc<Upstream>,
    client: Arc<ClientContext>,
}

impl RouteWatch {
    fn new(upstream: &Arc<Upstream>, client: &Arc<ClientContext>) -> RouteWatch {
        RouteWatch {
            upstream: upstream.clone(),
            client: client.clone(),
        }
    }

    /// Resolves once a reload ends the operation. Made once per operation and kept: a
    /// fresh `cancelled()` per event would lock the route's token, which every operation
    /// of the route shares, several times per event and client.
    fn ended(&self) -> WaitForCancellationFutureOwned {
        self.upstream
            .route_token(&self.client.path)
            .cancelled_owned()
    }

    /// The error the client gets once the route ended.
    fn error(&self) -> UpstreamError {
        self.upstream.route_end_error(&self.client.path)
    }
}

/// Where an operation's stream is.
enum Stage {
    /// Subscribing through the pool. Boxed: the subscribe future (which may probe the
    /// upstream) takes kilobytes, while an operation then waits on its subscription for
    /// its whole life; inline, every idle operation would keep that space.
    Subscribing(Pin<Box<dyn Future<Output = Result<Subscription, UpstreamError>> + Send>>),
    Active(Subscription),
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
    /// Where its `next` results are written, if not through this stream; the span counts
    /// what it wrote.
    writer: Option<Arc<dyn WriteThrough>>,
}

impl Running {
    fn start(
        upstream: Arc<Upstream>,
        span: OperationSpan,
        writer: Option<Arc<dyn WriteThrough>>,
    ) -> Running {
        upstream.operations_active.inc();
        Running {
            upstream,
            span,
            writer,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.upstream.operations_active.dec();
        if let Some(writer) = &self.writer {
            self.span.add_events(writer.written());
        }
    }
}

/// Whether `error` is the slow-consumer cut: the client's failure, not the operation's.
pub(crate) fn is_slow_consumer_cut(error: &UpstreamError) -> bool {
    matches!(error, UpstreamError::SlowConsumer { .. })
}

pin_project! {
    /// An operation's deliveries: an upstream failure turned into an error result and
    /// `complete` (see [`failure_result`]), the slow-consumer cut into
    /// [`Delivery::TooSlow`].
    struct Deliveries<S> {
        #[pin]
        outcomes: S,
        // The `complete` owed after a failure result.
        complete: bool,
    }
}

impl<S: Stream<Item = Result<Event, UpstreamError>>> Stream for Deliveries<S> {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = self.project();
        if std::mem::take(this.complete) {
            return Poll::Ready(Some(Delivery::Event(Event::Complete)));
        }
        Poll::Ready(match ready!(this.outcomes.poll_next(cx)) {
            Some(Ok(event)) => Some(Delivery::Event(event)),
            Some(Err(error)) if is_slow_consumer_cut(&error) => {
                Some(Delivery::TooSlow(Box::new(error)))
            }
            Some(Err(error)) => {
                *this.complete = true;
                Some(Delivery::Event(failure_result(&error)))
            }
            None => None,
        })
    }
}

fn deliveries(
    outcomes: impl Stream<Item = Result<Event, UpstreamError>> + Send + 'static,
) -> impl Stream<Item = Delivery> + Send + 'static {
    Deliveries {
        outcomes,
        complete: false,
    }
}

pin_project! {
    /// One operation's outcomes, polled once per event and client by the session that
    /// owns it: written by hand, so an event passes through one `poll_next` rather than a
    /// tower of combinators, and the route watch is registered once.
    struct Outcomes {
        #[pin]
        ended: WaitForCancellationFutureOwned,
        watch: RouteWatch,
        running: Running,
        stage: Stage,
    }
}

fn outcomes(
    upstream: Arc<Upstream>,
    params: ConnectParams,
    request: GraphqlRequest,
    watch: RouteWatch,
    span: OperationSpan,
    writer: Option<Arc<dyn WriteThrough>>,
) -> impl Stream<Item = Result<Event, UpstreamError>> + Send + 'static {
    let running = Running::start(upstream.clone(), span, writer);
    let subscribe = async move { upstream.pool.subscribe(&params, request).await };
    let subscribing = running.span.subscribing(&running.upstream, subscribe);
    Outcomes {
        ended: watch.ended(),
        watch,
        running,
        stage: Stage::Subscribing(Box::pin(subscribing)),
    }
}

impl Stream for Outcomes {
    type Item = Result<Event, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if matches!(this.stage, Stage::Done) {
            return Poll::Ready(None);
        }
        // Biased: a reload that ended the route wins over whatever the retired pool
        // reports as it shuts down, and over events already queued: the client is told at
        // once, and the subscription's drop stops the operation upstream.
        if this.ended.poll(cx).is_ready() {
            let error = this.watch.error();
            debug!(%error, "config reload ended the operation");
            this.running.span.end(error.code());
            *this.stage = Stage::Done;
            return Poll::Ready(Some(Err(error)));
        }
        if let Stage::Subscribing(subscribing) = this.stage {
            match ready!(subscribing.as_mut().poll(cx)) {
                Ok(mut subscription) => {
                    let protocol = this.running.upstream.pool.current_protocol();
                    this.running.span.upstream_protocol(protocol);
                    if let Some(writer) = &this.running.writer {
                        subscription.write_through(writer.clone());
                    }
                    *this.stage = Stage::Active(subscription);
                }
                Err(error) => {
                    debug!(%error, "operation could not start upstream");
                    this.running.span.end(error.code());
                    *this.stage = Stage::Done;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
        let Stage::Active(subscription) = this.stage else {
            unreachable!("Done and Subscribing were handled above");
        };
        let received = ready!(subscription.poll_recv(cx));
        let end = match &received {
            None => Some(None),
            Some(Ok(event)) => {
                // The session writes what this stream yields at once, in the same task:
                // the event is handed to its client now.
                let metrics = &this.running.upstream.metrics;
                metrics.delivered(subscription.last_read_at());
                this.running.span.event();
                match event {
                    Event::Next(_) => None,
                    Event::Complete => Some(Some("complete")),
                    Event::Error(_) => Some(Some("error")),
                }
            }
            Some(Err(error)) => Some(Some(error.code())),
        };
        if let Some(reason) = end {
            if let Some(reason) = reason {
                this.running.span.end(reason);
            }
            *this.stage = Stage::Done;
        }
        Poll::Ready(received)
    }
}

/// How a draining gateway ends an operation on a transport that has no close code for it
/// (SSE in both modes): see [`ending_event`].
pub(crate) fn shutdown_event() -> Event {
    ending_event(&UpstreamError::ShuttingDown)
}

/// How the gateway ends an operation for a reason of its own (draining, a client too
/// slow) on a transport that has no close code for it (SSE in both modes): a terminal
/// error, which SSE encodes as a result carrying the error, then `complete`. The client
/// learns why its operation ended, and every client library ends it cleanly.
pub(crate) fn ending_event(error: &UpstreamError) -> Event {
    Event::Error(error.to_graphql_errors())
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
