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
        let mut request = format!("ws://{addr}/graphql")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(subprotocol).unwrap(),
        );
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
