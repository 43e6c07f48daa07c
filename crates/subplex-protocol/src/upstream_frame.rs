//! The client side of both WebSocket dialects, as a gateway talking to an upstream needs
//! it: server frames decoded into one dialect-neutral [`UpstreamFrame`], and the few
//! client frames a gateway sends, encoded per dialect.

use bytestring::ByteString;

use crate::{legacy_ws, transport_ws, DecodeError, Event, GraphqlRequest, RawJson, Subprotocol};

/// A server frame, as the gateway's upstream connection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFrame {
    /// `connection_ack`.
    Ack,
    /// A liveness signal that needs no answer: legacy `ka`, graphql-transport-ws `pong`.
    KeepAlive,
    /// graphql-transport-ws `ping`: must be answered with [`Subprotocol::encode_pong`].
    Ping,
    /// A result for upstream operation `id`.
    Operation { id: String, event: Event },
    /// The server refused the connection (legacy `connection_error`).
    ConnectionError { payload: Option<RawJson> },
    /// A legacy `error` without an id: the server could not read something we sent.
    ServerError { payload: RawJson },
}

impl Subprotocol {
    /// Decodes a frame a server of this dialect sent. Payloads are slices of `text`, so an
    /// event's bytes are the message's own, shared by every client it goes to.
    pub fn decode_server_frame(
        self,
        text: &ByteString,
        limit: usize,
    ) -> Result<UpstreamFrame, DecodeError> {
        Ok(match self {
            Subprotocol::GraphqlTransportWs => {
                match transport_ws::ServerMessage::decode_shared(text, limit)? {
                    transport_ws::ServerMessage::ConnectionAck { .. } => UpstreamFrame::Ack,
                    transport_ws::ServerMessage::Ping { .. } => UpstreamFrame::Ping,
                    transport_ws::ServerMessage::Pong { .. } => UpstreamFrame::KeepAlive,
                    transport_ws::ServerMessage::Next { id, payload } => UpstreamFrame::Operation {
                        id,
                        event: Event::Next(payload),
                    },
                    transport_ws::ServerMessage::Error { id, payload } => {
                        UpstreamFrame::Operation {
                            id,
                            event: Event::Error(errors_array(payload)),
                        }
                    }
                    transport_ws::ServerMessage::Complete { id } => UpstreamFrame::Operation {
                        id,
                        event: Event::Complete,
                    },
                }
            }
            Subprotocol::GraphqlWs => match legacy_ws::ServerMessage::decode_shared(text, limit)? {
                legacy_ws::ServerMessage::ConnectionAck => UpstreamFrame::Ack,
                legacy_ws::ServerMessage::Ka => UpstreamFrame::KeepAlive,
                legacy_ws::ServerMessage::ConnectionError { payload } => {
                    UpstreamFrame::ConnectionError { payload }
                }
                legacy_ws::ServerMessage::Data { id, payload } => UpstreamFrame::Operation {
                    id,
                    event: Event::Next(payload),
                },
                legacy_ws::ServerMessage::Error {
                    id: Some(id),
                    payload,
                } => UpstreamFrame::Operation {
                    id,
                    event: Event::Error(errors_array(payload)),
                },
                legacy_ws::ServerMessage::Error { id: None, payload } => {
                    UpstreamFrame::ServerError { payload }
                }
                legacy_ws::ServerMessage::Complete { id } => UpstreamFrame::Operation {
                    id,
                    event: Event::Complete,
                },
            },
        })
    }

    /// `connection_init` with the given payload.
    pub fn encode_init(self, payload: &RawJson) -> String {
        let payload = Some(payload.clone());
        match self {
            Subprotocol::GraphqlTransportWs => {
                transport_ws::ClientMessage::ConnectionInit { payload }.encode()
            }
            Subprotocol::GraphqlWs => legacy_ws::ClientMessage::ConnectionInit { payload }.encode(),
        }
    }

    /// Starts operation `id` (`subscribe` / `start`).
    pub fn encode_subscribe(self, id: &str, request: &GraphqlRequest) -> String {
        let (id, payload) = (id.to_owned(), request.clone());
        match self {
            Subprotocol::GraphqlTransportWs => {
                transport_ws::ClientMessage::Subscribe { id, payload }.encode()
            }
            Subprotocol::GraphqlWs => legacy_ws::ClientMessage::Start { id, payload }.encode(),
        }
    }

    /// Stops operation `id` (`complete` / `stop`).
    pub fn encode_unsubscribe(self, id: &str) -> String {
        let id = id.to_owned();
        match self {
            Subprotocol::GraphqlTransportWs => {
                transport_ws::ClientMessage::Complete { id }.encode()
            }
            Subprotocol::GraphqlWs => legacy_ws::ClientMessage::Stop { id }.encode(),
        }
    }

    /// The answer to a server `ping`.
    pub fn encode_pong(self) -> String {
        transport_ws::ClientMessage::Pong { payload: None }.encode()
    }

    /// The protocol-level ping, where the dialect has one.
    pub fn encode_ping(self) -> Option<String> {
        match self {
            Subprotocol::GraphqlTransportWs => {
                Some(transport_ws::ClientMessage::Ping { payload: None }.encode())
            }
            Subprotocol::GraphqlWs => None,
        }
    }

    /// The goodbye frame sent before closing, where the dialect has one.
    pub fn encode_terminate(self) -> Option<String> {
        match self {
            Subprotocol::GraphqlTransportWs => None,
            Subprotocol::GraphqlWs => Some(legacy_ws::ClientMessage::ConnectionTerminate.encode()),
        }
    }
}

/// Normalises an upstream error payload to a GraphQL errors array. graphql-transport-ws
/// servers send an array; legacy servers send an object, `{"errors": [...]}`, or a string.
fn errors_array(payload: RawJson) -> RawJson {
    let text = payload.as_str().trim_start();
    if text.starts_with('[') {
        return payload;
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(object)) => match object.get("errors") {
            Some(errors @ serde_json::Value::Array(_)) => RawJson::from_value(errors),
            // Not a GraphQL errors list: the whole object is the error, nothing dropped.
            _ => RawJson::from_value(&serde_json::Value::Array(vec![serde_json::Value::Object(
                object,
            )])),
        },
        Ok(serde_json::Value::String(message)) => {
            RawJson::from_value(&serde_json::json!([{ "message": message }]))
        }
        _ => RawJson::from_value(
            &serde_json::json!([{ "message": "upstream sent an unreadable error" }]),
        ),
    }
}
