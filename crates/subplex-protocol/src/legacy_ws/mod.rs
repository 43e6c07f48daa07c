//! Legacy `graphql-ws`, the protocol of subscriptions-transport-ws and of Hasura
//! ([PROTOCOL.md](https://github.com/apollographql/subscriptions-transport-ws/blob/master/PROTOCOL.md)).
//!
//! Decoding accepts the deprecated pre-2017 aliases (`init`, `subscription_start`,
//! `subscription_end`, `keepalive`, ...); encoding never emits them.
//! [`server::ServerRules`] holds the server-side rules as a pure state machine.

pub mod server;

use bytestring::ByteString;

use crate::envelope::{check_size, frame, Envelope};
use crate::{DecodeError, Event, GraphqlRequest, RawJson};

/// A client-to-server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `payload` is the client's `connectionParams`.
    ConnectionInit {
        payload: Option<RawJson>,
    },
    Start {
        id: String,
        payload: GraphqlRequest,
    },
    Stop {
        id: String,
    },
    ConnectionTerminate,
}

/// A server-to-client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    ConnectionAck,
    ConnectionError {
        payload: Option<RawJson>,
    },
    /// Keep-alive. Hasura sends it even before `connection_ack`.
    Ka,
    /// `payload` is an execution result.
    Data {
        id: String,
        payload: RawJson,
    },
    /// A failure before execution; `payload` is an error object or array. The operation ends.
    Error {
        id: Option<String>,
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
            "connection_init" | "init" => ClientMessage::ConnectionInit {
                payload: env.optional_object_payload("connection_init")?,
            },
            "start" | "subscription_start" => ClientMessage::Start {
                id: env.id("start")?,
                payload: env.request_payload("start")?,
            },
            "stop" | "subscription_end" => ClientMessage::Stop {
                id: env.id("stop")?,
            },
            "connection_terminate" => ClientMessage::ConnectionTerminate,
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
                // The reference server reads `payload` unconditionally; always send an object.
                Some(payload.as_ref().map_or("{}", RawJson::as_str)),
            ),
            ClientMessage::Start { id, payload } => {
                frame("start", Some(id), Some(&payload.encode()))
            }
            ClientMessage::Stop { id } => frame("stop", Some(id), None),
            ClientMessage::ConnectionTerminate => frame("connection_terminate", None, None),
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
            "connection_ack" | "init_success" => ServerMessage::ConnectionAck,
            "connection_error" | "init_fail" => ServerMessage::ConnectionError {
                payload: env.optional_payload(),
            },
            "ka" | "keepalive" => ServerMessage::Ka,
            "data" | "subscription_data" => ServerMessage::Data {
                id: env.id("data")?,
                payload: env.payload("data")?,
            },
            "error" | "subscription_fail" => ServerMessage::Error {
                id: env.id("error").ok(),
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
            ServerMessage::ConnectionAck => frame("connection_ack", None, None),
            ServerMessage::ConnectionError { payload } => frame(
                "connection_error",
                None,
                payload.as_ref().map(RawJson::as_str),
            ),
            ServerMessage::Ka => frame("ka", None, None),
            ServerMessage::Data { id, payload } => frame("data", Some(id), Some(payload.as_str())),
            ServerMessage::Error { id, payload } => {
                frame("error", id.as_deref(), Some(payload.as_str()))
            }
            ServerMessage::Complete { id } => frame("complete", Some(id), None),
        }
    }

    /// The frame for an [`Event`] of operation `id`. A terminal error is a single
    /// `error` frame: subscriptions-transport-ws clients drop the operation on it, as the
    /// reference server expects.
    pub fn encode_event(id: &str, event: &Event) -> String {
        match event {
            Event::Next(payload) => frame("data", Some(id), Some(payload.as_str())),
            Event::Error(payload) => frame("error", Some(id), Some(payload.as_str())),
            Event::Complete => frame("complete", Some(id), None),
        }
    }
}
