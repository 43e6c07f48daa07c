//! The pure rules of fingerprinting a WebSocket GraphQL server by behaviour.
//!
//! Servers often ignore subprotocol negotiation: some select none, some echo the first
//! offer and speak another dialect, and a proxy may strip the header. So the selected
//! subprotocol is only a hint, and [`HandshakeJudge`] decides from what the server *does*:
//!
//! 1. the probe sends `connection_init` (the same message in both dialects) and waits for
//!    `connection_ack`; a `ka` or `ping` before it is noted (Hasura sends them);
//! 2. after the ack it sends a graphql-transport-ws `ping`. A graphql-transport-ws server
//!    must answer `pong`; a legacy server answers `ka`, an `error` for the unknown type
//!    (subscriptions-transport-ws), or nothing;
//! 3. a close before the ack with 4400, 4406 (graphql-transport-ws refusing the dialect)
//!    or 1002 (subscriptions-transport-ws refusing the subprotocol) means "try the other
//!    dialect"; 4401/4403 and legacy `connection_error` mean the credentials were refused.
//!
//! The upstream crate does the I/O: it feeds frames, closes and timeouts in and executes
//! the [`Step`]s that come back.

use crate::Subprotocol;

/// The `type` of a server frame, as far as probing cares, read without knowing the dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFrame {
    ConnectionAck,
    /// Legacy keep-alive.
    Ka,
    /// graphql-transport-ws `ping`.
    Ping,
    /// graphql-transport-ws `pong`.
    Pong,
    /// Legacy refusal of `connection_init`.
    ConnectionError,
    /// `error` without an id: a legacy server that did not understand a message.
    Error,
    /// Any other `type`, or `"(not JSON)"` / `"(no type)"`.
    Other(String),
}

impl ProbeFrame {
    /// Reads the `type` of a text frame.
    pub fn classify(text: &str) -> ProbeFrame {
        #[derive(serde::Deserialize)]
        struct Typed<'a> {
            #[serde(rename = "type", borrow)]
            kind: Option<std::borrow::Cow<'a, str>>,
        }
        let Ok(typed) = serde_json::from_str::<Typed>(text) else {
            return ProbeFrame::Other("(not JSON)".into());
        };
        match typed.kind.as_deref() {
            Some("connection_ack") => ProbeFrame::ConnectionAck,
            Some("ka") => ProbeFrame::Ka,
            Some("ping") => ProbeFrame::Ping,
            Some("pong") => ProbeFrame::Pong,
            Some("connection_error") => ProbeFrame::ConnectionError,
            Some("error") => ProbeFrame::Error,
            Some(other) => ProbeFrame::Other(printable_type(other)),
            None => ProbeFrame::Other("(no type)".into()),
        }
    }

    /// The wire name, for evidence.
    pub fn name(&self) -> &str {
        match self {
            ProbeFrame::ConnectionAck => "connection_ack",
            ProbeFrame::Ka => "ka",
            ProbeFrame::Ping => "ping",
            ProbeFrame::Pong => "pong",
            ProbeFrame::ConnectionError => "connection_error",
            ProbeFrame::Error => "error",
            ProbeFrame::Other(kind) => kind,
        }
    }
}

/// A `type` as evidence shows it: a plain token as is; anything else (empty, spaces,
/// newlines, control characters) quoted and escaped, so one frame is one readable word on
/// one log line; at most 40 characters of it.
fn printable_type(kind: &str) -> String {
    const MAX: usize = 40;
    let shown: String = kind.chars().take(MAX).collect();
    let plain = !shown.is_empty()
        && shown
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let mut out = if plain { shown } else { format!("{shown:?}") };
    if kind.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// What the I/O side does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keep reading.
    Wait,
    /// Send this frame, then keep reading.
    Send(String),
    /// The handshake is decided.
    Done(Verdict),
}

/// How one handshake attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The server acknowledged and then behaved as this dialect. It may differ from the
    /// dialect the attempt was made in (a reply of the other dialect).
    Speaks(Subprotocol),
    /// Closed before the ack in a way that says "not this dialect": try the other one.
    WrongDialect { code: u16, reason: String },
    /// The server understood the handshake and refused the credentials (4401, 4403 or a
    /// legacy `connection_error`): asking in another dialect will not help.
    Rejected { reason: String },
    /// Closed for another reason before anything was decided.
    Closed { code: u16, reason: String },
    /// No `connection_ack` in time.
    NoAck,
    /// Something no GraphQL WebSocket server sends at this point.
    Unexpected { frame: String },
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    AwaitingAck,
    /// Acked; the confirmation `ping` was sent.
    Confirming,
}

/// Judges one handshake attempt from the frames that arrive.
#[derive(Debug, Clone)]
pub struct HandshakeJudge {
    stage: Stage,
    /// A legacy-only frame (`ka`) arrived before the ack.
    saw_legacy: bool,
    /// A graphql-transport-ws-only frame (`ping`, `pong`) arrived before the ack.
    saw_transport_ws: bool,
}

impl Default for HandshakeJudge {
    fn default() -> Self {
        Self::new()
    }
}

impl HandshakeJudge {
    /// A judge for a handshake whose `connection_init` was just sent.
    pub fn new() -> Self {
        HandshakeJudge {
            stage: Stage::AwaitingAck,
            saw_legacy: false,
            saw_transport_ws: false,
        }
    }

    /// Whether the ack arrived.
    pub fn acknowledged(&self) -> bool {
        self.stage == Stage::Confirming
    }

    /// A text frame arrived.
    pub fn on_frame(&mut self, frame: &ProbeFrame) -> Step {
        match (self.stage, frame) {
            (Stage::AwaitingAck, ProbeFrame::ConnectionAck) => {
                self.stage = Stage::Confirming;
                Step::Send(crate::transport_ws::ClientMessage::Ping { payload: None }.encode())
            }
            (Stage::AwaitingAck, ProbeFrame::Ka) => {
                self.saw_legacy = true;
                Step::Wait
            }
            (Stage::AwaitingAck, ProbeFrame::Ping) => {
                self.saw_transport_ws = true;
                Step::Send(pong())
            }
            (Stage::AwaitingAck, ProbeFrame::Pong) => {
                self.saw_transport_ws = true;
                Step::Wait
            }
            (_, ProbeFrame::ConnectionError) => Step::Done(Verdict::Rejected {
                reason: "connection_error".into(),
            }),
            (Stage::Confirming, ProbeFrame::Pong | ProbeFrame::Ping) => {
                Step::Done(Verdict::Speaks(Subprotocol::GraphqlTransportWs))
            }
            (Stage::Confirming, ProbeFrame::Ka | ProbeFrame::Error) => {
                Step::Done(Verdict::Speaks(Subprotocol::GraphqlWs))
            }
            (_, other) => Step::Done(Verdict::Unexpected {
                frame: other.name().to_owned(),
            }),
        }
    }

    /// The server closed the socket.
    pub fn on_close(&self, code: u16, reason: &str) -> Verdict {
        let reason = reason.to_owned();
        match (self.stage, code) {
            (Stage::AwaitingAck, 4400 | 4406 | 1002) => Verdict::WrongDialect { code, reason },
            (_, 4401 | 4403) => Verdict::Rejected {
                reason: format!("closed with {code} {reason}").trim_end().to_owned(),
            },
            // It acknowledged connection_init and then hung up on a graphql-transport-ws
            // ping: a legacy server that does not tolerate unknown messages.
            (Stage::Confirming, _) => Verdict::Speaks(Subprotocol::GraphqlWs),
            (Stage::AwaitingAck, _) => Verdict::Closed { code, reason },
        }
    }

    /// The wait for the current stage ran out.
    pub fn on_timeout(&self) -> Verdict {
        match self.stage {
            Stage::AwaitingAck => Verdict::NoAck,
            // Acknowledged, but no pong: graphql-transport-ws servers must answer a ping, so
            // this is a legacy server without keep-alives, unless it sent a transport-ws
            // frame before the ack.
            Stage::Confirming if self.saw_transport_ws && !self.saw_legacy => {
                Verdict::Speaks(Subprotocol::GraphqlTransportWs)
            }
            Stage::Confirming => Verdict::Speaks(Subprotocol::GraphqlWs),
        }
    }
}

fn pong() -> String {
    crate::transport_ws::ClientMessage::Pong { payload: None }.encode()
}

/// The dialect to try first: the selected subprotocol when it is one we know, else
/// graphql-transport-ws, the dialect of every current server library.
pub fn first_dialect(selected: Option<&str>) -> Subprotocol {
    selected
        .and_then(Subprotocol::from_wire_name)
        .unwrap_or(Subprotocol::GraphqlTransportWs)
}

/// The other WebSocket dialect.
pub fn other_dialect(dialect: Subprotocol) -> Subprotocol {
    match dialect {
        Subprotocol::GraphqlTransportWs => Subprotocol::GraphqlWs,
        Subprotocol::GraphqlWs => Subprotocol::GraphqlTransportWs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(frames: &[&str]) -> (HandshakeJudge, Vec<Step>) {
        let mut judge = HandshakeJudge::new();
        let steps = frames
            .iter()
            .map(|f| judge.on_frame(&ProbeFrame::classify(f)))
            .collect();
        (judge, steps)
    }

    const PING: &str = r#"{"type":"ping"}"#;

    #[test]
    fn graphql_transport_ws_answers_the_ping() {
        let (_, steps) = run(&[r#"{"type":"connection_ack"}"#, r#"{"type":"pong"}"#]);
        assert_eq!(steps[0], Step::Send(PING.into()));
        assert_eq!(
            steps[1],
            Step::Done(Verdict::Speaks(Subprotocol::GraphqlTransportWs))
        );
    }

    #[test]
    fn legacy_answers_ka_or_error_and_may_send_ka_first() {
        let (_, steps) = run(&[
            r#"{"type":"ka"}"#,
            r#"{"type":"connection_ack"}"#,
            r#"{"type":"ka"}"#,
        ]);
        assert_eq!(steps[0], Step::Wait);
        assert_eq!(
            steps[2],
            Step::Done(Verdict::Speaks(Subprotocol::GraphqlWs))
        );
        let (_, steps) = run(&[
            r#"{"type":"connection_ack"}"#,
            r#"{"type":"error","payload":{"message":"Invalid message type!"}}"#,
        ]);
        assert_eq!(
            steps[1],
            Step::Done(Verdict::Speaks(Subprotocol::GraphqlWs))
        );
    }

    #[test]
    fn hasura_pings_before_the_ack_in_transport_ws_mode() {
        let (judge, steps) = run(&[r#"{"type":"ping","payload":{"message":"keepalive"}}"#]);
        assert_eq!(steps[0], Step::Send(r#"{"type":"pong"}"#.into()));
        assert_eq!(judge.on_timeout(), Verdict::NoAck);
        let (judge, _) = run(&[PING, r#"{"type":"connection_ack"}"#]);
        assert_eq!(
            judge.on_timeout(),
            Verdict::Speaks(Subprotocol::GraphqlTransportWs)
        );
    }

    #[test]
    fn silence_after_the_ack_is_legacy() {
        let (judge, _) = run(&[r#"{"type":"connection_ack"}"#]);
        assert!(judge.acknowledged());
        assert_eq!(judge.on_timeout(), Verdict::Speaks(Subprotocol::GraphqlWs));
    }

    #[test]
    fn closes_before_the_ack() {
        let judge = HandshakeJudge::new();
        for code in [4400, 4406, 1002] {
            assert!(matches!(
                judge.on_close(code, "x"),
                Verdict::WrongDialect { .. }
            ));
        }
        assert_eq!(
            judge.on_close(4403, "Forbidden"),
            Verdict::Rejected {
                reason: "closed with 4403 Forbidden".into()
            }
        );
        assert!(matches!(
            judge.on_close(1011, ""),
            Verdict::Closed { code: 1011, .. }
        ));
        let (judge, _) = run(&[r#"{"type":"connection_ack"}"#]);
        assert_eq!(
            judge.on_close(1011, ""),
            Verdict::Speaks(Subprotocol::GraphqlWs)
        );
    }

    #[test]
    fn refusals_and_nonsense() {
        let (_, steps) = run(&[r#"{"type":"connection_error","payload":{"message":"no"}}"#]);
        assert!(matches!(steps[0], Step::Done(Verdict::Rejected { .. })));
        let (_, steps) = run(&["hello"]);
        assert_eq!(
            steps[0],
            Step::Done(Verdict::Unexpected {
                frame: "(not JSON)".into()
            })
        );
        assert_eq!(
            ProbeFrame::classify(r#"{"type":""}"#),
            ProbeFrame::Other("\"\"".into())
        );
        assert_eq!(
            ProbeFrame::classify(r#"{"type":"a\nb"}"#),
            ProbeFrame::Other("\"a\\nb\"".into())
        );
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(100));
        assert_eq!(
            ProbeFrame::classify(&long),
            ProbeFrame::Other(format!("{}…", "x".repeat(40)))
        );
        let (_, steps) = run(&[r#"{"type":"next","id":"1","payload":{}}"#]);
        assert_eq!(
            steps[0],
            Step::Done(Verdict::Unexpected {
                frame: "next".into()
            })
        );
    }

    #[test]
    fn the_selected_subprotocol_is_only_where_to_start() {
        assert_eq!(first_dialect(Some("graphql-ws")), Subprotocol::GraphqlWs);
        assert_eq!(first_dialect(None), Subprotocol::GraphqlTransportWs);
        assert_eq!(first_dialect(Some("chat")), Subprotocol::GraphqlTransportWs);
        assert_eq!(
            other_dialect(Subprotocol::GraphqlWs),
            Subprotocol::GraphqlTransportWs
        );
    }
}
