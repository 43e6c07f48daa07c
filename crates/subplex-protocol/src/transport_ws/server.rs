//! Server-side rules of graphql-transport-ws as a pure state machine.
//!
//! The I/O task feeds every decoded [`ClientMessage`] to [`ServerRules::receive`] and does
//! what comes back: act on an [`Accepted`] message, or close with the [`Close`] of a
//! [`Violation`]. The connection-init deadline is the I/O task's timer; the rules only say
//! whether the connection is still waiting for `connection_init`.

use std::collections::HashSet;

use super::ClientMessage;
use crate::close;
use crate::{GraphqlRequest, OperationLimits, RawJson};

/// Where a server connection is in its lifecycle.
#[derive(Debug)]
enum State {
    /// No `connection_init` yet.
    AwaitingInit,
    /// `connection_init` received; the gateway is deciding whether to acknowledge it.
    Initialising,
    /// `connection_ack` sent; `active` holds the ids of running operations.
    Acknowledged { active: HashSet<String> },
}

/// A message the connection should act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Acknowledge (or refuse) the connection with this init payload (`None`: none sent).
    Init { payload: Option<RawJson> },
    /// Answer with a `pong` carrying no payload.
    Ping,
    /// A heartbeat from the client: nothing to do.
    Pong,
    /// Start operation `id`.
    Subscribe { id: String, request: GraphqlRequest },
    /// Stop operation `id`, which is running.
    Complete { id: String },
    /// A `complete` for an id that is not running (already finished, or never started):
    /// the spec says to ignore it, since it may race with the server's own `complete`.
    Ignored,
    /// `subscribe` over the connection's operation limit: answer `error` for this id only
    /// (the id is not running, so the client may reuse it).
    Refused { id: String, message: String },
}

/// A protocol violation: the connection must close with [`Violation::close`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// `subscribe` before `connection_ack` (4401).
    SubscribeBeforeAck,
    /// A second `connection_init` (4429).
    TooManyInit,
    /// `subscribe` with the id of an operation that is still running (4409).
    DuplicateId { id: String },
    /// An operation id over [`OperationLimits::max_id_bytes`] (4400).
    IdTooLong { len: usize, limit: usize },
}

impl Violation {
    /// The close code and reason for this violation.
    pub fn close(&self) -> (u16, String) {
        match self {
            Violation::SubscribeBeforeAck => {
                (close::UNAUTHORIZED.code, close::UNAUTHORIZED.reason.into())
            }
            Violation::TooManyInit => (
                close::TOO_MANY_INIT.code,
                close::TOO_MANY_INIT.reason.into(),
            ),
            Violation::DuplicateId { id } => (
                close::SUBSCRIBER_EXISTS_CODE,
                close::subscriber_exists_reason(id),
            ),
            Violation::IdTooLong { len, limit } => {
                let mut reason = OperationLimits {
                    max_id_bytes: *limit,
                    ..Default::default()
                }
                .id_too_long(*len);
                close::truncate_reason(&mut reason);
                (close::BAD_REQUEST.code, reason)
            }
        }
    }
}

/// The server side of one graphql-transport-ws connection.
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

    /// Whether `connection_init` has not arrived yet (the init timer is still relevant).
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
            // Pings are allowed before the ack: the spec lets either side ping at any time.
            (ClientMessage::Ping { .. }, _) => Ok(Accepted::Ping),
            (ClientMessage::Pong { .. }, _) => Ok(Accepted::Pong),
            (ClientMessage::Subscribe { .. }, State::AwaitingInit | State::Initialising) => {
                Err(Violation::SubscribeBeforeAck)
            }
            (ClientMessage::Subscribe { id, .. }, _) if id.len() > self.limits.max_id_bytes => {
                Err(Violation::IdTooLong {
                    len: id.len(),
                    limit: self.limits.max_id_bytes,
                })
            }
            (ClientMessage::Subscribe { id, payload }, State::Acknowledged { active }) => {
                if active.contains(&id) {
                    return Err(Violation::DuplicateId { id });
                }
                if active.len() >= self.limits.max_operations {
                    let message = self.limits.too_many_operations();
                    return Ok(Accepted::Refused { id, message });
                }
                active.insert(id.clone());
                Ok(Accepted::Subscribe {
                    id,
                    request: payload,
                })
            }
            (ClientMessage::Complete { id }, State::Acknowledged { active }) => {
                if active.remove(&id) {
                    Ok(Accepted::Complete { id })
                } else {
                    Ok(Accepted::Ignored)
                }
            }
            (ClientMessage::Complete { .. }, _) => Ok(Accepted::Ignored),
        }
    }

    /// Records that the gateway sent `connection_ack`.
    pub fn acknowledged(&mut self) {
        if matches!(self.state, State::Initialising) {
            self.state = State::Acknowledged {
                active: HashSet::new(),
            };
        }
    }

    /// Records that operation `id` ended on the server side (its `complete` or `error` was
    /// sent), so the id may be reused.
    pub fn finished(&mut self, id: &str) {
        if let State::Acknowledged { active } = &mut self.state {
            active.remove(id);
        }
    }

    /// Number of running operations.
    pub fn active_operations(&self) -> usize {
        match &self.state {
            State::Acknowledged { active } => active.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribe(id: &str) -> ClientMessage {
        ClientMessage::Subscribe {
            id: id.into(),
            payload: GraphqlRequest::new("subscription { t }"),
        }
    }

    fn acked() -> ServerRules {
        acked_with(OperationLimits::default())
    }

    #[test]
    fn subscribe_before_ack_is_4401() {
        let mut rules = ServerRules::new();
        let err = rules.receive(subscribe("1")).unwrap_err();
        assert_eq!(err.close().0, 4401);
        // Also while the init is being decided.
        let mut rules = ServerRules::new();
        rules
            .receive(ClientMessage::ConnectionInit { payload: None })
            .unwrap();
        assert_eq!(
            rules.receive(subscribe("1")),
            Err(Violation::SubscribeBeforeAck)
        );
    }

    #[test]
    fn second_init_is_4429() {
        let mut rules = acked();
        let err = rules
            .receive(ClientMessage::ConnectionInit { payload: None })
            .unwrap_err();
        assert_eq!(err.close().0, 4429);
    }

    #[test]
    fn duplicate_active_id_is_4409_but_finished_ids_are_reusable() {
        let mut rules = acked();
        assert!(matches!(
            rules.receive(subscribe("a")),
            Ok(Accepted::Subscribe { .. })
        ));
        let err = rules.receive(subscribe("a")).unwrap_err();
        assert_eq!(
            err.close(),
            (4409, "Subscriber for a already exists".into())
        );
        rules.finished("a");
        assert!(matches!(
            rules.receive(subscribe("a")),
            Ok(Accepted::Subscribe { .. })
        ));
        assert_eq!(rules.active_operations(), 1);
    }

    #[test]
    fn complete_for_unknown_or_finished_id_is_ignored() {
        let mut rules = acked();
        assert_eq!(
            rules.receive(ClientMessage::Complete { id: "x".into() }),
            Ok(Accepted::Ignored)
        );
        rules.receive(subscribe("x")).unwrap();
        assert_eq!(
            rules.receive(ClientMessage::Complete { id: "x".into() }),
            Ok(Accepted::Complete { id: "x".into() })
        );
        assert_eq!(
            rules.receive(ClientMessage::Complete { id: "x".into() }),
            Ok(Accepted::Ignored)
        );
    }

    #[test]
    fn ping_allowed_in_every_state() {
        let mut rules = ServerRules::new();
        assert_eq!(
            rules.receive(ClientMessage::Ping { payload: None }),
            Ok(Accepted::Ping)
        );
        assert!(rules.awaiting_init());
        let mut rules = acked();
        assert_eq!(
            rules.receive(ClientMessage::Pong { payload: None }),
            Ok(Accepted::Pong)
        );
    }

    fn acked_with(limits: OperationLimits) -> ServerRules {
        let mut rules = ServerRules::with_limits(limits);
        assert_eq!(
            rules.receive(ClientMessage::ConnectionInit { payload: None }),
            Ok(Accepted::Init { payload: None })
        );
        rules.acknowledged();
        rules
    }

    #[test]
    fn operations_over_the_limit_are_refused_one_by_one() {
        let mut rules = acked_with(OperationLimits {
            max_operations: 2,
            max_id_bytes: 8,
        });
        assert!(matches!(
            rules.receive(subscribe("1")),
            Ok(Accepted::Subscribe { .. })
        ));
        assert!(matches!(
            rules.receive(subscribe("2")),
            Ok(Accepted::Subscribe { .. })
        ));
        match rules.receive(subscribe("3")) {
            Ok(Accepted::Refused { id, message }) => {
                assert_eq!(id, "3");
                assert!(
                    message.contains("server.max_operations_per_connection"),
                    "{message}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The refused id is not running: completing it is ignored, and once another
        // operation finished it can start.
        assert_eq!(
            rules.receive(ClientMessage::Complete { id: "3".into() }),
            Ok(Accepted::Ignored)
        );
        rules.finished("1");
        assert!(matches!(
            rules.receive(subscribe("3")),
            Ok(Accepted::Subscribe { .. })
        ));
        assert_eq!(rules.active_operations(), 2);
    }

    #[test]
    fn an_over_long_id_is_4400_naming_the_limit() {
        let mut rules = acked_with(OperationLimits {
            max_operations: 2,
            max_id_bytes: 8,
        });
        assert!(matches!(
            rules.receive(subscribe("12345678")),
            Ok(Accepted::Subscribe { .. })
        ));
        let violation = rules.receive(subscribe("123456789")).unwrap_err();
        assert_eq!(violation, Violation::IdTooLong { len: 9, limit: 8 });
        let (code, reason) = violation.close();
        assert_eq!(code, 4400);
        assert!(reason.contains("server.max_operation_id_bytes"), "{reason}");
        assert!(reason.len() <= 123);
    }
}
