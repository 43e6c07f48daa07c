//! The gateway as a client of an upstream: server frames of either dialect decoded into
//! `UpstreamFrame`, and the client frames the gateway sends.

use subplex_protocol::ByteString;
use subplex_protocol::{
    legacy_ws, transport_ws, DecodeError, Event, GraphqlRequest, RawJson, Subprotocol,
    UpstreamFrame,
};

const LIMIT: usize = 64 * 1024;
const LEGACY: Subprotocol = Subprotocol::GraphqlWs;
const TRANSPORT: Subprotocol = Subprotocol::GraphqlTransportWs;

fn raw(text: &str) -> RawJson {
    RawJson::parse(text).unwrap()
}

fn frame(dialect: Subprotocol, text: &str) -> UpstreamFrame {
    dialect
        .decode_server_frame(&ByteString::from(text), LIMIT)
        .unwrap_or_else(|err| panic!("{dialect} frame {text} failed: {err}"))
}

/// The errors array an upstream `error` frame normalises to.
fn legacy_errors(payload: &str) -> String {
    let text = format!(r#"{{"type":"error","id":"1","payload":{payload}}}"#);
    match frame(LEGACY, &text) {
        UpstreamFrame::Operation {
            id,
            event: Event::Error(errors),
        } => {
            assert_eq!(id, "1");
            errors.as_str().to_owned()
        }
        other => panic!("{text} gave {other:?}"),
    }
}

#[test]
fn hasura_keep_alive_before_ack() {
    // Hasura sends `ka` right after `connection_init`, before `connection_ack`; decoding is
    // stateless, so every step of that sequence decodes.
    let sequence = [
        (r#"{"type":"ka"}"#, UpstreamFrame::KeepAlive),
        (r#"{"type":"connection_ack"}"#, UpstreamFrame::Ack),
        (r#"{"type":"ka"}"#, UpstreamFrame::KeepAlive),
        (
            r#"{"type":"data","id":"1","payload":{"data":{"t":1}}}"#,
            UpstreamFrame::Operation {
                id: "1".into(),
                event: Event::Next(raw(r#"{"data":{"t":1}}"#)),
            },
        ),
        (
            r#"{"type":"complete","id":"1"}"#,
            UpstreamFrame::Operation {
                id: "1".into(),
                event: Event::Complete,
            },
        ),
    ];
    for (text, expected) in sequence {
        assert_eq!(frame(LEGACY, text), expected, "{text}");
    }
    assert_eq!(
        frame(LEGACY, r#"{"type":"keepalive"}"#),
        UpstreamFrame::KeepAlive
    );
    assert_eq!(
        frame(LEGACY, r#"{"type":"init_success"}"#),
        UpstreamFrame::Ack
    );
}

#[test]
fn legacy_error_payload_shapes_normalise_to_an_errors_array() {
    // A single error object (the reference server's `{message}`).
    assert_eq!(
        legacy_errors(r#"{"message":"boom"}"#),
        r#"[{"message":"boom"}]"#
    );
    assert_eq!(
        legacy_errors(r#"{"message":"boom","locations":[{"line":1,"column":2}]}"#),
        r#"[{"locations":[{"column":2,"line":1}],"message":"boom"}]"#
    );
    // `{errors: [...]}` (Hasura, graphql-js validation results).
    assert_eq!(
        legacy_errors(
            r#"{"errors":[{"extensions":{"path":"$","code":"validation-failed"},"message":"field \"x\" not found"}]}"#
        ),
        r#"[{"extensions":{"code":"validation-failed","path":"$"},"message":"field \"x\" not found"}]"#
    );
    assert_eq!(legacy_errors(r#"{"data":null,"errors":[]}"#), "[]");
    // An array passes through byte-for-byte.
    assert_eq!(
        legacy_errors(r#"[ {"message": "a"}, {"message":"b"} ]"#),
        r#"[ {"message": "a"}, {"message":"b"} ]"#
    );
    // A bare string becomes the message.
    assert_eq!(
        legacy_errors(r#""something broke""#),
        r#"[{"message":"something broke"}]"#
    );
    assert_eq!(
        legacy_errors(r#""quote \" é""#),
        r#"[{"message":"quote \" é"}]"#
    );
    // Anything else is replaced by a generic error, never passed on as a non-array.
    for payload in ["5", "true", "-1.5e3"] {
        assert_eq!(
            legacy_errors(payload),
            r#"[{"message":"upstream sent an unreadable error"}]"#,
            "{payload}"
        );
    }
    // The deprecated alias normalises the same way.
    assert_eq!(
        frame(
            LEGACY,
            r#"{"type":"subscription_fail","id":"1","payload":"no"}"#
        ),
        UpstreamFrame::Operation {
            id: "1".into(),
            event: Event::Error(raw(r#"[{"message":"no"}]"#)),
        }
    );
}

#[test]
fn errors_field_that_is_not_an_array_keeps_the_whole_object() {
    // An `errors` that is not an array is not a GraphQL errors list: the whole object is
    // the error, nothing dropped.
    assert_eq!(
        legacy_errors(r#"{"errors":"x","message":"m"}"#),
        r#"[{"errors":"x","message":"m"}]"#
    );
    assert_eq!(
        legacy_errors(r#"{"errors":{"message":"m"}}"#),
        r#"[{"errors":{"message":"m"}}]"#
    );
}

#[test]
fn legacy_error_without_id_is_a_server_error() {
    assert_eq!(
        frame(
            LEGACY,
            r#"{"type":"error","payload":{"message":"Unexpected token"}}"#
        ),
        UpstreamFrame::ServerError {
            payload: raw(r#"{"message":"Unexpected token"}"#)
        }
    );
}

#[test]
fn legacy_connection_error() {
    assert_eq!(
        frame(
            LEGACY,
            r#"{"type":"connection_error","payload":"cannot start as connection_init failed with: invalid token"}"#
        ),
        UpstreamFrame::ConnectionError {
            payload: Some(raw(
                r#""cannot start as connection_init failed with: invalid token""#
            ))
        }
    );
    assert_eq!(
        frame(
            LEGACY,
            r#"{"type":"init_fail","payload":{"error":"Prohibited connection!"}}"#
        ),
        UpstreamFrame::ConnectionError {
            payload: Some(raw(r#"{"error":"Prohibited connection!"}"#))
        }
    );
    assert_eq!(
        frame(LEGACY, r#"{"type":"connection_error"}"#),
        UpstreamFrame::ConnectionError { payload: None }
    );
}

#[test]
fn legacy_data_alias() {
    assert_eq!(
        frame(
            LEGACY,
            r#"{"type":"subscription_data","id":2,"payload":{"data":{}}}"#
        ),
        UpstreamFrame::Operation {
            id: "2".into(),
            event: Event::Next(raw(r#"{"data":{}}"#)),
        }
    );
}

#[test]
fn transport_ping_pong_ack() {
    assert_eq!(frame(TRANSPORT, r#"{"type":"ping"}"#), UpstreamFrame::Ping);
    assert_eq!(
        frame(TRANSPORT, r#"{"type":"ping","payload":{"x":1}}"#),
        UpstreamFrame::Ping
    );
    assert_eq!(
        frame(TRANSPORT, r#"{"type":"pong"}"#),
        UpstreamFrame::KeepAlive
    );
    assert_eq!(
        frame(TRANSPORT, r#"{"type":"connection_ack"}"#),
        UpstreamFrame::Ack
    );
    assert_eq!(
        frame(
            TRANSPORT,
            r#"{"type":"connection_ack","payload":{"server":"x"}}"#
        ),
        UpstreamFrame::Ack
    );
    // Legacy keep-alives are not graphql-transport-ws, and vice versa.
    assert_eq!(
        TRANSPORT.decode_server_frame(&ByteString::from(r#"{"type":"ka"}"#), LIMIT),
        Err(DecodeError::UnknownType { kind: "ka".into() })
    );
    assert_eq!(
        LEGACY.decode_server_frame(&ByteString::from(r#"{"type":"ping"}"#), LIMIT),
        Err(DecodeError::UnknownType {
            kind: "ping".into()
        })
    );
    assert_eq!(
        LEGACY.decode_server_frame(
            &ByteString::from(r#"{"type":"next","id":"1","payload":{}}"#),
            LIMIT
        ),
        Err(DecodeError::UnknownType {
            kind: "next".into()
        })
    );
}

#[test]
fn transport_operation_frames() {
    assert_eq!(
        frame(
            TRANSPORT,
            r#"{"id":"1","type":"next","payload":{"data":{"a":1}}}"#
        ),
        UpstreamFrame::Operation {
            id: "1".into(),
            event: Event::Next(raw(r#"{"data":{"a":1}}"#)),
        }
    );
    // An errors array is passed through byte-for-byte.
    assert_eq!(
        frame(
            TRANSPORT,
            r#"{"id":"1","type":"error","payload":[ {"message":"x"} ]}"#
        ),
        UpstreamFrame::Operation {
            id: "1".into(),
            event: Event::Error(raw(r#"[ {"message":"x"} ]"#)),
        }
    );
    // A non-compliant server's single error object is normalised too.
    assert_eq!(
        frame(
            TRANSPORT,
            r#"{"id":"1","type":"error","payload":{"message":"x"}}"#
        ),
        UpstreamFrame::Operation {
            id: "1".into(),
            event: Event::Error(raw(r#"[{"message":"x"}]"#)),
        }
    );
    assert_eq!(
        frame(TRANSPORT, r#"{"id":"1","type":"complete"}"#),
        UpstreamFrame::Operation {
            id: "1".into(),
            event: Event::Complete,
        }
    );
}

#[test]
fn decode_errors_pass_through() {
    for dialect in [LEGACY, TRANSPORT] {
        assert_eq!(
            dialect.decode_server_frame(&ByteString::from("x".repeat(100)), 10),
            Err(DecodeError::TooLarge {
                len: 100,
                limit: 10
            })
        );
        assert!(matches!(
            dialect.decode_server_frame(&ByteString::from("nope"), LIMIT),
            Err(DecodeError::NotJson { .. })
        ));
        assert_eq!(
            dialect.decode_server_frame(&ByteString::from("{}"), LIMIT),
            Err(DecodeError::MissingType)
        );
        assert_eq!(
            dialect.decode_server_frame(&ByteString::from(r#"{"type":"complete"}"#), LIMIT),
            Err(DecodeError::MissingId { kind: "complete" })
        );
    }
    assert_eq!(
        LEGACY.decode_server_frame(&ByteString::from(r#"{"type":"data","id":"1"}"#), LIMIT),
        Err(DecodeError::MissingPayload { kind: "data" })
    );
    assert_eq!(
        TRANSPORT.decode_server_frame(&ByteString::from(r#"{"type":"next","id":"1"}"#), LIMIT),
        Err(DecodeError::MissingPayload { kind: "next" })
    );
}

// ---------------------------------------------------------------------------------------
// Client frames the gateway sends upstream.
// ---------------------------------------------------------------------------------------

#[test]
fn encoded_client_frames() {
    let init = raw(r#"{"headers":{"Authorization":"Bearer t"}}"#);
    assert_eq!(
        TRANSPORT.encode_init(&init),
        r#"{"type":"connection_init","payload":{"headers":{"Authorization":"Bearer t"}}}"#
    );
    assert_eq!(
        LEGACY.encode_init(&init),
        r#"{"type":"connection_init","payload":{"headers":{"Authorization":"Bearer t"}}}"#
    );
    let request = GraphqlRequest {
        query: "subscription { t }".into(),
        operation_name: None,
        variables: Some(raw(r#"{"n":1}"#)),
        extensions: None,
    };
    assert_eq!(
        TRANSPORT.encode_subscribe("u1", &request),
        r#"{"type":"subscribe","id":"u1","payload":{"query":"subscription { t }","variables":{"n":1}}}"#
    );
    assert_eq!(
        LEGACY.encode_subscribe("u1", &request),
        r#"{"type":"start","id":"u1","payload":{"query":"subscription { t }","variables":{"n":1}}}"#
    );
    assert_eq!(
        TRANSPORT.encode_unsubscribe("u1"),
        r#"{"type":"complete","id":"u1"}"#
    );
    assert_eq!(
        LEGACY.encode_unsubscribe("u1"),
        r#"{"type":"stop","id":"u1"}"#
    );
    assert_eq!(TRANSPORT.encode_pong(), r#"{"type":"pong"}"#);
    assert_eq!(
        TRANSPORT.encode_ping().as_deref(),
        Some(r#"{"type":"ping"}"#)
    );
    assert_eq!(LEGACY.encode_ping(), None);
    assert_eq!(TRANSPORT.encode_terminate(), None);
    assert_eq!(
        LEGACY.encode_terminate().as_deref(),
        Some(r#"{"type":"connection_terminate"}"#)
    );
}

#[test]
fn encoded_client_frames_decode_as_client_messages() {
    let request = GraphqlRequest {
        query: "subscription S { t }".into(),
        operation_name: Some("S".into()),
        variables: Some(raw(r#"{ "n" : 1 }"#)),
        extensions: Some(raw("{}")),
    };
    let init = raw(r#"{"k":"v"}"#);
    let id = "id \"with\" é";

    let decode = |text: &str| transport_ws::ClientMessage::decode(text, LIMIT).unwrap();
    assert_eq!(
        decode(&TRANSPORT.encode_init(&init)),
        transport_ws::ClientMessage::ConnectionInit {
            payload: Some(init.clone())
        }
    );
    assert_eq!(
        decode(&TRANSPORT.encode_subscribe(id, &request)),
        transport_ws::ClientMessage::Subscribe {
            id: id.into(),
            payload: request.clone()
        }
    );
    assert_eq!(
        decode(&TRANSPORT.encode_unsubscribe(id)),
        transport_ws::ClientMessage::Complete { id: id.into() }
    );
    assert_eq!(
        decode(&TRANSPORT.encode_pong()),
        transport_ws::ClientMessage::Pong { payload: None }
    );
    assert_eq!(
        decode(&TRANSPORT.encode_ping().unwrap()),
        transport_ws::ClientMessage::Ping { payload: None }
    );

    let decode = |text: &str| legacy_ws::ClientMessage::decode(text, LIMIT).unwrap();
    assert_eq!(
        decode(&LEGACY.encode_init(&init)),
        legacy_ws::ClientMessage::ConnectionInit {
            payload: Some(init)
        }
    );
    assert_eq!(
        decode(&LEGACY.encode_subscribe(id, &request)),
        legacy_ws::ClientMessage::Start {
            id: id.into(),
            payload: request
        }
    );
    assert_eq!(
        decode(&LEGACY.encode_unsubscribe(id)),
        legacy_ws::ClientMessage::Stop { id: id.into() }
    );
    assert_eq!(
        decode(&LEGACY.encode_terminate().unwrap()),
        legacy_ws::ClientMessage::ConnectionTerminate
    );
}

#[test]
fn subprotocol_names_and_negotiation() {
    assert_eq!(TRANSPORT.to_string(), "graphql-transport-ws");
    assert_eq!(LEGACY.to_string(), "graphql-ws");
    assert_eq!(Subprotocol::from_wire_name("GraphQL-WS"), None);
    assert_eq!(
        Subprotocol::negotiate(["graphql-transport-ws,graphql-ws"]),
        Some(TRANSPORT)
    );
    assert_eq!(Subprotocol::negotiate(["  graphql-ws  "]), Some(LEGACY));
    assert_eq!(Subprotocol::negotiate([""]), None);
}
