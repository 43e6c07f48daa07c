//! The WebSocket transport, in either dialect: dial, `connection_init`, the ack, and the
//! socket I/O of one upstream connection. What each frame means is decided by
//! [`UpstreamRules`] in `subplex-protocol`; this module only moves frames.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use subplex_protocol::client::{ClientFailure, ClientStep, UpstreamRules};
use subplex_protocol::{ByteString, GraphqlRequest, Subprotocol};
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::connection::Dial;
use crate::error::ConnectCause;
use crate::ws_dial::{self, DialError, DialRequest, Socket};
use crate::{UpstreamError, UpstreamSettings};

/// One established (acknowledged) upstream WebSocket.
pub(crate) struct WsLink {
    socket: Socket,
    rules: UpstreamRules,
    protocol: Subprotocol,
    upstream: Arc<str>,
    max_message_bytes: usize,
}

impl WsLink {
    /// Connects, sends `connection_init` and waits for `connection_ack`, answering `ping`
    /// and ignoring keep-alives before it (Hasura sends those first).
    pub async fn connect(
        settings: &UpstreamSettings,
        protocol: Subprotocol,
        dial: &Dial,
    ) -> Result<WsLink, UpstreamError> {
        let upstream = settings.name.clone();
        // Dialled by hand (ws_dial.rs), not by tungstenite: a server that selects no
        // subprotocol, or another one, still gets the chance to speak the configured
        // dialect; the handshake below is the proof, the selection only a hint.
        let dialed = ws_dial::dial(DialRequest {
            url: &settings.ws_url,
            offered: &[protocol],
            headers: &dial.headers,
            tls: settings.tls.as_ref(),
            max_message_bytes: settings.max_message_bytes,
            timeout: settings.connect_timeout,
        })
        .await
        .map_err(|err| UpstreamError::Connect {
            upstream: upstream.clone(),
            reason: err.to_string(),
            cause: match err {
                DialError::Connect(_) => ConnectCause::Network,
                DialError::TimedOut(_) => ConnectCause::Timeout,
                DialError::Tls(_) => ConnectCause::Tls,
                DialError::Refused { status } => ConnectCause::HttpStatus(status),
                DialError::Invalid(_) => ConnectCause::Invalid,
            },
        })?;
        let socket = dialed.socket;
        let mut link = WsLink {
            socket,
            rules: UpstreamRules::new(),
            protocol,
            upstream: upstream.clone(),
            max_message_bytes: settings.max_message_bytes,
        };
        link.send(protocol.encode_init(&dial.init_payload)).await?;
        let deadline = Instant::now() + settings.ack_timeout;
        while !link.rules.is_ready() {
            let step = time::timeout_at(deadline, link.next_step())
                .await
                .map_err(|_| UpstreamError::AckTimeout {
                    upstream: upstream.clone(),
                    timeout_ms: settings.ack_timeout.as_millis() as u64,
                })??;
            match step {
                Some(ClientStep::Pong) => link.send_pong().await?,
                Some(ClientStep::Ready | ClientStep::Nothing) | None => {}
                // The rules fail anything else before the ack.
                Some(other) => {
                    return Err(UpstreamError::Protocol {
                        upstream,
                        reason: format!("unexpected before connection_ack: {other:?}"),
                    })
                }
            }
        }
        Ok(link)
    }

    /// The next frame's meaning; `None` for WebSocket pings and pongs (tungstenite answers
    /// those). A failure step from the rules comes back as the error it means.
    /// Cancel-safe: the only await is the socket read.
    pub async fn next_step(&mut self) -> Result<Option<ClientStep>, UpstreamError> {
        let message = self.socket.next().await;
        let upstream = &self.upstream;
        let text = match message {
            None => {
                return Err(UpstreamError::Closed {
                    upstream: upstream.clone(),
                    code: 1006,
                    reason: "connection dropped without a close frame".into(),
                })
            }
            Some(Err(err)) => {
                return Err(UpstreamError::Closed {
                    upstream: upstream.clone(),
                    code: 1006,
                    reason: describe(&err),
                })
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(match code {
                    4401 | 4403 => UpstreamError::Rejected {
                        upstream: upstream.clone(),
                        reason: format!("closed with {code} {reason}").trim_end().to_owned(),
                    },
                    _ => UpstreamError::Closed {
                        upstream: upstream.clone(),
                        code,
                        reason,
                    },
                });
            }
            Some(Ok(Message::Binary(_))) => {
                return Err(UpstreamError::Protocol {
                    upstream: upstream.clone(),
                    reason: "binary frames are not part of the protocol".into(),
                })
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return Ok(None),
        };
        // The message's own buffer: event payloads become slices of it, not copies.
        // tungstenite checked the UTF-8 already; checking again costs one pass per
        // upstream message (not per client) and keeps this code free of `unsafe`.
        let text =
            ByteString::try_from(Bytes::from(text)).map_err(|_| UpstreamError::Protocol {
                upstream: upstream.clone(),
                reason: "text frame is not UTF-8".into(),
            })?;
        let frame = self
            .protocol
            .decode_server_frame(&text, self.max_message_bytes)
            .map_err(|err| UpstreamError::Protocol {
                upstream: upstream.clone(),
                reason: err.to_string(),
            })?;
        match self.rules.receive(frame) {
            ClientStep::Fail(ClientFailure::Refused { message }) => Err(UpstreamError::Rejected {
                upstream: upstream.clone(),
                reason: message,
            }),
            ClientStep::Fail(ClientFailure::Unexpected { frame }) => Err(UpstreamError::Protocol {
                upstream: upstream.clone(),
                reason: format!("expected connection_ack, got {frame}"),
            }),
            step => Ok(Some(step)),
        }
    }

    /// Starts upstream operation `id`.
    pub async fn subscribe(
        &mut self,
        id: u64,
        request: &GraphqlRequest,
    ) -> Result<(), UpstreamError> {
        let frame = self.protocol.encode_subscribe(&id.to_string(), request);
        self.send(frame).await
    }

    /// Stops upstream operation `id`.
    pub async fn unsubscribe(&mut self, id: u64) -> Result<(), UpstreamError> {
        let frame = self.protocol.encode_unsubscribe(&id.to_string());
        self.send(frame).await
    }

    pub async fn send_pong(&mut self) -> Result<(), UpstreamError> {
        self.send(self.protocol.encode_pong()).await
    }

    /// A WebSocket ping, for the keep-alive check.
    pub async fn ping(&mut self) -> Result<(), UpstreamError> {
        self.socket
            .send(Message::Ping(Default::default()))
            .await
            .map_err(|err| self.broken(&err))
    }

    /// Best effort, bounded to 1 s: stops `operations` upstream, says goodbye where the
    /// dialect has a word for it, and closes with `code`.
    pub async fn close(
        &mut self,
        operations: impl Iterator<Item = u64>,
        code: CloseCode,
        reason: &str,
    ) {
        let protocol = self.protocol;
        let socket = &mut self.socket;
        let goodbye = async {
            for id in operations {
                let _ = socket
                    .send(Message::text(protocol.encode_unsubscribe(&id.to_string())))
                    .await;
            }
            if let Some(frame) = protocol.encode_terminate() {
                let _ = socket.send(Message::text(frame)).await;
            }
            let _ = socket
                .close(Some(CloseFrame {
                    code,
                    reason: reason.to_owned().into(),
                }))
                .await;
        };
        let _ = time::timeout(Duration::from_secs(1), goodbye).await;
    }

    async fn send(&mut self, frame: String) -> Result<(), UpstreamError> {
        self.socket
            .send(Message::text(frame))
            .await
            .map_err(|err| self.broken(&err))
    }

    fn broken(&self, err: &tungstenite::Error) -> UpstreamError {
        UpstreamError::Closed {
            upstream: self.upstream.clone(),
            code: 1006,
            reason: describe(err),
        }
    }
}

/// A short description of a WebSocket error that names no header values or payloads.
fn describe(err: &tungstenite::Error) -> String {
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
