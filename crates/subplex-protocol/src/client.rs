//! Client-side rules of both WebSocket dialects, as a pure state machine: what a gateway
//! connected to an upstream does with each server frame, and what an upstream's close
//! code means.
//!
//! The I/O task decodes each text frame into an [`UpstreamFrame`] (in the connection's
//! dialect), feeds it to [`UpstreamRules::receive`] and does what the returned
//! [`ClientStep`] says. Timers (the ack deadline, keep-alive) stay in the I/O task; the
//! rules only know whether the connection was acknowledged.
//!
//! One machine serves both dialects because [`UpstreamFrame`] already maps each dialect's
//! frames onto the same meanings (legacy `ka` and graphql-transport-ws `pong` are both a
//! keep-alive; only legacy servers send `connection_error`, only graphql-transport-ws
//! servers send `ping`). What differs per dialect is decoding and encoding, not the rules.

use crate::{Event, RawJson, UpstreamFrame};

/// Where a client connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `connection_init` sent, no `connection_ack` yet.
    AwaitingAck,
    /// Acknowledged: operations may run.
    Ready,
}

/// What the connection does with one server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// `connection_ack` arrived: start the operations.
    Ready,
    /// A result for upstream operation `id`.
    Deliver { id: String, event: Event },
    /// Answer with the dialect's `pong`.
    Pong,
    /// Nothing to do: a keep-alive (Hasura sends `ka` even before the ack), or a repeated ack.
    Nothing,
    /// The server reported an error for no operation; log it, the connection goes on.
    ServerError { message: String },
    /// The connection cannot go on.
    Fail(ClientFailure),
}

/// Why the server's frames end the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFailure {
    /// Legacy `connection_error`: the server refused the connection (usually credentials).
    Refused { message: String },
    /// A frame that has no place before the ack.
    Unexpected { frame: &'static str },
}

/// The client-side state of one upstream connection.
#[derive(Debug)]
pub struct UpstreamRules {
    phase: Phase,
}

impl Default for UpstreamRules {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamRules {
    /// Rules for a connection that has just sent `connection_init`.
    pub fn new() -> Self {
        UpstreamRules {
            phase: Phase::AwaitingAck,
        }
    }

    /// Whether `connection_ack` has arrived.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// Applies one decoded server frame.
    pub fn receive(&mut self, frame: UpstreamFrame) -> ClientStep {
        match (self.phase, frame) {
            (_, UpstreamFrame::ConnectionError { payload }) => {
                ClientStep::Fail(ClientFailure::Refused {
                    message: payload
                        .map(|p| error_message(&p))
                        .unwrap_or_else(|| "connection_error".into()),
                })
            }
            (_, UpstreamFrame::Ping) => ClientStep::Pong,
            (_, UpstreamFrame::KeepAlive) => ClientStep::Nothing,
            (Phase::AwaitingAck, UpstreamFrame::Ack) => {
                self.phase = Phase::Ready;
                ClientStep::Ready
            }
            (Phase::Ready, UpstreamFrame::Ack) => ClientStep::Nothing,
            (Phase::AwaitingAck, other) => ClientStep::Fail(ClientFailure::Unexpected {
                frame: frame_name(&other),
            }),
            (Phase::Ready, UpstreamFrame::Operation { id, event }) => {
                ClientStep::Deliver { id, event }
            }
            (Phase::Ready, UpstreamFrame::ServerError { payload }) => ClientStep::ServerError {
                message: error_message(&payload),
            },
        }
    }
}

/// What an upstream's WebSocket close code (or a lost connection, 1006) means for the
/// operations it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMeaning {
    /// The server is going away, restarting, overloaded or the network broke: connecting
    /// again may well work (1001, 1006, 1011, 1012, 1013).
    Transient,
    /// The server refused the credentials (4401, 4403, or a reason naming an expired or
    /// invalid token): connecting again with the same ones cannot help.
    Refused,
    /// The server did not understand the dialect (4400 bad message, 4406 subprotocol not
    /// acceptable, 1002 protocol error): the protocol choice is wrong.
    ProtocolMismatch,
    /// Any other code: the server ended the connection on purpose; not retried.
    Final,
}

/// The meaning of close `code` with `reason`. A reason naming an expired or invalid token
/// wins over the code: servers close with 1011 or 4500 on a token check too.
pub fn close_meaning(code: u16, reason: &str) -> CloseMeaning {
    if names_credential_problem(reason) {
        return CloseMeaning::Refused;
    }
    match code {
        1001 | 1006 | 1011 | 1012 | 1013 => CloseMeaning::Transient,
        4401 | 4403 => CloseMeaning::Refused,
        1002 | 4400 | 4406 => CloseMeaning::ProtocolMismatch,
        _ => CloseMeaning::Final,
    }
}

/// Whether an upstream's reason text says the credentials are bad ("token expired",
/// "invalid token", "jwt expired", …). Retrying with the same credentials cannot succeed.
pub fn names_credential_problem(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    let about_credentials = ["token", "jwt", "credential", "unauthori", "forbidden"]
        .iter()
        .any(|word| reason.contains(word));
    let bad = ["expired", "invalid", "unauthori", "forbidden", "revoked"]
        .iter()
        .any(|word| reason.contains(word));
    about_credentials && bad
}

/// The `message` of an error payload, for logs and error texts; never the whole payload.
pub fn error_message(payload: &RawJson) -> String {
    #[derive(serde::Deserialize)]
    struct WithMessage {
        message: String,
    }
    serde_json::from_str::<WithMessage>(payload.as_str())
        .map(|m| m.message)
        .unwrap_or_else(|_| "no message given".into())
}

fn frame_name(frame: &UpstreamFrame) -> &'static str {
    match frame {
        UpstreamFrame::Ack => "connection_ack",
        UpstreamFrame::KeepAlive => "a keep-alive",
        UpstreamFrame::Ping => "ping",
        UpstreamFrame::Operation { .. } => "an operation message",
        UpstreamFrame::ConnectionError { .. } => "connection_error",
        UpstreamFrame::ServerError { .. } => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(id: &str) -> UpstreamFrame {
        UpstreamFrame::Operation {
            id: id.into(),
            event: Event::Next(RawJson::parse(r#"{"data":{"a":1}}"#).unwrap()),
        }
    }

    #[test]
    fn keep_alives_and_pings_before_the_ack_are_tolerated() {
        // Hasura: `ka` (legacy) or `ping` (graphql-transport-ws) before `connection_ack`.
        let mut rules = UpstreamRules::new();
        assert_eq!(rules.receive(UpstreamFrame::KeepAlive), ClientStep::Nothing);
        assert_eq!(rules.receive(UpstreamFrame::Ping), ClientStep::Pong);
        assert!(!rules.is_ready());
        assert_eq!(rules.receive(UpstreamFrame::Ack), ClientStep::Ready);
        assert!(rules.is_ready());
        assert_eq!(rules.receive(UpstreamFrame::Ack), ClientStep::Nothing);
    }

    #[test]
    fn results_before_the_ack_break_the_protocol() {
        let mut rules = UpstreamRules::new();
        assert_eq!(
            rules.receive(next("1")),
            ClientStep::Fail(ClientFailure::Unexpected {
                frame: "an operation message"
            })
        );
        let mut rules = UpstreamRules::new();
        let payload = RawJson::parse(r#"{"message":"m"}"#).unwrap();
        assert_eq!(
            rules.receive(UpstreamFrame::ServerError { payload }),
            ClientStep::Fail(ClientFailure::Unexpected { frame: "error" })
        );
    }

    #[test]
    fn after_the_ack_results_are_delivered_and_server_errors_logged() {
        let mut rules = UpstreamRules::new();
        rules.receive(UpstreamFrame::Ack);
        assert_eq!(
            rules.receive(next("7")),
            ClientStep::Deliver {
                id: "7".into(),
                event: Event::Next(RawJson::parse(r#"{"data":{"a":1}}"#).unwrap()),
            }
        );
        let payload = RawJson::parse(r#"{"message":"bad frame","secret":"x"}"#).unwrap();
        assert_eq!(
            rules.receive(UpstreamFrame::ServerError { payload }),
            ClientStep::ServerError {
                message: "bad frame".into()
            }
        );
    }

    #[test]
    fn connection_error_refuses_in_any_phase_with_its_message_only() {
        for acked in [false, true] {
            let mut rules = UpstreamRules::new();
            if acked {
                rules.receive(UpstreamFrame::Ack);
            }
            let payload = RawJson::parse(r#"{"message":"invalid token","token":"t"}"#).unwrap();
            assert_eq!(
                rules.receive(UpstreamFrame::ConnectionError {
                    payload: Some(payload)
                }),
                ClientStep::Fail(ClientFailure::Refused {
                    message: "invalid token".into()
                })
            );
        }
        let mut rules = UpstreamRules::new();
        assert_eq!(
            rules.receive(UpstreamFrame::ConnectionError { payload: None }),
            ClientStep::Fail(ClientFailure::Refused {
                message: "connection_error".into()
            })
        );
    }

    #[test]
    fn close_codes_are_classified() {
        for code in [1001, 1006, 1011, 1012, 1013] {
            assert_eq!(close_meaning(code, ""), CloseMeaning::Transient, "{code}");
        }
        for code in [4401, 4403] {
            assert_eq!(close_meaning(code, ""), CloseMeaning::Refused, "{code}");
        }
        for code in [1002, 4400, 4406] {
            assert_eq!(
                close_meaning(code, "Invalid message"),
                CloseMeaning::ProtocolMismatch,
                "{code}"
            );
        }
        for code in [1000, 1005, 4409, 4500] {
            assert_eq!(close_meaning(code, "boom"), CloseMeaning::Final, "{code}");
        }
    }

    #[test]
    fn a_reason_naming_a_bad_token_is_a_refusal_whatever_the_code() {
        assert_eq!(close_meaning(1011, "Token expired"), CloseMeaning::Refused);
        assert_eq!(close_meaning(4500, "invalid JWT"), CloseMeaning::Refused);
        assert_eq!(close_meaning(1001, "Unauthorized"), CloseMeaning::Refused);
        assert_eq!(
            close_meaning(1011, "internal error"),
            CloseMeaning::Transient
        );
        assert!(!names_credential_problem("token bucket refilled"));
        assert!(!names_credential_problem("invalid message"));
    }
}
