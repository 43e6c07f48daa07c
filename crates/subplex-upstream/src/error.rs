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
    /// An HTTP upstream (GraphQL over SSE) answered with a status other than 200.
    #[error("upstream \"{upstream}\" answered HTTP {status}")]
    HttpStatus { upstream: Arc<str>, status: u16 },
    /// An HTTP upstream answered 200 with something that is not an event stream: it does
    /// not serve GraphQL over SSE at this URL.
    #[error("upstream \"{upstream}\" answered with {content_type}, not text/event-stream")]
    NotEventStream {
        upstream: Arc<str>,
        content_type: String,
    },
    /// An event stream ended, or broke, before the operation's `complete`.
    #[error("upstream \"{upstream}\" ended the event stream before the operation completed{}", reason_suffix(.reason))]
    StreamCut { upstream: Arc<str>, reason: String },
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
            UpstreamError::Rejected { .. }
            | UpstreamError::HttpStatus {
                status: 401 | 403, ..
            } => "UPSTREAM_REJECTED",
            UpstreamError::HttpStatus { .. } if self.is_retryable() => "UPSTREAM_UNAVAILABLE",
            UpstreamError::Closed { .. } | UpstreamError::StreamCut { .. } => "UPSTREAM_CLOSED",
            UpstreamError::Protocol { .. }
            | UpstreamError::HttpStatus { .. }
            | UpstreamError::NotEventStream { .. } => "UPSTREAM_PROTOCOL_ERROR",
            UpstreamError::SlowConsumer { .. } => "SLOW_CONSUMER",
            UpstreamError::ShuttingDown => "SHUTTING_DOWN",
        }
    }

    /// Whether the same request may succeed later without anything changing on our side:
    /// the upstream was unreachable, overloaded, restarting or cut the stream. Permanent
    /// errors (refused credentials, an HTTP 4xx other than 408/429, a server that does not
    /// speak the protocol) are never worth retrying blindly.
    pub fn is_retryable(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::AckTimeout { .. }
            | UpstreamError::Unresponsive { .. }
            | UpstreamError::StreamCut { .. } => true,
            UpstreamError::HttpStatus { status, .. } => {
                subplex_protocol::sse_client::classify_response(*status, None)
                    == subplex_protocol::sse_client::ResponseVerdict::Retryable
            }
            // 1002-1010 and the 44xx codes say the peer refused what we sent; 1000 (a
            // normal close while operations were live), 1001, 1005, 1006, 1011-1014 are
            // restarts, crashes and overload.
            UpstreamError::Closed { code, .. } => {
                !matches!(code, 1002..=1004 | 1007..=1010 | 4000..=4999)
            }
            UpstreamError::Rejected { .. }
            | UpstreamError::Protocol { .. }
            | UpstreamError::NotEventStream { .. }
            | UpstreamError::SlowConsumer { .. }
            | UpstreamError::ShuttingDown => false,
        }
    }

    /// The error as a GraphQL errors array.
    pub fn to_graphql_errors(&self) -> subplex_protocol::RawJson {
        subplex_protocol::graphql_errors(&self.to_string(), self.code())
    }
}
