//! What can go wrong between the gateway and an upstream.

use std::sync::Arc;

/// A failure of an upstream connection or of one subscription on it. Every variant is
/// shown to clients as a GraphQL error, so messages carry no header values or payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to upstream \"{upstream}\": {reason}")]
    Connect { upstream: Arc<str>, reason: String },
    #[error("upstream \"{upstream}\" did not acknowledge connection_init within {timeout_ms} ms")]
    AckTimeout { upstream: Arc<str>, timeout_ms: u64 },
    #[error("upstream \"{upstream}\" refused the connection: {reason}")]
    Rejected { upstream: Arc<str>, reason: String },
    #[error("upstream \"{upstream}\" closed the connection (code {code}{})", reason_suffix(.reason))]
    Closed {
        upstream: Arc<str>,
        code: u16,
        reason: String,
    },
    #[error("upstream \"{upstream}\" stopped responding: nothing received for {silent_ms} ms")]
    Unresponsive { upstream: Arc<str>, silent_ms: u64 },
    #[error("upstream \"{upstream}\" broke the protocol: {reason}")]
    Protocol { upstream: Arc<str>, reason: String },
    #[error("subscription cut off: the client fell more than {queued} events behind")]
    SlowConsumer { queued: usize },
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

impl UpstreamError {
    /// The stable `extensions.code` clients see.
    pub fn code(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "UPSTREAM_UNAVAILABLE",
            UpstreamError::AckTimeout { .. } | UpstreamError::Unresponsive { .. } => {
                "UPSTREAM_TIMEOUT"
            }
            UpstreamError::Rejected { .. } => "UPSTREAM_REJECTED",
            UpstreamError::Closed { .. } => "UPSTREAM_CLOSED",
            UpstreamError::Protocol { .. } => "UPSTREAM_PROTOCOL_ERROR",
            UpstreamError::SlowConsumer { .. } => "SLOW_CONSUMER",
            UpstreamError::ShuttingDown => "SHUTTING_DOWN",
        }
    }

    /// The error as a GraphQL errors array.
    pub fn to_graphql_errors(&self) -> subplex_protocol::RawJson {
        subplex_protocol::graphql_errors(&self.to_string(), self.code())
    }
}
