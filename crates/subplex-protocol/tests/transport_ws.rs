//! `graphql-transport-ws` (the graphql-ws library): wire frames as the reference client
//! and server send them, round trips, exact encodings and malformed input.

use subplex_protocol::transport_ws::{ClientMessage, ServerMessage};
use subplex_protocol::{DecodeError, Event, GraphqlRequest, RawJson};

const LIMIT: usize = 64 * 1024;

fn raw(text: &str) -> RawJson {
    RawJson::parse(text).unwrap()
}

fn client(text: &str) -> Result<ClientMessage, DecodeError> {
    ClientMessage::decode(text, LIMIT)
}

fn server(text: &str) -> Result<ServerMessage, DecodeError> {
    ServerMessage::decode(text, LIMIT)
}

fn assert_client_round_trip(message: ClientMessage) {
    let encoded = message.encode();
    assert_eq!(client(&encoded), Ok(message), "encoded as {encoded}");
}

fn assert_server_round_trip(message: ServerMessage) {
    let encoded = message.encode();
    assert_eq!(server(&encoded), Ok(message), "encoded as {encoded}");
}

/// Asserts the error variant and that its text is the one the peer will see.
fn assert_error(
    result: Result<impl std::fmt::Debug, DecodeError>,
    expected: DecodeError,
    text: &str,
) {
    let err = result.expect_err("expected a decode error");
    assert_eq!(err, expected);
    assert_eq!(err.to_string(), text);
}

// ---------------------------------------------------------------------------------------
// Client -> server, as graphql-ws's client (`createClient`) sends them.
// ---------------------------------------------------------------------------------------

#[test]
fn connection_init_as_sent_by_graphql_ws_client() {
    // No connectionParams: JSON.stringify drops the undefined payload.
    assert_eq!(
        client(r#"{"type":"connection_init"}"#),
        Ok(ClientMessage::ConnectionInit { payload: None })
    );
    let decoded = client(r#"{"type":"connection_init","payload":{"authToken":"secret"}}"#).unwrap();
    let ClientMessage::ConnectionInit {
        payload: Some(payload),
    } = decoded
    else {
        panic!("not an init: {decoded:?}");
    };
    assert_eq!(payload.as_str(), r#"{"authToken":"secret"}"#);
    // An explicit null payload counts as absent.
    assert_eq!(
        client(r#"{"type":"connection_init","payload":null}"#),
        Ok(ClientMessage::ConnectionInit { payload: None })
    );
}

#[test]
fn subscribe_as_sent_by_graphql_ws_client() {
    let text = r#"{"id":"d9b5b8a4-3c5e-4a4e-9d63-0c6c3f0e2f8a","type":"subscribe","payload":{"query":"subscription OnTick($n: Int!) { ticks(count: $n) { n } }","operationName":"OnTick","variables":{"n":3},"extensions":{"persistedQuery":{"version":1,"sha256Hash":"abc"}}}}"#;
    let ClientMessage::Subscribe { id, payload } = client(text).unwrap() else {
        panic!("not a subscribe");
    };
    assert_eq!(id, "d9b5b8a4-3c5e-4a4e-9d63-0c6c3f0e2f8a");
    assert_eq!(
        payload.query,
        "subscription OnTick($n: Int!) { ticks(count: $n) { n } }"
    );
    assert_eq!(payload.operation_name.as_deref(), Some("OnTick"));
    assert_eq!(payload.variables.unwrap().as_str(), r#"{"n":3}"#);
    assert_eq!(
        payload.extensions.unwrap().as_str(),
        r#"{"persistedQuery":{"version":1,"sha256Hash":"abc"}}"#
    );
}

#[test]
fn subscribe_with_null_optional_fields() {
    // Apollo Client and urql send operationName/variables as null when absent.
    let text = r#"{"id":"1","type":"subscribe","payload":{"query":"subscription { t }","operationName":null,"variables":null,"extensions":null}}"#;
    assert_eq!(
        client(text),
        Ok(ClientMessage::Subscribe {
            id: "1".into(),
            payload: GraphqlRequest::new("subscription { t }"),
        })
    );
    // An empty operation name also counts as absent.
    let text = r#"{"id":"1","type":"subscribe","payload":{"query":"{a}","operationName":""}}"#;
    let ClientMessage::Subscribe { payload, .. } = client(text).unwrap() else {
        panic!("not a subscribe");
    };
    assert_eq!(payload.operation_name, None);
}

#[test]
fn ping_pong_complete_from_client() {
    assert_eq!(
        client(r#"{"type":"ping"}"#),
        Ok(ClientMessage::Ping { payload: None })
    );
    assert_eq!(
        client(r#"{"type":"pong"}"#),
        Ok(ClientMessage::Pong { payload: None })
    );
    assert_eq!(
        client(r#"{"type":"ping","payload":{"at":1}}"#),
        Ok(ClientMessage::Ping {
            payload: Some(raw(r#"{"at":1}"#))
        })
    );
    assert_eq!(
        client(r#"{"type":"pong","payload":{}}"#),
        Ok(ClientMessage::Pong {
            payload: Some(raw("{}"))
        })
    );
    assert_eq!(
        client(r#"{"id":"1","type":"complete"}"#),
        Ok(ClientMessage::Complete { id: "1".into() })
    );
}

#[test]
fn field_order_and_unknown_fields_do_not_matter() {
    assert_eq!(
        client(r#"{"payload":{"query":"{a}"},"extra":[1,2],"id":"x","type":"subscribe"}"#),
        Ok(ClientMessage::Subscribe {
            id: "x".into(),
            payload: GraphqlRequest::new("{a}"),
        })
    );
    // Escaped type strings are compared after unescaping.
    assert_eq!(
        client(r#"{"type":"p\u0069ng"}"#),
        Ok(ClientMessage::Ping { payload: None })
    );
    // Surrounding whitespace is fine.
    assert_eq!(
        client(" \n{ \"type\" : \"ping\" }\r\n"),
        Ok(ClientMessage::Ping { payload: None })
    );
}

// ---------------------------------------------------------------------------------------
// Server -> client, as graphql-ws's server (`makeServer`) sends them.
// ---------------------------------------------------------------------------------------

#[test]
fn server_messages_as_sent_by_graphql_ws_server() {
    assert_eq!(
        server(r#"{"type":"connection_ack"}"#),
        Ok(ServerMessage::ConnectionAck { payload: None })
    );
    assert_eq!(
        server(r#"{"type":"connection_ack","payload":{"server":"yoga"}}"#),
        Ok(ServerMessage::ConnectionAck {
            payload: Some(raw(r#"{"server":"yoga"}"#))
        })
    );
    assert_eq!(
        server(r#"{"type":"ping"}"#),
        Ok(ServerMessage::Ping { payload: None })
    );
    assert_eq!(
        server(r#"{"type":"pong"}"#),
        Ok(ServerMessage::Pong { payload: None })
    );
    assert_eq!(
        server(r#"{"id":"1","type":"next","payload":{"data":{"ticks":{"n":1}}}}"#),
        Ok(ServerMessage::Next {
            id: "1".into(),
            payload: raw(r#"{"data":{"ticks":{"n":1}}}"#),
        })
    );
    assert_eq!(
        server(
            r#"{"id":"1","type":"next","payload":{"data":null,"errors":[{"message":"boom","path":["ticks"]}]}}"#
        ),
        Ok(ServerMessage::Next {
            id: "1".into(),
            payload: raw(r#"{"data":null,"errors":[{"message":"boom","path":["ticks"]}]}"#),
        })
    );
    assert_eq!(
        server(
            r#"{"id":"1","type":"error","payload":[{"message":"Cannot query field \"x\" on type \"Subscription\".","locations":[{"line":1,"column":16}]}]}"#
        ),
        Ok(ServerMessage::Error {
            id: "1".into(),
            payload: raw(
                r#"[{"message":"Cannot query field \"x\" on type \"Subscription\".","locations":[{"line":1,"column":16}]}]"#
            ),
        })
    );
    assert_eq!(
        server(r#"{"id":"1","type":"complete"}"#),
        Ok(ServerMessage::Complete { id: "1".into() })
    );
}

// ---------------------------------------------------------------------------------------
// Round trips and exact encodings.
// ---------------------------------------------------------------------------------------

#[test]
fn every_client_variant_round_trips() {
    let full_request = GraphqlRequest {
        query: "subscription S($n: Int!) {\n  ticks(count: $n) { n }\n}".into(),
        operation_name: Some("S".into()),
        variables: Some(raw(r#"{"n": 3, "nested": {"list": [1, "two", null]}}"#)),
        extensions: Some(raw(r#"{"trace":true}"#)),
    };
    for message in [
        ClientMessage::ConnectionInit { payload: None },
        ClientMessage::ConnectionInit {
            payload: Some(raw(r#"{"headers":{"Authorization":"Bearer x"}}"#)),
        },
        ClientMessage::Ping { payload: None },
        ClientMessage::Ping {
            payload: Some(raw(r#"{"t":1}"#)),
        },
        ClientMessage::Pong { payload: None },
        ClientMessage::Pong {
            payload: Some(raw("{}")),
        },
        ClientMessage::Subscribe {
            id: "1".into(),
            payload: GraphqlRequest::new("subscription { t }"),
        },
        ClientMessage::Subscribe {
            id: "op \"quoted\" é 🚀".into(),
            payload: full_request,
        },
        ClientMessage::Complete { id: "1".into() },
        ClientMessage::Complete {
            id: "\u{1}\n\t\\".into(),
        },
    ] {
        assert_client_round_trip(message);
    }
}

#[test]
fn every_server_variant_round_trips() {
    for message in [
        ServerMessage::ConnectionAck { payload: None },
        ServerMessage::ConnectionAck {
            payload: Some(raw(r#"{"a":1}"#)),
        },
        ServerMessage::Ping { payload: None },
        ServerMessage::Ping {
            payload: Some(raw("{}")),
        },
        ServerMessage::Pong { payload: None },
        ServerMessage::Pong {
            payload: Some(raw(r#"{"b":[true]}"#)),
        },
        ServerMessage::Next {
            id: "1".into(),
            payload: raw(r#"{"data":{"a":1}}"#),
        },
        ServerMessage::Error {
            id: "2".into(),
            payload: raw(r#"[{"message":"no"}]"#),
        },
        ServerMessage::Complete { id: "3".into() },
        ServerMessage::Complete {
            id: "\u{2028}\u{0}".into(),
        },
    ] {
        assert_server_round_trip(message);
    }
}

#[test]
fn exact_client_encodings() {
    assert_eq!(
        ClientMessage::ConnectionInit { payload: None }.encode(),
        r#"{"type":"connection_init"}"#
    );
    assert_eq!(
        ClientMessage::ConnectionInit {
            payload: Some(raw(r#"{"token":"t"}"#))
        }
        .encode(),
        r#"{"type":"connection_init","payload":{"token":"t"}}"#
    );
    assert_eq!(
        ClientMessage::Ping { payload: None }.encode(),
        r#"{"type":"ping"}"#
    );
    assert_eq!(
        ClientMessage::Pong { payload: None }.encode(),
        r#"{"type":"pong"}"#
    );
    assert_eq!(
        ClientMessage::Subscribe {
            id: "1".into(),
            payload: GraphqlRequest {
                query: "subscription { t }".into(),
                operation_name: Some("T".into()),
                variables: Some(raw(r#"{"n":1}"#)),
                extensions: Some(raw("{}")),
            },
        }
        .encode(),
        r#"{"type":"subscribe","id":"1","payload":{"query":"subscription { t }","operationName":"T","variables":{"n":1},"extensions":{}}}"#
    );
    assert_eq!(
        ClientMessage::Subscribe {
            id: "1".into(),
            payload: GraphqlRequest::new("{a}"),
        }
        .encode(),
        r#"{"type":"subscribe","id":"1","payload":{"query":"{a}"}}"#
    );
    assert_eq!(
        ClientMessage::Complete { id: "1".into() }.encode(),
        r#"{"type":"complete","id":"1"}"#
    );
}

#[test]
fn exact_server_encodings() {
    assert_eq!(
        ServerMessage::ConnectionAck { payload: None }.encode(),
        r#"{"type":"connection_ack"}"#
    );
    assert_eq!(
        ServerMessage::ConnectionAck {
            payload: Some(raw(r#"{"x":1}"#))
        }
        .encode(),
        r#"{"type":"connection_ack","payload":{"x":1}}"#
    );
    assert_eq!(
        ServerMessage::Ping { payload: None }.encode(),
        r#"{"type":"ping"}"#
    );
    assert_eq!(
        ServerMessage::Pong { payload: None }.encode(),
        r#"{"type":"pong"}"#
    );
    assert_eq!(
        ServerMessage::Next {
            id: "1".into(),
            payload: raw(r#"{"data":{"a":1}}"#),
        }
        .encode(),
        r#"{"type":"next","id":"1","payload":{"data":{"a":1}}}"#
    );
    assert_eq!(
        ServerMessage::Error {
            id: "1".into(),
            payload: raw(r#"[{"message":"no"}]"#),
        }
        .encode(),
        r#"{"type":"error","id":"1","payload":[{"message":"no"}]}"#
    );
    assert_eq!(
        ServerMessage::Complete { id: "1".into() }.encode(),
        r#"{"type":"complete","id":"1"}"#
    );
}

#[test]
fn encode_event_matches_encode() {
    let payload = raw(r#"{"data":{"a":1}}"#);
    assert_eq!(
        ServerMessage::encode_event("7", &Event::Next(payload.clone())),
        r#"{"type":"next","id":"7","payload":{"data":{"a":1}}}"#
    );
    assert_eq!(
        ServerMessage::encode_event("7", &Event::Next(payload.clone())),
        ServerMessage::Next {
            id: "7".into(),
            payload
        }
        .encode()
    );
    let errors = raw(r#"[{"message":"x"}]"#);
    assert_eq!(
        ServerMessage::encode_event("7", &Event::Error(errors)),
        r#"{"type":"error","id":"7","payload":[{"message":"x"}]}"#
    );
    assert_eq!(
        ServerMessage::encode_event("7", &Event::Complete),
        r#"{"type":"complete","id":"7"}"#
    );
    assert_eq!(
        ServerMessage::encode_event("a\"b", &Event::Complete),
        r#"{"type":"complete","id":"a\"b"}"#
    );
}

#[test]
fn ids_are_escaped_in_encoded_frames() {
    let cases = [
        ("a\"b", r#""a\"b""#),
        ("back\\slash", r#""back\\slash""#),
        ("new\nline\ttab", r#""new\nline\ttab""#),
        ("\u{1}\u{1f}", r#""\u0001\u001f""#),
        // Non-ASCII is valid in a JSON string and passes through unescaped.
        ("é🚀中", "\"é🚀中\""),
        ("</script>", "\"</script>\""),
    ];
    for (id, literal) in cases {
        let encoded = ServerMessage::Complete { id: id.into() }.encode();
        assert_eq!(encoded, format!(r#"{{"type":"complete","id":{literal}}}"#));
        assert_eq!(
            server(&encoded),
            Ok(ServerMessage::Complete { id: id.into() })
        );
        let encoded = ClientMessage::Complete { id: id.into() }.encode();
        assert_eq!(
            client(&encoded),
            Ok(ClientMessage::Complete { id: id.into() })
        );
    }
    // Escaped ids on the wire decode to the unescaped text.
    assert_eq!(
        client(r#"{"type":"complete","id":"\u00e9\"\n"}"#),
        Ok(ClientMessage::Complete {
            id: "é\"\n".into()
        })
    );
}

#[test]
fn payload_is_spliced_byte_for_byte() {
    // Whitespace, key order, escapes and number spellings inside the payload survive.
    let payload = "{ \"data\" :\n  { \"b\": 1.50, \"a\": \"\\u00e9\\n\", \"big\": 12345678901234567890123 }\t}";
    let text = format!(r#"{{"type":"next","id":"1","payload":{payload}}}"#);
    let ServerMessage::Next {
        payload: decoded, ..
    } = server(&text).unwrap()
    else {
        panic!("not next");
    };
    assert_eq!(decoded.as_str(), payload);
    let encoded = ServerMessage::Next {
        id: "1".into(),
        payload: decoded,
    }
    .encode();
    assert_eq!(encoded, text);
    // Whitespace around the payload value is not part of it.
    let ServerMessage::Next { payload, .. } =
        server("{\"type\":\"next\",\"id\":\"1\",\"payload\":   {\"a\" : 1}  \n}").unwrap()
    else {
        panic!("not next");
    };
    assert_eq!(payload.as_str(), "{\"a\" : 1}");
    // Subscribe variables too.
    let text =
        r#"{"type":"subscribe","id":"1","payload":{"query":"{a}","variables":{ "x" : [ 1 ,2 ] }}}"#;
    let ClientMessage::Subscribe { payload, .. } = client(text).unwrap() else {
        panic!("not subscribe");
    };
    assert_eq!(
        payload.variables.as_ref().unwrap().as_str(),
        r#"{ "x" : [ 1 ,2 ] }"#
    );
    assert_eq!(
        payload.encode(),
        r#"{"query":"{a}","variables":{ "x" : [ 1 ,2 ] }}"#
    );
}

// ---------------------------------------------------------------------------------------
// Numeric ids (legacy compatibility in the shared envelope).
// ---------------------------------------------------------------------------------------

#[test]
fn numeric_ids_are_accepted_as_text() {
    assert_eq!(
        client(r#"{"type":"complete","id":1}"#),
        Ok(ClientMessage::Complete { id: "1".into() })
    );
    assert_eq!(
        client(r#"{"type":"complete","id":0}"#),
        Ok(ClientMessage::Complete { id: "0".into() })
    );
    assert_eq!(
        client(r#"{"type":"complete","id":-42}"#),
        Ok(ClientMessage::Complete { id: "-42".into() })
    );
    assert_eq!(
        server(r#"{"type":"next","id":12,"payload":{}}"#),
        Ok(ServerMessage::Next {
            id: "12".into(),
            payload: raw("{}")
        })
    );
    // Only integers: a float has no one canonical text to use as an id.
    assert_eq!(
        client(r#"{"type":"complete","id":1.5}"#),
        Err(DecodeError::MissingId { kind: "complete" })
    );
    // Re-encoded, a numeric id becomes a JSON string.
    assert_eq!(
        client(r#"{"type":"complete","id":1}"#).unwrap().encode(),
        r#"{"type":"complete","id":"1"}"#
    );
}

// ---------------------------------------------------------------------------------------
// Malformed input.
// ---------------------------------------------------------------------------------------

#[test]
fn not_json() {
    for text in [
        "",
        "hello",
        "{",
        r#"{"type":"ping"} trailing"#,
        "{'type':'ping'}",
        "\u{feff}{\"type\":\"ping\"}",
    ] {
        let err = client(text).unwrap_err();
        assert!(
            matches!(err, DecodeError::NotJson { .. }),
            "{text:?} gave {err:?}"
        );
        assert!(
            err.to_string().starts_with("message is not valid JSON: "),
            "{err}"
        );
        let err = server(text).unwrap_err();
        assert!(
            matches!(err, DecodeError::NotJson { .. }),
            "{text:?} gave {err:?}"
        );
    }
    // Invalid UTF-8 escapes in strings are JSON errors too.
    assert!(matches!(
        client(r#"{"type":"complete","id":"\ud800"}"#),
        Err(DecodeError::NotJson { .. })
    ));
    // A duplicated field is rejected rather than silently picking one.
    let err = client(r#"{"type":"ping","type":"complete","id":"1"}"#).unwrap_err();
    assert!(matches!(err, DecodeError::NotJson { .. }));
    assert!(err.to_string().contains("duplicate field"), "{err}");
}

#[test]
fn scalar_json_is_not_a_message() {
    for text in ["1", "\"ping\"", "null", "true"] {
        let err = client(text).unwrap_err();
        assert!(
            matches!(err, DecodeError::NotJson { .. }),
            "{text:?} gave {err:?}"
        );
    }
}

#[test]
fn empty_json_array_is_rejected() {
    // `[]` happens to be rejected (no type), but see `json_array_is_not_a_message`.
    assert!(client("[]").is_err());
    assert!(server("[]").is_err());
}

/// serde_json lets derived structs deserialise from a JSON array by position
/// (`[type, id, payload]`); a GraphQL-over-WebSocket message is always an object.
#[test]
fn json_array_is_not_a_message() {
    for text in [
        r#"["ping"]"#,
        r#"["connection_init"]"#,
        r#"["subscribe","1",{"query":"{a}"}]"#,
        r#"["complete","1"]"#,
    ] {
        assert!(
            client(text).is_err(),
            "{text} decoded as {:?}",
            client(text)
        );
    }
    assert!(server(r#"["next","1",{"data":{}}]"#).is_err());
}

/// The same for the request payload: `["{a}"]` must not be read as `{"query":"{a}"}`.
#[test]
fn array_subscribe_payload_is_invalid() {
    let text = r#"{"type":"subscribe","id":"1","payload":["{a}"]}"#;
    assert!(matches!(
        client(text),
        Err(DecodeError::InvalidPayload {
            kind: "subscribe",
            ..
        })
    ));
}

#[test]
fn missing_type() {
    for text in [
        "{}",
        r#"{"id":"1","payload":{}}"#,
        r#"{"type":null}"#,
        r#"{"Type":"ping"}"#,
    ] {
        assert_error(
            client(text),
            DecodeError::MissingType,
            r#"message has no string "type" field"#,
        );
        assert_error(
            server(text),
            DecodeError::MissingType,
            r#"message has no string "type" field"#,
        );
    }
}

#[test]
fn type_not_a_string() {
    // Valid JSON whose `type` is not a string: the message has no string type.
    for text in [
        r#"{"type":5}"#,
        r#"{"type":true}"#,
        r#"{"type":["ping"]}"#,
        r#"{"type":{"name":"ping"}}"#,
    ] {
        assert_eq!(client(text), Err(DecodeError::MissingType), "{text}");
        assert_eq!(server(text), Err(DecodeError::MissingType), "{text}");
    }
}

#[test]
fn unknown_type() {
    assert_error(
        client(r#"{"type":"start","id":"1","payload":{"query":"{a}"}}"#),
        DecodeError::UnknownType {
            kind: "start".into(),
        },
        r#"unknown message type "start""#,
    );
    // Server-only types are unknown from a client and vice versa.
    assert_error(
        client(r#"{"type":"next","id":"1","payload":{}}"#),
        DecodeError::UnknownType {
            kind: "next".into(),
        },
        r#"unknown message type "next""#,
    );
    assert_error(
        server(r#"{"type":"subscribe","id":"1","payload":{"query":"{a}"}}"#),
        DecodeError::UnknownType {
            kind: "subscribe".into(),
        },
        r#"unknown message type "subscribe""#,
    );
    assert_error(
        server(r#"{"type":"connection_init"}"#),
        DecodeError::UnknownType {
            kind: "connection_init".into(),
        },
        r#"unknown message type "connection_init""#,
    );
    // Legacy types are unknown here.
    for legacy in [
        "data",
        "ka",
        "connection_error",
        "stop",
        "connection_terminate",
    ] {
        let text = format!(r#"{{"type":"{legacy}","id":"1","payload":{{}}}}"#);
        assert!(matches!(
            client(&text),
            Err(DecodeError::UnknownType { .. })
        ));
        assert!(matches!(
            server(&text),
            Err(DecodeError::UnknownType { .. })
        ));
    }
    // Types are case-sensitive.
    assert!(matches!(
        client(r#"{"type":"Ping"}"#),
        Err(DecodeError::UnknownType { .. })
    ));
    assert!(matches!(
        client(r#"{"type":""}"#),
        Err(DecodeError::UnknownType { .. })
    ));
}

#[test]
fn missing_or_invalid_id() {
    for id in [
        "",
        r#","id":"""#,
        r#","id":null"#,
        r#","id":true"#,
        r#","id":{}"#,
        r#","id":["1"]"#,
    ] {
        let text = format!(r#"{{"type":"subscribe"{id},"payload":{{"query":"{{a}}"}}}}"#);
        assert_error(
            client(&text),
            DecodeError::MissingId { kind: "subscribe" },
            r#""subscribe" message needs a non-empty string "id""#,
        );
        let text = format!(r#"{{"type":"complete"{id}}}"#);
        assert_error(
            client(&text),
            DecodeError::MissingId { kind: "complete" },
            r#""complete" message needs a non-empty string "id""#,
        );
        assert_error(
            server(&text),
            DecodeError::MissingId { kind: "complete" },
            r#""complete" message needs a non-empty string "id""#,
        );
        let text = format!(r#"{{"type":"next"{id},"payload":{{}}}}"#);
        assert_eq!(server(&text), Err(DecodeError::MissingId { kind: "next" }));
        let text = format!(r#"{{"type":"error"{id},"payload":[]}}"#);
        assert_eq!(server(&text), Err(DecodeError::MissingId { kind: "error" }));
    }
}

#[test]
fn missing_payload() {
    for payload in ["", r#","payload":null"#] {
        assert_error(
            client(&format!(r#"{{"type":"subscribe","id":"1"{payload}}}"#)),
            DecodeError::MissingPayload { kind: "subscribe" },
            r#""subscribe" message needs a "payload""#,
        );
        assert_error(
            server(&format!(r#"{{"type":"next","id":"1"{payload}}}"#)),
            DecodeError::MissingPayload { kind: "next" },
            r#""next" message needs a "payload""#,
        );
        assert_error(
            server(&format!(r#"{{"type":"error","id":"1"{payload}}}"#)),
            DecodeError::MissingPayload { kind: "error" },
            r#""error" message needs a "payload""#,
        );
    }
}

#[test]
fn subscribe_payload_without_query() {
    for payload in [r#"{}"#, r#"{"operationName":"A"}"#, r#"{"query":null}"#] {
        assert_error(
            client(&format!(
                r#"{{"type":"subscribe","id":"1","payload":{payload}}}"#
            )),
            DecodeError::InvalidPayload {
                kind: "subscribe",
                reason: r#"request has no "query" string"#.into(),
            },
            r#""subscribe" message has an invalid payload: request has no "query" string"#,
        );
    }
    // A query of the wrong type is a JSON shape error, still an invalid payload.
    let err = client(r#"{"type":"subscribe","id":"1","payload":{"query":5}}"#).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::InvalidPayload {
                kind: "subscribe",
                ..
            }
        ),
        "{err:?}"
    );
    // A payload that is not an object at all.
    for payload in ["5", "\"{a}\"", "true"] {
        let err = client(&format!(
            r#"{{"type":"subscribe","id":"1","payload":{payload}}}"#
        ))
        .unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::InvalidPayload {
                    kind: "subscribe",
                    ..
                }
            ),
            "{payload}: {err:?}"
        );
        assert!(err
            .to_string()
            .starts_with(r#""subscribe" message has an invalid payload: "#));
    }
}

#[test]
fn variables_and_extensions_must_be_objects() {
    for (field, value) in [
        ("variables", "[1]"),
        ("variables", "5"),
        ("variables", r#""{\"a\":1}""#),
        ("extensions", "[]"),
        ("extensions", "false"),
    ] {
        let text = format!(
            r#"{{"type":"subscribe","id":"1","payload":{{"query":"{{a}}","{field}":{value}}}}}"#
        );
        let err = client(&text).unwrap_err();
        let DecodeError::InvalidPayload {
            kind: "subscribe",
            reason,
        } = &err
        else {
            panic!("{text} gave {err:?}");
        };
        assert_eq!(reason, &format!(r#""{field}" must be a JSON object"#));
        assert_eq!(
            err.to_string(),
            format!(
                r#""subscribe" message has an invalid payload: "{field}" must be a JSON object"#
            )
        );
    }
}

#[test]
fn init_ping_pong_payloads_must_be_objects() {
    for kind in ["connection_init", "ping", "pong"] {
        for payload in ["[]", "5", "\"token\"", "true"] {
            let text = format!(r#"{{"type":"{kind}","payload":{payload}}}"#);
            let err = client(&text).unwrap_err();
            assert!(
                matches!(&err, DecodeError::InvalidPayload { kind: k, reason } if *k == kind && reason == "payload must be a JSON object"),
                "{text} gave {err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    r#""{kind}" message has an invalid payload: payload must be a JSON object"#
                )
            );
        }
    }
    // The server side accepts any ping/pong/ack payload.
    assert_eq!(
        server(r#"{"type":"ping","payload":[1]}"#),
        Ok(ServerMessage::Ping {
            payload: Some(raw("[1]"))
        })
    );
}

#[test]
fn size_limit_is_checked_before_parsing() {
    let frame = r#"{"type":"ping"}"#;
    assert_eq!(
        ClientMessage::decode(frame, frame.len()),
        Ok(ClientMessage::Ping { payload: None })
    );
    assert_error(
        ClientMessage::decode(frame, frame.len() - 1),
        DecodeError::TooLarge {
            len: frame.len(),
            limit: frame.len() - 1,
        },
        &format!(
            "message is {} bytes, over the {} byte limit",
            frame.len(),
            frame.len() - 1
        ),
    );
    // A huge invalid frame is TooLarge, never NotJson: no parsing happened.
    let junk = "x".repeat(1_000_000);
    assert_error(
        ClientMessage::decode(&junk, 1024),
        DecodeError::TooLarge {
            len: 1_000_000,
            limit: 1024,
        },
        "message is 1000000 bytes, over the 1024 byte limit",
    );
    assert_eq!(
        ServerMessage::decode(&junk, 1024),
        Err(DecodeError::TooLarge {
            len: 1_000_000,
            limit: 1024
        })
    );
    // The length is in bytes, not characters.
    let frame = r#"{"type":"complete","id":"ééé"}"#;
    assert_eq!(frame.chars().count() + 3, frame.len());
    assert_eq!(
        ClientMessage::decode(frame, frame.chars().count()),
        Err(DecodeError::TooLarge {
            len: frame.len(),
            limit: frame.chars().count()
        })
    );
    // A zero limit rejects everything but the empty frame, which is then not JSON.
    assert!(matches!(
        ClientMessage::decode("", 0),
        Err(DecodeError::NotJson { .. })
    ));
}

#[test]
fn deeply_nested_payload_does_not_overflow() {
    let depth = 100_000;
    let payload = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let text = format!(r#"{{"type":"next","id":"1","payload":{payload}}}"#);
    // Accepted or rejected, but never a stack overflow; if accepted it is byte-for-byte.
    if let Ok(ServerMessage::Next { payload: p, .. }) = ServerMessage::decode(&text, usize::MAX) {
        assert_eq!(p.as_str(), payload);
    }
    let text = format!(
        r#"{{"type":"subscribe","id":"1","payload":{{"query":"{{a}}","variables":{{"a":{payload}}}}}}}"#
    );
    let _ = ClientMessage::decode(&text, usize::MAX);
}
