//! The task that owns one upstream WebSocket connection.
//!
//! It connects, sends `connection_init`, waits for the ack (tolerating Hasura's `ka` and
//! `ping` before it), then serves subscriptions: each gets an upstream id unique on this
//! connection, and upstream events are routed to the subscriber by that id. The reader
//! never waits for a client: events are handed over with `try_send`, and a subscriber whose
//! queue is full is cut off (slow-consumer policy).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue};
use subplex_protocol::{Event, GraphqlRequest, RawJson, UpstreamFrame};
use tokio::sync::mpsc;
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::handle::{Command, SubscribeRefused, UpstreamHandle};
use crate::pool::PoolShared;
use crate::subscription::{self, Subscriber};
use crate::ws_dial::{self, DialRequest, Socket};
use crate::{SecurityContext, UpstreamError, UpstreamSettings};

/// Subscribe requests queued per connection. Callers wait (backpressure) beyond this;
/// a burst of clients arriving while the connection is being established fits in it.
const COMMAND_QUEUE: usize = 256;

/// What a new connection is opened with. Deliberately not `Debug`: it holds credentials.
#[derive(Clone)]
pub(crate) struct Dial {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub init_payload: RawJson,
}

pub(crate) struct UpstreamConnection {
    id: u64,
    key: SecurityContext,
    settings: Arc<UpstreamSettings>,
    pool: Arc<PoolShared>,
    commands: mpsc::Receiver<Command>,
    unsubscribe_tx: mpsc::UnboundedSender<u64>,
    unsubscribes: mpsc::UnboundedReceiver<u64>,
    subscribers: HashMap<u64, Subscriber>,
    next_operation: u64,
    shutdown: CancellationToken,
}

/// How the serving loop ended.
enum Ending {
    /// No subscriptions for `idle_timeout`: closed by us.
    Idle,
    Shutdown,
    Failed(UpstreamError),
}

impl UpstreamConnection {
    /// Spawns the task for a new connection and returns its handle. Connecting happens
    /// inside the task, so the caller never holds the pool map across the handshake.
    pub fn spawn(
        id: u64,
        key: SecurityContext,
        dial: Dial,
        settings: Arc<UpstreamSettings>,
        pool: Arc<PoolShared>,
        shutdown: CancellationToken,
    ) -> UpstreamHandle {
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (unsubscribe_tx, unsubscribes) = mpsc::unbounded_channel();
        // A root span: the connection outlives the client whose request happened to open it.
        let span = tracing::info_span!(parent: None, "upstream", name = %settings.name, ctx = %key, conn = id);
        let connection = UpstreamConnection {
            id,
            key,
            settings,
            pool,
            commands,
            unsubscribe_tx,
            unsubscribes,
            subscribers: HashMap::new(),
            next_operation: 1,
            shutdown,
        };
        tokio::spawn(connection.run(dial).instrument(span));
        UpstreamHandle {
            id,
            commands: commands_tx,
        }
    }

    async fn run(mut self, dial: Dial) {
        self.pool.connection_opened();
        let ending = match self.establish(dial).await {
            Ok(mut socket) => {
                info!(
                    open = self.pool.open_connections(),
                    "upstream connection established"
                );
                let ending = self.serve(&mut socket).await;
                self.close_socket(&mut socket, &ending).await;
                ending
            }
            Err(error) => Ending::Failed(error),
        };
        self.pool.remove(&self.key, self.id);
        self.commands.close();
        let error = match ending {
            Ending::Idle => {
                debug!("idle upstream connection closed");
                None
            }
            Ending::Shutdown => Some(UpstreamError::ShuttingDown),
            Ending::Failed(error) => {
                warn!(error = %error, subscribers = self.subscribers.len(), "upstream connection failed");
                Some(error)
            }
        };
        // Queued subscribes: a failed connection fails them (the same cause would fail a
        // retry at once); an idle close sends them to a fresh connection.
        while let Ok(Command::Subscribe { reply, .. }) = self.commands.try_recv() {
            let refusal = match &error {
                Some(error) => SubscribeRefused::Failed(error.clone()),
                None => SubscribeRefused::Closing,
            };
            let _ = reply.send(Err(refusal));
        }
        let error = error.unwrap_or(UpstreamError::ShuttingDown);
        for (_, subscriber) in self.subscribers.drain() {
            subscriber.fail(error.clone());
        }
        self.pool.connection_closed();
    }

    async fn establish(&mut self, dial: Dial) -> Result<Socket, UpstreamError> {
        let settings = self.settings.clone();
        let upstream = settings.name.clone();
        let connect_error = |reason: String| UpstreamError::Connect {
            upstream: upstream.clone(),
            reason,
        };
        // Dialled by hand, not by tungstenite: a server that selects no subprotocol, or
        // another one, is still given the chance to speak the configured dialect (the
        // subprotocol is a hint; see ws_dial.rs).
        let offered = [settings.protocol];
        let dialing = ws_dial::dial(DialRequest {
            url: &settings.ws_url,
            offered: &offered,
            headers: &dial.headers,
            tls: settings.tls.as_ref(),
            max_message_bytes: settings.max_message_bytes,
            timeout: settings.connect_timeout,
        });
        let mut socket = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Err(UpstreamError::ShuttingDown),
            result = dialing => result.map_err(|err| connect_error(err.to_string()))?.socket,
        };

        send_text(
            &mut socket,
            settings.protocol.encode_init(&dial.init_payload),
            &upstream,
        )
        .await?;
        let deadline = Instant::now() + settings.ack_timeout;
        loop {
            let message = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(UpstreamError::ShuttingDown),
                _ = time::sleep_until(deadline) => return Err(UpstreamError::AckTimeout {
                    upstream: upstream.clone(),
                    timeout_ms: settings.ack_timeout.as_millis() as u64,
                }),
                message = socket.next() => message,
            };
            match self.read_frame(message)? {
                Some(UpstreamFrame::Ack) => return Ok(socket),
                // Hasura sends `ka` (and `ping` in transport-ws mode) before the ack.
                Some(UpstreamFrame::KeepAlive) | None => {}
                Some(UpstreamFrame::Ping) => {
                    send_text(&mut socket, settings.protocol.encode_pong(), &upstream).await?
                }
                Some(UpstreamFrame::ConnectionError { payload }) => {
                    return Err(UpstreamError::Rejected {
                        upstream: upstream.clone(),
                        reason: payload
                            .map(|p| error_message(&p))
                            .unwrap_or_else(|| "connection_error".into()),
                    })
                }
                Some(other) => {
                    return Err(UpstreamError::Protocol {
                        upstream: upstream.clone(),
                        reason: format!("expected connection_ack, got {}", frame_name(&other)),
                    })
                }
            }
        }
    }

    /// Turns a socket read into a protocol frame; `None` for frames with no GraphQL meaning
    /// (WebSocket pings and pongs, which tungstenite answers itself).
    fn read_frame(
        &self,
        message: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<Option<UpstreamFrame>, UpstreamError> {
        let upstream = &self.settings.name;
        match message {
            None => Err(UpstreamError::Closed {
                upstream: upstream.clone(),
                code: 1006,
                reason: "connection dropped without a close frame".into(),
            }),
            Some(Err(err)) => Err(UpstreamError::Closed {
                upstream: upstream.clone(),
                code: 1006,
                reason: describe_ws_error(&err),
            }),
            Some(Ok(Message::Text(text))) => self
                .settings
                .protocol
                .decode_server_frame(text.as_str(), self.settings.max_message_bytes)
                .map(Some)
                .map_err(|err| UpstreamError::Protocol {
                    upstream: upstream.clone(),
                    reason: err.to_string(),
                }),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                Err(match code {
                    4401 | 4403 => UpstreamError::Rejected {
                        upstream: upstream.clone(),
                        reason: format!("closed with {code} {reason}").trim_end().to_owned(),
                    },
                    _ => UpstreamError::Closed {
                        upstream: upstream.clone(),
                        code,
                        reason,
                    },
                })
            }
            Some(Ok(Message::Binary(_))) => Err(UpstreamError::Protocol {
                upstream: upstream.clone(),
                reason: "binary frames are not part of the protocol".into(),
            }),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(None),
        }
    }

    async fn serve(&mut self, socket: &mut Socket) -> Ending {
        let settings = self.settings.clone();
        let upstream = settings.name.clone();
        let mut last_heard = Instant::now();
        let mut keepalive = time::interval_at(
            Instant::now() + settings.keepalive_interval,
            settings.keepalive_interval,
        );
        keepalive.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
        // Armed while there are no subscribers.
        let idle = time::sleep(settings.idle_timeout);
        tokio::pin!(idle);
        let mut idle_armed = true;

        // Built once: a fresh `cancelled()` per iteration would re-register with the token
        // on every frame.
        let shutdown_token = self.shutdown.clone();
        let shutdown = shutdown_token.cancelled();
        tokio::pin!(shutdown);
        loop {
            // Biased: shutdown first so a draining gateway stops promptly; then socket reads
            // before new commands, so events already received are delivered before new work.
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ending::Shutdown,
                message = socket.next() => {
                    last_heard = Instant::now();
                    match self.read_frame(message) {
                        Err(error) => return Ending::Failed(error),
                        Ok(None) => {}
                        Ok(Some(frame)) => {
                            if let Err(error) = self.on_frame(socket, frame).await {
                                return Ending::Failed(error);
                            }
                        }
                    }
                }
                Some(upstream_id) = self.unsubscribes.recv() => {
                    if self.subscribers.remove(&upstream_id).is_some() {
                        debug!(op = upstream_id, "operation stopped by its subscriber");
                        let frame = settings.protocol.encode_unsubscribe(&upstream_id.to_string());
                        if let Err(error) = send_text(socket, frame, &upstream).await {
                            return Ending::Failed(error);
                        }
                    }
                }
                command = self.commands.recv() => match command {
                    Some(Command::Subscribe { request, reply }) => {
                        if let Err(error) = self.subscribe(socket, request, reply).await {
                            return Ending::Failed(error);
                        }
                    }
                    // Every handle is gone: the pool itself was dropped.
                    None => return Ending::Shutdown,
                },
                _ = keepalive.tick() => {
                    let silent = last_heard.elapsed();
                    if silent > settings.keepalive_interval + settings.keepalive_timeout {
                        return Ending::Failed(UpstreamError::Unresponsive {
                            upstream: upstream.clone(),
                            silent_ms: silent.as_millis() as u64,
                        });
                    }
                    if let Err(err) = socket.send(Message::Ping(Default::default())).await {
                        return Ending::Failed(UpstreamError::Closed {
                            upstream: upstream.clone(),
                            code: 1006,
                            reason: describe_ws_error(&err),
                        });
                    }
                }
                _ = &mut idle, if idle_armed => {
                    // Leave the pool first: a subscriber that finds no entry opens a new
                    // connection instead of queueing on this closing one.
                    self.pool.remove(&self.key, self.id);
                    return Ending::Idle;
                }
            }

            let now_idle = self.subscribers.is_empty();
            if now_idle && !idle_armed {
                idle.as_mut().reset(Instant::now() + settings.idle_timeout);
            }
            idle_armed = now_idle;
        }
    }

    async fn subscribe(
        &mut self,
        socket: &mut Socket,
        request: GraphqlRequest,
        reply: tokio::sync::oneshot::Sender<Result<crate::Subscription, SubscribeRefused>>,
    ) -> Result<(), UpstreamError> {
        let upstream_id = self.next_operation;
        self.next_operation += 1;
        let (subscriber, subscription) = subscription::channel(
            self.settings.subscriber_queue,
            self.unsubscribe_tx.clone(),
            upstream_id,
        );
        if reply.send(Ok(subscription)).is_err() {
            // The caller gave up (client left) before the operation started upstream.
            return Ok(());
        }
        debug!(op = upstream_id, "operation started");
        self.subscribers.insert(upstream_id, subscriber);
        let frame = self
            .settings
            .protocol
            .encode_subscribe(&upstream_id.to_string(), &request);
        send_text(socket, frame, &self.settings.name).await
    }

    async fn on_frame(
        &mut self,
        socket: &mut Socket,
        frame: UpstreamFrame,
    ) -> Result<(), UpstreamError> {
        let upstream = &self.settings.name;
        match frame {
            UpstreamFrame::Operation { id, event } => {
                let Some(upstream_id) = id.parse::<u64>().ok() else {
                    return Ok(()); // Not an id we issued: ignore, as the spec says.
                };
                self.deliver(socket, upstream_id, event).await
            }
            UpstreamFrame::Ping => {
                send_text(socket, self.settings.protocol.encode_pong(), upstream).await
            }
            UpstreamFrame::KeepAlive | UpstreamFrame::Ack => Ok(()),
            UpstreamFrame::ConnectionError { payload } => Err(UpstreamError::Rejected {
                upstream: upstream.clone(),
                reason: payload
                    .map(|p| error_message(&p))
                    .unwrap_or_else(|| "connection_error".into()),
            }),
            UpstreamFrame::ServerError { payload } => {
                warn!(reason = %error_message(&payload), "upstream reported an error for no operation");
                Ok(())
            }
        }
    }

    async fn deliver(
        &mut self,
        socket: &mut Socket,
        upstream_id: u64,
        event: Event,
    ) -> Result<(), UpstreamError> {
        let terminal = event.is_terminal();
        let Some(subscriber) = self.subscribers.get(&upstream_id) else {
            return Ok(()); // Already stopped on our side; the upstream's late events race it.
        };
        match subscriber.events.try_send(event) {
            Ok(()) => {
                if terminal {
                    self.subscribers.remove(&upstream_id);
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()), // Its stop is queued.
            Err(mpsc::error::TrySendError::Full(_)) => {
                let queued = self.settings.subscriber_queue;
                warn!(
                    op = upstream_id,
                    queued, "subscriber too slow; cutting it off"
                );
                if let Some(subscriber) = self.subscribers.remove(&upstream_id) {
                    subscriber.fail(UpstreamError::SlowConsumer { queued });
                }
                if terminal {
                    return Ok(());
                }
                let frame = self
                    .settings
                    .protocol
                    .encode_unsubscribe(&upstream_id.to_string());
                send_text(socket, frame, &self.settings.name).await
            }
        }
    }

    async fn close_socket(&mut self, socket: &mut Socket, ending: &Ending) {
        let protocol = self.settings.protocol;
        let (code, reason) = match ending {
            Ending::Failed(_) => return,
            Ending::Idle => (CloseCode::Normal, "idle"),
            Ending::Shutdown => (CloseCode::Away, "gateway shutting down"),
        };
        // Best effort, bounded: tell the upstream to stop each operation, then say goodbye.
        let goodbye = async {
            for upstream_id in self.subscribers.keys() {
                let _ = socket
                    .send(Message::text(
                        protocol.encode_unsubscribe(&upstream_id.to_string()),
                    ))
                    .await;
            }
            if let Some(frame) = protocol.encode_terminate() {
                let _ = socket.send(Message::text(frame)).await;
            }
            let _ = socket
                .close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }))
                .await;
        };
        let _ = time::timeout(Duration::from_secs(1), goodbye).await;
    }
}

async fn send_text(
    socket: &mut Socket,
    frame: String,
    upstream: &Arc<str>,
) -> Result<(), UpstreamError> {
    socket
        .send(Message::text(frame))
        .await
        .map_err(|err| UpstreamError::Closed {
            upstream: upstream.clone(),
            code: 1006,
            reason: describe_ws_error(&err),
        })
}

/// A short description of a WebSocket error that names no header values or payloads.
fn describe_ws_error(err: &tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Http(response) => {
            format!("HTTP {} during the WebSocket upgrade", response.status())
        }
        // rustls errors (an untrusted certificate, a name mismatch) arrive wrapped in io.
        tungstenite::Error::Io(io) => io.to_string(),
        tungstenite::Error::Tls(tls) => tls.to_string(),
        tungstenite::Error::Capacity(err) => err.to_string(),
        other => other.to_string(),
    }
}

/// The `message` of an error payload, for logs and error texts.
fn error_message(payload: &RawJson) -> String {
    #[derive(serde::Deserialize)]
    struct WithMessage {
        message: String,
    }
    serde_json::from_str::<WithMessage>(payload.as_str())
        .map(|m| m.message)
        .unwrap_or_else(|_| "no message given".into())
}

fn frame_name(frame: &UpstreamFrame) -> &'static str {
    match frame {
        UpstreamFrame::Ack => "connection_ack",
        UpstreamFrame::KeepAlive => "a keep-alive",
        UpstreamFrame::Ping => "ping",
        UpstreamFrame::Operation { .. } => "an operation message",
        UpstreamFrame::ConnectionError { .. } => "connection_error",
        UpstreamFrame::ServerError { .. } => "error",
    }
}
