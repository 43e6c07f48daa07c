//! The GraphQL request envelope and the raw-JSON payload type.

use std::fmt;

use bytestring::ByteString;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Validated JSON text, kept raw and shared: cloning is a reference-count bump, and
/// encoders splice it into frames without re-serialising. The text lives in shared
/// [`Bytes`](bytes::Bytes), so a payload decoded with [`RawJson::slice_of`] is a view into
/// the message it came in, not a copy.
///
/// `Debug` prints only the length: payloads carry user data and secrets (init payloads
/// hold tokens), and `Debug` output ends up in logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(ByteString);

impl RawJson {
    /// Parses `text` and keeps a copy if it is one valid JSON value.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(text)?;
        Ok(Self::from_raw(raw))
    }

    /// Parses `text` and keeps it, without copying, if it is one valid JSON value.
    pub fn parse_owned(text: String) -> Result<Self, serde_json::Error> {
        let text = ByteString::from(text);
        let raw: &RawValue = serde_json::from_str(&text)?;
        // Without the surrounding whitespace, as `parse` keeps it.
        Ok(Self::slice_of(&text, raw))
    }

    /// Keeps a copy of an already validated raw value.
    pub fn from_raw(raw: &RawValue) -> Self {
        RawJson(ByteString::from(raw.get()))
    }

    /// An already validated raw value that was read out of `source`, kept as a slice of
    /// `source`'s bytes. `raw` must borrow from `source` (it is a programming error
    /// otherwise, and panics).
    pub(crate) fn slice_of(source: &ByteString, raw: &RawValue) -> Self {
        RawJson(source.slice_ref(raw.get()))
    }

    /// Serialises a value. Only for values whose serialisation cannot fail (no maps with
    /// non-string keys), which is every value this crate builds.
    pub fn from_value(value: &serde_json::Value) -> Self {
        RawJson(ByteString::from(value.to_string()))
    }

    /// Serialises any value as JSON: serde_json's output is valid JSON, so it is kept
    /// without being parsed again (a hook's result, once per event and client).
    pub fn serialize<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(RawJson(ByteString::from(serde_json::to_string(value)?)))
    }

    /// `{}`: the init payload sent when a client gave none.
    pub fn empty_object() -> Self {
        RawJson(ByteString::from_static("{}"))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the value is a JSON object (the only shape init payloads may have).
    pub fn is_object(&self) -> bool {
        self.0.trim_start().starts_with('{')
    }

    /// Whether the value is JSON `null`.
    pub fn is_null(&self) -> bool {
        self.0.trim() == "null"
    }

    /// Whether both are the very same text (one clone of the other), not merely equal:
    /// what a per-event cache compares, in constant time.
    pub fn is_same(&self, other: &RawJson) -> bool {
        let (mine, theirs) = (self.as_str(), other.as_str());
        std::ptr::eq(mine.as_ptr(), theirs.as_ptr()) && mine.len() == theirs.len()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawJson({} bytes)", self.0.len())
    }
}

/// A GraphQL-over-HTTP request: the payload of `subscribe`/`start` and of SSE requests.
#[derive(Clone, PartialEq, Eq)]
pub struct GraphqlRequest {
    pub query: String,
    pub operation_name: Option<String>,
    /// A JSON object, raw.
    pub variables: Option<RawJson>,
    /// A JSON object, raw.
    pub extensions: Option<RawJson>,
}

impl fmt::Debug for GraphqlRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Variables can carry personal data; the document and operation name do not.
        f.debug_struct("GraphqlRequest")
            .field("operation_name", &self.operation_name)
            .field("query_len", &self.query.len())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    operation_name: Option<String>,
    #[serde(default, borrow)]
    variables: Option<&'a RawValue>,
    #[serde(default, borrow)]
    extensions: Option<&'a RawValue>,
}

/// Why a request envelope is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request is not a JSON object with GraphQL request fields: {reason}")]
    NotJson { reason: String },
    #[error("request has no \"query\" string")]
    MissingQuery,
    #[error("\"{field}\" must be a JSON object")]
    NotAnObject { field: &'static str },
    #[error("parameter \"{name}\" is not valid JSON: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
}

impl GraphqlRequest {
    /// A request for `query` with no variables.
    pub fn new(query: impl Into<String>) -> Self {
        GraphqlRequest {
            query: query.into(),
            operation_name: None,
            variables: None,
            extensions: None,
        }
    }

    /// Decodes `{"query", "operationName"?, "variables"?, "extensions"?}`.
    pub fn decode(text: &str) -> Result<Self, RequestError> {
        // serde reads structs from arrays too (by position); a request must be an object.
        if !text.trim_start().starts_with('{') {
            return Err(RequestError::NotJson {
                reason: "expected a JSON object".into(),
            });
        }
        let wire: WireRequest<'_> =
            serde_json::from_str(text).map_err(|err| RequestError::NotJson {
                reason: err.to_string(),
            })?;
        Self::from_parts(
            wire.query,
            wire.operation_name,
            wire.variables.map(RawJson::from_raw),
            wire.extensions.map(RawJson::from_raw),
        )
    }

    /// Builds a request from already separated fields (SSE GET parameters), checking the
    /// same rules as [`GraphqlRequest::decode`]. `null` variables or extensions count as absent.
    pub fn from_parts(
        query: Option<String>,
        operation_name: Option<String>,
        variables: Option<RawJson>,
        extensions: Option<RawJson>,
    ) -> Result<Self, RequestError> {
        let query = query.ok_or(RequestError::MissingQuery)?;
        let object_or_absent = |value: Option<RawJson>, field| match value {
            Some(v) if v.is_null() => Ok(None),
            Some(v) if !v.is_object() => Err(RequestError::NotAnObject { field }),
            other => Ok(other),
        };
        Ok(GraphqlRequest {
            query,
            operation_name: operation_name.filter(|name| !name.is_empty()),
            variables: object_or_absent(variables, "variables")?,
            extensions: object_or_absent(extensions, "extensions")?,
        })
    }

    /// Encodes the request as the JSON object every protocol carries.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.query.len() + 64);
        out.push_str("{\"query\":");
        push_json_string(&mut out, &self.query);
        if let Some(name) = &self.operation_name {
            out.push_str(",\"operationName\":");
            push_json_string(&mut out, name);
        }
        if let Some(variables) = &self.variables {
            out.push_str(",\"variables\":");
            out.push_str(variables.as_str());
        }
        if let Some(extensions) = &self.extensions {
            out.push_str(",\"extensions\":");
            out.push_str(extensions.as_str());
        }
        out.push('}');
        out
    }
}

/// Appends `value` as a JSON string literal.
pub(crate) fn push_json_string(out: &mut String, value: &str) {
    // The fan-out path frames every event with its operation id, and ids almost never
    // need escaping: append those as they are instead of allocating a serialised copy.
    // serde_json escapes exactly `"`, `\` and control characters, so the output is the
    // same either way.
    if !value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push('"');
        out.push_str(value);
        out.push('"');
        return;
    }
    // Serialising a str into a String cannot fail.
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
}

/// A GraphQL errors array with one error: `[{"message": ..., "extensions": {"code": ...}}]`.
pub fn graphql_errors(message: &str, code: &str) -> RawJson {
    RawJson::from_value(&serde_json::json!([
        { "message": message, "extensions": { "code": code } }
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_full_request_and_keeps_raw_variables() {
        let req = GraphqlRequest::decode(
            r#"{"query":"subscription { t }","operationName":"T","variables":{"a": 1},"extensions":{}}"#,
        )
        .unwrap();
        assert_eq!(req.query, "subscription { t }");
        assert_eq!(req.operation_name.as_deref(), Some("T"));
        assert_eq!(req.variables.unwrap().as_str(), r#"{"a": 1}"#);
        assert_eq!(req.extensions.unwrap().as_str(), "{}");
    }

    #[test]
    fn null_variables_count_as_absent() {
        let req = GraphqlRequest::decode(r#"{"query":"{a}","variables":null}"#).unwrap();
        assert_eq!(req.variables, None);
    }

    #[test]
    fn rejects_missing_query_and_non_object_variables() {
        assert_eq!(
            GraphqlRequest::decode(r#"{"variables":{}}"#),
            Err(RequestError::MissingQuery)
        );
        assert_eq!(
            GraphqlRequest::decode(r#"{"query":"{a}","variables":[1]}"#),
            Err(RequestError::NotAnObject { field: "variables" })
        );
        assert!(matches!(
            GraphqlRequest::decode("[1]"),
            Err(RequestError::NotJson { .. })
        ));
        assert!(matches!(
            GraphqlRequest::decode(r#"{"query":5}"#),
            Err(RequestError::NotJson { .. })
        ));
    }

    #[test]
    fn encode_round_trips() {
        let req = GraphqlRequest {
            query: "subscription S($n: Int!) { ticks(count: $n) { n } }\n".into(),
            operation_name: Some("S".into()),
            variables: Some(RawJson::parse(r#"{"n":3}"#).unwrap()),
            extensions: None,
        };
        assert_eq!(GraphqlRequest::decode(&req.encode()).unwrap(), req);
    }

    #[test]
    fn json_strings_match_serde_json_with_or_without_escapes() {
        for value in [
            "1",
            "op-7",
            "ünïcödé",
            "a\"b",
            "back\\slash",
            "tab\there",
            "\u{1}",
            "",
        ] {
            let mut out = String::new();
            push_json_string(&mut out, value);
            assert_eq!(out, serde_json::to_string(value).unwrap(), "{value:?}");
        }
    }

    #[test]
    fn debug_hides_payloads() {
        let raw = RawJson::parse(r#"{"authorization":"Bearer secret"}"#).unwrap();
        assert!(!format!("{raw:?}").contains("secret"));
        let mut req = GraphqlRequest::new("{a}");
        req.variables = Some(raw);
        assert!(!format!("{req:?}").contains("secret"));
    }

    #[test]
    fn graphql_errors_shape() {
        assert_eq!(
            graphql_errors("boom \"x\"", "UPSTREAM_CLOSED").as_str(),
            r#"[{"extensions":{"code":"UPSTREAM_CLOSED"},"message":"boom \"x\""}]"#
        );
    }
}
