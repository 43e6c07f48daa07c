//! Server-side rules of legacy `graphql-ws` as a pure state machine.
//!
//! The legacy protocol has no close-code vocabulary and the reference server is lenient:
//! a malformed frame earns an `error` message, a `start` reusing a running id replaces
//! that operation, and a failed init earns `connection_error` followed by close 1011.
//! subplex keeps that behaviour so legacy clients see what they were written against.

use std::collections::HashSet;

use super::ClientMessage;
use crate::{GraphqlRequest, OperationLimits, RawJson};

#[derive(Debug)]
enum State {
    AwaitingInit,
    Initialising,
    Acknowledged { active: HashSet<String> },
}

/// A message the connection should act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Acknowledge (or refuse with `connection_error`) this init payload.
    Init { payload: Option<RawJson> },
    /// Start operation `id`. When `replaces` is true an operation with the same id was
    /// running and must be stopped first (what the reference server does).
    Start {
        id: String,
        request: GraphqlRequest,
        replaces: bool,
    },
    /// Stop running operation `id`.
    Stop { id: String },
    /// A `stop` for an id that is not running.
    Ignored,
    /// The client ends the connection: close normally.
    Terminate,
    /// `start` over the connection's operation limit: answer `error` for this id only.
    Refused { id: String, message: String },
}

/// A violation: answer with `connection_error` (or `error` for an operation) and, where
/// [`Violation::closes`] says so, close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// `start` before the connection was acknowledged: answered with `error` for that id.
    StartBeforeAck { id: String },
    /// A second `connection_init`: `connection_error`, then close.
    TooManyInit,
    /// An operation id over [`OperationLimits::max_id_bytes`]: an `error` without id (the
    /// id itself is not echoed), and the connection stays.
    IdTooLong { len: usize, limit: usize },
}

impl Violation {
    /// Whether the connection closes after the error message.
    pub fn closes(&self) -> bool {
        matches!(self, Violation::TooManyInit)
    }

    /// The message text sent to the client.
    pub fn message(&self) -> String {
        match self {
            Violation::StartBeforeAck { .. } => {
                "connection_init must be acknowledged before start".into()
            }
            Violation::TooManyInit => "Too many initialisation requests".into(),
            Violation::IdTooLong { len, limit } => OperationLimits {
                max_id_bytes: *limit,
                ..Default::default()
            }
            .id_too_long(*len),
        }
    }
}

/// The server side of one legacy `graphql-ws` connection.
#[derive(Debug)]
pub struct ServerRules {
    state: State,
    limits: OperationLimits,
}

impl Default for ServerRules {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerRules {
    /// Rules with the default [`OperationLimits`].
    pub fn new() -> Self {
        Self::with_limits(OperationLimits::default())
    }

    /// Rules enforcing `limits`.
    pub fn with_limits(limits: OperationLimits) -> Self {
        ServerRules {
            state: State::AwaitingInit,
            limits,
        }
    }

    /// Whether `connection_init` has not arrived yet.
    pub fn awaiting_init(&self) -> bool {
        matches!(self.state, State::AwaitingInit)
    }

    /// Applies one client message.
    pub fn receive(&mut self, message: ClientMessage) -> Result<Accepted, Violation> {
        match (message, &mut self.state) {
            (ClientMessage::ConnectionInit { payload }, State::AwaitingInit) => {
                self.state = State::Initialising;
                Ok(Accepted::Init { payload })
            }
            (ClientMessage::ConnectionInit { .. }, _) => Err(Violation::TooManyInit),
            (ClientMessage::Start { id, .. }, _) if id.len() > self.limits.max_id_bytes => {
                Err(Violation::IdTooLong {
                    len: id.len(),
                    limit: self.limits.max_id_bytes,
                })
            }
            (ClientMessage::Start { id, .. }, State::AwaitingInit | State::Initialising) => {
                Err(Violation::StartBeforeAck { id })
            }
            (ClientMessage::Start { id, payload }, State::Acknowledged { active }) => {
                let replaces = active.contains(&id);
                if !replaces && active.len() >= self.limits.max_operations {
                    let message = self.limits.too_many_operations();
                    return Ok(Accepted::Refused { id, message });
                }
                active.insert(id.clone());
                Ok(Accepted::Start {
                    id,
                    request: payload,
                    replaces,
                })
            }
            (ClientMessage::Stop { id }, State::Acknowledged { active }) => {
                if active.remove(&id) {
                    Ok(Accepted::Stop { id })
                } else {
                    Ok(Accepted::Ignored)
                }
            }
            (ClientMessage::Stop { .. }, _) => Ok(Accepted::Ignored),
            (ClientMessage::ConnectionTerminate, _) => Ok(Accepted::Terminate),
        }
    }

    /// Records that `connection_ack` was sent.
    pub fn acknowledged(&mut self) {
        if matches!(self.state, State::Initialising) {
            self.state = State::Acknowledged {
                active: HashSet::new(),
            };
        }
    }

    /// Records that operation `id` ended on the server side.
    pub fn finished(&mut self, id: &str) {
        if let State::Acknowledged { active } = &mut self.state {
            active.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(id: &str) -> ClientMessage {
        ClientMessage::Start {
            id: id.into(),
            payload: GraphqlRequest::new("subscription { t }"),
        }
    }

    fn acked() -> ServerRules {
        acked_with(OperationLimits::default())
    }

    fn acked_with(limits: OperationLimits) -> ServerRules {
        let mut rules = ServerRules::with_limits(limits);
        rules
            .receive(ClientMessage::ConnectionInit { payload: None })
            .unwrap();
        rules.acknowledged();
        rules
    }

    #[test]
    fn start_before_ack_is_an_operation_error() {
        let mut rules = ServerRules::new();
        let violation = rules.receive(start("1")).unwrap_err();
        assert_eq!(violation, Violation::StartBeforeAck { id: "1".into() });
        assert!(!violation.closes());
    }

    #[test]
    fn second_init_closes() {
        let mut rules = acked();
        let violation = rules
            .receive(ClientMessage::ConnectionInit { payload: None })
            .unwrap_err();
        assert!(violation.closes());
    }

    #[test]
    fn start_with_running_id_replaces_it() {
        let mut rules = acked();
        assert!(matches!(
            rules.receive(start("1")),
            Ok(Accepted::Start {
                replaces: false,
                ..
            })
        ));
        assert!(matches!(
            rules.receive(start("1")),
            Ok(Accepted::Start { replaces: true, .. })
        ));
        rules.finished("1");
        assert!(matches!(
            rules.receive(start("1")),
            Ok(Accepted::Start {
                replaces: false,
                ..
            })
        ));
    }

    #[test]
    fn stop_and_terminate() {
        let mut rules = acked();
        assert_eq!(
            rules.receive(ClientMessage::Stop { id: "9".into() }),
            Ok(Accepted::Ignored)
        );
        rules.receive(start("9")).unwrap();
        assert_eq!(
            rules.receive(ClientMessage::Stop { id: "9".into() }),
            Ok(Accepted::Stop { id: "9".into() })
        );
        assert_eq!(
            rules.receive(ClientMessage::ConnectionTerminate),
            Ok(Accepted::Terminate)
        );
    }

    #[test]
    fn starts_over_the_limit_are_refused_but_replacing_a_running_id_is_not() {
        let mut rules = acked_with(OperationLimits {
            max_operations: 1,
            max_id_bytes: 4,
        });
        assert!(matches!(
            rules.receive(start("1")),
            Ok(Accepted::Start {
                replaces: false,
                ..
            })
        ));
        assert!(matches!(
            rules.receive(start("1")),
            Ok(Accepted::Start { replaces: true, .. })
        ));
        assert!(matches!(rules.receive(start("2")), Ok(Accepted::Refused { id, .. }) if id == "2"));
        let violation = rules.receive(start("12345")).unwrap_err();
        assert_eq!(violation, Violation::IdTooLong { len: 5, limit: 4 });
        assert!(!violation.closes());
        assert!(violation
            .message()
            .contains("server.max_operation_id_bytes"));
    }
}
