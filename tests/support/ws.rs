//! A raw WebSocket client for protocol edge cases the client libraries never produce.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::EVENT_TIMEOUT;

/// The upgrade request for `ws://addr/graphql` offering `subprotocol`.
fn upgrade_request(
    addr: SocketAddr,
    path: &str,
    subprotocol: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(subprotocol).unwrap(),
    );
    request
}

/// A connected raw client.
#[derive(Debug)]
pub struct RawClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server did next.
#[derive(Debug, PartialEq)]
pub enum Received {
    Json(Value),
    Close {
        code: u16,
        reason: String,
    },
    /// The connection ended without a close frame.
    Dropped,
}

impl RawClient {
    /// Connects to `ws://addr/graphql` offering `subprotocol`, with extra headers.
    pub async fn connect(
        addr: SocketAddr,
        subprotocol: &str,
        headers: &[(&str, &str)],
    ) -> RawClient {
        Self::connect_path(addr, "/graphql", subprotocol, headers).await
    }

    /// Connects to `ws://addr{path}` offering `subprotocol`, with extra headers.
    pub async fn connect_path(
        addr: SocketAddr,
        path: &str,
        subprotocol: &str,
        headers: &[(&str, &str)],
    ) -> RawClient {
        let mut request = upgrade_request(addr, path, subprotocol);
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("upgrade accepted");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(subprotocol.split(',').next().unwrap().trim()),
            "the server selects the client's first supported subprotocol"
        );
        RawClient { socket }
    }

    /// Connects over TLS (`wss://addr/graphql`), trusting what `tls` trusts.
    pub async fn connect_tls(
        addr: SocketAddr,
        subprotocol: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> RawClient {
        let mut request = upgrade_request(addr, "/graphql", subprotocol);
        *request.uri_mut() = format!("wss://{addr}/graphql").parse().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(tls)),
        )
        .await
        .expect("TLS upgrade accepted");
        RawClient { socket }
    }

    /// Connects like [`RawClient::connect`] over a socket whose receive buffer is tiny, so
    /// that once the client stops reading the gateway's writes stall after a few KiB.
    pub async fn connect_with_small_receive_buffer(
        addr: SocketAddr,
        subprotocol: &str,
    ) -> RawClient {
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        tcp.set_recv_buffer_size(4096).unwrap();
        let stream = tcp.connect(addr).await.expect("connect");
        let request = upgrade_request(addr, "/graphql", subprotocol);
        let (socket, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
            .await
            .expect("upgrade accepted");
        RawClient { socket }
    }

    /// Sends a Close frame with `code` and returns what the server did next: a server
    /// that follows RFC 6455 §5.5.1 answers with a Close frame of its own.
    pub async fn close(&mut self, code: u16, reason: &str) -> Received {
        self.socket
            .send(Message::Close(Some(
                tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: code.into(),
                    reason: reason.to_owned().into(),
                },
            )))
            .await
            .expect("send close");
        self.recv().await
    }

    /// Reads and discards everything until the connection ends; returns how it ended.
    /// Bounded as a whole: a connection that stays open fails the test.
    pub async fn drain_to_end(&mut self) -> Received {
        let drain = async {
            loop {
                match self.recv().await {
                    Received::Json(_) => continue,
                    ending => return ending,
                }
            }
        };
        tokio::time::timeout(EVENT_TIMEOUT, drain)
            .await
            .expect("the connection ends within the timeout")
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    /// The next protocol message or the close, skipping WebSocket pings/pongs.
    pub async fn recv(&mut self) -> Received {
        loop {
            let next = tokio::time::timeout(EVENT_TIMEOUT, self.socket.next())
                .await
                .expect("the server answers within the timeout");
            return match next {
                Some(Ok(Message::Text(text))) => {
                    Received::Json(serde_json::from_str(text.as_str()).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    Received::Close { code, reason }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => panic!("server sent a binary frame"),
                Some(Err(_)) | None => Received::Dropped,
            };
        }
    }

    /// Reads for `duration`, answering pings, and asserts that no message arrives: the way
    /// to prove a quiet connection stays open.
    pub async fn expect_silence(&mut self, duration: std::time::Duration) {
        let read = async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => return other,
                }
            }
        };
        if let Ok(other) = tokio::time::timeout(duration, read).await {
            panic!("expected silence, got {other:?}");
        }
    }

    /// The next message, which must be JSON.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Received::Json(value) => value,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next message, skipping legacy `ka` keep-alives.
    pub async fn recv_json_skip_ka(&mut self) -> Value {
        loop {
            let value = self.recv_json().await;
            if value["type"] != "ka" {
                return value;
            }
        }
    }

    /// Expects the server to close with `code`; returns the reason.
    pub async fn expect_close(&mut self, code: u16) -> String {
        loop {
            match self.recv().await {
                Received::Close { code: got, reason } => {
                    assert_eq!(got, code, "close code (reason {reason:?})");
                    return reason;
                }
                Received::Json(value) if value["type"] == "ka" => continue,
                other => panic!("expected close {code}, got {other:?}"),
            }
        }
    }

    /// `connection_init` + `connection_ack` (graphql-transport-ws).
    pub async fn init(&mut self, payload: Value) {
        self.send(serde_json::json!({ "type": "connection_init", "payload": payload }))
            .await;
        assert_eq!(self.recv_json().await["type"], "connection_ack");
    }
}
