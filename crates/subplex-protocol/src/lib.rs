//! Pure codecs and protocol rules for the GraphQL subscription protocols subplex speaks.
//!
//! This crate turns bytes into typed messages and back, and holds the pure state machines
//! that decide what a protocol violation is and which close code it earns. It does no I/O,
//! owns no sockets and has no async runtime, so every rule is a unit test and every decoder
//! is fuzzable.
//!
//! - [`transport_ws`]: `graphql-transport-ws` (the graphql-ws library).
//! - [`legacy_ws`]: `graphql-ws` (the legacy subscriptions-transport-ws library, Hasura).
//! - [`sse`]: GraphQL over Server-Sent Events, distinct-connections and single-connection
//!   modes (graphql-sse, Yoga).
//! - [`multipart`]: Apollo's multipart HTTP subscriptions (Apollo Router, Apollo Client).
//! - [`sse_client`]: the same protocol from the client side, toward an SSE upstream.
//! - [`probe`]: the rules that fingerprint a WebSocket server's dialect by behaviour.
//! - [`normalised_request`]: a request's text with formatting removed, the key under which
//!   identical operations share one upstream operation.
//! - [`Event`]: the dialect-neutral result every downstream encoder frames from.
//! - [`UpstreamFrame`]: what a gateway acting as a *client* makes of a server frame, in
//!   either WebSocket dialect, and [`client`]: the rules such a client follows (waiting
//!   for the ack, keep-alives before it, what an upstream close code means).
//!
//! Payloads stay raw JSON text ([`RawJson`]): only envelopes are parsed, so fanning one
//! upstream event out to many clients re-frames it without re-serialising the payload.

pub mod client;
pub mod close;
mod document;
mod envelope;
mod error;
mod event;
mod event_framer;
mod graphql;
pub mod legacy_ws;
mod limits;
pub mod multipart;
mod normalise;
pub mod probe;
pub mod sse;
pub mod sse_client;
mod subprotocol;
pub mod transport_ws;
mod upstream_frame;

/// Shared UTF-8 text: what [`Subprotocol::decode_server_frame`] reads, so payloads can be
/// slices of the message.
pub use bytestring::ByteString;
pub use document::{operation_type, OperationType};
pub use error::DecodeError;
pub use event::Event;
pub use event_framer::EventFramer;
pub use graphql::{graphql_errors, GraphqlRequest, RawJson, RequestError};
pub use limits::OperationLimits;
pub use normalise::normalised_request;
pub use subprotocol::Subprotocol;
pub use upstream_frame::UpstreamFrame;
