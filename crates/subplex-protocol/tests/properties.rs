//! Property tests on proptest for every codec and protocol rule of the crate.
//!
//! Valid messages of every codec are generated as typed values together with the ways a
//! peer may spell them (`properties/strategies.rs`); broken input is random bytes, token
//! soups and byte-level mutations of valid frames. The decode/encode oracles live in
//! `support/mod.rs`, shared with the fuzz targets: decoding never panics, over-limit input
//! is `TooLarge` before parsing, and anything that decodes re-encodes to something that
//! decodes to the same value.
//!
//! 256 cases per property by default; `PROPTEST_CASES=10000 cargo test -p
//! subplex-protocol --test properties` runs more. A failure is shrunk to a minimal input
//! and its seed saved in `tests/properties.proptest-regressions`, which is replayed first
//! on every run (commit it).

#[path = "properties/strategies.rs"]
mod strategies;
mod support;

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;
use strategies::*;
use subplex_protocol::probe::{HandshakeJudge, ProbeFrame, Step, Verdict};
use subplex_protocol::{
    legacy_ws, multipart, sse, sse_client, transport_ws, DecodeError, Event, RawJson, Subprotocol,
    UpstreamFrame,
};
use support::*;

/// Every decoder and rule on one input under one limit.
fn run(text: &str, limit: usize) {
    check_all(text, limit);
    check_event_size_guard(text.as_bytes(), limit.min(text.len() / 2));
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text:?}"))
}

// ---------------------------------------------------------------------------------------
// Any input: nothing panics, limits hold, whatever decodes round-trips.
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        limit in limit(),
    ) {
        check_sse_body(&bytes);
        check_event_size_guard(&bytes, bytes.len() / 2);
        let text = String::from_utf8_lossy(&bytes);
        run(&text, limit.for_len(text.len()));
    }

    #[test]
    fn token_soup_never_panics_and_round_trips(text in token_soup(), limit in limit()) {
        run(&text, limit.for_len(text.len()));
    }

    #[test]
    fn mutated_frames_never_panic_and_round_trip(
        frame in any_frame(),
        edits in mutations(),
        limit in limit(),
    ) {
        let text = mutate(&frame, &edits);
        run(&text, limit.for_len(text.len()));
    }

    #[test]
    fn any_value_as_a_frame_never_panics(text in json_value(), limit in limit()) {
        run(&text, limit.for_len(text.len()));
    }
}

/// Known-good frames from the reference libraries, and their mutations.
const REFERENCE_FRAMES: &[&str] = &[
    r#"{"type":"connection_init","payload":{"authToken":"t"}}"#,
    r#"{"id":"1","type":"subscribe","payload":{"query":"subscription { t }","variables":{"n":1}}}"#,
    r#"{"id":"1","type":"next","payload":{"data":{"t":1}}}"#,
    r#"{"id":"1","type":"error","payload":[{"message":"x"}]}"#,
    r#"{"id":"1","type":"complete"}"#,
    r#"{"type":"ping"}"#,
    r#"{"id":"1","type":"start","payload":{"query":"subscription { t }","variables":{},"operationName":null}}"#,
    r#"{"id":1,"type":"subscription_end"}"#,
    r#"{"type":"ka"}"#,
    r#"{"type":"connection_error","payload":"denied"}"#,
    r#"{"type":"error","id":"1","payload":{"errors":[{"message":"x"}]}}"#,
    r#"{"type":"subscription_data","id":"1","payload":{"data":null}}"#,
];

#[test]
fn reference_frames_decode() {
    for frame in REFERENCE_FRAMES {
        let accepted = check_transport_client(frame, usize::MAX).is_some()
            || check_transport_server(frame, usize::MAX).is_some()
            || check_legacy_client(frame, usize::MAX).is_some()
            || check_legacy_server(frame, usize::MAX).is_some();
        assert!(accepted, "no decoder accepted {frame}");
    }
}

proptest! {
    #[test]
    fn reference_frames_and_their_mutations(
        frame in select(REFERENCE_FRAMES),
        edits in mutations(),
        limit in limit(),
    ) {
        let text = mutate(frame, &edits);
        run(&text, limit.for_len(text.len()));
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket dialects: every spelling of a valid message decodes to exactly it.
// ---------------------------------------------------------------------------------------

/// Over a limit shorter than the frame, the same frame is `TooLarge` and nothing else.
fn assert_too_large<T: std::fmt::Debug>(
    text: &str,
    decode: impl Fn(&str, usize) -> Result<T, DecodeError>,
) {
    if let Some(limit) = text.len().checked_sub(1) {
        match decode(text, limit) {
            Err(DecodeError::TooLarge { len, limit: l }) => {
                assert_eq!((len, l), (text.len(), limit))
            }
            other => panic!("{text:?} under limit {limit} gave {other:?}"),
        }
    }
}

proptest! {
    #[test]
    fn transport_ws_client_messages_round_trip(
        (message, text) in spelled(transport_client_message(), spell_transport_client),
    ) {
        prop_assert_eq!(check_transport_client(&text, text.len()), Some(message.clone()));
        prop_assert_eq!(check_transport_client(&message.encode(), usize::MAX), Some(message));
        assert_too_large(&text, transport_ws::ClientMessage::decode);
    }

    #[test]
    fn transport_ws_server_messages_round_trip(
        (message, text) in spelled(transport_server_message(), spell_transport_server),
    ) {
        prop_assert_eq!(check_transport_server(&text, text.len()), Some(message.clone()));
        prop_assert_eq!(
            check_transport_server(&message.encode(), usize::MAX),
            Some(message.clone())
        );
        assert_too_large(&text, transport_ws::ServerMessage::decode);
        check_upstream_frame(Subprotocol::GraphqlTransportWs, &text, &upstream_transport(&message));
        check_probe_classification(&text, transport_server_type(&message));
    }

    #[test]
    fn legacy_ws_client_messages_round_trip(
        (message, text) in spelled(legacy_client_message(), spell_legacy_client),
    ) {
        prop_assert_eq!(check_legacy_client(&text, text.len()), Some(message.clone()));
        let encoded = message.encode();
        prop_assert_eq!(
            legacy_ws::ClientMessage::decode(&encoded, usize::MAX),
            Ok(legacy_client_normalised(&message))
        );
        assert_too_large(&text, legacy_ws::ClientMessage::decode);
    }

    #[test]
    fn legacy_ws_server_messages_round_trip(
        (message, text) in spelled(legacy_server_message(), spell_legacy_server),
    ) {
        prop_assert_eq!(check_legacy_server(&text, text.len()), Some(message.clone()));
        prop_assert_eq!(
            check_legacy_server(&message.encode(), usize::MAX),
            Some(message.clone())
        );
        assert_too_large(&text, legacy_ws::ServerMessage::decode);
        check_upstream_frame(Subprotocol::GraphqlWs, &text, &upstream_legacy(&message));
        check_probe_classification(&text, legacy_server_type(&message));
    }

    /// The frames a gateway sends upstream decode, with the dialect's client decoder, to
    /// what was meant.
    #[test]
    fn upstream_client_frames_decode(
        id in operation_id(),
        request in graphql_request(),
        init in raw_object(),
    ) {
        use transport_ws::ClientMessage as T;
        use legacy_ws::ClientMessage as L;
        let t = Subprotocol::GraphqlTransportWs;
        let l = Subprotocol::GraphqlWs;
        let payload = Some(init.clone());
        prop_assert_eq!(
            T::decode(&t.encode_init(&init), usize::MAX),
            Ok(T::ConnectionInit { payload: payload.clone() })
        );
        prop_assert_eq!(
            L::decode(&l.encode_init(&init), usize::MAX),
            Ok(L::ConnectionInit { payload })
        );
        prop_assert_eq!(
            T::decode(&t.encode_subscribe(&id, &request), usize::MAX),
            Ok(T::Subscribe { id: id.clone(), payload: request.clone() })
        );
        prop_assert_eq!(
            L::decode(&l.encode_subscribe(&id, &request), usize::MAX),
            Ok(L::Start { id: id.clone(), payload: request })
        );
        prop_assert_eq!(
            T::decode(&t.encode_unsubscribe(&id), usize::MAX),
            Ok(T::Complete { id: id.clone() })
        );
        prop_assert_eq!(L::decode(&l.encode_unsubscribe(&id), usize::MAX), Ok(L::Stop { id }));
    }
}

/// What the upstream decoder must make of a graphql-transport-ws server message; `None`
/// for an `error`, whose payload is normalised (checked apart).
fn upstream_transport(message: &transport_ws::ServerMessage) -> Option<UpstreamFrame> {
    use transport_ws::ServerMessage::*;
    Some(match message.clone() {
        ConnectionAck { .. } => UpstreamFrame::Ack,
        Ping { .. } => UpstreamFrame::Ping,
        Pong { .. } => UpstreamFrame::KeepAlive,
        Next { id, payload } => UpstreamFrame::Operation {
            id,
            event: Event::Next(payload),
        },
        Error { .. } => return None,
        Complete { id } => UpstreamFrame::Operation {
            id,
            event: Event::Complete,
        },
    })
}

fn upstream_legacy(message: &legacy_ws::ServerMessage) -> Option<UpstreamFrame> {
    use legacy_ws::ServerMessage::*;
    Some(match message.clone() {
        ConnectionAck => UpstreamFrame::Ack,
        Ka => UpstreamFrame::KeepAlive,
        ConnectionError { payload } => UpstreamFrame::ConnectionError { payload },
        Data { id, payload } => UpstreamFrame::Operation {
            id,
            event: Event::Next(payload),
        },
        Error { id: Some(_), .. } => return None,
        Error { id: None, payload } => UpstreamFrame::ServerError { payload },
        Complete { id } => UpstreamFrame::Operation {
            id,
            event: Event::Complete,
        },
    })
}

/// The upstream decoder gives `expected`, or for an operation error an `Error` event
/// whose payload is an errors array (an array from the server passes byte for byte).
fn check_upstream_frame(dialect: Subprotocol, text: &str, expected: &Option<UpstreamFrame>) {
    let frame = check_upstream(dialect, text, usize::MAX).expect("a valid frame decodes");
    match expected {
        Some(expected) => assert_eq!(&frame, expected),
        None => match frame {
            UpstreamFrame::Operation {
                event: Event::Error(errors),
                ..
            } => {
                assert!(json(errors.as_str()).is_array());
            }
            other => panic!("an error frame decoded to {other:?}"),
        },
    }
}

fn transport_server_type(message: &transport_ws::ServerMessage) -> &'static str {
    use transport_ws::ServerMessage::*;
    match message {
        ConnectionAck { .. } => "connection_ack",
        Ping { .. } => "ping",
        Pong { .. } => "pong",
        Next { .. } => "next",
        Error { .. } => "error",
        Complete { .. } => "complete",
    }
}

fn legacy_server_type(message: &legacy_ws::ServerMessage) -> &'static str {
    use legacy_ws::ServerMessage::*;
    match message {
        ConnectionAck => "connection_ack",
        ConnectionError { .. } => "connection_error",
        Ka => "ka",
        Data { .. } => "data",
        Error { .. } => "error",
        Complete { .. } => "complete",
    }
}

/// The probe reads the `type` of a frame whatever its dialect: an alias is its own type,
/// never mistaken for the one it stands for.
fn check_probe_classification(text: &str, canonical: &str) {
    let written: String = {
        #[derive(serde::Deserialize)]
        struct Typed {
            #[serde(rename = "type")]
            kind: String,
        }
        serde_json::from_str::<Typed>(text).unwrap().kind
    };
    let frame = ProbeFrame::classify(text);
    if written == canonical {
        assert_eq!(frame.name(), canonical, "{text:?}");
    }
    if matches!(frame, ProbeFrame::Other(_)) {
        assert!(![
            "connection_ack",
            "ka",
            "ping",
            "pong",
            "connection_error",
            "error"
        ]
        .contains(&written.as_str()));
    }
    check_probe_frame(text);
}

// ---------------------------------------------------------------------------------------
// The probe's handshake rules.
// ---------------------------------------------------------------------------------------

fn probe_frame() -> impl Strategy<Value = ProbeFrame> {
    prop_oneof![
        Just(ProbeFrame::ConnectionAck),
        Just(ProbeFrame::Ka),
        Just(ProbeFrame::Ping),
        Just(ProbeFrame::Pong),
        Just(ProbeFrame::ConnectionError),
        Just(ProbeFrame::Error),
        any::<String>().prop_map(|text| ProbeFrame::classify(&text)),
        any_frame().prop_map(|text| ProbeFrame::classify(&text)),
    ]
}

proptest! {
    /// Any sequence of frames then a close or a timeout: no panic, and every frame the
    /// judge asks to send is a graphql-transport-ws client frame.
    #[test]
    fn probe_judges_any_sequence(
        frames in prop::collection::vec(probe_frame(), 0..8),
        close in any::<u16>(),
        reason in any::<String>(),
    ) {
        let mut judge = HandshakeJudge::new();
        for frame in &frames {
            match judge.on_frame(frame) {
                Step::Send(reply) => {
                    let decoded = transport_ws::ClientMessage::decode(&reply, usize::MAX);
                    prop_assert!(decoded.is_ok(), "{}", reply);
                }
                Step::Wait => {}
                Step::Done(_) => break,
            }
        }
        let _ = judge.on_close(close, &reason);
        let _ = judge.on_timeout();
    }

    /// A server that behaves as graphql-transport-ws (pings or pongs, never `ka`, before
    /// its ack, then a pong) is judged graphql-transport-ws; one that behaves as legacy
    /// (`ka`s, then `ka` or `error` after the ack) is judged legacy.
    #[test]
    fn probe_recognises_each_dialect_by_behaviour(
        transport_before in prop::collection::vec(
            prop_oneof![Just(ProbeFrame::Ping), Just(ProbeFrame::Pong)],
            0..3,
        ),
        legacy_before in 0..3usize,
        legacy_answer in prop_oneof![Just(ProbeFrame::Ka), Just(ProbeFrame::Error)],
        transport_answer in prop_oneof![Just(ProbeFrame::Pong), Just(ProbeFrame::Ping)],
    ) {
        let judge_of = |frames: &[ProbeFrame]| {
            let mut judge = HandshakeJudge::new();
            frames.iter().map(|f| judge.on_frame(f)).last()
        };
        let mut transport = transport_before.clone();
        transport.extend([ProbeFrame::ConnectionAck, transport_answer]);
        let speaks = |dialect| Some(Step::Done(Verdict::Speaks(dialect)));
        prop_assert_eq!(judge_of(&transport), speaks(Subprotocol::GraphqlTransportWs));
        let mut legacy = vec![ProbeFrame::Ka; legacy_before];
        legacy.extend([ProbeFrame::ConnectionAck, legacy_answer]);
        prop_assert_eq!(judge_of(&legacy), speaks(Subprotocol::GraphqlWs));
        // Acknowledged and silent: legacy, unless only graphql-transport-ws frames came first.
        let mut judge = HandshakeJudge::new();
        for frame in transport_before.iter().chain([&ProbeFrame::ConnectionAck]) {
            judge.on_frame(frame);
        }
        let expected = if transport_before.is_empty() {
            Subprotocol::GraphqlWs
        } else {
            Subprotocol::GraphqlTransportWs
        };
        prop_assert_eq!(judge.on_timeout(), Verdict::Speaks(expected));
    }
}

// ---------------------------------------------------------------------------------------
// GraphQL over SSE: requests.
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn request_bodies_round_trip(
        (request, body) in graphql_request()
            .prop_flat_map(|r| (Just(r.clone()), request_spelling(&r))),
    ) {
        prop_assert_eq!(check_sse_body(body.as_bytes()), Some(request));
    }

    #[test]
    fn mutated_request_bodies_never_panic(
        body in graphql_request().prop_flat_map(|r| request_spelling(&r)),
        edits in mutations(),
    ) {
        check_sse_body(mutate(&body, &edits).as_bytes());
    }

    /// GET parameters as `URLSearchParams` writes them, with unknown parameters around.
    #[test]
    fn query_strings_round_trip(
        request in graphql_request(),
        extra in prop::collection::vec(
            (select(&["x", "", "token", "operationId"][..]), any::<String>()),
            0..3,
        ),
    ) {
        let mut pairs: Vec<(&str, &str)> = sse_client::query_parameters(&request);
        pairs.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        prop_assert_eq!(check_sse_query(&query), Some(request));
        // The first of a repeated parameter wins.
        if let Some((key, value)) = extra.first() {
            prop_assert_eq!(sse::query_parameter(&query, key), Some(value.clone()));
        }
    }

    /// Raw, as a careless client might send them: nothing panics.
    #[test]
    fn careless_query_strings_never_panic(
        pairs in prop::collection::vec(
            (select(&["query", "operationName", "variables", "extensions", "x", ""][..]),
             prop_oneof![json_object(), json_value(), token_soup()]),
            0..5,
        ),
        edits in mutations(),
    ) {
        let raw: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        check_sse_query(&mutate(&raw.join("&"), &edits));
    }

    /// `operationId` in single-connection mode: a non-empty string, or a number as its
    /// text; anything else is no id.
    #[test]
    fn single_connection_operation_ids(
        id in prop_oneof![
            operation_id().prop_map(|id| (quote(&id), Some(id))),
            any::<i64>().prop_map(|n| (n.to_string(), Some(n.to_string()))),
            select(&["\"\"", "null", "true", "[1]", "{}"][..]).prop_map(|t| (t.to_owned(), None)),
        ],
        other in json_object(),
    ) {
        let (text, expected) = id;
        let extensions = raw(&format!("{{\"operationId\":{text},\"other\":{other}}}"));
        prop_assert_eq!(sse::operation_id(Some(&extensions)), expected);
        let without = raw(&format!("{{\"other\":{other}}}"));
        prop_assert_eq!(sse::operation_id(Some(&without)), None);
    }
}

// ---------------------------------------------------------------------------------------
// GraphQL over SSE: events, both modes, read back as a browser and the SSE upstream
// client read them.
// ---------------------------------------------------------------------------------------

/// `(event type, data)` of each event in a stream, per the HTML event-stream rules: lines
/// end in CRLF, LF or CR; `field: value` loses one leading space; data lines join with LF;
/// a blank line dispatches; comments (`:`) are skipped.
fn parse_event_stream(stream: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let (mut kind, mut data): (String, Vec<String>) = (String::new(), Vec::new());
    let normalised = stream.replace("\r\n", "\n").replace('\r', "\n");
    for line in normalised.split('\n') {
        if line.is_empty() {
            if !data.is_empty() {
                let kind = if kind.is_empty() {
                    "message".to_owned()
                } else {
                    std::mem::take(&mut kind)
                };
                events.push((kind, data.join("\n")));
            }
            data.clear();
            kind.clear();
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => kind = value.to_owned(),
            "data" => data.push(value.to_owned()),
            _ => {}
        }
    }
    events
}

proptest! {
    /// Distinct-connections mode: the stream reads back as the event (a terminal error as
    /// `next` with `{"errors"}` then `complete`), and `sse_client` decodes it as sent.
    #[test]
    fn sse_events_read_back(event in event()) {
        check_sse_event(&event);
        let stream = sse::encode_event(&event);
        let events = parse_event_stream(&stream);
        let decoded: Vec<Event> = events
            .iter()
            .map(|(kind, data)| sse_client::decode_event(kind, data, usize::MAX).unwrap().unwrap())
            .collect();
        match &event {
            Event::Next(result) => {
                prop_assert_eq!(decoded.len(), 1);
                let Event::Next(read) = &decoded[0] else { panic!("{decoded:?}") };
                prop_assert_eq!(json(read.as_str()), json(result.as_str()));
            }
            Event::Error(errors) => {
                prop_assert_eq!(decoded.len(), 2);
                let Event::Next(read) = &decoded[0] else { panic!("{decoded:?}") };
                let errors = json(errors.as_str());
                prop_assert_eq!(json(read.as_str()), serde_json::json!({ "errors": errors }));
                prop_assert_eq!(&decoded[1], &Event::Complete);
            }
            Event::Complete => prop_assert_eq!(decoded, vec![Event::Complete]),
        }
    }

    /// Single-connection mode: every event carries the operation id, whatever it holds.
    #[test]
    fn sse_operation_events_carry_the_id(id in operation_id(), event in event()) {
        let stream = sse::encode_operation_event(&id, &event);
        prop_assert!(stream.ends_with("\n\n"));
        prop_assert!(!stream.contains('\r'), "raw CR in {:?}", stream);
        let events = parse_event_stream(&stream);
        let expected: Vec<(&str, Value)> = match &event {
            Event::Next(result) => {
                vec![("next", serde_json::json!({"id": id, "payload": json(result.as_str())}))]
            }
            Event::Error(errors) => vec![
                (
                    "next",
                    serde_json::json!({"id": id, "payload": {"errors": json(errors.as_str())}}),
                ),
                ("complete", serde_json::json!({"id": id})),
            ],
            Event::Complete => vec![("complete", serde_json::json!({"id": id}))],
        };
        let read: Vec<(&str, Value)> = events.iter().map(|(k, d)| (k.as_str(), json(d))).collect();
        prop_assert_eq!(read, expected);
    }
}

// ---------------------------------------------------------------------------------------
// The SSE upstream client's rules.
// ---------------------------------------------------------------------------------------

proptest! {
    /// `next` data: an object passes untouched (but for whitespace around it), any other
    /// JSON is an invalid payload, over the limit it is `TooLarge`; `complete` ignores its
    /// data and unknown event types are skipped.
    #[test]
    fn sse_upstream_events(
        value in json_value(),
        before in ws(),
        after in ws(),
        limit in limit(),
        kind in "[a-z]{0,8}",
    ) {
        let data = format!("{before}{value}{after}");
        let limit = limit.for_len(data.len());
        let decoded = sse_client::decode_event("next", &data, limit);
        if data.len() > limit {
            prop_assert_eq!(decoded, Err(DecodeError::TooLarge { len: data.len(), limit }));
        } else if value.starts_with('{') {
            prop_assert_eq!(decoded, Ok(Some(Event::Next(RawJson::parse(&value).unwrap()))));
        } else {
            let is_invalid_payload =
                matches!(decoded, Err(DecodeError::InvalidPayload { kind: "next", .. }));
            prop_assert!(is_invalid_payload);
        }
        prop_assert_eq!(
            sse_client::decode_event("complete", &data, limit),
            Ok(Some(Event::Complete))
        );
        if kind != "next" && kind != "complete" {
            prop_assert_eq!(sse_client::decode_event(&kind, &data, limit), Ok(None));
        }
        check_sse_upstream_event(&data, limit);
    }

    /// Only a 200 event stream is a stream; 408, 429 and 5xx may pass; the rest will not.
    #[test]
    fn sse_upstream_response_heads(
        status in prop_oneof![100..600u16, select(&[200u16, 408, 429, 500, 503][..])],
        content_type in prop::option::of(prop_oneof![
            (
                select(&["text/event-stream", "TEXT/Event-Stream", " text/event-stream "][..]),
                select(&["", "; charset=utf-8", ";q=1"][..]),
            )
                .prop_map(|(media, params)| format!("{media}{params}")),
            select(&["application/json", "text/plain", "text/event-streams", ""][..])
                .prop_map(str::to_owned),
        ]),
    ) {
        use sse_client::ResponseVerdict::*;
        let stream = content_type.as_deref().is_some_and(sse_client::is_event_stream);
        let expected = match status {
            200 if stream => EventStream,
            408 | 429 | 500..=599 => Retryable,
            _ => Permanent,
        };
        prop_assert_eq!(sse_client::classify_response(status, content_type.as_deref()), expected);
        if let Some(content_type) = &content_type {
            let media = content_type.split(';').next().unwrap().trim();
            prop_assert_eq!(
                sse_client::is_event_stream(content_type),
                media.eq_ignore_ascii_case("text/event-stream")
            );
        }
    }

    /// Events of at most `limit` bytes, in any line ending, split into any chunks, never
    /// trip the size guard; one line of more than `limit` bytes always does.
    #[test]
    fn sse_size_guard_counts_events_not_chunks(
        events in prop::collection::vec(
            (prop::collection::vec("[^\r\n]{1,12}", 1..4), select(&["\n", "\r\n", "\r"][..])),
            1..6,
        ),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        slack in 0..4usize,
    ) {
        let texts: Vec<(String, &str)> = events
            .iter()
            .map(|(lines, ending)| {
                let text: String = lines.iter().map(|l| format!("{l}{ending}")).collect();
                (text, *ending)
            })
            .collect();
        let limit = texts.iter().map(|(t, _)| t.len()).max().unwrap() + slack;
        let stream: String = texts.iter().map(|(t, ending)| format!("{t}{ending}")).collect();
        let bytes = stream.as_bytes();
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.extend([0, bytes.len()]);
        at.sort_unstable();
        let mut guard = sse_client::EventSizeGuard::new(limit);
        for pair in at.windows(2) {
            let fed = guard.feed(&bytes[pair[0]..pair[1]]);
            prop_assert!(fed.is_ok(), "{:?} under limit {}", stream, limit);
        }
        let endless = "x".repeat(limit + 1);
        prop_assert!(sse_client::EventSizeGuard::new(limit).feed(endless.as_bytes()).is_err());
        check_event_size_guard(bytes, limit);
    }
}

// ---------------------------------------------------------------------------------------
// Apollo multipart subscriptions.
// ---------------------------------------------------------------------------------------

/// One piece of a multipart body after the opening.
#[derive(Debug, Clone)]
enum Piece {
    Heartbeat,
    Event(Event),
    TransportError(RawJson),
    Closing,
}

/// The JSON bodies of a multipart body, checking its framing on the way: the opening,
/// every part with its JSON content type, CRLF delimiters, the close delimiter last. (A
/// part's JSON may hold bare LFs, from an upstream that pretty-prints; valid JSON cannot
/// hold a delimiter.)
fn parse_multipart(body: &str) -> Vec<Value> {
    let rest = body
        .strip_prefix(multipart::OPENING)
        .expect("the opening comes first");
    let rest = rest
        .strip_suffix("--\r\n")
        .expect("the close delimiter comes last");
    let mut parts: Vec<&str> = rest.split("\r\n--graphql").collect();
    assert_eq!(
        parts.pop(),
        Some(""),
        "the body ends right after a delimiter: {body:?}"
    );
    parts
        .into_iter()
        .map(|part| {
            let json_text = part
                .strip_prefix("\r\ncontent-type: application/json\r\n\r\n")
                .unwrap_or_else(|| panic!("part without its head: {part:?}"));
            json(json_text)
        })
        .collect()
}

fn multipart_body() -> impl Strategy<Value = Vec<Piece>> {
    let middle = prop_oneof![
        1 => Just(Piece::Heartbeat),
        3 => execution_result().prop_map(|r| Piece::Event(Event::Next(r))),
    ];
    let last = prop_oneof![
        Just(Piece::Event(Event::Complete)),
        graphql_errors().prop_map(|e| Piece::Event(Event::Error(e))),
        graphql_errors().prop_map(Piece::TransportError),
        Just(Piece::Closing),
    ];
    (prop::collection::vec(middle, 0..5), last).prop_map(|(mut pieces, last)| {
        pieces.push(last);
        pieces
    })
}

proptest! {
    /// A body built from any parts reads back, part by part, as what was encoded.
    #[test]
    fn multipart_bodies_read_back(pieces in multipart_body()) {
        let mut body = String::from(multipart::OPENING);
        let mut expected = Vec::new();
        for piece in &pieces {
            match piece {
                Piece::Heartbeat => {
                    body.push_str(multipart::HEARTBEAT);
                    expected.push(serde_json::json!({}));
                }
                Piece::Event(event) => {
                    body.push_str(&multipart::encode_event(event));
                    match event {
                        Event::Next(r) => {
                            expected.push(serde_json::json!({"payload": json(r.as_str())}));
                        }
                        Event::Error(e) => {
                            expected.push(serde_json::json!({"payload": {"errors": json(e.as_str())}}));
                        }
                        Event::Complete => {}
                    }
                }
                Piece::TransportError(errors) => {
                    body.push_str(&multipart::encode_transport_error(errors));
                    let errors = json(errors.as_str());
                    expected.push(serde_json::json!({"payload": null, "errors": errors}));
                }
                Piece::Closing => body.push_str(multipart::CLOSING),
            }
        }
        prop_assert_eq!(parse_multipart(&body), expected);
    }

    /// An `Accept` list asks for multipart subscriptions exactly when one of its ranges is
    /// `multipart/mixed` with `subscriptionSpec=1.0`, however it is spaced, quoted or cased.
    #[test]
    fn multipart_accept_values(
        others in prop::collection::vec(select(&[
            "application/json", "*/*", "text/event-stream", "multipart/mixed",
            "multipart/mixed;deferSpec=20220824", "multipart/mixed;subscriptionSpec=2.0",
            "application/graphql-response+json;q=0.9",
        ][..]), 0..3),
        wanted in prop::option::of((
            select(&["multipart/mixed", "Multipart/Mixed"][..]),
            select(&["subscriptionSpec", "subscriptionspec"][..]),
            select(&["1.0", "\"1.0\""][..]),
            select(&["", " "][..]),
            any::<bool>(),
        )),
        position in any::<prop::sample::Index>(),
    ) {
        let mut ranges: Vec<String> = others.iter().map(|r| (*r).to_owned()).collect();
        if let Some((essence, name, value, space, boundary_first)) = wanted {
            let spec = format!("{name}{space}={space}{value}");
            let boundary = "boundary=\"graphql\"";
            let params = if boundary_first { format!("{boundary};{space}{spec}") } else { spec };
            let range = format!("{essence}{space};{space}{params}");
            ranges.insert(position.index(ranges.len() + 1), range);
        }
        let accept = ranges.join(", ");
        prop_assert_eq!(multipart::accepts_subscriptions(&accept), wanted.is_some(), "{}", accept);
        let json_range = others.iter().any(|range| {
            ["application/json", "*/*", "application/graphql-response+json"]
                .iter()
                .any(|json| range.starts_with(json))
        });
        prop_assert_eq!(multipart::accepts_json(&accept), json_range, "{}", accept);
    }
}

// ---------------------------------------------------------------------------------------
// The server rules of both WebSocket dialects, against a model of the protocol.
// ---------------------------------------------------------------------------------------

/// What a client does, or the session does to the rules, in one step.
#[derive(Debug, Clone)]
enum Action {
    Init,
    /// The session acknowledged the init.
    Ack,
    Subscribe(&'static str),
    Complete(&'static str),
    Ping,
    /// The operation ended on its own (upstream `complete` or `error`).
    Finished(&'static str),
    /// graphql-ws `connection_terminate`.
    Terminate,
}

/// Few ids, so they collide; `é` is two bytes and the last is long, for the id limit.
const IDS: &[&str] = &["1", "2", "3", "é", "a-long-id"];

fn actions() -> impl Strategy<Value = Vec<Action>> {
    let action = prop_oneof![
        1 => Just(Action::Init),
        1 => Just(Action::Ack),
        4 => select(IDS).prop_map(Action::Subscribe),
        2 => select(IDS).prop_map(Action::Complete),
        1 => Just(Action::Ping),
        1 => select(IDS).prop_map(Action::Finished),
        1 => Just(Action::Terminate),
    ];
    prop::collection::vec(action, 0..24)
}

fn limits() -> impl Strategy<Value = subplex_protocol::OperationLimits> {
    (1..4usize, 1..4usize).prop_map(|(max_operations, max_id_bytes)| {
        subplex_protocol::OperationLimits {
            max_operations,
            max_id_bytes,
        }
    })
}

/// The protocol state a client sees: init sent, init acknowledged, running operations.
#[derive(Debug, Default)]
struct Model {
    init: bool,
    acked: bool,
    active: std::collections::BTreeSet<&'static str>,
}

impl Model {
    /// A `connection_init`: whether it is the first (the only one accepted).
    fn init(&mut self) -> bool {
        !std::mem::replace(&mut self.init, true)
    }

    /// The session acknowledges; only an init that arrived can be acknowledged.
    fn ack(&mut self) {
        self.acked |= self.init;
    }

    fn finished(&mut self, id: &str) {
        self.active.remove(id);
    }
}

proptest! {
    /// graphql-transport-ws: one init (a second closes 4429), no subscribe before the ack
    /// (4401), no id twice while running (4409), ids within the limit (4400), operations
    /// over the limit refused one by one, `complete` of an unknown id ignored; every
    /// close reason fits a close frame.
    #[test]
    fn transport_ws_server_rules_follow_the_protocol(actions in actions(), limits in limits()) {
        use transport_ws::server::{Accepted, ServerRules, Violation};
        use transport_ws::ClientMessage;
        let mut rules = ServerRules::with_limits(limits);
        let mut model = Model::default();
        let request = subplex_protocol::GraphqlRequest::new("subscription { t }");
        for action in actions {
            let (got, expected) = match action {
                Action::Init => (
                    rules.receive(ClientMessage::ConnectionInit { payload: None }),
                    model
                        .init()
                        .then_some(Accepted::Init { payload: None })
                        .ok_or(Violation::TooManyInit),
                ),
                Action::Ack => {
                    rules.acknowledged();
                    model.ack();
                    continue;
                }
                Action::Subscribe(id) => {
                    let expected = if !model.acked {
                        Err(Violation::SubscribeBeforeAck)
                    } else if id.len() > limits.max_id_bytes {
                        Err(Violation::IdTooLong { len: id.len(), limit: limits.max_id_bytes })
                    } else if model.active.contains(id) {
                        Err(Violation::DuplicateId { id: id.into() })
                    } else if model.active.len() >= limits.max_operations {
                        let message = limits.too_many_operations();
                        Ok(Accepted::Refused { id: id.into(), message })
                    } else {
                        model.active.insert(id);
                        Ok(Accepted::Subscribe { id: id.into(), request: request.clone() })
                    };
                    let payload = request.clone();
                    (rules.receive(ClientMessage::Subscribe { id: id.into(), payload }), expected)
                }
                Action::Complete(id) => {
                    let expected = if model.active.remove(id) {
                        Accepted::Complete { id: id.into() }
                    } else {
                        Accepted::Ignored
                    };
                    (rules.receive(ClientMessage::Complete { id: id.into() }), Ok(expected))
                }
                Action::Ping => {
                    (rules.receive(ClientMessage::Ping { payload: None }), Ok(Accepted::Ping))
                }
                Action::Finished(id) => {
                    rules.finished(id);
                    model.finished(id);
                    continue;
                }
                // graphql-transport-ws has no terminate message.
                Action::Terminate => continue,
            };
            if let Err(violation) = &got {
                let (code, reason) = violation.close();
                prop_assert!([4400, 4401, 4409, 4429].contains(&code), "{:?}", violation);
                prop_assert!(!reason.is_empty() && reason.len() <= 123, "{:?}", reason);
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(rules.active_operations(), model.active.len());
            prop_assert_eq!(rules.awaiting_init(), !model.init);
        }
    }

    /// Legacy graphql-ws: one init (a second closes the connection), ids within the limit,
    /// no start before the ack (an error, not a close), a start with a running id replaces
    /// that operation, operations over the limit refused, `stop` of an unknown id ignored.
    #[test]
    fn legacy_ws_server_rules_follow_the_protocol(actions in actions(), limits in limits()) {
        use legacy_ws::server::{Accepted, ServerRules, Violation};
        use legacy_ws::ClientMessage;
        let mut rules = ServerRules::with_limits(limits);
        let mut model = Model::default();
        let request = subplex_protocol::GraphqlRequest::new("subscription { t }");
        for action in actions {
            let (got, expected) = match action {
                Action::Init => (
                    rules.receive(ClientMessage::ConnectionInit { payload: None }),
                    model
                        .init()
                        .then_some(Accepted::Init { payload: None })
                        .ok_or(Violation::TooManyInit),
                ),
                Action::Ack => {
                    rules.acknowledged();
                    model.ack();
                    continue;
                }
                Action::Subscribe(id) => {
                    let replaces = model.active.contains(id);
                    let expected = if id.len() > limits.max_id_bytes {
                        Err(Violation::IdTooLong { len: id.len(), limit: limits.max_id_bytes })
                    } else if !model.acked {
                        Err(Violation::StartBeforeAck { id: id.into() })
                    } else if !replaces && model.active.len() >= limits.max_operations {
                        let message = limits.too_many_operations();
                        Ok(Accepted::Refused { id: id.into(), message })
                    } else {
                        model.active.insert(id);
                        Ok(Accepted::Start { id: id.into(), request: request.clone(), replaces })
                    };
                    let payload = request.clone();
                    (rules.receive(ClientMessage::Start { id: id.into(), payload }), expected)
                }
                Action::Complete(id) => {
                    let expected = if model.active.remove(id) {
                        Accepted::Stop { id: id.into() }
                    } else {
                        Accepted::Ignored
                    };
                    (rules.receive(ClientMessage::Stop { id: id.into() }), Ok(expected))
                }
                Action::Terminate => {
                    (rules.receive(ClientMessage::ConnectionTerminate), Ok(Accepted::Terminate))
                }
                Action::Finished(id) => {
                    rules.finished(id);
                    model.finished(id);
                    continue;
                }
                // Legacy graphql-ws has no client ping.
                Action::Ping => continue,
            };
            if let Err(violation) = &got {
                prop_assert_eq!(violation.closes(), *violation == Violation::TooManyInit);
                prop_assert!(!violation.message().is_empty());
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(rules.awaiting_init(), !model.init);
        }
    }

    /// Subprotocol negotiation takes the first known name of any offered header value,
    /// whatever the spacing; GraphQL documents of any text never panic the parser.
    #[test]
    fn subprotocol_negotiation_and_documents(
        offered in prop::collection::vec(
            prop::collection::vec(
                select(&["graphql-ws", "graphql-transport-ws", "graphql_ws", "", "x", "GRAPHQL-WS"][..]),
                0..3,
            ),
            0..3,
        ),
        space in select(&["", " ", "  "][..]),
        document in prop_oneof![any::<String>(), token_soup()],
        name in prop::option::of("[A-Za-z]{1,4}"),
    ) {
        let separator = format!("{space},{space}");
        let values: Vec<String> = offered.iter().map(|tokens| tokens.join(&separator)).collect();
        let expected = offered.iter().flatten().find_map(|t| Subprotocol::from_wire_name(t));
        prop_assert_eq!(Subprotocol::negotiate(values.iter().map(String::as_str)), expected);
        let _ = subplex_protocol::operation_type(&document, name.as_deref());
    }
}
