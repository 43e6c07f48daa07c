//! One client WebSocket connection as one task: it owns the socket, the dialect's rules
//! and its running operations, whose event streams it polls itself (see `operation`), with
//! a single `select!` loop.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_immediate;
use futures_util::stream::{AbortHandle, Abortable};
use futures_util::{SinkExt, Stream, StreamExt};
use http::HeaderMap;
use subplex_protocol::close::{self, Close};
use subplex_protocol::{
    legacy_ws, transport_ws, Event, EventFramer, GraphqlRequest, RawJson, Subprotocol,
};
use subplex_upstream::{ConnectParams, WriteThrough};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::downstream::hooks::{self, InitRefusal};
use crate::downstream::operation::{ClientContext, Delivery, Operation};
use crate::downstream::operation_streams::OperationStreams;
use crate::downstream::ws::write_through::{Attention, ClientSocket, OperationWriter};
use crate::state::{GatewayState, Upstream};

/// What a session's WebSocket runs over: the upgraded hyper connection in production, an
/// in-memory pipe in the unit tests below. The session is generic over it (monomorphised,
/// so the production path pays nothing for the tests' seam).
pub(super) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for S {}

/// A running operation's deliveries, each with its operation's framer (the envelope around
/// the payload is built once per operation, not per event); abortable so that a client's
/// `complete`/`stop` drops it (and with it the upstream subscription) at once.
type OperationStream = Abortable<Pin<Box<dyn Stream<Item = (Arc<EventFramer>, Delivery)> + Send>>>;

/// Events written before one flush at most. A burst (many operations, or a queue that
/// filled while the socket was slow) goes out in few syscalls, and the bound keeps one
/// batch from holding the loop away from the client's own frames for long.
const MAX_EVENTS_PER_FLUSH: usize = 64;

/// The rules of the session's dialect.
enum Rules {
    TransportWs(transport_ws::server::ServerRules),
    Legacy(legacy_ws::server::ServerRules),
}

impl Rules {
    fn awaiting_init(&self) -> bool {
        match self {
            Rules::TransportWs(rules) => rules.awaiting_init(),
            Rules::Legacy(rules) => rules.awaiting_init(),
        }
    }

    fn finished(&mut self, id: &str) {
        match self {
            Rules::TransportWs(rules) => rules.finished(id),
            Rules::Legacy(rules) => rules.finished(id),
        }
    }
}

/// What the session does after handling one input.
enum Flow {
    Continue,
    /// Close the socket with this code and reason, wait for the client's reply, then end.
    Close(u16, String),
    /// The client sent a Close frame: answer it (RFC 6455 §5.5.1), then end. Without the
    /// answer the client sees 1006 instead of its own clean close, and the graphql-ws
    /// client, which closes lazily after its last operation, reports an error.
    ClosedByClient,
    /// A write to the client did not complete in time: it stopped reading. End without a
    /// close frame, which could not be written either.
    Cut(&'static str),
    /// The socket broke or the client vanished: end without a close frame of ours.
    End,
}

/// How long a write to a client may take, and the token that abandons a stuck write at
/// shutdown, so that neither a drain nor a keep-alive ever waits behind one slow client.
#[derive(Clone)]
struct WriteBound {
    timeout: Duration,
    shutdown: CancellationToken,
}

/// One client WebSocket connection.
pub(super) struct DownstreamSession {
    subprotocol: Subprotocol,
    rules: Rules,
    upstream: Arc<Upstream>,
    /// Who the client is, until `connection_init` completes it with the init payload.
    client: Option<ClientDetails>,
    state: Arc<GatewayState>,
    /// Set once `connection_init` was accepted.
    connect: Option<Connected>,
    /// Running operations by client id. Once aborted, a stream yields nothing more, and
    /// its writer (if written through) is retired, so an id reused after `complete` can
    /// never receive the old operation's events.
    operations: HashMap<Arc<str>, RunningOperation>,
    /// Polled by the session itself: no task and no queue between upstream and socket.
    streams: OperationStreams<OperationStream>,
    writes: WriteBound,
    /// The client's socket when the upstream connection tasks write its operations'
    /// `next` frames themselves (see `write_through`); `None` over TLS.
    write_through: Option<Arc<ClientSocket>>,
}

/// What the session keeps of a running operation.
struct RunningOperation {
    abort: AbortHandle,
    writer: Option<Arc<OperationWriter>>,
}

/// What the upgrade request told about the client.
pub(super) struct ClientDetails {
    pub path: String,
    pub peer: SocketAddr,
    /// Already narrowed by `Upstream::client_headers`.
    pub headers: HeaderMap,
}

/// An initialised client: who it is and how its operations reach the upstream.
struct Connected {
    client: Arc<ClientContext>,
    params: ConnectParams,
}

impl DownstreamSession {
    pub(super) fn new(
        subprotocol: Subprotocol,
        upstream: Arc<Upstream>,
        client: ClientDetails,
        state: Arc<GatewayState>,
    ) -> Self {
        let limits = state.server.operation_limits;
        let writes = WriteBound {
            timeout: state.server.client_write_timeout,
            shutdown: state.downstream_shutdown.clone(),
        };
        DownstreamSession {
            subprotocol,
            rules: match subprotocol {
                Subprotocol::GraphqlTransportWs => {
                    Rules::TransportWs(transport_ws::server::ServerRules::with_limits(limits))
                }
                Subprotocol::GraphqlWs => {
                    Rules::Legacy(legacy_ws::server::ServerRules::with_limits(limits))
                }
            },
            upstream,
            client: Some(client),
            state,
            connect: None,
            operations: HashMap::new(),
            streams: OperationStreams::new(),
            writes,
            write_through: None,
        }
    }

    /// The session with its operations' `next` frames written straight to `socket` by
    /// the upstream connection tasks.
    pub(super) fn with_write_through(mut self, socket: Arc<ClientSocket>) -> Self {
        self.write_through = Some(socket);
        self
    }

    /// Serves the client until the session ends.
    ///
    /// Not an `async fn`: its arguments would be stored in the future twice (as the
    /// arguments and as the locals they are moved into), 728 bytes more in every session
    /// for its whole life. An `async move` block uses its captures in place.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn run<S: ClientIo>(
        mut self,
        mut socket: WebSocketStream<S>,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            debug!("session started");
            let shutdown_token = self.state.downstream_shutdown.clone();
            // Built once: a fresh `cancelled()` per iteration would re-register with the token
            // (one lock shared by every session) on every event.
            let shutdown = shutdown_token.cancelled();
            tokio::pin!(shutdown);
            let init_deadline = time::sleep(self.state.server.connection_init_timeout);
            tokio::pin!(init_deadline);
            let keepalive_every = self.state.server.keepalive_interval;
            let mut keepalive =
                time::interval_at(Instant::now() + keepalive_every, keepalive_every);
            let mut last_heard = Instant::now();
            let write_through = self.write_through.clone();
            let attention = |cx: &mut std::task::Context<'_>| match &write_through {
                Some(socket) => socket.poll_attention(cx),
                None => std::task::Poll::Pending,
            };

            let flow = loop {
                // Biased: shutdown first so draining is prompt; then the client's own frames,
                // so a `complete` is acted on before more events for that id are sent.
                let flow = tokio::select! {
                    biased;
                    _ = &mut shutdown => Flow::Close(close::GOING_AWAY.code, close::GOING_AWAY.reason.into()),
                    message = socket.next() => {
                        last_heard = Instant::now();
                        // Boxed: handling a client frame is the largest thing the session
                        // awaits (a kilobyte), and clients send few frames; unboxed, that
                        // space would be part of every idle session's future.
                        Box::pin(self.on_client_message(&mut socket, message)).await
                    }
                    Some((framer, delivery)) = self.streams.next(), if !self.streams.is_empty() => {
                        self.on_events(&mut socket, framer, delivery).await
                    }
                    attention = poll_fn(attention), if write_through.is_some() => match attention {
                        // What the kernel had no room for when an upstream task wrote it.
                        Attention::Flush => bounded(&self.writes, socket.flush()).await,
                        Attention::TooSlow => {
                            debug!("client too slow for its written-through events; closing the session");
                            close_with(close::SLOW_CONSUMER)
                        }
                        Attention::Failed => Flow::End,
                    },
                    _ = &mut init_deadline, if self.rules.awaiting_init() => {
                        self.init_timeout(&mut socket).await
                    }
                    _ = keepalive.tick() => self.keepalive(&mut socket, last_heard.elapsed()).await,
                };
                if !matches!(flow, Flow::Continue) {
                    break flow;
                }
            };

            // Nothing of the upstream tasks' may follow the session's last frame.
            if let Some(socket) = &write_through {
                socket.close_to_upstream_writes();
            }
            match flow {
                Flow::Close(code, reason) => {
                    debug!(code, %reason, "closing session");
                    if code == close::MESSAGE_TOO_BIG.code {
                        self.state.stats.limit_cut();
                    } else if code == close::SLOW_CONSUMER.code {
                        self.state.stats.slow_consumer_cut();
                    }
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    };
                    close_handshake(&mut socket, Some(frame), self.writes.timeout).await;
                }
                Flow::ClosedByClient => {
                    close_handshake(&mut socket, None, self.writes.timeout).await
                }
                Flow::Cut(reason) => {
                    debug!(reason, "client cut off");
                    self.state.stats.stuck_client_cut();
                }
                Flow::End | Flow::Continue => {}
            }
            // Dropping the streams (with the session) stops every operation upstream.
            debug!("session ended");
        }
    }

    /// Pings the client (every browser and client library answers WebSocket pings), sends
    /// legacy clients their `ka`, and ends the session of a client that has been silent
    /// for two intervals: a peer that vanished without closing must not keep its
    /// operations running upstream.
    async fn keepalive<S: ClientIo>(
        &mut self,
        socket: &mut WebSocketStream<S>,
        silent: time::Duration,
    ) -> Flow {
        if silent > self.state.server.keepalive_interval * 2 {
            info!(
                silent_ms = silent.as_millis() as u64,
                "client stopped responding; ending session"
            );
            return Flow::End;
        }
        if matches!(self.rules, Rules::Legacy(_)) && self.connect.is_some() {
            if let flow @ (Flow::Close(..) | Flow::End | Flow::Cut(_) | Flow::ClosedByClient) =
                send(socket, &self.writes, legacy_ws::ServerMessage::Ka.encode()).await
            {
                return flow;
            }
        }
        write(socket, &self.writes, Message::Ping(Default::default())).await
    }

    async fn on_client_message<S: ClientIo>(
        &mut self,
        socket: &mut WebSocketStream<S>,
        message: Option<Result<Message, tungstenite::Error>>,
    ) -> Flow {
        let text = match message {
            None => return Flow::End,
            Some(Ok(Message::Close(_))) => return Flow::ClosedByClient,
            Some(Err(tungstenite::Error::Capacity(err))) => {
                return Flow::Close(close::MESSAGE_TOO_BIG.code, err.to_string());
            }
            Some(Err(err)) => {
                debug!(error = %err, "client socket error");
                return Flow::End;
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                return self
                    .bad_message(
                        socket,
                        "binary frames are not part of the protocol; send JSON text frames",
                    )
                    .await;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                return Flow::Continue
            }
        };
        let limit = self.state.server.max_message_bytes;
        match &mut self.rules {
            Rules::TransportWs(rules) => {
                let message = match transport_ws::ClientMessage::decode(text.as_str(), limit) {
                    Ok(message) => message,
                    Err(err) => return self.bad_message(socket, &err.to_string()).await,
                };
                match rules.receive(message) {
                    Err(violation) => {
                        let (code, reason) = violation.close();
                        Flow::Close(code, reason)
                    }
                    Ok(accepted) => self.on_transport_ws(socket, accepted).await,
                }
            }
            Rules::Legacy(rules) => {
                let message = match legacy_ws::ClientMessage::decode(text.as_str(), limit) {
                    Ok(message) => message,
                    Err(err) => return self.bad_message(socket, &err.to_string()).await,
                };
                match rules.receive(message) {
                    Err(violation) => self.on_legacy_violation(socket, violation).await,
                    Ok(accepted) => self.on_legacy(socket, accepted).await,
                }
            }
        }
    }

    async fn on_transport_ws<S: ClientIo>(
        &mut self,
        socket: &mut WebSocketStream<S>,
        accepted: transport_ws::server::Accepted,
    ) -> Flow {
        use transport_ws::server::Accepted;
        match accepted {
            Accepted::Init { payload } => {
                match self.accept_init(payload) {
                    Ok(()) => {}
                    Err(InitRefusal::Rejected(mut reason)) => {
                        close::truncate_reason(&mut reason);
                        return Flow::Close(close::FORBIDDEN_CODE, reason);
                    }
                    Err(InitRefusal::Failed) => return close_with(close::HOOK_FAILED),
                }
                if let Rules::TransportWs(rules) = &mut self.rules {
                    rules.acknowledged();
                }
                send(
                    socket,
                    &self.writes,
                    transport_ws::ServerMessage::ConnectionAck { payload: None }.encode(),
                )
                .await
            }
            Accepted::Ping => {
                send(
                    socket,
                    &self.writes,
                    transport_ws::ServerMessage::Pong { payload: None }.encode(),
                )
                .await
            }
            Accepted::Pong | Accepted::Ignored => Flow::Continue,
            Accepted::Subscribe { id, request } => {
                self.start(id, request);
                Flow::Continue
            }
            Accepted::Refused { id, message } => {
                let frame = transport_ws::ServerMessage::encode_event(&id, &refusal(&message));
                send(socket, &self.writes, frame).await
            }
            Accepted::Complete { id } => {
                self.stop(&id);
                Flow::Continue
            }
        }
    }

    async fn on_legacy<S: ClientIo>(
        &mut self,
        socket: &mut WebSocketStream<S>,
        accepted: legacy_ws::server::Accepted,
    ) -> Flow {
        use legacy_ws::server::Accepted;
        match accepted {
            Accepted::Init { payload } => {
                if let Err(refusal) = self.accept_init(payload) {
                    // As the reference server answers a refused `onConnect`.
                    let message = match &refusal {
                        InitRefusal::Rejected(message) => message.as_str(),
                        InitRefusal::Failed => close::HOOK_FAILED.reason,
                    };
                    let frame = legacy_ws::ServerMessage::ConnectionError {
                        payload: Some(message_payload(message)),
                    };
                    return match send(socket, &self.writes, frame.encode()).await {
                        Flow::Continue => close_with(close::LEGACY_CONNECTION_ERROR),
                        other => other,
                    };
                }
                if let Rules::Legacy(rules) = &mut self.rules {
                    rules.acknowledged();
                }
                // `ka` right after the ack: legacy clients start their keep-alive timer on it.
                match send(
                    socket,
                    &self.writes,
                    legacy_ws::ServerMessage::ConnectionAck.encode(),
                )
                .await
                {
                    Flow::Continue => {
                        send(socket, &self.writes, legacy_ws::ServerMessage::Ka.encode()).await
                    }
                    other => other,
                }
            }
            Accepted::Start {
                id,
                request,
                replaces,
            } => {
                if replaces {
                    self.stop(&id);
                }
                self.start(id, request);
                Flow::Continue
            }
            Accepted::Stop { id } => {
                self.stop(&id);
                Flow::Continue
            }
            Accepted::Refused { id, message } => {
                let frame = legacy_ws::ServerMessage::encode_event(&id, &refusal(&message));
                send(socket, &self.writes, frame).await
            }
            Accepted::Ignored => Flow::Continue,
            Accepted::Terminate => Flow::Close(close::NORMAL.code, close::NORMAL.reason.into()),
        }
    }

    async fn on_legacy_violation<S: ClientIo>(
        &mut self,
        socket: &mut WebSocketStream<S>,
        violation: legacy_ws::server::Violation,
    ) -> Flow {
        use legacy_ws::server::Violation;
        let payload = message_payload(&violation.message());
        let frame = match &violation {
            Violation::StartBeforeAck { id } => legacy_ws::ServerMessage::Error {
                id: Some(id.clone()),
                payload,
            },
            Violation::IdTooLong { .. } => legacy_ws::ServerMessage::Error { id: None, payload },
            Violation::TooManyInit => legacy_ws::ServerMessage::ConnectionError {
                payload: Some(payload),
            },
        };
        match send(socket, &self.writes, frame.encode()).await {
            Flow::Continue if violation.closes() => close_with(close::LEGACY_CONNECTION_ERROR),
            other => other,
        }
    }

    /// A frame that is not a valid message: 4400 for graphql-transport-ws; for legacy, an
    /// `error` without id as the reference server sends, keeping the connection.
    async fn bad_message<S: ClientIo>(
        &mut self,
        socket: &mut WebSocketStream<S>,
        reason: &str,
    ) -> Flow {
        debug!(?reason, "invalid client message");
        match self.subprotocol {
            Subprotocol::GraphqlTransportWs => {
                let mut reason = reason.to_owned();
                close::truncate_reason(&mut reason);
                Flow::Close(close::BAD_REQUEST.code, reason)
            }
            Subprotocol::GraphqlWs => {
                let frame = legacy_ws::ServerMessage::Error {
                    id: None,
                    payload: message_payload(reason),
                };
                send(socket, &self.writes, frame.encode()).await
            }
        }
    }

    async fn init_timeout<S: ClientIo>(&mut self, socket: &mut WebSocketStream<S>) -> Flow {
        if self.subprotocol == Subprotocol::GraphqlWs {
            let frame = legacy_ws::ServerMessage::ConnectionError {
                payload: Some(message_payload(close::INIT_TIMEOUT.reason)),
            };
            if let flow @ (Flow::Close(..) | Flow::End) =
                send(socket, &self.writes, frame.encode()).await
            {
                return flow;
            }
        }
        close_with(close::INIT_TIMEOUT)
    }

    /// Settles who the client is and the parameters its operations reach the upstream
    /// with, or why it is refused (the upstream's `on_connection_init` hook).
    fn accept_init(&mut self, payload: Option<RawJson>) -> Result<(), InitRefusal> {
        // The rules accept one `connection_init` only.
        let Some(details) = self.client.take() else {
            return Ok(());
        };
        let client = Arc::new(
            ClientContext {
                transport: self.subprotocol.wire_name(),
                path: details.path,
                peer: details.peer,
                headers: details.headers,
                init_payload: payload.unwrap_or_else(RawJson::empty_object),
                hooks: None,
            }
            .with_hooks(&self.upstream),
        );
        // The hook's payload, not the client's, goes upstream and into the key.
        let params = hooks::connect_params(&self.upstream, &client)?;
        debug!(ctx = %params.key, "client initialised");
        self.connect = Some(Connected { client, params });
        Ok(())
    }

    fn start(&mut self, id: String, request: GraphqlRequest) {
        let Some(connected) = &self.connect else {
            return; // The rules only accept operations after the ack.
        };
        let id: Arc<str> = Arc::from(id);
        let operation = Operation {
            id: id.clone(),
            request,
            client: connected.client.clone(),
            connect: connected.params.clone(),
            upstream: self.upstream.clone(),
        };
        let framer = Arc::new(EventFramer::new(self.subprotocol, id.clone()));
        // Hooked operations run their hooks per result in the session: no writer.
        let write_through = self
            .write_through
            .as_ref()
            .filter(|_| !connected.client.has_operation_hooks());
        let writer = write_through.map(|socket| {
            Arc::new(OperationWriter::new(
                socket.clone(),
                framer.clone(),
                self.upstream.metrics.clone(),
            ))
        });
        let sink = writer.clone().map(|writer| writer as Arc<dyn WriteThrough>);
        let events = operation
            .deliveries_through(sink)
            .map(move |delivery| (framer.clone(), delivery));
        let (abort, registration) = AbortHandle::new_pair();
        self.streams.push(Abortable::new(
            Box::pin(events) as Pin<Box<dyn Stream<Item = _> + Send>>,
            registration,
        ));
        self.operations
            .insert(id, RunningOperation { abort, writer });
    }

    fn stop(&mut self, id: &str) {
        if let Some(running) = self.operations.remove(id) {
            debug!(%id, "operation stopped by client");
            running.abort.abort();
            if let Some(writer) = running.writer {
                writer.retire();
            }
        }
    }

    /// Writes `delivery` and every other event ready now (up to [`MAX_EVENTS_PER_FLUSH`]),
    /// then flushes once: one syscall for a burst instead of one per frame, and no wait
    /// when only one event is ready. An operation cut as too slow closes the session with
    /// 1013 instead: the frames fed before it go out first, with the Close frame, bounded
    /// by the write timeout like any write.
    async fn on_events<S: ClientIo>(
        &mut self,
        socket: &mut WebSocketStream<S>,
        framer: Arc<EventFramer>,
        delivery: Delivery,
    ) -> Flow {
        let mut next = Some((framer, delivery));
        let mut fed = 0;
        while let Some((framer, delivery)) = next.take() {
            let event = match delivery {
                Delivery::Event(event) => event,
                Delivery::TooSlow(error) => {
                    let id = framer.id();
                    debug!(%id, %error, "operation cut off as too slow; closing the session");
                    return close_with(close::SLOW_CONSUMER);
                }
            };
            let frame = self.frame_for(&framer, &event);
            let flow = bounded(&self.writes, socket.feed(Message::text(frame))).await;
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
            fed += 1;
            if fed < MAX_EVENTS_PER_FLUSH {
                // Polled with this task's waker (not a no-op one): a stream found empty
                // here still wakes the session when its next event arrives.
                next = poll_immediate(self.streams.next()).await.flatten();
            }
        }
        if fed == 0 {
            return Flow::Continue;
        }
        bounded(&self.writes, socket.flush()).await
    }

    /// The frame for `event` in the session's dialect. No lookup per event: a stopped
    /// operation's stream is aborted and yields nothing more, so every event that gets
    /// here belongs to a running operation.
    fn frame_for(&mut self, framer: &EventFramer, event: &Event) -> String {
        if event.is_terminal() {
            let id = framer.id();
            self.operations.remove(id);
            self.rules.finished(id);
        }
        framer.frame(event)
    }
}

/// Completes the closing handshake: sends our Close frame (`frame`), or the reply that
/// tungstenite queued when the client's Close arrived (`None`), then reads until the
/// client's reply or the end of the stream. Waiting for the reply before dropping the
/// TCP connection lets the client see a clean close (`wasClean`, its own code) instead
/// of a reset. Bounded by the write timeout: a client that never answers is dropped.
async fn close_handshake<S: ClientIo>(
    socket: &mut WebSocketStream<S>,
    frame: Option<CloseFrame>,
    bound: Duration,
) {
    let handshake = async {
        let sent = match frame {
            Some(frame) => socket.close(Some(frame)).await,
            // tungstenite refuses a second Close once the client's arrived; a flush writes
            // the reply it queued.
            None => socket.flush().await,
        };
        if sent.is_err() {
            return;
        }
        while let Some(Ok(_)) = socket.next().await {}
    };
    if time::timeout(bound, handshake).await.is_err() {
        debug!("client did not complete the closing handshake in time");
    }
}

async fn send<S: ClientIo>(
    socket: &mut WebSocketStream<S>,
    bound: &WriteBound,
    frame: String,
) -> Flow {
    write(socket, bound, Message::text(frame)).await
}

/// Writes one message within `bound`.
async fn write<S: ClientIo>(
    socket: &mut WebSocketStream<S>,
    bound: &WriteBound,
    message: Message,
) -> Flow {
    bounded(bound, socket.send(message)).await
}

/// Runs a write (`send`, `feed` or `flush`) that a draining gateway abandons. The time
/// bound is the socket's own (`WriteDeadline`, `server.client_write_timeout_ms`): past
/// it the write fails, and the connection is reset rather than left to drain stale
/// frames. The common case, a socket with room, completes on the first poll and watches
/// nothing.
async fn bounded(
    bound: &WriteBound,
    write: impl std::future::Future<Output = Result<(), tungstenite::Error>>,
) -> Flow {
    let mut write = std::pin::pin!(write);
    let result = match poll_immediate(&mut write).await {
        Some(result) => result,
        // Boxed: the token's waiter takes a few hundred bytes, which every
        // session would otherwise carry for its whole life in its (idle) future, while
        // only a write that has to wait needs them.
        None => match Box::pin(bounded_wait(bound, write)).await {
            Ok(result) => result,
            Err(cut) => return cut,
        },
    };
    match result {
        Ok(()) => Flow::Continue,
        Err(err) => {
            debug!(error = %err, "client socket write failed");
            Flow::End
        }
    }
}

/// Waits for a write that could not complete at once, until shutdown at most (its time
/// bound is the socket's); `Err` with the cut if the gateway drains first.
async fn bounded_wait(
    bound: &WriteBound,
    write: impl std::future::Future<Output = Result<(), tungstenite::Error>>,
) -> Result<Result<(), tungstenite::Error>, Flow> {
    tokio::select! {
        biased;
        result = write => Ok(result),
        _ = bound.shutdown.cancelled() => {
            Err(Flow::Cut("the gateway is shutting down and a write was stuck"))
        }
    }
}

/// The `error` for an operation refused by a limit.
fn refusal(message: &str) -> Event {
    Event::Error(subplex_protocol::graphql_errors(
        message,
        "TOO_MANY_OPERATIONS",
    ))
}

fn close_with(close: Close) -> Flow {
    Flow::Close(close.code, close.reason.into())
}

fn message_payload(message: &str) -> RawJson {
    RawJson::from_value(&serde_json::json!({ "message": message }))
}

/// The session's timing on paused time: every wait is a timer, so each frame's virtual
/// time is exact and the tests take no wall-clock time, however loaded the machine. The
/// client is tungstenite in the client role over an in-memory pipe, which answers pings
/// whenever it reads, as browsers and client libraries do.
#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio::task::JoinHandle;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::config::Config;
    use crate::write_deadline::WriteDeadline;

    /// Any bound on a wait, in virtual time: paused time reaches it at once when the
    /// session has nothing left to do, so a missing frame fails the test immediately.
    const BOUND: Duration = Duration::from_secs(3600);
    /// Room in each direction of the pipe; enough for every test but the stalled client.
    const ROOMY: usize = 64 * 1024;
    const INTERVAL_1S: &str = "keepalive_interval_ms = 1000";

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// One session on an in-memory pipe, and the client end of it.
    struct Harness {
        client: WebSocketStream<DuplexStream>,
        session: JoinHandle<()>,
        state: Arc<GatewayState>,
        started: Instant,
    }

    impl Harness {
        /// A session with `[server]` keys `server_keys`. The upstream is never dialled:
        /// no test here starts an operation.
        async fn start(subprotocol: Subprotocol, server_keys: &str) -> Self {
            Harness::with_pipe(subprotocol, server_keys, ROOMY).await
        }

        /// The same with `pipe_bytes` of room in each direction of the pipe.
        async fn with_pipe(subprotocol: Subprotocol, server_keys: &str, pipe_bytes: usize) -> Self {
            let text = format!(
                "[server]\n{server_keys}\n[upstreams.up]\nurl = \"http://127.0.0.1:9/graphql\"\n\
                 [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n"
            );
            let config = Config::parse(&text, "session-test.toml").expect("valid config");
            let state = Arc::new(
                GatewayState::new(&config, &CancellationToken::new()).expect("gateway state"),
            );
            let upstream = state.routes().get("/graphql").unwrap().clone();
            let (client_io, server_io) = tokio::io::duplex(pipe_bytes);
            // As the listener wraps every client socket: the write timeout is the socket's.
            let server_io = WriteDeadline::new(
                server_io,
                state.server.client_write_timeout,
                state.stats.clone(),
            );
            let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
            let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
            let details = ClientDetails {
                path: "/graphql".into(),
                peer: SocketAddr::from(([127, 0, 0, 1], 40_000)),
                headers: HeaderMap::new(),
            };
            let session = DownstreamSession::new(subprotocol, upstream, details, state.clone());
            Harness {
                client,
                session: tokio::spawn(session.run(server)),
                state,
                started: Instant::now(),
            }
        }

        fn elapsed(&self) -> Duration {
            self.started.elapsed()
        }

        /// The next frame from the session and when it arrived; `None` once the stream
        /// ends (cleanly or not).
        async fn recv(&mut self) -> (Duration, Option<Message>) {
            let next = time::timeout(BOUND, self.client.next())
                .await
                .expect("the session sent nothing and never ended");
            (self.elapsed(), next.and_then(Result::ok))
        }

        async fn send(&mut self, message: Value) {
            self.client
                .send(Message::text(message.to_string()))
                .await
                .expect("the session reads");
        }

        /// Sends `connection_init` and reads the ack (plus the legacy `ka` after it), both
        /// sent at once.
        async fn init(&mut self, subprotocol: Subprotocol) {
            let at = self.elapsed();
            self.send(json!({ "type": "connection_init" })).await;
            assert_eq!(
                self.recv().await,
                (at, Some(text(r#"{"type":"connection_ack"}"#)))
            );
            if subprotocol == Subprotocol::GraphqlWs {
                assert_eq!(self.recv().await, (at, Some(text(r#"{"type":"ka"}"#))));
            }
        }

        /// Waits for the session to end and returns when it did.
        async fn ended(&mut self) -> Duration {
            time::timeout(BOUND, &mut self.session)
                .await
                .expect("the session never ended")
                .expect("the session did not panic");
            self.elapsed()
        }

        /// The session closes with `code` and `reason` at `at`; reading on sends
        /// tungstenite's reply, which completes the handshake and ends the session.
        async fn expect_close(&mut self, at: Duration, code: u16, reason: &str) {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            assert_eq!(self.recv().await, (at, Some(Message::Close(Some(frame)))));
            assert_eq!(self.recv().await, (at, None));
            assert_eq!(self.ended().await, at);
        }

        /// The client closes with 1000: the session answers and ends at once.
        async fn close_cleanly(mut self) {
            let at = self.elapsed();
            self.client.close(None).await.expect("close sent");
            let (when, reply) = self.recv().await;
            assert_eq!(reply, Some(Message::Close(None)));
            assert_eq!(when, at);
            assert_eq!(self.ended().await, at);
        }
    }

    /// A text frame, as the exact bytes on the wire.
    fn text(frame: &str) -> Message {
        Message::text(frame)
    }

    fn ping() -> Option<Message> {
        Some(Message::Ping(Bytes::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn pings_every_interval_and_a_client_that_answers_stays_for_many() {
        let mut h = Harness::start(Subprotocol::GraphqlTransportWs, INTERVAL_1S).await;
        h.init(Subprotocol::GraphqlTransportWs).await;
        // Silent but for its pongs, which tungstenite sends on the next read: far more
        // than two intervals without a message of its own.
        for k in 1..=20 {
            assert_eq!(h.recv().await, (ms(1000 * k), ping()));
        }
        assert!(!h.session.is_finished());
        h.close_cleanly().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_silent_for_two_intervals_is_dropped_at_the_next_tick() {
        let mut h = Harness::start(Subprotocol::GraphqlTransportWs, INTERVAL_1S).await;
        h.init(Subprotocol::GraphqlTransportWs).await;
        // The client stops reading, so it answers no ping: at 2 s it has been silent for
        // exactly two intervals, not more; at 3 s the session ends, without a close frame
        // (a vanished peer would not read one).
        assert_eq!(h.ended().await, ms(3000));
        // What reached the client's side of the pipe: two pings (unmasked, empty), then
        // the end. Read raw: tungstenite would try to answer the first ping and fail.
        let mut unread = Vec::new();
        h.client.get_mut().read_to_end(&mut unread).await.unwrap();
        assert_eq!(unread, [0x89, 0x00, 0x89, 0x00]);
    }

    #[tokio::test(start_paused = true)]
    async fn legacy_ka_right_after_the_ack_then_with_each_ping() {
        let mut h = Harness::start(Subprotocol::GraphqlWs, INTERVAL_1S).await;
        // Before the ack: pings only, no `ka`.
        assert_eq!(h.recv().await, (ms(1000), ping()));
        h.init(Subprotocol::GraphqlWs).await;
        for k in 2..=5 {
            assert_eq!(
                h.recv().await,
                (ms(1000 * k), Some(text(r#"{"type":"ka"}"#)))
            );
            assert_eq!(h.recv().await, (ms(1000 * k), ping()));
        }
        h.close_cleanly().await;
    }

    #[tokio::test(start_paused = true)]
    async fn no_init_within_the_timeout_closes_4408() {
        // Defaults: the 3 s init timeout comes before the first 12 s ping.
        let mut h = Harness::start(Subprotocol::GraphqlTransportWs, "").await;
        h.expect_close(ms(3000), 4408, "Connection initialisation timeout")
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn legacy_init_timeout_is_a_connection_error_then_4408() {
        let mut h =
            Harness::start(Subprotocol::GraphqlWs, "connection_init_timeout_ms = 500").await;
        assert_eq!(
            h.recv().await,
            (
                ms(500),
                Some(text(
                    r#"{"type":"connection_error","payload":{"message":"Connection initialisation timeout"}}"#
                ))
            )
        );
        h.expect_close(ms(500), 4408, "Connection initialisation timeout")
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_init_in_time_disarms_the_timeout() {
        let mut h = Harness::start(
            Subprotocol::GraphqlTransportWs,
            "connection_init_timeout_ms = 500\nkeepalive_interval_ms = 1000",
        )
        .await;
        time::sleep(ms(499)).await;
        h.started = Instant::now();
        h.init(Subprotocol::GraphqlTransportWs).await;
        assert_eq!(h.recv().await, (ms(501), ping()));
        h.close_cleanly().await;
    }

    /// A client that sends but stops reading: `pongs` answers fill the pipe, the write
    /// that no longer fits waits, and `client_write_timeout_ms` later the session ends.
    async fn stalled_client() -> Harness {
        // 64 bytes each way: three 17-byte pongs fit, the fourth does not.
        let mut h = Harness::with_pipe(Subprotocol::GraphqlTransportWs, "", 64).await;
        h.init(Subprotocol::GraphqlTransportWs).await;
        for _ in 0..5 {
            h.send(json!({ "type": "ping" })).await;
        }
        h
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_after_the_write_timeout() {
        let mut h = stalled_client().await;
        // Default `client_write_timeout_ms`, 10 s, before the first 12 s ping.
        assert_eq!(h.ended().await, ms(10_000));
        let pong = Some(text(r#"{"type":"pong"}"#));
        for _ in 0..3 {
            assert_eq!(h.recv().await, (ms(10_000), pong.clone()));
        }
        // Then the part of the fourth that fitted, and the end: no close frame.
        assert_eq!(h.recv().await, (ms(10_000), None));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_does_not_wait_behind_a_stuck_write() {
        let mut h = stalled_client().await;
        time::sleep(ms(1000)).await;
        h.state.downstream_shutdown.cancel();
        assert_eq!(h.ended().await, ms(1000));
    }

    /// Every idle client keeps its session's future for its whole life, so its size is
    /// memory per subscriber. It was 3,016 bytes (in this test's build) before the cold
    /// paths were boxed and `run` stopped storing its arguments twice; a new large await
    /// in the loop shows up here.
    #[tokio::test]
    async fn an_idle_session_future_stays_small() {
        let harness = Harness::start(Subprotocol::GraphqlTransportWs, "").await;
        let upstream = harness.state.routes().get("/graphql").unwrap().clone();
        let (_client, server_io) = tokio::io::duplex(1024);
        let socket = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let details = ClientDetails {
            path: "/graphql".into(),
            peer: SocketAddr::from(([127, 0, 0, 1], 40_000)),
            headers: HeaderMap::new(),
        };
        let session = DownstreamSession::new(
            Subprotocol::GraphqlTransportWs,
            upstream,
            details,
            harness.state.clone(),
        );
        let fixed = std::mem::size_of_val(&session) + std::mem::size_of_val(&socket);
        let run = session.run(socket);
        let size = std::mem::size_of_val(&run);
        assert!(
            size <= fixed + 900,
            "{size} bytes, {fixed} of them session and socket"
        );
    }
}
