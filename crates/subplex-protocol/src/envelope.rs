//! The `{type, id?, payload?}` envelope both WebSocket dialects share, parsed without
//! touching the payload.

use bytestring::ByteString;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::graphql::push_json_string;
use crate::{DecodeError, GraphqlRequest, RawJson};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEnvelope<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    // Pre-2017 `subscription_start` carried the request at the top level.
    #[serde(default, borrow)]
    query: Option<&'a RawValue>,
    #[serde(default, borrow)]
    variables: Option<&'a RawValue>,
    #[serde(default, borrow)]
    operation_name: Option<&'a RawValue>,
}

/// A decoded envelope: the message type, the id if it is a string, and the raw payload
/// (`None` when absent or `null`).
pub(crate) struct Envelope<'a> {
    pub kind: std::borrow::Cow<'a, str>,
    id: Option<String>,
    payload: Option<&'a RawValue>,
    legacy_request: Option<LegacyTopLevelRequest<'a>>,
    /// The message's own shared bytes, when it came in them: payloads are then slices of
    /// it rather than copies.
    shared: Option<&'a ByteString>,
}

/// The request fields of a pre-2017 `subscription_start`, found beside `type`.
struct LegacyTopLevelRequest<'a> {
    query: &'a RawValue,
    variables: Option<&'a RawValue>,
    operation_name: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    /// Decodes a message whose payloads will be copied out of `text`.
    pub fn decode(text: &'a str) -> Result<Self, DecodeError> {
        Self::decode_text(text, None)
    }

    /// Decodes a message whose payloads will be slices of `message` (no copy).
    pub fn decode_shared(message: &'a ByteString) -> Result<Self, DecodeError> {
        Self::decode_text(message, Some(message))
    }

    fn decode_text(text: &'a str, shared: Option<&'a ByteString>) -> Result<Self, DecodeError> {
        // serde reads structs from arrays too (by position); a message must be an object.
        if !text.trim_start().starts_with('{') {
            return Err(DecodeError::NotJson {
                reason: "a message must be a JSON object".into(),
            });
        }
        let wire: WireEnvelope<'a> = serde_json::from_str(text).map_err(DecodeError::not_json)?;
        let kind = wire
            .kind
            .and_then(|raw| serde_json::from_str::<std::borrow::Cow<'a, str>>(raw.get()).ok())
            .ok_or(DecodeError::MissingType)?;
        let id = match wire.id {
            Some(serde_json::Value::String(id)) => Some(id),
            // subscriptions-transport-ws clients have sent integer ids; keep them as text.
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        };
        let legacy_request = wire.query.map(|query| LegacyTopLevelRequest {
            query,
            variables: wire.variables,
            operation_name: wire.operation_name,
        });
        Ok(Envelope {
            kind,
            id,
            payload: wire.payload.filter(|p| p.get() != "null"),
            legacy_request,
            shared,
        })
    }

    pub fn id(&mut self, kind: &'static str) -> Result<String, DecodeError> {
        match self.id.take() {
            Some(id) if !id.is_empty() => Ok(id),
            _ => Err(DecodeError::MissingId { kind }),
        }
    }

    pub fn optional_payload(&self) -> Option<RawJson> {
        let raw = self.payload?;
        Some(match self.shared {
            Some(message) => RawJson::slice_of(message, raw),
            None => RawJson::from_raw(raw),
        })
    }

    pub fn payload(&self, kind: &'static str) -> Result<RawJson, DecodeError> {
        self.optional_payload()
            .ok_or(DecodeError::MissingPayload { kind })
    }

    /// A payload that, when present, must be a JSON object (init and ping payloads).
    pub fn optional_object_payload(
        &self,
        kind: &'static str,
    ) -> Result<Option<RawJson>, DecodeError> {
        match self.optional_payload() {
            Some(p) if !p.is_object() => Err(DecodeError::InvalidPayload {
                kind,
                reason: "payload must be a JSON object".into(),
            }),
            other => Ok(other),
        }
    }

    pub fn request_payload(&self, kind: &'static str) -> Result<GraphqlRequest, DecodeError> {
        let invalid = |err: crate::RequestError| DecodeError::InvalidPayload {
            kind,
            reason: err.to_string(),
        };
        match (self.payload, &self.legacy_request) {
            (Some(payload), _) => GraphqlRequest::decode(payload.get()).map_err(invalid),
            (None, Some(top)) => {
                let string = |raw: Option<&RawValue>| {
                    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
                };
                GraphqlRequest::from_parts(
                    Some(string(Some(top.query)).ok_or(DecodeError::InvalidPayload {
                        kind,
                        reason: "\"query\" must be a string".into(),
                    })?),
                    string(top.operation_name),
                    top.variables.map(RawJson::from_raw),
                    None,
                )
                .map_err(invalid)
            }
            (None, None) => Err(DecodeError::MissingPayload { kind }),
        }
    }
}

/// Builds frames: `{"type":...,"id":...,"payload":...}` by string concatenation, so raw
/// payloads are copied, never re-serialised.
pub(crate) fn frame(kind: &str, id: Option<&str>, payload: Option<&str>) -> String {
    let mut out = String::with_capacity(
        24 + kind.len() + id.map_or(0, str::len) + payload.map_or(0, str::len),
    );
    out.push_str("{\"type\":\"");
    out.push_str(kind);
    out.push('"');
    if let Some(id) = id {
        out.push_str(",\"id\":");
        push_json_string(&mut out, id);
    }
    if let Some(payload) = payload {
        out.push_str(",\"payload\":");
        out.push_str(payload);
    }
    out.push('}');
    out
}

/// Rejects frames over `limit` bytes before any parsing.
pub(crate) fn check_size(text: &str, limit: usize) -> Result<(), DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge {
            len: text.len(),
            limit,
        });
    }
    Ok(())
}
