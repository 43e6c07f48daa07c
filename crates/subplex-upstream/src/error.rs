//! What can go wrong between the gateway and an upstream, and whether trying again helps.

use std::sync::Arc;

use subplex_protocol::client::{close_meaning, names_credential_problem, CloseMeaning};

/// A failure of an upstream connection or of one subscription on it. Every variant is
/// shown to clients as a GraphQL error, so messages carry no header values or payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to upstream \"{upstream}\": {reason}")]
    Connect {
        upstream: Arc<str>,
        reason: String,
        cause: ConnectCause,
    },
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
    /// Reconnecting failed for the whole `give_up_after_ms` window; `last` is the latest
    /// attempt's failure.
    #[error(
        "gave up reconnecting to upstream \"{upstream}\" after {waited_ms} ms; last error: {last}"
    )]
    GaveUp {
        upstream: Arc<str>,
        waited_ms: u64,
        last: Box<UpstreamError>,
    },
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
    #[error("subscription cut off: the client fell behind by more than {queued_events} events or {queued_bytes} bytes")]
    SlowConsumer {
        queued_events: usize,
        queued_bytes: usize,
    },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A config reload changed the upstream's settings: its operations end rather than
    /// ride a connection dialled under the old ones. Subscribing again uses the new ones.
    #[error(
        "the configuration of upstream \"{upstream}\" changed (config reload); subscribe again"
    )]
    ConfigChanged { upstream: Arc<str> },
    /// A config reload removed the route the client used, or pointed it at another
    /// upstream.
    #[error("route {path} was removed or now serves another upstream (config reload)")]
    RouteRemoved { path: String },
}

/// Why a connection attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCause {
    /// Refused, reset, unreachable, or the handshake broke off: the server may come back.
    Network,
    /// No handshake within `connect_timeout_ms`.
    Timeout,
    /// The server answered the upgrade (or request) with this HTTP status.
    HttpStatus(u16),
    /// The TLS handshake failed (untrusted certificate, name mismatch): a configuration
    /// problem that waiting does not fix.
    Tls,
    /// The request could not even be built (bad URL, `wss://` without TLS settings).
    Invalid,
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

impl UpstreamError {
    /// The stable `extensions.code` clients see. A give-up reports its last failure's code.
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
            UpstreamError::GaveUp { last, .. } => last.code(),
            UpstreamError::SlowConsumer { .. } => "SLOW_CONSUMER",
            UpstreamError::ShuttingDown => "SHUTTING_DOWN",
            UpstreamError::ConfigChanged { .. } => "UPSTREAM_CONFIG_CHANGED",
            UpstreamError::RouteRemoved { .. } => "ROUTE_REMOVED",
        }
    }

    /// Whether connecting again, with the same parameters, may succeed. The one place
    /// failures are classified: retryable failures are reconnected with backoff and stay
    /// invisible to clients until `give_up_after_ms`; the others reach clients at once.
    ///
    /// Retryable: refused, reset, timeouts (connect, ack, keep-alive), closes
    /// 1001/1006/1011/1012/1013, HTTP 5xx, 408 and 429, an event stream cut short.
    /// Permanent: closes 4400/4401/4403 and
    /// other deliberate closes, legacy `connection_error`, HTTP 4xx, TLS failures, protocol
    /// violations, and any reason naming an expired or invalid token.
    pub fn is_retryable(&self) -> bool {
        match self {
            UpstreamError::Connect { cause, reason, .. } => {
                let by_cause = match cause {
                    ConnectCause::Network | ConnectCause::Timeout => true,
                    ConnectCause::HttpStatus(status) => {
                        subplex_protocol::sse_client::classify_response(*status, None)
                            == subplex_protocol::sse_client::ResponseVerdict::Retryable
                    }
                    ConnectCause::Tls | ConnectCause::Invalid => false,
                };
                by_cause && !names_credential_problem(reason)
            }
            UpstreamError::AckTimeout { .. }
            | UpstreamError::Unresponsive { .. }
            | UpstreamError::StreamCut { .. } => true,
            UpstreamError::HttpStatus { status, .. } => {
                subplex_protocol::sse_client::classify_response(*status, None)
                    == subplex_protocol::sse_client::ResponseVerdict::Retryable
            }
            UpstreamError::Closed { code, reason, .. } => {
                close_meaning(*code, reason) == CloseMeaning::Transient
            }
            UpstreamError::Rejected { .. }
            | UpstreamError::Protocol { .. }
            | UpstreamError::NotEventStream { .. }
            | UpstreamError::GaveUp { .. }
            | UpstreamError::SlowConsumer { .. }
            | UpstreamError::ShuttingDown
            | UpstreamError::ConfigChanged { .. }
            | UpstreamError::RouteRemoved { .. } => false,
        }
    }

    /// Whether the failure says the upstream does not speak the protocol it was addressed
    /// in (an undecodable frame, a 4400/4406/1002 close, an SSE request answered with
    /// something else than an event stream, or with 404/405/406/415, a WebSocket upgrade
    /// answered 2xx/400/404/405/426): a probed protocol should be probed again.
    pub fn is_protocol_mismatch(&self) -> bool {
        match self {
            UpstreamError::Protocol { .. } | UpstreamError::NotEventStream { .. } => true,
            // What a server answers a GraphQL-over-SSE request when it serves something
            // else at the URL now.
            UpstreamError::HttpStatus { status, .. } => matches!(status, 404 | 405 | 406 | 415),
            // A WebSocket upgrade answered without switching protocols: no WebSocket
            // endpoint (any more) at the URL.
            UpstreamError::Connect {
                cause: ConnectCause::HttpStatus(status),
                ..
            } => matches!(status, 200..=299 | 400 | 404 | 405 | 426),
            UpstreamError::Closed { code, reason, .. } => {
                close_meaning(*code, reason) == CloseMeaning::ProtocolMismatch
            }
            _ => false,
        }
    }

    /// The error as a GraphQL errors array.
    pub fn to_graphql_errors(&self) -> subplex_protocol::RawJson {
        subplex_protocol::graphql_errors(&self.to_string(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(code: u16, reason: &str) -> UpstreamError {
        UpstreamError::Closed {
            upstream: "up".into(),
            code,
            reason: reason.into(),
        }
    }

    fn connect(cause: ConnectCause) -> UpstreamError {
        UpstreamError::Connect {
            upstream: "up".into(),
            reason: "r".into(),
            cause,
        }
    }

    #[test]
    fn classification_follows_the_documented_table() {
        let retryable = [
            connect(ConnectCause::Network),
            connect(ConnectCause::Timeout),
            connect(ConnectCause::HttpStatus(502)),
            connect(ConnectCause::HttpStatus(503)),
            connect(ConnectCause::HttpStatus(429)),
            closed(1001, ""),
            closed(1006, "connection reset"),
            closed(1011, ""),
            closed(1012, ""),
            closed(1013, ""),
            UpstreamError::AckTimeout {
                upstream: "up".into(),
                timeout_ms: 1,
            },
            UpstreamError::Unresponsive {
                upstream: "up".into(),
                silent_ms: 1,
            },
        ];
        for error in &retryable {
            assert!(error.is_retryable(), "{error:?}");
        }
        let permanent = [
            connect(ConnectCause::HttpStatus(400)),
            connect(ConnectCause::HttpStatus(401)),
            connect(ConnectCause::HttpStatus(404)),
            connect(ConnectCause::Tls),
            connect(ConnectCause::Invalid),
            closed(4400, ""),
            closed(4401, ""),
            closed(4403, ""),
            closed(1000, ""),
            closed(4500, "boom"),
            closed(1011, "token expired"),
            UpstreamError::Rejected {
                upstream: "up".into(),
                reason: "connection_error".into(),
            },
            UpstreamError::Protocol {
                upstream: "up".into(),
                reason: "garbage".into(),
            },
            UpstreamError::SlowConsumer {
                queued_events: 1,
                queued_bytes: 1,
            },
            UpstreamError::ShuttingDown,
        ];
        for error in &permanent {
            assert!(!error.is_retryable(), "{error:?}");
        }
    }

    #[test]
    fn protocol_mismatches_are_recognised() {
        assert!(closed(4406, "").is_protocol_mismatch());
        assert!(closed(1002, "").is_protocol_mismatch());
        assert!(closed(4400, "").is_protocol_mismatch());
        assert!(!closed(1006, "").is_protocol_mismatch());
        assert!(connect(ConnectCause::HttpStatus(404)).is_protocol_mismatch());
        assert!(connect(ConnectCause::HttpStatus(200)).is_protocol_mismatch());
        assert!(!connect(ConnectCause::HttpStatus(503)).is_protocol_mismatch());
        assert!(!connect(ConnectCause::HttpStatus(401)).is_protocol_mismatch());
        assert!(!connect(ConnectCause::Network).is_protocol_mismatch());
        let http = |status| UpstreamError::HttpStatus {
            upstream: "up".into(),
            status,
        };
        assert!(http(404).is_protocol_mismatch());
        assert!(!http(500).is_protocol_mismatch());
        assert!(!http(403).is_protocol_mismatch());
        assert!(UpstreamError::Protocol {
            upstream: "up".into(),
            reason: "x".into()
        }
        .is_protocol_mismatch());
    }

    #[test]
    fn a_give_up_names_the_upstream_the_window_and_the_last_cause() {
        let error = UpstreamError::GaveUp {
            upstream: "up".into(),
            waited_ms: 500,
            last: Box::new(connect(ConnectCause::Network)),
        };
        assert_eq!(error.code(), "UPSTREAM_UNAVAILABLE");
        assert_eq!(
            error.to_string(),
            "gave up reconnecting to upstream \"up\" after 500 ms; last error: could not connect to upstream \"up\": r"
        );
    }
}
