//! The WebSocket transport, in either dialect: dial, `connection_init`, the ack, and the
//! socket I/O of one upstream connection. What each frame means is decided by
//! [`UpstreamRules`] in `subplex-protocol`; this module only moves frames.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use subplex_protocol::client::{ClientFailure, ClientStep, UpstreamRules};
use subplex_protocol::{GraphqlRequest, Subprotocol};
use tokio::net::TcpStream;
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::connection::Dial;
use crate::error::ConnectCause;
use crate::{UpstreamError, UpstreamSettings};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
        let connect_error = |reason: String, cause: ConnectCause| UpstreamError::Connect {
            upstream: upstream.clone(),
            reason,
            cause,
        };
        let mut request = settings
            .ws_url
            .as_str()
            .into_client_request()
            .map_err(|err| connect_error(err.to_string(), ConnectCause::Invalid))?;
        let headers = request.headers_mut();
        for (name, value) in &dial.headers {
            headers.append(name, value.clone());
        }
        headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol.wire_name()),
        );
        let config = WebSocketConfig::default()
            .max_message_size(Some(settings.max_message_bytes))
            .max_frame_size(Some(settings.max_message_bytes));

        if settings.ws_url.scheme() == "wss" && settings.tls.is_none() {
            return Err(connect_error(
                "wss:// needs a TLS configuration".into(),
                ConnectCause::Invalid,
            ));
        }
        let connector = settings
            .tls
            .clone()
            .map(tokio_tungstenite::Connector::Rustls);
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            connector,
        );
        let (socket, _response) = match time::timeout(settings.connect_timeout, connect).await {
            Err(_) => {
                return Err(connect_error(
                    format!(
                        "no WebSocket handshake within {} ms",
                        settings.connect_timeout.as_millis()
                    ),
                    ConnectCause::Timeout,
                ))
            }
            Ok(Err(err)) => return Err(connect_error(describe(&err), connect_cause(&err))),
            Ok(Ok(connected)) => connected,
        };
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
        let frame = self
            .protocol
            .decode_server_frame(text.as_str(), self.max_message_bytes)
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

/// Whether a failed dial may succeed later (see [`UpstreamError::is_retryable`]).
fn connect_cause(err: &tungstenite::Error) -> ConnectCause {
    match err {
        tungstenite::Error::Http(response) => ConnectCause::HttpStatus(response.status().as_u16()),
        tungstenite::Error::Tls(_) => ConnectCause::Tls,
        tungstenite::Error::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) =>
        {
            ConnectCause::Tls
        }
        tungstenite::Error::Url(_) => ConnectCause::Invalid,
        _ => ConnectCause::Network,
    }
}
