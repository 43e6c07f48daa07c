//! WebSocket clients in both dialects: the upgrade, and one session task per connection.
//!
//! The session task owns the socket, the protocol rules and its running operations, whose
//! event streams it polls itself (see `operation`). The wire dialect is fixed at the
//! upgrade, and every frame to the client is encoded by that dialect's own types.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_immediate;
use futures_util::stream::{AbortHandle, Abortable, SelectAll};
use futures_util::{SinkExt, Stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use subplex_protocol::close::{self, Close};
use subplex_protocol::{legacy_ws, transport_ws, Event, GraphqlRequest, RawJson, Subprotocol};
use subplex_upstream::ConnectParams;
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};

use super::operation;
use crate::routes::{json_error, GatewayState, ResponseBody, Upstream};
use crate::server::ConnectionPermit;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A running operation's events, tagged with the client's id; abortable so that a client's
/// `complete`/`stop` drops it (and with it the upstream subscription) at once.
type OperationStream = Abortable<Pin<Box<dyn Stream<Item = (Arc<str>, Event)> + Send>>>;

/// Read buffer per client socket. tungstenite allocates its default (128 KiB) up front for
/// every connection and zero-fills the free part before each read, so all of it stays
/// resident. Client frames are small (subscribe, ping, complete); a larger frame is read in
/// more steps. 4 KiB → 1 KiB measured 23.0 → 20.4 KiB per idle subscription (bench idle).
const CLIENT_READ_BUFFER: usize = 1024;

/// Answers a WebSocket upgrade request, then runs the session on the upgraded connection.
pub(crate) fn upgrade(
    mut req: Request<Incoming>,
    upstream: Arc<Upstream>,
    state: Arc<GatewayState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let headers = req.headers();
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = json_error(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version; use Sec-WebSocket-Version: 13",
            "BAD_WEBSOCKET_REQUEST",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrade without Sec-WebSocket-Key",
            "BAD_WEBSOCKET_REQUEST",
        );
    };
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let Some(subprotocol) = Subprotocol::negotiate(offered) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "WebSocket subprotocol missing or unsupported: offer \"graphql-transport-ws\" (graphql-ws library) \
             or \"graphql-ws\" (subscriptions-transport-ws) in Sec-WebSocket-Protocol",
            "UNSUPPORTED_SUBPROTOCOL",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let client_headers = upstream.relevant_headers(headers);
    let permit = req.extensions_mut().remove::<ConnectionPermit>();
    let on_upgrade = hyper::upgrade::on(&mut req);

    let max_message = state.server.max_message_bytes;
    let span = tracing::info_span!(
        "downstream",
        %peer,
        route = %req.uri().path(),
        protocol = %subprotocol,
    );
    let session_state = state.clone();
    state.sessions.spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    debug!(error = %err, "upgrade failed");
                    return;
                }
            };
            let config = WebSocketConfig::default()
                .read_buffer_size(CLIENT_READ_BUFFER)
                .max_message_size(Some(max_message))
                .max_frame_size(Some(max_message));
            let socket = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            DownstreamSession::new(subprotocol, upstream, client_headers, session_state)
                .run(socket)
                .await;
            drop(permit);
        }
        .instrument(span),
    );

    let mut response = Response::new(crate::routes::full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).unwrap_or_else(|_| HeaderValue::from_static("")),
    );
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(subprotocol.wire_name()),
    );
    response
}

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
struct DownstreamSession {
    subprotocol: Subprotocol,
    rules: Rules,
    upstream: Arc<Upstream>,
    client_headers: HeaderMap,
    state: Arc<GatewayState>,
    /// Set once `connection_init` was accepted.
    connect: Option<ConnectParams>,
    /// Running operations by client id. Once aborted, a stream yields nothing more, so
    /// an id reused after `complete` can never receive the old operation's events.
    operations: HashMap<Arc<str>, AbortHandle>,
    /// Polled by the session itself: no task and no queue between upstream and socket.
    streams: SelectAll<OperationStream>,
    writes: WriteBound,
}

impl DownstreamSession {
    fn new(
        subprotocol: Subprotocol,
        upstream: Arc<Upstream>,
        client_headers: HeaderMap,
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
            client_headers,
            state,
            connect: None,
            operations: HashMap::new(),
            streams: SelectAll::new(),
            writes,
        }
    }

    async fn run(mut self, mut socket: Socket) {
        debug!("session started");
        let shutdown_token = self.state.downstream_shutdown.clone();
        // Built once: a fresh `cancelled()` per iteration would re-register with the token
        // (one lock shared by every session) on every event.
        let shutdown = shutdown_token.cancelled();
        tokio::pin!(shutdown);
        let init_deadline = time::sleep(self.state.server.connection_init_timeout);
        tokio::pin!(init_deadline);
        let keepalive_every = self.state.server.keepalive_interval;
        let mut keepalive = time::interval_at(Instant::now() + keepalive_every, keepalive_every);
        let mut last_heard = Instant::now();

        let flow = loop {
            // Biased: shutdown first so draining is prompt; then the client's own frames,
            // so a `complete` is acted on before more events for that id are sent.
            let flow = tokio::select! {
                biased;
                _ = &mut shutdown => Flow::Close(close::GOING_AWAY.code, close::GOING_AWAY.reason.into()),
                message = socket.next() => {
                    last_heard = Instant::now();
                    self.on_client_message(&mut socket, message).await
                }
                Some((id, event)) = self.streams.next(), if !self.streams.is_empty() => {
                    self.on_event(&mut socket, id, event).await
                }
                _ = &mut init_deadline, if self.rules.awaiting_init() => {
                    self.init_timeout(&mut socket).await
                }
                _ = keepalive.tick() => self.keepalive(&mut socket, last_heard.elapsed()).await,
            };
            if !matches!(flow, Flow::Continue) {
                break flow;
            }
        };

        match flow {
            Flow::Close(code, reason) => {
                debug!(code, %reason, "closing session");
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                close_handshake(&mut socket, Some(frame), self.writes.timeout).await;
            }
            Flow::ClosedByClient => close_handshake(&mut socket, None, self.writes.timeout).await,
            Flow::Cut(reason) => debug!(reason, "client cut off"),
            Flow::End | Flow::Continue => {}
        }
        // Dropping the streams (with the session) stops every operation upstream.
        debug!("session ended");
    }

    /// Pings the client (every browser and client library answers WebSocket pings), sends
    /// legacy clients their `ka`, and ends the session of a client that has been silent
    /// for two intervals: a peer that vanished without closing must not keep its
    /// operations running upstream.
    async fn keepalive(&mut self, socket: &mut Socket, silent: time::Duration) -> Flow {
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

    async fn on_client_message(
        &mut self,
        socket: &mut Socket,
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

    async fn on_transport_ws(
        &mut self,
        socket: &mut Socket,
        accepted: transport_ws::server::Accepted,
    ) -> Flow {
        use transport_ws::server::Accepted;
        match accepted {
            Accepted::Init { payload } => {
                self.accept_init(payload);
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

    async fn on_legacy(
        &mut self,
        socket: &mut Socket,
        accepted: legacy_ws::server::Accepted,
    ) -> Flow {
        use legacy_ws::server::Accepted;
        match accepted {
            Accepted::Init { payload } => {
                self.accept_init(payload);
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

    async fn on_legacy_violation(
        &mut self,
        socket: &mut Socket,
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
    async fn bad_message(&mut self, socket: &mut Socket, reason: &str) -> Flow {
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

    async fn init_timeout(&mut self, socket: &mut Socket) -> Flow {
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

    fn accept_init(&mut self, payload: Option<RawJson>) {
        // Until hooks exist the client's own payload goes upstream, `{}` when it sent none.
        let init_payload = payload.unwrap_or_else(RawJson::empty_object);
        let params = self
            .upstream
            .connect_params(&self.client_headers, init_payload);
        debug!(ctx = %params.key, "client initialised");
        self.connect = Some(params);
    }

    fn start(&mut self, id: String, request: GraphqlRequest) {
        let Some(params) = self.connect.clone() else {
            return; // The rules only accept operations after the ack.
        };
        let id: Arc<str> = Arc::from(id);
        debug!(%id, operation = ?request.operation_name, "operation started");
        let tag = id.clone();
        let events = operation::events(self.upstream.clone(), params, request)
            .map(move |event| (tag.clone(), event));
        let (abort, registration) = AbortHandle::new_pair();
        self.streams.push(Abortable::new(
            Box::pin(events) as Pin<Box<dyn Stream<Item = _> + Send>>,
            registration,
        ));
        self.operations.insert(id, abort);
    }

    fn stop(&mut self, id: &str) {
        if let Some(abort) = self.operations.remove(id) {
            debug!(%id, "operation stopped by client");
            abort.abort();
        }
    }

    async fn on_event(&mut self, socket: &mut Socket, id: Arc<str>, event: Event) -> Flow {
        if !self.operations.contains_key(&id) {
            return Flow::Continue; // Aborted streams yield nothing; this is a safety net.
        }
        if event.is_terminal() {
            self.operations.remove(&id);
            self.rules.finished(&id);
        }
        let frame = match self.subprotocol {
            Subprotocol::GraphqlTransportWs => {
                transport_ws::ServerMessage::encode_event(&id, &event)
            }
            Subprotocol::GraphqlWs => legacy_ws::ServerMessage::encode_event(&id, &event),
        };
        send(socket, &self.writes, frame).await
    }
}

/// Completes the closing handshake: sends our Close frame (`frame`), or the reply that
/// tungstenite queued when the client's Close arrived (`None`), then reads until the
/// client's reply or the end of the stream. Waiting for the reply before dropping the
/// TCP connection lets the client see a clean close (`wasClean`, its own code) instead
/// of a reset. Bounded by the write timeout: a client that never answers is dropped.
async fn close_handshake(socket: &mut Socket, frame: Option<CloseFrame>, bound: Duration) {
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

async fn send(socket: &mut Socket, bound: &WriteBound, frame: String) -> Flow {
    write(socket, bound, Message::text(frame)).await
}

/// Writes one message within `bound`. The common case, a socket with room, completes on
/// the first poll and arms no timer; only a write that has to wait gets the deadline and
/// watches the shutdown token.
async fn write(socket: &mut Socket, bound: &WriteBound, message: Message) -> Flow {
    let mut write = std::pin::pin!(socket.send(message));
    let result = match poll_immediate(&mut write).await {
        Some(result) => result,
        None => tokio::select! {
            biased;
            result = &mut write => result,
            _ = time::sleep(bound.timeout) => {
                return Flow::Cut("a write did not complete within server.client_write_timeout_ms");
            }
            _ = bound.shutdown.cancelled() => {
                return Flow::Cut("the gateway is shutting down and a write was stuck");
            }
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
