//! Round-trip oracles shared by the property tests (`tests/properties.rs`) and the fuzz
//! targets (`fuzz/fuzz_targets/*.rs`, which include this file with `#[path]`).
//!
//! Each `check_*` function decodes its input, must never panic on any input, and, when
//! the input decodes, asserts that encoding the value and decoding the result gives the
//! same value back. They return the decoded value so callers can count successes.
//!
//! This file only depends on `subplex-protocol` and the crates it already depends on
//! (`serde`, `serde_json`, `form_urlencoded`), so the fuzz crate can compile it too.

#![allow(dead_code)]

use serde::de::IgnoredAny;
use subplex_protocol::probe::{HandshakeJudge, ProbeFrame, Step};
use subplex_protocol::ByteString;
use subplex_protocol::{
    legacy_ws, sse, sse_client, transport_ws, DecodeError, Event, GraphqlRequest, RawJson,
    Subprotocol, UpstreamFrame,
};

/// Re-decoding an encoded frame uses no limit: re-encoding may legitimately grow a frame
/// (a numeric id `1e2` becomes the string `"100.0"`, a raw `é` stays but `\u0001` escapes).
const NO_LIMIT: usize = usize::MAX;

/// Every encoded frame must be one JSON value with nothing around it.
fn assert_json(frame: &str, what: &str) {
    if let Err(err) = serde_json::from_str::<IgnoredAny>(frame) {
        panic!("{what} encoded to invalid JSON ({err}): {frame:?}");
    }
}

/// A frame that decodes must not be rejected as too large when under the limit, and a
/// frame over the limit must be rejected as `TooLarge` before anything else.
fn check_limit<T>(text: &str, limit: usize, result: &Result<T, DecodeError>) {
    if text.len() > limit {
        match result {
            Err(DecodeError::TooLarge { len, limit: l }) => {
                assert_eq!((*len, *l), (text.len(), limit));
            }
            Err(other) => panic!("over-limit frame gave {other:?}, not TooLarge"),
            Ok(_) => panic!("over-limit frame decoded"),
        }
    } else if let Err(DecodeError::TooLarge { .. }) = result {
        panic!(
            "frame of {} bytes rejected as TooLarge under limit {limit}",
            text.len()
        );
    }
}

/// The `DecodeError` text is sent to peers verbatim; it must say something. (It may span
/// lines: `UnknownType` echoes the peer's `type` string as is.)
fn check_error_text(result: &Result<impl Sized, DecodeError>) {
    if let Err(err) = result {
        assert!(!err.to_string().is_empty());
    }
}

pub fn check_transport_client(text: &str, limit: usize) -> Option<transport_ws::ClientMessage> {
    let result = transport_ws::ClientMessage::decode(text, limit);
    check_limit(text, limit, &result);
    check_error_text(&result);
    let message = result.ok()?;
    let encoded = message.encode();
    assert_json(&encoded, "transport_ws::ClientMessage");
    let again = transport_ws::ClientMessage::decode(&encoded, NO_LIMIT)
        .unwrap_or_else(|err| panic!("re-decoding {encoded:?} failed: {err}"));
    assert_eq!(
        again, message,
        "round trip changed {text:?} (encoded {encoded:?})"
    );
    if let transport_ws::ClientMessage::Subscribe { payload, .. } = &message {
        check_request_round_trip(payload);
    }
    Some(message)
}

pub fn check_transport_server(text: &str, limit: usize) -> Option<transport_ws::ServerMessage> {
    let result = transport_ws::ServerMessage::decode(text, limit);
    check_limit(text, limit, &result);
    check_error_text(&result);
    let message = result.ok()?;
    let encoded = message.encode();
    assert_json(&encoded, "transport_ws::ServerMessage");
    let again = transport_ws::ServerMessage::decode(&encoded, NO_LIMIT)
        .unwrap_or_else(|err| panic!("re-decoding {encoded:?} failed: {err}"));
    assert_eq!(
        again, message,
        "round trip changed {text:?} (encoded {encoded:?})"
    );
    Some(message)
}

/// What a legacy client message is expected to decode to after one encode: `encode`
/// always sends an init payload (the reference server reads it unconditionally), so an
/// absent one comes back as `{}`.
pub fn legacy_client_normalised(message: &legacy_ws::ClientMessage) -> legacy_ws::ClientMessage {
    match message {
        legacy_ws::ClientMessage::ConnectionInit { payload: None } => {
            legacy_ws::ClientMessage::ConnectionInit {
                payload: Some(RawJson::empty_object()),
            }
        }
        other => other.clone(),
    }
}

pub fn check_legacy_client(text: &str, limit: usize) -> Option<legacy_ws::ClientMessage> {
    let result = legacy_ws::ClientMessage::decode(text, limit);
    check_limit(text, limit, &result);
    check_error_text(&result);
    let message = result.ok()?;
    let encoded = message.encode();
    assert_json(&encoded, "legacy_ws::ClientMessage");
    let again = legacy_ws::ClientMessage::decode(&encoded, NO_LIMIT)
        .unwrap_or_else(|err| panic!("re-decoding {encoded:?} failed: {err}"));
    assert_eq!(
        again,
        legacy_client_normalised(&message),
        "round trip changed {text:?} (encoded {encoded:?})"
    );
    // After normalisation the encoding is a fixed point.
    assert_eq!(again.encode(), legacy_client_normalised(&message).encode());
    if let legacy_ws::ClientMessage::Start { payload, .. } = &message {
        check_request_round_trip(payload);
    }
    Some(message)
}

pub fn check_legacy_server(text: &str, limit: usize) -> Option<legacy_ws::ServerMessage> {
    let result = legacy_ws::ServerMessage::decode(text, limit);
    check_limit(text, limit, &result);
    check_error_text(&result);
    let message = result.ok()?;
    let encoded = message.encode();
    assert_json(&encoded, "legacy_ws::ServerMessage");
    let again = legacy_ws::ServerMessage::decode(&encoded, NO_LIMIT)
        .unwrap_or_else(|err| panic!("re-decoding {encoded:?} failed: {err}"));
    assert_eq!(
        again, message,
        "round trip changed {text:?} (encoded {encoded:?})"
    );
    Some(message)
}

/// A decoded upstream frame must agree with the dialect's own server decoder, operation
/// errors must be normalised to a JSON array, and every operation event must re-frame for
/// every downstream dialect into something that decodes back to the same event.
pub fn check_upstream(dialect: Subprotocol, text: &str, limit: usize) -> Option<UpstreamFrame> {
    let result = dialect.decode_server_frame(&ByteString::from(text), limit);
    check_limit(text, limit, &result);
    check_error_text(&result);
    let direct_ok = match dialect {
        Subprotocol::GraphqlTransportWs => transport_ws::ServerMessage::decode(text, limit).is_ok(),
        Subprotocol::GraphqlWs => legacy_ws::ServerMessage::decode(text, limit).is_ok(),
    };
    assert_eq!(
        result.is_ok(),
        direct_ok,
        "upstream and direct decoders disagree on {text:?}"
    );
    let frame = result.ok()?;
    if let UpstreamFrame::Operation { id, event } = &frame {
        assert!(!id.is_empty());
        if let Event::Error(errors) = event {
            assert!(
                errors.as_str().trim_start().starts_with('['),
                "error payload not normalised to an array: {:?}",
                errors.as_str()
            );
            assert_json(errors.as_str(), "normalised errors");
        }
        check_event_reframing(id, event);
    }
    Some(frame)
}

/// Frames one event for every downstream dialect and checks each frame reads back.
pub fn check_event_reframing(id: &str, event: &Event) {
    let frame = transport_ws::ServerMessage::encode_event(id, event);
    let decoded = transport_ws::ServerMessage::decode(&frame, NO_LIMIT)
        .unwrap_or_else(|err| panic!("transport event frame {frame:?} does not decode: {err}"));
    let expected = match event.clone() {
        Event::Next(payload) => transport_ws::ServerMessage::Next {
            id: id.into(),
            payload,
        },
        Event::Error(payload) => transport_ws::ServerMessage::Error {
            id: id.into(),
            payload,
        },
        Event::Complete => transport_ws::ServerMessage::Complete { id: id.into() },
    };
    assert_eq!(decoded, expected);
    assert_eq!(expected.encode(), frame, "encode_event differs from encode");

    let frame = legacy_ws::ServerMessage::encode_event(id, event);
    let decoded = legacy_ws::ServerMessage::decode(&frame, NO_LIMIT)
        .unwrap_or_else(|err| panic!("legacy event frame {frame:?} does not decode: {err}"));
    let expected = match event.clone() {
        Event::Next(payload) => legacy_ws::ServerMessage::Data {
            id: id.into(),
            payload,
        },
        Event::Error(payload) => legacy_ws::ServerMessage::Error {
            id: Some(id.into()),
            payload,
        },
        Event::Complete => legacy_ws::ServerMessage::Complete { id: id.into() },
    };
    assert_eq!(decoded, expected);
    assert_eq!(expected.encode(), frame, "encode_event differs from encode");

    check_sse_event(event);
}

/// An SSE event stream chunk: only `event:`/`data:` lines and blank separators, every
/// `next` data block rejoins into valid JSON.
pub fn check_sse_event(event: &Event) {
    let text = sse::encode_event(event);
    assert!(text.ends_with("\n\n"), "event not terminated: {text:?}");
    assert!(!text.contains('\r'), "raw CR in event stream: {text:?}");
    for block in text.split_terminator("\n\n") {
        let mut lines = block.split('\n');
        let kind = lines.next().unwrap_or_default();
        let data: Vec<&str> = lines
            .map(|line| {
                line.strip_prefix("data:")
                    .unwrap_or_else(|| panic!("unexpected line {line:?} in {text:?}"))
            })
            .map(|value| value.strip_prefix(' ').unwrap_or(value))
            .collect();
        match kind {
            "event: next" => {
                assert!(!data.is_empty());
                assert_json(&data.join("\n"), "SSE next data");
            }
            "event: complete" => assert_eq!(data, [""]),
            other => panic!("unexpected event line {other:?} in {text:?}"),
        }
    }
}

/// `decode(encode(request)) == request` for a request that came out of a decoder.
pub fn check_request_round_trip(request: &GraphqlRequest) {
    let encoded = request.encode();
    assert_json(&encoded, "GraphqlRequest");
    let again = GraphqlRequest::decode(&encoded)
        .unwrap_or_else(|err| panic!("re-decoding request {encoded:?} failed: {err}"));
    assert_eq!(&again, request, "request round trip changed {encoded:?}");
    // And through GET parameters, as a gateway forwarding to an SSE upstream would send it.
    let query = query_string(request);
    let again = sse::request_from_query(&query)
        .unwrap_or_else(|err| panic!("re-reading query string {query:?} failed: {err}"));
    assert_eq!(&again, request, "GET round trip changed {query:?}");
}

/// A request as `application/x-www-form-urlencoded` GET parameters, as the SSE upstream
/// client sends them.
pub fn query_string(request: &GraphqlRequest) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(sse_client::query_parameters(request))
        .finish()
}

/// An SSE upstream's `next` data: over the limit it is `TooLarge`; a result that decodes
/// is passed on byte for byte, but for the JSON whitespace around it. `complete` always decodes, other event types never do.
pub fn check_sse_upstream_event(data: &str, limit: usize) -> Option<Event> {
    let result = sse_client::decode_event("next", data, limit);
    check_limit(data, limit, &result);
    check_error_text(&result);
    if let Ok(decoded) = &result {
        match decoded {
            Some(Event::Next(payload)) => {
                assert_eq!(payload.as_str(), data.trim_matches([' ', '\t', '\n', '\r']))
            }
            other => panic!("a next event decoded to {other:?}"),
        }
    }
    assert_eq!(
        sse_client::decode_event("complete", data, limit),
        Ok(Some(Event::Complete))
    );
    assert_eq!(sse_client::decode_event("message", data, limit), Ok(None));
    result.ok().flatten()
}

/// Any frame, fed to a fresh judge and to an acknowledged one, gives a step without
/// panicking; what the judge asks to send is always valid JSON.
pub fn check_probe_frame(text: &str) {
    let frame = ProbeFrame::classify(text);
    assert!(!frame.name().is_empty());
    let mut judge = HandshakeJudge::new();
    for step in [
        judge.on_frame(&ProbeFrame::ConnectionAck),
        judge.on_frame(&frame),
    ] {
        if let Step::Send(reply) = step {
            assert_json(&reply, "probe reply");
        }
    }
}

/// The size guard counts the same whatever the chunking: fed whole or byte by byte, it
/// refuses the input at the same point or not at all.
pub fn check_event_size_guard(bytes: &[u8], limit: usize) {
    let whole = sse_client::EventSizeGuard::new(limit).feed(bytes).is_ok();
    let mut guard = sse_client::EventSizeGuard::new(limit);
    let split = bytes.iter().all(|byte| guard.feed(&[*byte]).is_ok());
    assert_eq!(whole, split, "chunking changed the verdict for {bytes:?}");
}

pub fn check_sse_body(body: &[u8]) -> Option<GraphqlRequest> {
    let result = sse::request_from_body(body);
    if let Err(err) = &result {
        assert!(!err.to_string().is_empty());
    }
    let request = result.ok()?;
    check_request_round_trip(&request);
    Some(request)
}

pub fn check_sse_query(query: &str) -> Option<GraphqlRequest> {
    let result = sse::request_from_query(query);
    if let Err(err) = &result {
        assert!(!err.to_string().is_empty());
    }
    let request = result.ok()?;
    check_request_round_trip(&request);
    Some(request)
}

/// Runs every decoder on one input. Returns how many decoders accepted it.
pub fn check_all(text: &str, limit: usize) -> usize {
    let mut accepted = 0;
    accepted += usize::from(check_transport_client(text, limit).is_some());
    accepted += usize::from(check_transport_server(text, limit).is_some());
    accepted += usize::from(check_legacy_client(text, limit).is_some());
    accepted += usize::from(check_legacy_server(text, limit).is_some());
    accepted += usize::from(check_upstream(Subprotocol::GraphqlTransportWs, text, limit).is_some());
    accepted += usize::from(check_upstream(Subprotocol::GraphqlWs, text, limit).is_some());
    accepted += usize::from(check_sse_body(text.as_bytes()).is_some());
    accepted += usize::from(check_sse_query(text).is_some());
    accepted += usize::from(check_sse_upstream_event(text, limit).is_some());
    check_probe_frame(text);
    check_event_size_guard(text.as_bytes(), limit.min(text.len()));
    accepted
}
