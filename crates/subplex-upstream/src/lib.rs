//! Talking to GraphQL servers.
//!
//! - [`Pool`]: one per upstream; maps a [`SecurityContext`] to the one upstream WebSocket
//!   connection that serves every subscription with that context.
//! - [`UpstreamConnection`](connection): the task that owns one upstream socket, remaps
//!   operation ids and fans events out to [`Subscription`]s.
//! - [`SseClient`](sse::SseClient): GraphQL over SSE toward an upstream, one HTTP request
//!   per operation.
//! - [`UpstreamSettings`]: plain settings the gateway builds from its validated config.
//!
//! This crate knows nothing of downstream clients or of the config file format.

mod connection;
mod error;
mod handle;
mod pool;
mod security_context;
mod settings;
pub mod sse;
mod subscription;

pub use error::UpstreamError;
pub use pool::{ConnectParams, Pool};
pub use security_context::SecurityContext;
pub use settings::{SseMethod, UpstreamProtocol, UpstreamSettings};
pub use subscription::Subscription;
