//! `graphql-transport-ws`, the protocol of the graphql-ws library
//! ([PROTOCOL.md](https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md)).
//!
//! [`ClientMessage`] is what a client sends and [`ServerMessage`] what a server sends; both
//! decode from and encode to text frames. [`server::ServerRules`] holds the server-side
//! rules (init, ack, ids, close codes) as a pure state machine.

pub mod server;

use bytestring::ByteString;

use crate::envelope::{check_size, frame, Envelope};
use crate::{DecodeError, GraphqlRequest, RawJson};

/// A client-to-server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    ConnectionInit { payload: Option<RawJson> },
    Ping { payload: Option<RawJson> },
    Pong { payload: Option<RawJson> },
    Subscribe { id: String, payload: GraphqlRequest },
    Complete { id: String },
}

/// A server-to-client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    ConnectionAck {
        payload: Option<RawJson>,
    },
    Ping {
        payload: Option<RawJson>,
    },
    Pong {
        payload: Option<RawJson>,
    },
    /// `payload` is an execution result.
    Next {
        id: String,
        payload: RawJson,
    },
    /// `payload` is a GraphQL errors array. Terminal: no `complete` follows.
    Error {
        id: String,
        payload: RawJson,
    },
    Complete {
        id: String,
    },
}

impl ClientMessage {
    /// Decodes a text frame of at most `limit` bytes.
    pub fn decode(text: &str, limit: usize) -> Result<Self, DecodeError> {
        check_size(text, limit)?;
        let mut env = Envelope::decode(text)?;
        Ok(match env.kind.as_ref() {
            "connection_init" => ClientMessage::ConnectionInit {
                payload: env.optional_object_payload("connection_init")?,
            },
            "ping" => ClientMessage::Ping {
                payload: env.optional_object_payload("ping")?,
            },
            "pong" => ClientMessage::Pong {
                payload: env.optional_object_payload("pong")?,
            },
            "subscribe" => ClientMessage::Subscribe {
                id: env.id("subscribe")?,
                payload: env.request_payload("subscribe")?,
            },
            "complete" => ClientMessage::Complete {
                id: env.id("complete")?,
            },
            other => {
                return Err(DecodeError::UnknownType {
                    kind: other.to_owned(),
                })
            }
        })
    }

    /// Encodes the message as a text frame.
    pub fn encode(&self) -> String {
        match self {
            ClientMessage::ConnectionInit { payload } => frame(
                "connection_init",
                None,
                payload.as_ref().map(RawJson::as_str),
            ),
            ClientMessage::Ping { payload } => {
                frame("ping", None, payload.as_ref().map(RawJson::as_str))
            }
            ClientMessage::Pong { payload } => {
                frame("pong", None, payload.as_ref().map(RawJson::as_str))
            }
            ClientMessage::Subscribe { id, payload } => {
                frame("subscribe", Some(id), Some(&payload.encode()))
            }
            ClientMessage::Complete { id } => frame("complete", Some(id), None),
        }
    }
}

impl ServerMessage {
    /// Decodes a text frame of at most `limit` bytes; payloads are copied out of `text`.
    pub fn decode(text: &str, limit: usize) -> Result<Self, DecodeError> {
        check_size(text, limit)?;
        Self::from_envelope(Envelope::decode(text)?)
    }

    /// Decodes a text frame of at most `limit` bytes; payloads are slices of `message`.
    pub fn decode_shared(message: &ByteString, limit: usize) -> Result<Self, DecodeError> {
        check_size(message, limit)?;
        Self::from_envelope(Envelope::decode_shared(message)?)
    }

    fn from_envelope(mut env: Envelope<'_>) -> Result<Self, DecodeError> {
        Ok(match env.kind.as_ref() {
            "connection_ack" => ServerMessage::ConnectionAck {
                payload: env.optional_payload(),
            },
            "ping" => ServerMessage::Ping {
                payload: env.optional_payload(),
            },
            "pong" => ServerMessage::Pong {
                payload: env.optional_payload(),
            },
            "next" => ServerMessage::Next {
                id: env.id("next")?,
                payload: env.payload("next")?,
            },
            "error" => ServerMessage::Error {
                id: env.id("error")?,
                payload: env.payload("error")?,
            },
            "complete" => ServerMessage::Complete {
                id: env.id("complete")?,
            },
            other => {
                return Err(DecodeError::UnknownType {
                    kind: other.to_owned(),
                })
            }
        })
    }

    /// Encodes the message as a text frame.
    pub fn encode(&self) -> String {
        match self {
            ServerMessage::ConnectionAck { payload } => frame(
                "connection_ack",
                None,
                payload.as_ref().map(RawJson::as_str),
            ),
            ServerMessage::Ping { payload } => {
                frame("ping", None, payload.as_ref().map(RawJson::as_str))
            }
            ServerMessage::Pong { payload } => {
                frame("pong", None, payload.as_ref().map(RawJson::as_str))
            }
            ServerMessage::Next { id, payload } => frame("next", Some(id), Some(payload.as_str())),
            ServerMessage::Error { id, payload } => {
                frame("error", Some(id), Some(payload.as_str()))
            }
            ServerMessage::Complete { id } => frame("complete", Some(id), None),
        }
    }

    /// The frame for an [`Event`](crate::Event) of operation `id`, built without copying
    /// the event into a message first (the fan-out hot path).
    pub fn encode_event(id: &str, event: &crate::Event) -> String {
        match event {
            crate::Event::Next(payload) => frame("next", Some(id), Some(payload.as_str())),
            crate::Event::Error(payload) => frame("error", Some(id), Some(payload.as_str())),
            crate::Event::Complete => frame("complete", Some(id), None),
        }
    }
}
