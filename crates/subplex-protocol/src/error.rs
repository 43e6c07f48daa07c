//! Decoding errors shared by every WebSocket dialect.

/// A frame that could not be turned into a message. The text names the problem so it can
/// be sent back to the peer verbatim (it never contains payload data).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message is {len} bytes, over the {limit} byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("message is not valid JSON: {reason}")]
    NotJson { reason: String },
    #[error("message has no string \"type\" field")]
    MissingType,
    #[error("unknown message type \"{kind}\"")]
    UnknownType { kind: String },
    #[error("\"{kind}\" message needs a non-empty string \"id\"")]
    MissingId { kind: &'static str },
    #[error("\"{kind}\" message needs a \"payload\"")]
    MissingPayload { kind: &'static str },
    #[error("\"{kind}\" message has an invalid payload: {reason}")]
    InvalidPayload { kind: &'static str, reason: String },
}

impl DecodeError {
    pub(crate) fn not_json(err: serde_json::Error) -> Self {
        DecodeError::NotJson {
            reason: err.to_string(),
        }
    }
}
