//! The dialect-neutral result of an operation, which every downstream encoder frames.

use crate::RawJson;

/// One thing that happened to an operation, independent of the wire protocol.
///
/// `Error` and `Complete` are terminal: nothing follows them for that operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An execution result (`{"data": ..., "errors": ...}`), raw.
    Next(RawJson),
    /// A list of GraphQL errors that ended the operation before or instead of results.
    Error(RawJson),
    /// The operation finished normally.
    Complete,
}

impl Event {
    /// Whether no further event follows this one.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Event::Next(_))
    }
}
