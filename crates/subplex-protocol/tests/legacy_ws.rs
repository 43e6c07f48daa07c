//! Legacy `graphql-ws` (subscriptions-transport-ws, Hasura): wire frames as the reference
//! client and server send them, the deprecated pre-2017 aliases, round trips, exact
//! encodings and malformed input.

use subplex_protocol::legacy_ws::{ClientMessage, ServerMessage};
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
// Client -> server. subscriptions-transport-ws builds `{id, type, payload}` and
// JSON.stringify drops undefined fields.
// ---------------------------------------------------------------------------------------

#[test]
fn client_messages_as_sent_by_subscriptions_transport_ws() {
    assert_eq!(
        client(r#"{"type":"connection_init","payload":{}}"#),
        Ok(ClientMessage::ConnectionInit {
            payload: Some(raw("{}"))
        })
    );
    assert_eq!(
        client(r#"{"type":"connection_init","payload":{"headers":{"x-hasura-admin-secret":"s"}}}"#),
        Ok(ClientMessage::ConnectionInit {
            payload: Some(raw(r#"{"headers":{"x-hasura-admin-secret":"s"}}"#))
        })
    );
    assert_eq!(
        client(r#"{"type":"connection_init"}"#),
        Ok(ClientMessage::ConnectionInit { payload: None })
    );
    let start = r#"{"id":"1","type":"start","payload":{"query":"subscription { ticks { n } }","variables":{},"operationName":null}}"#;
    assert_eq!(
        client(start),
        Ok(ClientMessage::Start {
            id: "1".into(),
            payload: GraphqlRequest {
                query: "subscription { ticks { n } }".into(),
                operation_name: None,
                variables: Some(raw("{}")),
                extensions: None,
            },
        })
    );
    assert_eq!(
        client(r#"{"id":"1","type":"stop"}"#),
        Ok(ClientMessage::Stop { id: "1".into() })
    );
    // `sendMessage(undefined, GQL_CONNECTION_TERMINATE, null)`.
    assert_eq!(
        client(r#"{"type":"connection_terminate","payload":null}"#),
        Ok(ClientMessage::ConnectionTerminate)
    );
    assert_eq!(
        client(r#"{"type":"connection_terminate"}"#),
        Ok(ClientMessage::ConnectionTerminate)
    );
}

#[test]
fn deprecated_client_aliases() {
    assert_eq!(
        client(r#"{"type":"init","payload":{"token":"t"}}"#),
        Ok(ClientMessage::ConnectionInit {
            payload: Some(raw(r#"{"token":"t"}"#))
        })
    );
    assert_eq!(
        client(r#"{"type":"init"}"#),
        Ok(ClientMessage::ConnectionInit { payload: None })
    );
    assert_eq!(
        client(
            r#"{"id":"3","type":"subscription_start","payload":{"query":"subscription { t }"}}"#
        ),
        Ok(ClientMessage::Start {
            id: "3".into(),
            payload: GraphqlRequest::new("subscription { t }"),
        })
    );
    // Pre-1.0 clients used numeric ids.
    assert_eq!(
        client(r#"{"id":3,"type":"subscription_end"}"#),
        Ok(ClientMessage::Stop { id: "3".into() })
    );
    assert_eq!(
        client(r#"{"id":"3","type":"subscription_end"}"#),
        Ok(ClientMessage::Stop { id: "3".into() })
    );
    // Aliases report errors under their canonical names.
    assert_eq!(
        client(r#"{"type":"subscription_start","payload":{"query":"{a}"}}"#),
        Err(DecodeError::MissingId { kind: "start" })
    );
    assert_eq!(
        client(r#"{"type":"subscription_end"}"#),
        Err(DecodeError::MissingId { kind: "stop" })
    );
    assert!(matches!(
        client(r#"{"type":"init","payload":[]}"#),
        Err(DecodeError::InvalidPayload {
            kind: "connection_init",
            ..
        })
    ));
}

/// Clients old enough to send `subscription_start` (subscriptions-transport-ws < 0.8) put
/// `query`, `variables` and `operationName` at the top level of the message, with numeric
/// ids; the reference server's `parseLegacyProtocolMessage` moves them into `payload`.
#[test]
fn old_subscription_start_shape() {
    let text = r#"{"query":"subscription { t }","variables":{"n":1},"operationName":"T","type":"subscription_start","id":1}"#;
    assert_eq!(
        client(text),
        Ok(ClientMessage::Start {
            id: "1".into(),
            payload: GraphqlRequest {
                query: "subscription { t }".into(),
                operation_name: Some("T".into()),
                variables: Some(raw(r#"{"n":1}"#)),
                extensions: None,
            },
        })
    );
}

#[test]
fn old_subscription_start_shape_needs_a_string_query() {
    let text = r#"{"query":5,"type":"subscription_start","id":1}"#;
    assert!(matches!(
        client(text),
        Err(DecodeError::InvalidPayload { kind: "start", .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Server -> client, as the reference server and Hasura send them.
// ---------------------------------------------------------------------------------------

#[test]
fn server_messages_as_sent_by_reference_server_and_hasura() {
    assert_eq!(
        server(r#"{"type":"connection_ack"}"#),
        Ok(ServerMessage::ConnectionAck)
    );
    // An ack payload (some servers send one) is ignored.
    assert_eq!(
        server(r#"{"type":"connection_ack","payload":{"x":1}}"#),
        Ok(ServerMessage::ConnectionAck)
    );
    assert_eq!(server(r#"{"type":"ka"}"#), Ok(ServerMessage::Ka));
    assert_eq!(
        server(r#"{"type":"connection_error","payload":{"message":"Prohibited connection!"}}"#),
        Ok(ServerMessage::ConnectionError {
            payload: Some(raw(r#"{"message":"Prohibited connection!"}"#))
        })
    );
    // Hasura sends a bare string.
    assert_eq!(
        server(
            r#"{"type":"connection_error","payload":"cannot start as connection_init failed with: invalid x-hasura-admin-secret/x-hasura-access-key"}"#
        ),
        Ok(ServerMessage::ConnectionError {
            payload: Some(raw(
                r#""cannot start as connection_init failed with: invalid x-hasura-admin-secret/x-hasura-access-key""#
            ))
        })
    );
    assert_eq!(
        server(r#"{"type":"connection_error"}"#),
        Ok(ServerMessage::ConnectionError { payload: None })
    );
    assert_eq!(
        server(r#"{"type":"data","id":"1","payload":{"data":{"ticks":{"n":1}}}}"#),
        Ok(ServerMessage::Data {
            id: "1".into(),
            payload: raw(r#"{"data":{"ticks":{"n":1}}}"#),
        })
    );
    assert_eq!(
        server(r#"{"type":"error","id":"1","payload":{"message":"Cannot query field \"x\""}}"#),
        Ok(ServerMessage::Error {
            id: Some("1".into()),
            payload: raw(r#"{"message":"Cannot query field \"x\""}"#),
        })
    );
    assert_eq!(
        server(r#"{"type":"error","id":"1","payload":[{"message":"a"},{"message":"b"}]}"#),
        Ok(ServerMessage::Error {
            id: Some("1".into()),
            payload: raw(r#"[{"message":"a"},{"message":"b"}]"#),
        })
    );
    // The reference server answers an unparsable frame with an id-less error.
    assert_eq!(
        server(r#"{"type":"error","payload":{"message":"Unexpected token"}}"#),
        Ok(ServerMessage::Error {
            id: None,
            payload: raw(r#"{"message":"Unexpected token"}"#),
        })
    );
    // An empty id counts as absent for `error` (it is optional there).
    assert_eq!(
        server(r#"{"type":"error","id":"","payload":{}}"#),
        Ok(ServerMessage::Error {
            id: None,
            payload: raw("{}"),
        })
    );
    assert_eq!(
        server(r#"{"type":"complete","id":"1"}"#),
        Ok(ServerMessage::Complete { id: "1".into() })
    );
}

#[test]
fn deprecated_server_aliases() {
    // What the reference server sends to a client that opened with `init`.
    assert_eq!(
        server(r#"{"type":"init_success"}"#),
        Ok(ServerMessage::ConnectionAck)
    );
    assert_eq!(
        server(r#"{"type":"init_fail","payload":{"error":"Prohibited connection!"}}"#),
        Ok(ServerMessage::ConnectionError {
            payload: Some(raw(r#"{"error":"Prohibited connection!"}"#))
        })
    );
    assert_eq!(server(r#"{"type":"keepalive"}"#), Ok(ServerMessage::Ka));
    assert_eq!(
        server(r#"{"type":"subscription_data","id":"1","payload":{"data":{"a":1}}}"#),
        Ok(ServerMessage::Data {
            id: "1".into(),
            payload: raw(r#"{"data":{"a":1}}"#),
        })
    );
    assert_eq!(
        server(r#"{"type":"subscription_fail","id":"1","payload":{"errors":[{"message":"x"}]}}"#),
        Ok(ServerMessage::Error {
            id: Some("1".into()),
            payload: raw(r#"{"errors":[{"message":"x"}]}"#),
        })
    );
    // Old servers used numeric ids too.
    assert_eq!(
        server(r#"{"type":"subscription_data","id":1,"payload":{"data":null}}"#),
        Ok(ServerMessage::Data {
            id: "1".into(),
            payload: raw(r#"{"data":null}"#),
        })
    );
    assert_eq!(
        server(r#"{"type":"subscription_data","payload":{}}"#),
        Err(DecodeError::MissingId { kind: "data" })
    );
    assert_eq!(
        server(r#"{"type":"subscription_fail","id":"1"}"#),
        Err(DecodeError::MissingPayload { kind: "error" })
    );
    // `subscription_success` (the old per-subscription ack) is not understood.
    assert_eq!(
        server(r#"{"type":"subscription_success","id":"1"}"#),
        Err(DecodeError::UnknownType {
            kind: "subscription_success".into()
        })
    );
}

// ---------------------------------------------------------------------------------------
// Round trips and exact encodings.
// ---------------------------------------------------------------------------------------

#[test]
fn every_client_variant_round_trips() {
    for message in [
        ClientMessage::ConnectionInit {
            payload: Some(raw(r#"{"headers":{"Authorization":"Bearer x"}}"#)),
        },
        ClientMessage::ConnectionInit {
            payload: Some(raw("{}")),
        },
        ClientMessage::Start {
            id: "1".into(),
            payload: GraphqlRequest::new("subscription { t }"),
        },
        ClientMessage::Start {
            id: "é \"q\" 🚀".into(),
            payload: GraphqlRequest {
                query: "subscription S { t }\n".into(),
                operation_name: Some("S".into()),
                variables: Some(raw(r#"{ "n" : 1 }"#)),
                extensions: Some(raw(r#"{"x":[null]}"#)),
            },
        },
        ClientMessage::Stop { id: "1".into() },
        ClientMessage::ConnectionTerminate,
    ] {
        let encoded = message.encode();
        assert_eq!(client(&encoded), Ok(message), "encoded as {encoded}");
    }
    // Without a payload, init is encoded with `{}` (the reference server reads payload
    // unconditionally), so it comes back with an empty object.
    let encoded = ClientMessage::ConnectionInit { payload: None }.encode();
    assert_eq!(
        client(&encoded),
        Ok(ClientMessage::ConnectionInit {
            payload: Some(RawJson::empty_object())
        })
    );
}

#[test]
fn every_server_variant_round_trips() {
    for message in [
        ServerMessage::ConnectionAck,
        ServerMessage::ConnectionError { payload: None },
        ServerMessage::ConnectionError {
            payload: Some(raw(r#"{"message":"no"}"#)),
        },
        ServerMessage::ConnectionError {
            payload: Some(raw(r#""plain string""#)),
        },
        ServerMessage::Ka,
        ServerMessage::Data {
            id: "1".into(),
            payload: raw(r#"{"data":{"a":1}}"#),
        },
        ServerMessage::Error {
            id: Some("1".into()),
            payload: raw(r#"{"message":"x"}"#),
        },
        ServerMessage::Error {
            id: None,
            payload: raw(r#"[{"message":"x"}]"#),
        },
        ServerMessage::Complete { id: "1".into() },
        ServerMessage::Complete {
            id: "\\\"\u{7f}\u{1}".into(),
        },
    ] {
        let encoded = message.encode();
        assert_eq!(server(&encoded), Ok(message), "encoded as {encoded}");
    }
}

#[test]
fn exact_encodings_never_use_deprecated_names() {
    assert_eq!(
        ClientMessage::ConnectionInit { payload: None }.encode(),
        r#"{"type":"connection_init","payload":{}}"#
    );
    assert_eq!(
        ClientMessage::ConnectionInit {
            payload: Some(raw(r#"{"a":1}"#))
        }
        .encode(),
        r#"{"type":"connection_init","payload":{"a":1}}"#
    );
    assert_eq!(
        ClientMessage::Start {
            id: "1".into(),
            payload: GraphqlRequest {
                query: "subscription { t }".into(),
                operation_name: Some("T".into()),
                variables: Some(raw("{}")),
                extensions: None,
            },
        }
        .encode(),
        r#"{"type":"start","id":"1","payload":{"query":"subscription { t }","operationName":"T","variables":{}}}"#
    );
    assert_eq!(
        ClientMessage::Stop { id: "1".into() }.encode(),
        r#"{"type":"stop","id":"1"}"#
    );
    assert_eq!(
        ClientMessage::ConnectionTerminate.encode(),
        r#"{"type":"connection_terminate"}"#
    );
    assert_eq!(
        ServerMessage::ConnectionAck.encode(),
        r#"{"type":"connection_ack"}"#
    );
    assert_eq!(ServerMessage::Ka.encode(), r#"{"type":"ka"}"#);
    assert_eq!(
        ServerMessage::ConnectionError { payload: None }.encode(),
        r#"{"type":"connection_error"}"#
    );
    assert_eq!(
        ServerMessage::ConnectionError {
            payload: Some(raw(r#"{"message":"m"}"#))
        }
        .encode(),
        r#"{"type":"connection_error","payload":{"message":"m"}}"#
    );
    assert_eq!(
        ServerMessage::Data {
            id: "1".into(),
            payload: raw(r#"{"data":{"a":1}}"#)
        }
        .encode(),
        r#"{"type":"data","id":"1","payload":{"data":{"a":1}}}"#
    );
    assert_eq!(
        ServerMessage::Error {
            id: Some("1".into()),
            payload: raw(r#"[{"message":"x"}]"#)
        }
        .encode(),
        r#"{"type":"error","id":"1","payload":[{"message":"x"}]}"#
    );
    assert_eq!(
        ServerMessage::Error {
            id: None,
            payload: raw(r#"{"message":"x"}"#)
        }
        .encode(),
        r#"{"type":"error","payload":{"message":"x"}}"#
    );
    assert_eq!(
        ServerMessage::Complete { id: "1".into() }.encode(),
        r#"{"type":"complete","id":"1"}"#
    );
    // Decoding an alias then encoding gives the modern name.
    assert_eq!(
        server(r#"{"type":"subscription_data","id":"1","payload":{}}"#)
            .unwrap()
            .encode(),
        r#"{"type":"data","id":"1","payload":{}}"#
    );
    assert_eq!(
        server(r#"{"type":"keepalive"}"#).unwrap().encode(),
        r#"{"type":"ka"}"#
    );
    assert_eq!(
        client(r#"{"type":"init"}"#).unwrap().encode(),
        r#"{"type":"connection_init","payload":{}}"#
    );
    assert_eq!(
        client(r#"{"type":"subscription_end","id":2}"#)
            .unwrap()
            .encode(),
        r#"{"type":"stop","id":"2"}"#
    );
}

#[test]
fn encode_event() {
    let next = Event::Next(raw(r#"{"data":{"a":1}}"#));
    assert_eq!(
        ServerMessage::encode_event("9", &next),
        r#"{"type":"data","id":"9","payload":{"data":{"a":1}}}"#
    );
    // A terminal error is one `error` frame, no `complete` after it.
    let error = Event::Error(raw(r#"[{"message":"x"}]"#));
    assert_eq!(
        ServerMessage::encode_event("9", &error),
        r#"{"type":"error","id":"9","payload":[{"message":"x"}]}"#
    );
    assert_eq!(
        ServerMessage::encode_event("9", &Event::Complete),
        r#"{"type":"complete","id":"9"}"#
    );
    assert_eq!(
        ServerMessage::encode_event("\"", &Event::Complete),
        r#"{"type":"complete","id":"\""}"#
    );
}

#[test]
fn ids_are_escaped_and_payloads_spliced() {
    let id = "q\"\\\u{8}é🚀";
    let encoded = ClientMessage::Stop { id: id.into() }.encode();
    assert_eq!(encoded, "{\"type\":\"stop\",\"id\":\"q\\\"\\\\\\bé🚀\"}");
    assert_eq!(client(&encoded), Ok(ClientMessage::Stop { id: id.into() }));
    let payload = "{\n  \"data\": {\n    \"a\": 1.0e2\n  }\n}";
    let text = format!(r#"{{"type":"data","id":"1","payload":{payload}}}"#);
    let message = server(&text).unwrap();
    assert_eq!(message.encode(), text);
    let ServerMessage::Data { payload: p, .. } = message else {
        panic!("not data");
    };
    assert_eq!(p.as_str(), payload);
}

// ---------------------------------------------------------------------------------------
// Malformed input.
// ---------------------------------------------------------------------------------------

#[test]
fn malformed_envelopes() {
    for text in ["", "ka", "{", "{\"type\":\"ka\"", "'ka'"] {
        assert!(
            matches!(server(text), Err(DecodeError::NotJson { .. })),
            "{text:?}"
        );
        assert!(
            matches!(client(text), Err(DecodeError::NotJson { .. })),
            "{text:?}"
        );
    }
    for text in ["{}", r#"{"id":"1"}"#, r#"{"type":null,"id":"1"}"#] {
        assert_error(
            server(text),
            DecodeError::MissingType,
            r#"message has no string "type" field"#,
        );
        assert_error(
            client(text),
            DecodeError::MissingType,
            r#"message has no string "type" field"#,
        );
    }
    assert!(matches!(
        client(r#"{"type":1}"#),
        Err(DecodeError::MissingType)
    ));
}

#[test]
fn unknown_types() {
    // graphql-transport-ws types are unknown in the legacy dialect.
    for kind in ["subscribe", "next", "ping", "pong"] {
        let text = format!(r#"{{"type":"{kind}","id":"1","payload":{{"query":"{{a}}"}}}}"#);
        assert_error(
            client(&text),
            DecodeError::UnknownType { kind: kind.into() },
            &format!(r#"unknown message type "{kind}""#),
        );
        assert!(matches!(
            server(&text),
            Err(DecodeError::UnknownType { .. })
        ));
    }
    // Server types from a client and client types from a server.
    assert!(matches!(
        client(r#"{"type":"ka"}"#),
        Err(DecodeError::UnknownType { .. })
    ));
    assert!(matches!(
        client(r#"{"type":"keepalive"}"#),
        Err(DecodeError::UnknownType { .. })
    ));
    assert!(matches!(
        server(r#"{"type":"start","id":"1"}"#),
        Err(DecodeError::UnknownType { .. })
    ));
    assert!(matches!(
        server(r#"{"type":"init"}"#),
        Err(DecodeError::UnknownType { .. })
    ));
}

#[test]
fn missing_ids() {
    for id in [
        "",
        r#","id":"""#,
        r#","id":null"#,
        r#","id":false"#,
        r#","id":[1]"#,
    ] {
        assert_error(
            client(&format!(
                r#"{{"type":"start"{id},"payload":{{"query":"{{a}}"}}}}"#
            )),
            DecodeError::MissingId { kind: "start" },
            r#""start" message needs a non-empty string "id""#,
        );
        assert_error(
            client(&format!(r#"{{"type":"stop"{id}}}"#)),
            DecodeError::MissingId { kind: "stop" },
            r#""stop" message needs a non-empty string "id""#,
        );
        assert_eq!(
            server(&format!(r#"{{"type":"data"{id},"payload":{{}}}}"#)),
            Err(DecodeError::MissingId { kind: "data" })
        );
        assert_eq!(
            server(&format!(r#"{{"type":"complete"{id}}}"#)),
            Err(DecodeError::MissingId { kind: "complete" })
        );
        // `error` tolerates a missing id.
        assert_eq!(
            server(&format!(r#"{{"type":"error"{id},"payload":{{}}}}"#)),
            Ok(ServerMessage::Error {
                id: None,
                payload: raw("{}")
            })
        );
    }
}

#[test]
fn missing_payloads() {
    for payload in ["", r#","payload":null"#] {
        assert_error(
            client(&format!(r#"{{"type":"start","id":"1"{payload}}}"#)),
            DecodeError::MissingPayload { kind: "start" },
            r#""start" message needs a "payload""#,
        );
        assert_error(
            server(&format!(r#"{{"type":"data","id":"1"{payload}}}"#)),
            DecodeError::MissingPayload { kind: "data" },
            r#""data" message needs a "payload""#,
        );
        assert_error(
            server(&format!(r#"{{"type":"error","id":"1"{payload}}}"#)),
            DecodeError::MissingPayload { kind: "error" },
            r#""error" message needs a "payload""#,
        );
    }
}

#[test]
fn invalid_start_payloads() {
    assert_error(
        client(r#"{"type":"start","id":"1","payload":{"variables":{}}}"#),
        DecodeError::InvalidPayload {
            kind: "start",
            reason: r#"request has no "query" string"#.into(),
        },
        r#""start" message has an invalid payload: request has no "query" string"#,
    );
    assert_error(
        client(r#"{"type":"start","id":"1","payload":{"query":"{a}","variables":[1]}}"#),
        DecodeError::InvalidPayload {
            kind: "start",
            reason: r#""variables" must be a JSON object"#.into(),
        },
        r#""start" message has an invalid payload: "variables" must be a JSON object"#,
    );
    assert_eq!(
        client(r#"{"type":"start","id":"1","payload":{"query":"{a}","extensions":"x"}}"#),
        Err(DecodeError::InvalidPayload {
            kind: "start",
            reason: r#""extensions" must be a JSON object"#.into(),
        })
    );
    let err = client(r#"{"type":"start","id":"1","payload":"query { a }"}"#).unwrap_err();
    assert!(
        matches!(err, DecodeError::InvalidPayload { kind: "start", .. }),
        "{err:?}"
    );
}

#[test]
fn connection_init_payload_must_be_an_object() {
    for payload in ["[]", "\"token\"", "1", "false"] {
        for kind in ["connection_init", "init"] {
            assert_error(
                client(&format!(r#"{{"type":"{kind}","payload":{payload}}}"#)),
                DecodeError::InvalidPayload {
                    kind: "connection_init",
                    reason: "payload must be a JSON object".into(),
                },
                r#""connection_init" message has an invalid payload: payload must be a JSON object"#,
            );
        }
    }
}

#[test]
fn size_limit() {
    let frame = r#"{"type":"ka"}"#;
    assert_eq!(
        ServerMessage::decode(frame, frame.len()),
        Ok(ServerMessage::Ka)
    );
    assert_error(
        ServerMessage::decode(frame, 3),
        DecodeError::TooLarge {
            len: frame.len(),
            limit: 3,
        },
        &format!("message is {} bytes, over the 3 byte limit", frame.len()),
    );
    let junk = "\u{0}".repeat(70_000);
    assert_eq!(
        ClientMessage::decode(&junk, LIMIT),
        Err(DecodeError::TooLarge {
            len: 70_000,
            limit: LIMIT
        })
    );
    // Valid but too large is TooLarge too.
    let big = format!(
        r#"{{"type":"data","id":"1","payload":{{"s":"{}"}}}}"#,
        "a".repeat(LIMIT)
    );
    assert!(matches!(server(&big), Err(DecodeError::TooLarge { .. })));
}
