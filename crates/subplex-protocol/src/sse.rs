//! GraphQL over Server-Sent Events, distinct-connections mode
//! ([graphql-sse PROTOCOL.md](https://github.com/enisdenjo/graphql-sse/blob/master/PROTOCOL.md)),
//! as graphql-sse and Yoga serve it: one HTTP request per operation.
//!
//! Requests come from GET query parameters or a POST JSON body; events are
//! `event: next` with the execution result and `event: complete` with an empty `data:`.
//!
//! Single-connection mode (one stream per client, reserved with `PUT`, operations posted
//! separately with an `extensions.operationId`) frames the same events with the operation
//! id: [`encode_operation_event`]. The stream's token travels in [`STREAM_TOKEN_HEADER`] or
//! the [`STREAM_TOKEN_PARAMETER`] query parameter.

use crate::graphql::RequestError;
use crate::{Event, GraphqlRequest, RawJson};

/// The `Content-Type` of an event stream.
pub const CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";

/// A comment line: keeps proxies and browsers from timing the stream out, and is sent
/// first because some browsers stall until the first bytes arrive.
pub const KEEP_ALIVE: &str = ":\n\n";

/// Reads a request from GET query parameters (`query`, `operationName`, and JSON-encoded
/// `variables` and `extensions`).
pub fn request_from_query(query_string: &str) -> Result<GraphqlRequest, RequestError> {
    let mut query = None;
    let mut operation_name = None;
    let mut variables = None;
    let mut extensions = None;
    for (key, value) in form_urlencoded::parse(query_string.as_bytes()) {
        match key.as_ref() {
            "query" => query = Some(value.into_owned()),
            "operationName" => operation_name = Some(value.into_owned()),
            "variables" => variables = Some(json_parameter("variables", &value)?),
            "extensions" => extensions = Some(json_parameter("extensions", &value)?),
            _ => {}
        }
    }
    GraphqlRequest::from_parts(query, operation_name, variables, extensions)
}

fn json_parameter(name: &'static str, value: &str) -> Result<RawJson, RequestError> {
    RawJson::parse(value).map_err(|err| RequestError::InvalidParameter {
        name,
        reason: err.to_string(),
    })
}

/// Reads a request from a POST body.
pub fn request_from_body(body: &[u8]) -> Result<GraphqlRequest, RequestError> {
    let text = std::str::from_utf8(body).map_err(|_| RequestError::NotJson {
        reason: "body is not UTF-8".into(),
    })?;
    GraphqlRequest::decode(text)
}

/// Encodes an event. A terminal error becomes a `next` event carrying `{"errors": ...}`
/// followed by `complete`, as graphql-sse delivers operation errors on an accepted stream.
pub fn encode_event(event: &Event) -> String {
    match event {
        Event::Next(result) => next_event("", result.as_str(), ""),
        Event::Error(errors) => {
            let mut out = next_event("{\"errors\":", errors.as_str(), "}");
            out.push_str(COMPLETE_EVENT);
            out
        }
        Event::Complete => COMPLETE_EVENT.to_owned(),
    }
}

/// `complete` with an empty `data:` line, without which `EventSource` listeners never fire.
const COMPLETE_EVENT: &str = "event: complete\ndata:\n\n";

/// The header that carries a single-connection stream's token (graphql-sse `TOKEN_HEADER_KEY`).
pub const STREAM_TOKEN_HEADER: &str = "x-graphql-event-stream-token";

/// The query parameter that carries the token when a header cannot be set (`EventSource`).
pub const STREAM_TOKEN_PARAMETER: &str = "token";

/// Reads one query parameter by name (the first, if repeated).
pub fn query_parameter(query_string: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query_string.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The `operationId` of a single-connection operation, from its `extensions`: a string, or
/// a number taken as its text (graphql-sse's handler reads `String(operationId)`). `None`
/// when absent, empty, or of another JSON type.
pub fn operation_id(extensions: Option<&RawJson>) -> Option<String> {
    let extensions: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(extensions?.as_str()).ok()?;
    let id = match extensions.get("operationId")? {
        serde_json::Value::String(id) => id.clone(),
        serde_json::Value::Number(id) => id.to_string(),
        _ => return None,
    };
    (!id.is_empty()).then_some(id)
}

/// Encodes an event of operation `id` on a single-connection stream:
/// `event: next` / `data: {"id","payload"}` and `event: complete` / `data: {"id"}`. A
/// terminal error becomes a `next` carrying `{"errors": ...}`, then `complete`.
pub fn encode_operation_event(id: &str, event: &Event) -> String {
    OperationFramer::new(id).frame(event)
}

/// [`encode_operation_event`] for one operation, with its id quoted once: per `next`, one
/// allocation around the shared payload.
#[derive(Debug)]
pub struct OperationFramer {
    /// `{"id":"…","payload":`
    next_prefix: Box<str>,
}

impl OperationFramer {
    pub fn new(id: &str) -> Self {
        let quoted_id = crate::event_framer::quoted(id);
        OperationFramer {
            next_prefix: format!("{{\"id\":{quoted_id},\"payload\":").into_boxed_str(),
        }
    }

    /// The quoted id, read back out of the prefix.
    fn quoted_id(&self) -> &str {
        &self.next_prefix["{\"id\":".len()..self.next_prefix.len() - ",\"payload\":".len()]
    }

    pub fn frame(&self, event: &Event) -> String {
        let complete = || format!("event: complete\ndata: {{\"id\":{}}}\n\n", self.quoted_id());
        match event {
            Event::Next(result) => next_event(&self.next_prefix, result.as_str(), "}"),
            Event::Error(errors) => {
                let before = format!("{}{{\"errors\":", self.next_prefix);
                let mut out = next_event(&before, errors.as_str(), "}}");
                out.push_str(&complete());
                out
            }
            Event::Complete => complete(),
        }
    }
}

/// Encodes an event as [`encode_event`] does, with an `id:` field on each SSE event it
/// makes (a terminal error makes two), so that `EventSource` remembers `id` and sends it
/// back as `Last-Event-ID` when it reconnects. `id` must not contain a line break.
pub fn encode_event_with_id(id: &str, event: &Event) -> String {
    encode_event(event)
        .split_inclusive("\n\n")
        .map(|block| format!("id: {id}\n{block}"))
        .collect()
}

/// A `retry:` field alone (no event is dispatched for it): how many milliseconds an
/// `EventSource` waits before it reconnects after the stream breaks.
pub fn encode_retry(retry_ms: u64) -> String {
    format!("retry: {retry_ms}\n\n")
}

/// The `Last-Event-ID` request header, sent by a reconnecting `EventSource`.
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";

/// `event: next` with `before`, `json` and `after` as its data, in one allocation.
/// `before` and `after` hold no line break.
fn next_event(before: &str, json: &str, after: &str) -> String {
    let mut out = String::with_capacity(before.len() + json.len() + after.len() + 24);
    out.push_str("event: next\n");
    // JSON may be pretty-printed by an upstream; a raw newline inside one `data:` line would
    // end the field, so every line becomes its own `data:` (the client joins them with \n,
    // which is insignificant whitespace in JSON).
    let mut lines = json
        .split(['\n', '\r'])
        .filter(|l| !l.is_empty())
        .peekable();
    let mut first = true;
    while let Some(line) = lines.next() {
        out.push_str("data: ");
        if std::mem::take(&mut first) {
            out.push_str(before);
        }
        out.push_str(line);
        if lines.peek().is_none() {
            out.push_str(after);
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod id_tests {
    use super::*;
    use crate::RawJson;

    #[test]
    fn every_block_of_an_event_carries_the_id() {
        let next = Event::Next(RawJson::parse(r#"{"data":{"n":1}}"#).unwrap());
        assert_eq!(
            encode_event_with_id("ab:3", &next),
            "id: ab:3\nevent: next\ndata: {\"data\":{\"n\":1}}\n\n"
        );
        let error = Event::Error(RawJson::parse(r#"[{"message":"x"}]"#).unwrap());
        assert_eq!(
            encode_event_with_id("ab:4", &error),
            "id: ab:4\nevent: next\ndata: {\"errors\":[{\"message\":\"x\"}]}\n\nid: ab:4\nevent: complete\ndata:\n\n"
        );
        assert_eq!(encode_retry(1500), "retry: 1500\n\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_parameters() {
        let req = request_from_query(
            "query=subscription%20%7B%20t%20%7D&operationName=T&variables=%7B%22n%22%3A1%7D&x=1",
        )
        .unwrap();
        assert_eq!(req.query, "subscription { t }");
        assert_eq!(req.operation_name.as_deref(), Some("T"));
        assert_eq!(req.variables.unwrap().as_str(), r#"{"n":1}"#);
    }

    #[test]
    fn get_rejects_missing_query_and_bad_variables() {
        assert_eq!(
            request_from_query("operationName=x"),
            Err(RequestError::MissingQuery)
        );
        assert!(matches!(
            request_from_query("query=%7Ba%7D&variables=%7Bnope"),
            Err(RequestError::InvalidParameter {
                name: "variables",
                ..
            })
        ));
        assert_eq!(
            request_from_query("query=%7Ba%7D&variables=5"),
            Err(RequestError::NotAnObject { field: "variables" })
        );
    }

    #[test]
    fn post_body() {
        let req = request_from_body(br#"{"query":"{a}"}"#).unwrap();
        assert_eq!(req.query, "{a}");
        assert!(request_from_body(b"\xff").is_err());
        assert!(request_from_body(b"not json").is_err());
    }

    #[test]
    fn events() {
        let next = Event::Next(RawJson::parse(r#"{"data":{"t":1}}"#).unwrap());
        assert_eq!(
            encode_event(&next),
            "event: next\ndata: {\"data\":{\"t\":1}}\n\n"
        );
        assert_eq!(encode_event(&Event::Complete), "event: complete\ndata:\n\n");
        let error = Event::Error(RawJson::parse(r#"[{"message":"no"}]"#).unwrap());
        assert_eq!(
            encode_event(&error),
            "event: next\ndata: {\"errors\":[{\"message\":\"no\"}]}\n\nevent: complete\ndata:\n\n"
        );
    }

    #[test]
    fn operation_events_carry_the_id() {
        let next = Event::Next(RawJson::parse(r#"{"data":{"t":1}}"#).unwrap());
        assert_eq!(
            encode_operation_event("a\"1", &next),
            "event: next\ndata: {\"id\":\"a\\\"1\",\"payload\":{\"data\":{\"t\":1}}}\n\n"
        );
        assert_eq!(
            encode_operation_event("7", &Event::Complete),
            "event: complete\ndata: {\"id\":\"7\"}\n\n"
        );
        let error = Event::Error(RawJson::parse(r#"[{"message":"no"}]"#).unwrap());
        assert_eq!(
            encode_operation_event("7", &error),
            "event: next\ndata: {\"id\":\"7\",\"payload\":{\"errors\":[{\"message\":\"no\"}]}}\n\nevent: complete\ndata: {\"id\":\"7\"}\n\n"
        );
    }

    #[test]
    fn operation_ids_and_parameters() {
        let ext = |text: &str| RawJson::parse(text).unwrap();
        assert_eq!(
            operation_id(Some(&ext(r#"{"operationId":"x1"}"#))).as_deref(),
            Some("x1")
        );
        assert_eq!(
            operation_id(Some(&ext(r#"{"operationId":12}"#))).as_deref(),
            Some("12")
        );
        assert_eq!(operation_id(Some(&ext(r#"{"operationId":""}"#))), None);
        assert_eq!(operation_id(Some(&ext(r#"{"operationId":[1]}"#))), None);
        assert_eq!(operation_id(Some(&ext("{}"))), None);
        assert_eq!(operation_id(None), None);
        assert_eq!(
            query_parameter("a=1&operationId=x%201&operationId=2", "operationId").as_deref(),
            Some("x 1")
        );
        assert_eq!(query_parameter("a=1", "token"), None);
    }

    #[test]
    fn multiline_json_is_split_into_data_lines() {
        let next = Event::Next(RawJson::parse("{\n  \"data\": {\"t\": 1}\r\n}").unwrap());
        assert_eq!(
            encode_event(&next),
            "event: next\ndata: {\ndata:   \"data\": {\"t\": 1}\ndata: }\n\n"
        );
    }
}
