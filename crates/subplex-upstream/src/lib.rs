//! Talking to GraphQL servers.
//!
//! - [`Pool`]: one per upstream; maps a [`SecurityContext`] to the one upstream WebSocket
//!   connection that serves every subscription with that context.
//! - [`UpstreamConnection`](connection): the task that owns one upstream socket, remaps
//!   operation ids and fans events out to [`Subscription`]s.
//! - [`SseClient`](sse::SseClient): GraphQL over SSE toward an upstream, one HTTP request
//!   per operation.
//! - [`ProbingPool`]: a [`Pool`] whose dialect is configured or found by a probe on first
//!   use (`protocol = "auto"`).
//! - [`probe`](probe::probe): finds which protocol an upstream speaks, by behaviour.
//! - [`UpstreamSettings`]: plain settings the gateway builds from its validated config.
//!
//! This crate knows nothing of downstream clients or of the config file format.

mod connection;
mod error;
mod handle;
mod pool;
pub mod probe;
mod probing_pool;
mod security_context;
mod settings;
pub mod sse;
mod subscription;
mod ws_dial;

pub use error::UpstreamError;
pub use pool::{ConnectParams, Pool};
pub use probing_pool::ProbingPool;
pub use security_context::SecurityContext;
pub use settings::{SseMethod, UpstreamProtocol, UpstreamSettings};
pub use subscription::Subscription;
