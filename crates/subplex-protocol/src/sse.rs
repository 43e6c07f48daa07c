//! GraphQL over Server-Sent Events, distinct-connections mode
//! ([graphql-sse PROTOCOL.md](https://github.com/enisdenjo/graphql-sse/blob/master/PROTOCOL.md)),
//! as graphql-sse and Yoga serve it: one HTTP request per operation.
//!
//! Requests come from GET query parameters or a POST JSON body; events are
//! `event: next` with the execution result and `event: complete` with an empty `data:`.

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
        Event::Next(result) => next_event(result.as_str()),
        Event::Error(errors) => {
            let mut out = next_event(&format!("{{\"errors\":{}}}", errors.as_str()));
            out.push_str(COMPLETE_EVENT);
            out
        }
        Event::Complete => COMPLETE_EVENT.to_owned(),
    }
}

/// `complete` with an empty `data:` line, without which `EventSource` listeners never fire.
const COMPLETE_EVENT: &str = "event: complete\ndata:\n\n";

fn next_event(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 24);
    out.push_str("event: next\n");
    // JSON may be pretty-printed by an upstream; a raw newline inside one `data:` line would
    // end the field, so every line becomes its own `data:` (the client joins them with \n,
    // which is insignificant whitespace in JSON).
    for line in json.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
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
    fn multiline_json_is_split_into_data_lines() {
        let next = Event::Next(RawJson::parse("{\n  \"data\": {\"t\": 1}\r\n}").unwrap());
        assert_eq!(
            encode_event(&next),
            "event: next\ndata: {\ndata:   \"data\": {\"t\": 1}\ndata: }\n\n"
        );
    }
}
