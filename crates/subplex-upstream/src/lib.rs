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
pub mod http;
mod pool;
pub mod probe;
mod probing_pool;
mod reconnect;
mod registry;
mod security_context;
mod settings;
pub mod sse;
mod sse_operation;
mod subscription;
mod ws;
mod ws_dial;

pub use error::{ConnectCause, UpstreamError};
pub use pool::{ConnectParams, Pool};
pub use probing_pool::ProbingPool;
pub use reconnect::ReconnectSettings;
pub use security_context::SecurityContext;
pub use settings::{SseMethod, UpstreamProtocol, UpstreamSettings};
pub use subscription::Subscription;

/// Shows a header list by names only, for `Debug` impls: the values are credentials.
pub(crate) struct HeaderNames<'a>(pub &'a [(::http::HeaderName, ::http::HeaderValue)]);

impl std::fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name.as_str()))
            .finish()
    }
}
