//! Finding out which protocol an upstream speaks, by behaviour.
//!
//! The selected WebSocket subprotocol is a hint, never proof: servers select none, echo
//! the first offer and speak another dialect, or sit behind a proxy that strips the
//! header. So [`probe`]:
//!
//! 1. opens a WebSocket offering both subprotocols (`graphql-transport-ws` first) and
//!    confirms a dialect with a real handshake, starting with the selected one:
//!    `connection_init`, `connection_ack`, then a graphql-transport-ws `ping` that only a
//!    graphql-transport-ws server answers with `pong` (the rules are
//!    [`subplex_protocol::probe`]);
//! 2. on a 4400/4406/1002 close, no ack, or a reply of the other dialect, tries the other
//!    dialect on a new connection that offers only that one;
//! 3. when no WebSocket dialect works (the upgrade is refused, say), tries GraphQL over SSE:
//!    a `{ __typename }` request with `Accept: text/event-stream` that must be answered
//!    with an event stream.
//!
//! The [`ProbeReport`] lists every step as [`Evidence`] that reads as one line each, for
//! logs and for `subplex probe`. Header values and the init payload are sent but never
//! recorded. Every step is bounded by the settings' `connect_timeout` and `ack_timeout`.

use std::fmt;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue};
use subplex_protocol::probe::{self as rules, HandshakeJudge, ProbeFrame, Step, Verdict};
use subplex_protocol::{Event, GraphqlRequest, RawJson, Subprotocol};
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::sse::SseClient;
use crate::ws_dial::{self, DialError, DialRequest, Socket};
use crate::{SseMethod, UpstreamError, UpstreamSettings};

/// The query the SSE step sends: valid against every GraphQL schema.
const SSE_PROBE_QUERY: &str = "{ __typename }";

/// What a probe found to work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DetectedProtocol {
    /// A WebSocket dialect, confirmed by a handshake.
    WebSocket(Subprotocol),
    /// GraphQL over SSE, distinct-connections mode.
    Sse,
}

impl fmt::Display for DetectedProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DetectedProtocol::WebSocket(Subprotocol::GraphqlTransportWs) => {
                f.write_str("graphql-transport-ws")
            }
            DetectedProtocol::WebSocket(Subprotocol::GraphqlWs) => f.write_str("graphql-ws"),
            DetectedProtocol::Sse => f.write_str("sse"),
        }
    }
}

impl DetectedProtocol {
    /// The `protocol` config value that skips probing for this upstream.
    pub fn config_name(self) -> &'static str {
        match self {
            DetectedProtocol::WebSocket(dialect) => dialect.wire_name(),
            DetectedProtocol::Sse => "sse",
        }
    }

    /// What the protocol is, for people.
    pub fn description(self) -> &'static str {
        match self {
            DetectedProtocol::WebSocket(Subprotocol::GraphqlTransportWs) => {
                "WebSocket, graphql-transport-ws (the graphql-ws library)"
            }
            DetectedProtocol::WebSocket(Subprotocol::GraphqlWs) => {
                "WebSocket, legacy graphql-ws (subscriptions-transport-ws, Hasura)"
            }
            DetectedProtocol::Sse => "GraphQL over SSE, distinct connections mode",
        }
    }
}

/// One step of a probe and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// A WebSocket upgrade was accepted; `selected` is the server's `Sec-WebSocket-Protocol`.
    Upgrade {
        offered: Vec<Subprotocol>,
        selected: Option<String>,
    },
    /// No WebSocket: the TCP connect, TLS or the upgrade failed.
    UpgradeFailed {
        offered: Vec<Subprotocol>,
        /// The HTTP status when the server answered the upgrade with one.
        status: Option<u16>,
        reason: String,
    },
    /// `connection_init` in `dialect`; the types of the frames received, in order (a close
    /// as `close <code>`); and the verdict.
    Handshake {
        dialect: Subprotocol,
        received: Vec<String>,
        verdict: Verdict,
    },
    /// Moving on to the next attempt, and why.
    Fallback { next: String, because: String },
    /// The GraphQL over SSE request and its outcome.
    Sse {
        method: SseMethod,
        outcome: SseOutcome,
    },
}

/// What the SSE step saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseOutcome {
    /// An event stream, with these event types (`next`, `complete`).
    EventStream { events: Vec<String> },
    /// An HTTP status other than 200.
    Status(u16),
    /// 200 with this content type, not `text/event-stream`.
    NotEventStream(String),
    /// No answer, or a broken one.
    Failed(String),
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::Upgrade { offered, selected } => {
                write!(
                    f,
                    "WebSocket upgrade offering {}: accepted, ",
                    names(offered)
                )?;
                match selected {
                    Some(selected) => write!(f, "server selected \"{selected}\""),
                    None => f.write_str("server selected no subprotocol"),
                }
            }
            Evidence::UpgradeFailed {
                offered, reason, ..
            } => write!(
                f,
                "WebSocket upgrade offering {}: failed: {reason}",
                names(offered)
            ),
            Evidence::Handshake {
                dialect,
                received,
                verdict,
            } => {
                write!(f, "{dialect} handshake: sent connection_init")?;
                if received.iter().any(|r| r == "connection_ack") {
                    f.write_str(", and ping after the ack")?;
                }
                if received.is_empty() {
                    f.write_str("; received nothing")?;
                } else {
                    write!(f, "; received {}", received.join(", "))?;
                }
                f.write_str(": ")?;
                match verdict {
                    Verdict::Speaks(spoken) if spoken == dialect => {
                        write!(f, "confirmed {spoken}")
                    }
                    Verdict::Speaks(spoken) => {
                        write!(f, "the server replies in {spoken}, not {dialect}")
                    }
                    Verdict::WrongDialect { code, .. } => {
                        write!(f, "closed with {code}: the server refuses {dialect}")
                    }
                    Verdict::Rejected { reason } => {
                        write!(f, "the server refused the credentials ({reason})")
                    }
                    Verdict::Closed { code, reason } if reason.is_empty() => {
                        write!(f, "closed with {code}")
                    }
                    Verdict::Closed { code, reason } => write!(f, "closed with {code} {reason}"),
                    Verdict::NoAck => f.write_str("no connection_ack in time"),
                    Verdict::Unexpected { frame } => {
                        write!(f, "\"{frame}\" is not part of a {dialect} handshake")
                    }
                }
            }
            Evidence::Fallback { next, because } => write!(f, "{because}: trying {next}"),
            Evidence::Sse { method, outcome } => {
                write!(
                    f,
                    "GraphQL over SSE: {} {SSE_PROBE_QUERY} with Accept: text/event-stream: ",
                    method.as_str()
                )?;
                match outcome {
                    SseOutcome::EventStream { events } if events.is_empty() => {
                        f.write_str("200 text/event-stream, no event")
                    }
                    SseOutcome::EventStream { events } => {
                        write!(f, "200 text/event-stream, events {}", events.join(", "))
                    }
                    SseOutcome::Status(status) => write!(f, "HTTP {status}"),
                    SseOutcome::NotEventStream(content_type) => {
                        write!(f, "200 with {content_type}, not an event stream")
                    }
                    SseOutcome::Failed(reason) => write!(f, "failed: {reason}"),
                }
            }
        }
    }
}

fn names(offered: &[Subprotocol]) -> String {
    offered
        .iter()
        .map(|p| p.wire_name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The protocol an upstream speaks and how that was established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub protocol: DetectedProtocol,
    pub evidence: Vec<Evidence>,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.protocol)?;
        write_evidence(f, &self.evidence)
    }
}

/// The steps on one line (`1. …; 2. …`), for a log field.
pub fn evidence_line(evidence: &[Evidence]) -> String {
    evidence
        .iter()
        .enumerate()
        .map(|(i, step)| format!("{}. {step}", i + 1))
        .collect::<Vec<_>>()
        .join("; ")
}

fn write_evidence(f: &mut fmt::Formatter<'_>, evidence: &[Evidence]) -> fmt::Result {
    for (i, step) in evidence.iter().enumerate() {
        write!(f, "\n  {}. {step}", i + 1)?;
    }
    Ok(())
}

/// Why a probe found no protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// Nothing answered at the URLs (refused, timed out, TLS failed).
    Unreachable,
    /// A server answered and refused the credentials.
    Rejected(String),
    /// Servers answered, in no protocol subplex speaks.
    NoProtocol,
}

/// A probe that found nothing that works, with the steps that were tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.summary())]
pub struct ProbeError {
    pub failure: ProbeFailure,
    pub evidence: Vec<Evidence>,
}

impl ProbeError {
    /// One sentence saying why.
    pub fn summary(&self) -> String {
        match &self.failure {
            ProbeFailure::Unreachable => {
                let reason = self
                    .evidence
                    .iter()
                    .find_map(|step| match step {
                        Evidence::UpgradeFailed { reason, .. } => Some(reason.as_str()),
                        _ => None,
                    })
                    .unwrap_or("no answer");
                format!("the upstream is unreachable: {reason}")
            }
            ProbeFailure::Rejected(reason) => {
                format!("the upstream refused the credentials: {reason}")
            }
            ProbeFailure::NoProtocol => "the upstream speaks none of graphql-transport-ws, graphql-ws (legacy) or GraphQL over SSE".into(),
        }
    }

    /// The error a subscriber whose operation needed this probe gets.
    pub fn to_upstream_error(&self, upstream: &std::sync::Arc<str>) -> UpstreamError {
        let upstream = upstream.clone();
        match &self.failure {
            ProbeFailure::Unreachable => UpstreamError::Connect {
                upstream,
                reason: self
                    .evidence
                    .iter()
                    .find_map(|step| match step {
                        Evidence::UpgradeFailed { reason, .. } => Some(reason.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "no answer".into()),
                cause: crate::ConnectCause::Network,
            },
            ProbeFailure::Rejected(reason) => UpstreamError::Rejected {
                upstream,
                reason: reason.clone(),
            },
            ProbeFailure::NoProtocol => UpstreamError::Protocol {
                upstream,
                reason: format!("protocol probe failed: {}", self.summary()),
            },
        }
    }

    /// The summary and every step, one per line.
    pub fn detailed(&self) -> String {
        struct Detailed<'a>(&'a ProbeError);
        impl fmt::Display for Detailed<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0.summary())?;
                write_evidence(f, &self.0.evidence)
            }
        }
        Detailed(self).to_string()
    }
}

/// Probes the upstream of `settings` (`ws_url` for WebSocket, `http_url` and `sse_method`
/// for SSE), authenticating with `headers` and `init_payload` as a real connection would.
pub async fn probe(
    settings: &UpstreamSettings,
    headers: &[(HeaderName, HeaderValue)],
    init_payload: &RawJson,
) -> Result<ProbeReport, ProbeError> {
    let mut evidence = Vec::new();
    let mut reachable = false;
    let both = [Subprotocol::GraphqlTransportWs, Subprotocol::GraphqlWs];

    let mut outcome = attempt(settings, headers, init_payload, &both, None, &mut evidence).await;
    if let Attempt::TryDialect(dialect) = outcome {
        reachable = true;
        evidence.push(Evidence::Fallback {
            next: format!("{dialect} on a new connection, offering only {dialect}"),
            because: "the first handshake was not confirmed".into(),
        });
        let only = [dialect];
        outcome = attempt(
            settings,
            headers,
            init_payload,
            &only,
            Some(dialect),
            &mut evidence,
        )
        .await;
    }
    match outcome {
        Attempt::Confirmed(dialect) => {
            return Ok(report(DetectedProtocol::WebSocket(dialect), evidence))
        }
        Attempt::Rejected(reason) => return Err(rejected(reason, evidence)),
        // A second attempt that points back at the first dialect contradicts it: neither
        // is confirmed.
        Attempt::TryDialect(_) | Attempt::Answered => reachable = true,
        Attempt::Unreachable => {}
    }

    evidence.push(Evidence::Fallback {
        next: "GraphQL over SSE".into(),
        because: "no WebSocket dialect was confirmed".into(),
    });
    let method = settings.sse_method;
    let outcome = sse_step(settings, headers).await;
    let refused = match outcome {
        SseOutcome::Status(status @ (401 | 403)) => {
            Some(format!("GraphQL over SSE answered HTTP {status}"))
        }
        _ => None,
    };
    let works = matches!(&outcome, SseOutcome::EventStream { events } if events.iter().any(|e| e == "next"));
    reachable |= !matches!(outcome, SseOutcome::Failed(_));
    evidence.push(Evidence::Sse { method, outcome });
    if works {
        return Ok(report(DetectedProtocol::Sse, evidence));
    }
    if let Some(reason) = refused {
        return Err(rejected(reason, evidence));
    }
    Err(ProbeError {
        failure: if reachable {
            ProbeFailure::NoProtocol
        } else {
            ProbeFailure::Unreachable
        },
        evidence,
    })
}

fn report(protocol: DetectedProtocol, evidence: Vec<Evidence>) -> ProbeReport {
    ProbeReport { protocol, evidence }
}

fn rejected(reason: String, evidence: Vec<Evidence>) -> ProbeError {
    ProbeError {
        failure: ProbeFailure::Rejected(reason),
        evidence,
    }
}

/// How one WebSocket attempt ended.
enum Attempt {
    /// The dialect tried was confirmed.
    Confirmed(Subprotocol),
    /// The server refused the credentials.
    Rejected(String),
    /// Not confirmed; this dialect is the one to try next.
    TryDialect(Subprotocol),
    /// A server answered (the upgrade was refused, say) but no WebSocket dialect is worth
    /// another attempt.
    Answered,
    /// Nothing answered.
    Unreachable,
}

/// One WebSocket connection offering `offered`, and a handshake in `dialect` (default: the
/// one the server selected, else graphql-transport-ws).
async fn attempt(
    settings: &UpstreamSettings,
    headers: &[(HeaderName, HeaderValue)],
    init_payload: &RawJson,
    offered: &[Subprotocol],
    dialect: Option<Subprotocol>,
    evidence: &mut Vec<Evidence>,
) -> Attempt {
    let dialed = ws_dial::dial(DialRequest {
        url: &settings.ws_url,
        offered,
        headers,
        tls: settings.tls.as_ref(),
        max_message_bytes: settings.max_message_bytes,
        timeout: settings.connect_timeout,
    })
    .await;
    let mut dialed = match dialed {
        Ok(dialed) => dialed,
        Err(err) => {
            let status = match err {
                DialError::Refused { status } => Some(status),
                _ => None,
            };
            let answered = !matches!(
                err,
                DialError::Connect(_) | DialError::TimedOut(_) | DialError::Tls(_)
            );
            evidence.push(Evidence::UpgradeFailed {
                offered: offered.to_vec(),
                status,
                reason: err.to_string(),
            });
            return match (status, answered) {
                (Some(401 | 403), _) => Attempt::Rejected(err.to_string()),
                (_, true) => Attempt::Answered,
                (_, false) => Attempt::Unreachable,
            };
        }
    };
    evidence.push(Evidence::Upgrade {
        offered: offered.to_vec(),
        selected: dialed.selected.clone(),
    });
    let dialect = dialect.unwrap_or_else(|| rules::first_dialect(dialed.selected.as_deref()));
    let (received, verdict) = handshake(&mut dialed.socket, dialect, init_payload, settings).await;
    // Best effort and bounded: the probe's connection is of no further use.
    let _ = time::timeout(settings.ack_timeout, dialed.socket.close(None)).await;
    evidence.push(Evidence::Handshake {
        dialect,
        received,
        verdict: verdict.clone(),
    });
    match verdict {
        Verdict::Speaks(spoken) if spoken == dialect => Attempt::Confirmed(dialect),
        Verdict::Speaks(spoken) => Attempt::TryDialect(spoken),
        Verdict::Rejected { reason } => Attempt::Rejected(reason),
        Verdict::WrongDialect { .. }
        | Verdict::Closed { .. }
        | Verdict::NoAck
        | Verdict::Unexpected { .. } => Attempt::TryDialect(rules::other_dialect(dialect)),
    }
}

/// `connection_init` in `dialect`, then the frames until the judge decides.
async fn handshake(
    socket: &mut Socket,
    dialect: Subprotocol,
    init_payload: &RawJson,
    settings: &UpstreamSettings,
) -> (Vec<String>, Verdict) {
    let mut received = Vec::new();
    let mut judge = HandshakeJudge::new();
    // A send can fail when the server already closed (a 1002 right after the upgrade): the
    // close frame it sent is still there to read, and says more than the failed write.
    let _ = socket
        .send(Message::text(dialect.encode_init(init_payload)))
        .await;
    let mut deadline = Instant::now() + settings.ack_timeout;
    loop {
        let message = tokio::select! {
            _ = time::sleep_until(deadline) => return (received, judge.on_timeout()),
            message = socket.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let frame = ProbeFrame::classify(text.as_str());
                received.push(frame.name().to_owned());
                let acknowledged = judge.acknowledged();
                match judge.on_frame(&frame) {
                    Step::Wait => {}
                    Step::Send(reply) => {
                        let _ = socket.send(Message::text(reply)).await;
                    }
                    Step::Done(verdict) => return (received, verdict),
                }
                if judge.acknowledged() && !acknowledged {
                    // The confirmation gets its own full wait.
                    deadline = Instant::now() + settings.ack_timeout;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                received.push(format!("close {code}"));
                return (received, judge.on_close(code, &reason));
            }
            Some(Ok(Message::Binary(_))) => {
                received.push("binary frame".into());
                return (
                    received,
                    Verdict::Unexpected {
                        frame: "binary frame".into(),
                    },
                );
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Err(_)) | None => {
                received.push("connection dropped".into());
                return (received, judge.on_close(1006, ""));
            }
        }
    }
}

/// A `{ __typename }` request over GraphQL over SSE, read to its `complete`.
async fn sse_step(
    settings: &UpstreamSettings,
    headers: &[(HeaderName, HeaderValue)],
) -> SseOutcome {
    let client = match SseClient::new(std::sync::Arc::new(settings.clone())) {
        Ok(client) => client,
        Err(err) => return SseOutcome::Failed(err.to_string()),
    };
    let request = GraphqlRequest::new(SSE_PROBE_QUERY);
    let mut operation = match client.subscribe(headers, &request).await {
        Ok(operation) => operation,
        Err(UpstreamError::HttpStatus { status, .. }) => return SseOutcome::Status(status),
        Err(UpstreamError::NotEventStream { content_type, .. }) => {
            return SseOutcome::NotEventStream(content_type)
        }
        Err(err) => return SseOutcome::Failed(error_cause(&err)),
    };
    let mut events = Vec::new();
    let read = time::timeout(settings.ack_timeout, async {
        while let Some(event) = operation.recv().await {
            match event {
                Ok(Event::Next(_)) => events.push("next".to_owned()),
                Ok(Event::Error(_)) => events.push("error".to_owned()),
                Ok(Event::Complete) => events.push("complete".to_owned()),
                Err(err) => return Err(error_cause(&err)),
            }
        }
        Ok(())
    })
    .await;
    match read {
        Ok(Err(reason)) if events.is_empty() => SseOutcome::Failed(reason),
        _ => SseOutcome::EventStream { events },
    }
}

/// An upstream error's text without the `upstream "name"` prefix, for evidence.
fn error_cause(err: &UpstreamError) -> String {
    match err {
        UpstreamError::Connect { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}
