//! Talking to GraphQL servers: every transport subplex speaks upstream.
//!
//! - [`ProbingPool`]: one per upstream; the configured protocol, or the one a probe found
//!   (`protocol = "auto"`), probed again when a connection fails in a protocol way.
//! - [`Pool`]: one per upstream and protocol, transport-neutral. Over WebSocket it maps a
//!   [`SecurityContext`] to the one connection task serving every subscription with that
//!   context; over GraphQL over SSE it runs one task per operation.
//! - [`UpstreamConnection`](connection): the task that owns a security context's
//!   operations (each with its request), one socket at a time: it runs identical
//!   requests as one upstream operation (deduplication), remaps operation ids, fans
//!   events out to [`Subscription`]s, and after a retryable failure reconnects with
//!   backoff ([`ReconnectSettings`]) and resubscribes them.
//! - [`SseClient`](sse::SseClient): GraphQL over SSE toward an upstream, one HTTP request
//!   per operation.
//! - [`probe`](probe::probe): finds which protocol an upstream speaks, by behaviour.
//! - [`HttpClient`](http::HttpClient): plain HTTP for queries and mutations.
//! - [`UpstreamError`]: every failure, classified once as retryable or permanent.
//! - [`UpstreamSettings`]: plain settings the gateway builds from its validated config.
//! - [`UpstreamStats`]: counts (events read, reconnects) the gateway reads for its
//!   metrics.
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
mod request_key;
mod security_context;
mod settings;
pub mod sse;
mod sse_operation;
mod stats;
mod subscription;
mod ws;
mod ws_dial;

pub use error::{ConnectCause, UpstreamError};
pub use pool::{ConnectParams, Pool};
pub use probing_pool::{ProbeSummary, ProbingPool};
pub use reconnect::ReconnectSettings;
pub use security_context::{SecurityContext, SettingsFingerprint};
pub use settings::{SseMethod, UpstreamProtocol, UpstreamSettings};
pub use stats::UpstreamStats;
pub use subscription::{Subscription, WriteThrough, WriteThroughRefused};

/// Shows a header list by names only, for `Debug` impls: the values are credentials.
pub(crate) struct HeaderNames<'a>(pub &'a [(::http::HeaderName, ::http::HeaderValue)]);

impl std::fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name.as_str()))
            .finish()
    }
}
