//! GraphQL over SSE (distinct connections): GET parameters, POST bodies and event framing.

use subplex_protocol::sse::{
    encode_event, request_from_body, request_from_query, CONTENT_TYPE, KEEP_ALIVE,
};
use subplex_protocol::{Event, GraphqlRequest, RawJson, RequestError};

fn raw(text: &str) -> RawJson {
    RawJson::parse(text).unwrap()
}

// ---------------------------------------------------------------------------------------
// GET query parameters.
// ---------------------------------------------------------------------------------------

#[test]
fn get_with_every_parameter() {
    // As graphql-sse's client builds it with URLSearchParams.
    let req = request_from_query(
        "query=subscription+OnTick%28%24n%3A+Int%21%29+%7B+ticks%28count%3A+%24n%29+%7B+n+%7D+%7D\
         &operationName=OnTick\
         &variables=%7B%22n%22%3A3%7D\
         &extensions=%7B%22persistedQuery%22%3A%7B%22version%22%3A1%2C%22sha256Hash%22%3A%22abc%22%7D%7D",
    )
    .unwrap();
    assert_eq!(
        req.query,
        "subscription OnTick($n: Int!) { ticks(count: $n) { n } }"
    );
    assert_eq!(req.operation_name.as_deref(), Some("OnTick"));
    assert_eq!(req.variables.unwrap().as_str(), r#"{"n":3}"#);
    assert_eq!(
        req.extensions.unwrap().as_str(),
        r#"{"persistedQuery":{"version":1,"sha256Hash":"abc"}}"#
    );
}

#[test]
fn plus_and_percent_encoded_spaces() {
    assert_eq!(
        request_from_query("query=%7B+a+%7D").unwrap().query,
        "{ a }"
    );
    assert_eq!(
        request_from_query("query=%7B%20a%20%7D").unwrap().query,
        "{ a }"
    );
    // A literal `+` in a query has to be sent as %2B.
    assert_eq!(
        request_from_query("query=%7Ba%2Bb%7D").unwrap().query,
        "{a+b}"
    );
    // Newlines and unicode survive.
    assert_eq!(
        request_from_query("query=subscription%0A%7B+t%28s%3A+%22%C3%A9%F0%9F%9A%80%22%29+%7D")
            .unwrap()
            .query,
        "subscription\n{ t(s: \"é🚀\") }"
    );
    // Variables with spaces inside and around the JSON.
    let req = request_from_query("query=%7Ba%7D&variables=+%7B+%22a%22+%3A+1+%7D+").unwrap();
    assert_eq!(req.variables.unwrap().as_str(), r#"{ "a" : 1 }"#);
}

#[test]
fn missing_query() {
    for qs in [
        "",
        "operationName=x",
        "variables=%7B%7D",
        "Query=%7Ba%7D",
        "q=%7Ba%7D",
        "&&&",
    ] {
        let err = request_from_query(qs).unwrap_err();
        assert_eq!(err, RequestError::MissingQuery, "{qs:?}");
        assert_eq!(err.to_string(), r#"request has no "query" string"#);
    }
    // A present but empty query is passed on (the executor rejects it).
    assert_eq!(request_from_query("query=").unwrap().query, "");
    assert_eq!(request_from_query("query").unwrap().query, "");
}

#[test]
fn invalid_variables_json() {
    for value in [
        "%7Bnope",
        "",
        "%7B%22a%22%3A%7D",
        "undefined",
        "%7B%7D%7B%7D",
    ] {
        let err = request_from_query(&format!("query=%7Ba%7D&variables={value}")).unwrap_err();
        let RequestError::InvalidParameter {
            name: "variables",
            reason,
        } = &err
        else {
            panic!("{value:?} gave {err:?}");
        };
        assert!(!reason.is_empty());
        assert!(
            err.to_string()
                .starts_with(r#"parameter "variables" is not valid JSON: "#),
            "{err}"
        );
    }
    let err = request_from_query("query=%7Ba%7D&extensions=%5B").unwrap_err();
    assert!(
        matches!(
            err,
            RequestError::InvalidParameter {
                name: "extensions",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with(r#"parameter "extensions" is not valid JSON: "#));
}

#[test]
fn variables_and_extensions_must_be_objects() {
    for (param, field) in [("variables", "variables"), ("extensions", "extensions")] {
        for value in ["5", "%5B%5D", "%22%7B%7D%22", "true"] {
            let err = request_from_query(&format!("query=%7Ba%7D&{param}={value}")).unwrap_err();
            assert_eq!(err, RequestError::NotAnObject { field }, "{param}={value}");
            assert_eq!(
                err.to_string(),
                format!(r#""{field}" must be a JSON object"#)
            );
        }
        // null counts as absent.
        let req = request_from_query(&format!("query=%7Ba%7D&{param}=null")).unwrap();
        assert_eq!(req, GraphqlRequest::new("{a}"));
    }
}

#[test]
fn operation_name_and_unknown_parameters() {
    // An empty operationName counts as absent.
    assert_eq!(
        request_from_query("query=%7Ba%7D&operationName=")
            .unwrap()
            .operation_name,
        None
    );
    // Unknown parameters (cache busters, tokens) are ignored.
    assert_eq!(
        request_from_query("token=abc&query=%7Ba%7D&_=123").unwrap(),
        GraphqlRequest::new("{a}")
    );
    // A repeated parameter: the last one wins.
    assert_eq!(
        request_from_query("query=%7Ba%7D&query=%7Bb%7D")
            .unwrap()
            .query,
        "{b}"
    );
    // Malformed percent escapes decode lossily rather than failing.
    assert_eq!(request_from_query("query=%7Ba%ZZ").unwrap().query, "{a%ZZ");
    assert_eq!(request_from_query("query=%FF").unwrap().query, "\u{fffd}");
}

// ---------------------------------------------------------------------------------------
// POST bodies.
// ---------------------------------------------------------------------------------------

#[test]
fn post_body() {
    let req = request_from_body(
        br#"{"query":"subscription { t }","operationName":"T","variables":{"n":1},"extensions":{"e":true}}"#,
    )
    .unwrap();
    assert_eq!(
        req,
        GraphqlRequest {
            query: "subscription { t }".into(),
            operation_name: Some("T".into()),
            variables: Some(raw(r#"{"n":1}"#)),
            extensions: Some(raw(r#"{"e":true}"#)),
        }
    );
    // Nulls, as Apollo and urql send them, and surrounding whitespace.
    assert_eq!(
        request_from_body(b" {\"query\":\"{a}\",\"operationName\":null,\"variables\":null}\n")
            .unwrap(),
        GraphqlRequest::new("{a}")
    );
    // Variables whitespace is kept.
    assert_eq!(
        request_from_body(br#"{"query":"{a}","variables":{ "a" : [1, 2] }}"#)
            .unwrap()
            .variables
            .unwrap()
            .as_str(),
        r#"{ "a" : [1, 2] }"#
    );
}

#[test]
fn post_body_errors() {
    assert_eq!(
        request_from_body(b"\xff\xfe{}"),
        Err(RequestError::NotJson {
            reason: "body is not UTF-8".into()
        })
    );
    assert_eq!(
        request_from_body(b"\xff").unwrap_err().to_string(),
        "request is not a JSON object with GraphQL request fields: body is not UTF-8"
    );
    for body in [
        &b""[..],
        b"not json",
        b"{",
        b"5",
        b"\"{a}\"",
        br#"{"query":5}"#,
        br#"{"query":"{a}"} x"#,
    ] {
        let err = request_from_body(body).unwrap_err();
        assert!(
            matches!(err, RequestError::NotJson { .. }),
            "{body:?} gave {err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("request is not a JSON object with GraphQL request fields: "));
    }
    assert_eq!(request_from_body(b"{}"), Err(RequestError::MissingQuery));
    assert_eq!(
        request_from_body(br#"{"query":null}"#),
        Err(RequestError::MissingQuery)
    );
    // Variables must be an object; a JSON string holding an object is not accepted in a body.
    assert_eq!(
        request_from_body(br#"{"query":"{a}","variables":"{\"n\":1}"}"#),
        Err(RequestError::NotAnObject { field: "variables" })
    );
    assert_eq!(
        request_from_body(br#"{"query":"{a}","extensions":[1]}"#),
        Err(RequestError::NotAnObject {
            field: "extensions"
        })
    );
}

/// serde would read a derived struct from a JSON array by position; a body `["{a}"]`
/// is not a request.
#[test]
fn post_body_array_is_rejected() {
    assert!(matches!(
        request_from_body(br#"["{a}"]"#),
        Err(RequestError::NotJson { .. })
    ));
    assert!(matches!(
        request_from_body(br#"["{a}","Op",{"n":1}]"#),
        Err(RequestError::NotJson { .. })
    ));
}

#[test]
fn post_body_and_get_agree() {
    let req = GraphqlRequest {
        query: "subscription S { t(s: \"a&b=c\") }".into(),
        operation_name: Some("S".into()),
        variables: Some(raw(r#"{"q":"x y+z&w"}"#)),
        extensions: None,
    };
    assert_eq!(request_from_body(req.encode().as_bytes()).unwrap(), req);
    let qs = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", &req.query)
        .append_pair("operationName", "S")
        .append_pair("variables", req.variables.as_ref().unwrap().as_str())
        .finish();
    assert_eq!(request_from_query(&qs).unwrap(), req);
}

// ---------------------------------------------------------------------------------------
// Event encoding.
// ---------------------------------------------------------------------------------------

#[test]
fn constants() {
    assert_eq!(CONTENT_TYPE, "text/event-stream; charset=utf-8");
    assert_eq!(KEEP_ALIVE, ":\n\n");
}

#[test]
fn next_and_complete_events() {
    assert_eq!(
        encode_event(&Event::Next(raw(r#"{"data":{"a":1}}"#))),
        "event: next\ndata: {\"data\":{\"a\":1}}\n\n"
    );
    assert_eq!(encode_event(&Event::Complete), "event: complete\ndata:\n\n");
}

#[test]
fn multi_line_json_becomes_several_data_lines() {
    // LF, CRLF and lone CR all end an SSE line; none may appear inside a data field.
    let pretty = "{\n  \"data\": {\r\n    \"a\": 1\r  }\n}";
    assert_eq!(
        encode_event(&Event::Next(raw(pretty))),
        "event: next\ndata: {\ndata:   \"data\": {\ndata:     \"a\": 1\ndata:   }\ndata: }\n\n"
    );
    // Blank lines in the JSON are dropped: an empty `data:` line would still be joined
    // in, but a blank line would end the event early.
    let blank_lines = "{\n\n\"a\":1\n\n}";
    assert_eq!(
        encode_event(&Event::Next(raw(blank_lines))),
        "event: next\ndata: {\ndata: \"a\":1\ndata: }\n\n"
    );
    // What a client reassembles (data lines joined with \n) is still the same JSON.
    let text = encode_event(&Event::Next(raw(pretty)));
    let joined: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    let value: serde_json::Value = serde_json::from_str(&joined.join("\n")).unwrap();
    assert_eq!(value, serde_json::json!({"data": {"a": 1}}));
}

#[test]
fn error_becomes_next_with_errors_then_complete() {
    let errors = raw(r#"[{"message":"boom","extensions":{"code":"UPSTREAM"}}]"#);
    assert_eq!(
        encode_event(&Event::Error(errors)),
        "event: next\ndata: {\"errors\":[{\"message\":\"boom\",\"extensions\":{\"code\":\"UPSTREAM\"}}]}\n\n\
         event: complete\ndata:\n\n"
    );
    // A pretty-printed errors array is split across data lines too.
    let errors = raw("[\n  {\"message\": \"x\"}\n]");
    assert_eq!(
        encode_event(&Event::Error(errors)),
        "event: next\ndata: {\"errors\":[\ndata:   {\"message\": \"x\"}\ndata: ]}\n\nevent: complete\ndata:\n\n"
    );
    // The crate's own error builder fits in.
    let errors = subplex_protocol::graphql_errors("upstream closed", "UPSTREAM_CLOSED");
    assert_eq!(
        encode_event(&Event::Error(errors)),
        "event: next\ndata: {\"errors\":[{\"extensions\":{\"code\":\"UPSTREAM_CLOSED\"},\"message\":\"upstream closed\"}]}\n\n\
         event: complete\ndata:\n\n"
    );
}

#[test]
fn event_terminality() {
    assert!(!Event::Next(raw("{}")).is_terminal());
    assert!(Event::Error(raw("[]")).is_terminal());
    assert!(Event::Complete.is_terminal());
}
