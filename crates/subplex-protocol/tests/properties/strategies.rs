//! proptest strategies for the property tests in `tests/properties.rs`.
//!
//! Two kinds of input:
//!
//! - *valid messages* of every codec, generated as typed values, each with the many ways a
//!   peer may spell it on the wire (aliases, numeric ids, field order, `null` for absent,
//!   unknown fields, whitespace, escaped `type`), so a test can assert that every spelling
//!   decodes to exactly that value;
//! - *broken input*: random bytes, token soups, and byte-level mutations of valid frames,
//!   for the properties that must hold on any input (no panic, `TooLarge` before parsing).
//!
//! proptest shrinks failures: a failing frame comes back as the smallest message and
//! mutation that still fails.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use subplex_protocol::{legacy_ws, transport_ws, Event, GraphqlRequest, RawJson};

// ---------------------------------------------------------------------------------------
// JSON text.
// ---------------------------------------------------------------------------------------

/// Pieces of JSON string literals, already escaped: escapes, surrogate pairs, multi-byte
/// UTF-8, JSON punctuation inside strings, and U+2028 (valid JSON, a line break to JS).
const STRING_BITS: &[&str] = &[
    "a",
    "1",
    "op",
    " ",
    "é",
    "🚀",
    "中",
    "\\\"",
    "\\\\",
    "\\n",
    "\\t",
    "\\r",
    "\\/",
    "\\u0000",
    "\\u00e9",
    "\\ud83d\\ude80",
    "\\u2028",
    "\u{2028}",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "subscription { t }",
    "query",
    "$n",
    "\u{7f}",
    "\u{fffd}",
];

/// Numbers at the edges of what JSON parsers keep exactly.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "42",
    "-0",
    "1.5",
    "1e3",
    "1.0e-7",
    "-2.5E+2",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890",
    "9007199254740993",
];

/// Insignificant JSON whitespace, usually none.
pub fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        8 => Just(""),
        1 => select(&[" ", "\n", "\t", "\r\n", "  "][..]),
    ]
}

/// A valid JSON string literal.
pub fn json_string() -> BoxedStrategy<String> {
    prop_oneof![
        vec(select(STRING_BITS), 0..6).prop_map(|bits| format!("\"{}\"", bits.concat())),
        any::<String>().prop_map(|text| quote(&text)),
    ]
    .boxed()
}

/// `text` as a JSON string literal.
pub fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn json_leaf() -> BoxedStrategy<String> {
    prop_oneof![
        select(&["null", "true", "false"][..]).prop_map(str::to_owned),
        select(NUMBERS).prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap()),
        json_string(),
        json_string(),
    ]
    .boxed()
}

fn object_text(members: Vec<(String, &'static str, String)>) -> String {
    let members: Vec<String> = members
        .into_iter()
        .map(|(key, space, value)| format!("{space}{key}{space}:{space}{value}"))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// Any valid JSON value (depth at most 3), with random insignificant whitespace inside.
pub fn json_value() -> BoxedStrategy<String> {
    json_leaf()
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                (vec(inner.clone(), 0..4), ws())
                    .prop_map(|(items, space)| format!("[{space}{}]", items.join(","))),
                vec((json_string(), ws(), inner), 0..4).prop_map(object_text),
            ]
        })
        .boxed()
}

/// A valid JSON object.
pub fn json_object() -> BoxedStrategy<String> {
    vec((json_string(), ws(), json_value()), 0..4)
        .prop_map(object_text)
        .boxed()
}

pub fn raw(text: &str) -> RawJson {
    RawJson::parse(text).unwrap_or_else(|err| panic!("generated invalid JSON {text:?}: {err}"))
}

/// Any JSON value but `null` (which every decoder reads as "absent").
pub fn non_null_json() -> BoxedStrategy<RawJson> {
    json_value()
        .prop_filter("null is absent", |text| text != "null")
        .prop_map(|text| raw(&text))
        .boxed()
}

pub fn raw_object() -> BoxedStrategy<RawJson> {
    json_object().prop_map(|text| raw(&text)).boxed()
}

/// A GraphQL execution result: an object, sometimes pretty-printed over several lines
/// (as some upstreams send it), sometimes with `errors`.
pub fn execution_result() -> BoxedStrategy<RawJson> {
    prop_oneof![
        raw_object(),
        (json_value(), graphql_errors()).prop_map(|(data, errors)| raw(&format!(
            "{{\"data\":{data},\"errors\":{}}}",
            errors.as_str()
        ))),
        json_object().prop_map(|text| {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            raw(&serde_json::to_string_pretty(&value).unwrap())
        }),
        // CRLF line breaks between members (skipped when a comma sits inside a string).
        json_object().prop_filter_map("commas only between members", |text| {
            RawJson::parse(&text.replace(',', ",\r\n")).ok()
        }),
    ]
    .boxed()
}

/// A GraphQL errors array.
pub fn graphql_errors() -> BoxedStrategy<RawJson> {
    vec((json_string(), option::of(json_object())), 0..3)
        .prop_map(|errors| {
            let errors: Vec<String> = errors
                .into_iter()
                .map(|(message, extensions)| match extensions {
                    Some(ext) => format!("{{\"message\":{message},\"extensions\":{ext}}}"),
                    None => format!("{{\"message\":{message}}}"),
                })
                .collect();
            raw(&format!("[{}]", errors.join(",")))
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------
// Typed values.
// ---------------------------------------------------------------------------------------

/// An operation id: short digits (which peers may send as JSON numbers), any non-empty
/// string, and a few that need escaping.
pub fn operation_id() -> BoxedStrategy<String> {
    prop_oneof![
        "[1-9][0-9]{0,5}",
        Just("0".to_owned()),
        any::<String>().prop_filter("ids are non-empty", |id| !id.is_empty()),
        select(&["a\"1", "\\", "\n", "🚀", "\u{2028}", " ", "id:1\r\n"][..])
            .prop_map(str::to_owned),
    ]
    .boxed()
}

const QUERIES: &[&str] = &[
    "subscription { t }",
    "subscription OnTick($n: Int!) { ticks(count: $n) { n } }",
    "query { a }",
    "{ a }",
    "mutation M { m }",
    "",
    "subscription\n{ t(s: \"é🚀\") }",
];

pub fn graphql_request() -> BoxedStrategy<GraphqlRequest> {
    (
        prop_oneof![select(QUERIES).prop_map(str::to_owned), any::<String>()],
        option::of(any::<String>().prop_filter("empty names are absent", |n| !n.is_empty())),
        option::of(raw_object()),
        option::of(raw_object()),
    )
        .prop_map(
            |(query, operation_name, variables, extensions)| GraphqlRequest {
                query,
                operation_name,
                variables,
                extensions,
            },
        )
        .boxed()
}

pub fn event() -> BoxedStrategy<Event> {
    prop_oneof![
        3 => execution_result().prop_map(Event::Next),
        1 => graphql_errors().prop_map(Event::Error),
        1 => Just(Event::Complete),
    ]
    .boxed()
}

pub fn transport_client_message() -> BoxedStrategy<transport_ws::ClientMessage> {
    use transport_ws::ClientMessage::*;
    prop_oneof![
        option::of(raw_object()).prop_map(|payload| ConnectionInit { payload }),
        option::of(raw_object()).prop_map(|payload| Ping { payload }),
        option::of(raw_object()).prop_map(|payload| Pong { payload }),
        (operation_id(), graphql_request()).prop_map(|(id, payload)| Subscribe { id, payload }),
        operation_id().prop_map(|id| Complete { id }),
    ]
    .boxed()
}

pub fn transport_server_message() -> BoxedStrategy<transport_ws::ServerMessage> {
    use transport_ws::ServerMessage::*;
    prop_oneof![
        option::of(non_null_json()).prop_map(|payload| ConnectionAck { payload }),
        option::of(non_null_json()).prop_map(|payload| Ping { payload }),
        option::of(non_null_json()).prop_map(|payload| Pong { payload }),
        (operation_id(), execution_result()).prop_map(|(id, payload)| Next { id, payload }),
        (operation_id(), error_payload()).prop_map(|(id, payload)| Error { id, payload }),
        operation_id().prop_map(|id| Complete { id }),
    ]
    .boxed()
}

/// What servers put in `error` frames: an errors array (graphql-transport-ws), an object
/// with `errors`, a bare error object or a string (legacy servers), or anything else.
pub fn error_payload() -> BoxedStrategy<RawJson> {
    prop_oneof![
        3 => graphql_errors(),
        1 => graphql_errors().prop_map(|e| raw(&format!("{{\"errors\":{}}}", e.as_str()))),
        1 => json_string().prop_map(|m| raw(&format!("{{\"message\":{m}}}"))),
        1 => json_string().prop_map(|m| raw(&m)),
        1 => non_null_json(),
    ]
    .boxed()
}

pub fn legacy_client_message() -> BoxedStrategy<legacy_ws::ClientMessage> {
    use legacy_ws::ClientMessage::*;
    prop_oneof![
        option::of(raw_object()).prop_map(|payload| ConnectionInit { payload }),
        (operation_id(), graphql_request()).prop_map(|(id, payload)| Start { id, payload }),
        operation_id().prop_map(|id| Stop { id }),
        Just(ConnectionTerminate),
    ]
    .boxed()
}

pub fn legacy_server_message() -> BoxedStrategy<legacy_ws::ServerMessage> {
    use legacy_ws::ServerMessage::*;
    prop_oneof![
        Just(ConnectionAck),
        option::of(non_null_json()).prop_map(|payload| ConnectionError { payload }),
        Just(Ka),
        (operation_id(), execution_result()).prop_map(|(id, payload)| Data { id, payload }),
        (option::of(operation_id()), error_payload())
            .prop_map(|(id, payload)| Error { id, payload }),
        operation_id().prop_map(|id| Complete { id }),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------
// Wire spellings: every way a peer may write a value that must decode to it.
// ---------------------------------------------------------------------------------------

/// One member of a JSON object: its key and how its value is spelled (`None`: left out).
type Member = (&'static str, BoxedStrategy<Option<String>>);

fn always(text: String) -> BoxedStrategy<Option<String>> {
    Just(Some(text)).boxed()
}

/// An absent value: left out, or `null`.
fn absent() -> BoxedStrategy<Option<String>> {
    prop_oneof![Just(None), Just(Some("null".to_owned()))].boxed()
}

fn optional(value: Option<&RawJson>) -> BoxedStrategy<Option<String>> {
    match value {
        Some(value) => always(value.as_str().to_owned()),
        None => absent(),
    }
}

/// A message `type`: any of its aliases, sometimes with its first letter as a `\u` escape.
fn kind(aliases: &'static [&'static str]) -> BoxedStrategy<Option<String>> {
    (select(aliases), prop::bool::weighted(0.1))
        .prop_map(|(kind, escaped)| {
            Some(if escaped {
                let mut chars = kind.chars();
                let first = chars.next().unwrap();
                format!("\"\\u{:04x}{}\"", u32::from(first), chars.as_str())
            } else {
                quote(kind)
            })
        })
        .boxed()
}

/// An id as a string, or as the JSON integer legacy clients have sent when it is one.
fn id(id: &str) -> BoxedStrategy<Option<String>> {
    let numeric = id.parse::<u64>().is_ok_and(|n| n.to_string() == id);
    if numeric {
        prop_oneof![Just(Some(quote(id))), Just(Some(id.to_owned()))].boxed()
    } else {
        always(quote(id))
    }
}

/// An object of `members` in any order, with whitespace, sometimes an unknown member.
fn object(members: Vec<Member>) -> BoxedStrategy<String> {
    let members: Vec<BoxedStrategy<(&'static str, Option<String>)>> = members
        .into_iter()
        .map(|(key, value)| value.prop_map(move |value| (key, value)).boxed())
        .collect();
    (members, option::weighted(0.1, json_value()), ws(), ws())
        .prop_flat_map(|(members, extra, outside, between)| {
            let mut texts: Vec<String> = members
                .into_iter()
                .filter_map(|(key, value)| value.map(|value| format!("\"{key}\":{value}")))
                .collect();
            if let Some(extra) = extra {
                texts.push(format!("\"extension\":{extra}"));
            }
            (Just(texts).prop_shuffle(), Just(outside), Just(between))
        })
        .prop_map(|(members, outside, between)| {
            format!(
                "{outside}{{{between}{}}}{outside}",
                members.join(&format!(",{between}"))
            )
        })
        .boxed()
}

/// The spellings of a GraphQL request object (`null` or `""` for no operation name).
pub fn request_spelling(request: &GraphqlRequest) -> BoxedStrategy<String> {
    let operation_name = match &request.operation_name {
        Some(name) => always(quote(name)),
        None => prop_oneof![absent(), Just(Some("\"\"".to_owned()))].boxed(),
    };
    object(vec![
        ("query", always(quote(&request.query))),
        ("operationName", operation_name),
        ("variables", optional(request.variables.as_ref())),
        ("extensions", optional(request.extensions.as_ref())),
    ])
}

fn request_member(request: &GraphqlRequest) -> BoxedStrategy<Option<String>> {
    request_spelling(request).prop_map(Some).boxed()
}

/// A `{type, id?, payload?}` frame.
fn frame(
    aliases: &'static [&'static str],
    frame_id: Option<&str>,
    payload: BoxedStrategy<Option<String>>,
) -> BoxedStrategy<String> {
    object(vec![
        ("type", kind(aliases)),
        ("id", frame_id.map_or_else(absent, id)),
        ("payload", payload),
    ])
}

pub fn spell_transport_client(message: &transport_ws::ClientMessage) -> BoxedStrategy<String> {
    use transport_ws::ClientMessage::*;
    match message {
        ConnectionInit { payload } => frame(&["connection_init"], None, optional(payload.as_ref())),
        Ping { payload } => frame(&["ping"], None, optional(payload.as_ref())),
        Pong { payload } => frame(&["pong"], None, optional(payload.as_ref())),
        Subscribe { id, payload } => frame(&["subscribe"], Some(id), request_member(payload)),
        Complete { id } => frame(&["complete"], Some(id), absent()),
    }
}

pub fn spell_transport_server(message: &transport_ws::ServerMessage) -> BoxedStrategy<String> {
    use transport_ws::ServerMessage::*;
    match message {
        ConnectionAck { payload } => frame(&["connection_ack"], None, optional(payload.as_ref())),
        Ping { payload } => frame(&["ping"], None, optional(payload.as_ref())),
        Pong { payload } => frame(&["pong"], None, optional(payload.as_ref())),
        Next { id, payload } => frame(&["next"], Some(id), optional(Some(payload))),
        Error { id, payload } => frame(&["error"], Some(id), optional(Some(payload))),
        Complete { id } => frame(&["complete"], Some(id), absent()),
    }
}

pub fn spell_legacy_client(message: &legacy_ws::ClientMessage) -> BoxedStrategy<String> {
    use legacy_ws::ClientMessage::*;
    match message {
        ConnectionInit { payload } => frame(
            &["connection_init", "init"],
            None,
            optional(payload.as_ref()),
        ),
        Start { id, payload } if payload.extensions.is_none() => prop_oneof![
            frame(
                &["start", "subscription_start"],
                Some(id),
                request_member(payload)
            ),
            top_level_start(id, payload),
        ]
        .boxed(),
        Start { id, payload } => frame(
            &["start", "subscription_start"],
            Some(id),
            request_member(payload),
        ),
        Stop { id } => frame(&["stop", "subscription_end"], Some(id), absent()),
        ConnectionTerminate => frame(&["connection_terminate"], None, absent()),
    }
}

/// The pre-2017 `subscription_start`: the request's fields beside `type`, no payload.
fn top_level_start(start_id: &str, request: &GraphqlRequest) -> BoxedStrategy<String> {
    let operation_name = match &request.operation_name {
        Some(name) => always(quote(name)),
        None => prop_oneof![absent(), Just(Some("\"\"".to_owned()))].boxed(),
    };
    object(vec![
        ("type", kind(&["subscription_start", "start"])),
        ("id", id(start_id)),
        ("query", always(quote(&request.query))),
        ("variables", optional(request.variables.as_ref())),
        ("operationName", operation_name),
    ])
}

pub fn spell_legacy_server(message: &legacy_ws::ServerMessage) -> BoxedStrategy<String> {
    use legacy_ws::ServerMessage::*;
    match message {
        ConnectionAck => frame(&["connection_ack", "init_success"], None, absent()),
        ConnectionError { payload } => frame(
            &["connection_error", "init_fail"],
            None,
            optional(payload.as_ref()),
        ),
        Ka => frame(&["ka", "keepalive"], None, absent()),
        Data { id, payload } => frame(
            &["data", "subscription_data"],
            Some(id),
            optional(Some(payload)),
        ),
        Error { id, payload } => frame(
            &["error", "subscription_fail"],
            id.as_deref(),
            optional(Some(payload)),
        ),
        Complete { id } => frame(&["complete"], Some(id), absent()),
    }
}

/// A message together with one of its spellings.
pub fn spelled<M: Clone + std::fmt::Debug + 'static>(
    messages: BoxedStrategy<M>,
    spell: fn(&M) -> BoxedStrategy<String>,
) -> BoxedStrategy<(M, String)> {
    messages
        .prop_flat_map(move |message| (Just(message.clone()), spell(&message)))
        .boxed()
}

/// A spelled frame of any dialect and direction.
pub fn any_frame() -> BoxedStrategy<String> {
    prop_oneof![
        spelled(transport_client_message(), spell_transport_client).prop_map(|(_, text)| text),
        spelled(transport_server_message(), spell_transport_server).prop_map(|(_, text)| text),
        spelled(legacy_client_message(), spell_legacy_client).prop_map(|(_, text)| text),
        spelled(legacy_server_message(), spell_legacy_server).prop_map(|(_, text)| text),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------
// Broken input.
// ---------------------------------------------------------------------------------------

/// A token soup: JSON punctuation, envelope keys, message types and stray escapes.
pub fn token_soup() -> BoxedStrategy<String> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"type\"",
        "\"id\"",
        "\"payload\"",
        "\"query\"",
        "\"variables\"",
        "\"next\"",
        "\"subscribe\"",
        "\"start\"",
        "\"ka\"",
        "\"connection_ack\"",
        "\"1\"",
        "1",
        "null",
        "true",
        "\"",
        "\\",
        "\\ud800",
        " ",
        "\n",
        "-",
        "e",
        ".",
        "\u{0}",
        "é",
    ];
    vec(select(TOKENS), 0..24)
        .prop_map(|tokens| tokens.concat())
        .boxed()
}

/// One byte-level edit of a frame.
#[derive(Debug, Clone)]
pub enum Mutation {
    Truncate(Index),
    Remove(Index),
    Replace(Index, u8),
    Insert(Index, &'static str),
    Duplicate(Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        any::<Index>().prop_map(Mutation::Remove),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Replace(at, byte)),
        (
            any::<Index>(),
            select(&["\"", "{", "}", ",", ":", "\\", "null", "[", "0", "\\u", "\r\n"][..])
        )
            .prop_map(|(at, token)| Mutation::Insert(at, token)),
        (any::<Index>(), 1..8usize).prop_map(|(at, len)| Mutation::Duplicate(at, len)),
    ]
}

/// One to four edits.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..=4)
}

/// Applies edits to the bytes of `text`; the result is made UTF-8 again, as a WebSocket
/// text frame must be.
pub fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for mutation in mutations {
        if bytes.is_empty() {
            break;
        }
        match mutation {
            Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len())),
            Mutation::Remove(at) => {
                bytes.remove(at.index(bytes.len()));
            }
            Mutation::Replace(at, byte) => {
                let at = at.index(bytes.len());
                bytes[at] = *byte;
            }
            Mutation::Insert(at, token) => {
                let at = at.index(bytes.len());
                bytes.splice(at..at, token.bytes());
            }
            Mutation::Duplicate(at, len) => {
                let at = at.index(bytes.len());
                let copy = bytes[at..(at + len).min(bytes.len())].to_vec();
                bytes.splice(at..at, copy);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A size limit relative to an input: under it, exactly at it, or none.
#[derive(Debug, Clone)]
pub enum Limit {
    Under(Index),
    At,
    Unlimited,
}

pub fn limit() -> impl Strategy<Value = Limit> {
    prop_oneof![
        1 => any::<Index>().prop_map(Limit::Under),
        1 => Just(Limit::At),
        3 => Just(Limit::Unlimited),
    ]
}

impl Limit {
    pub fn for_len(&self, len: usize) -> usize {
        match self {
            Limit::Under(at) => at.index(len + 1).min(len.saturating_sub(1)),
            Limit::At => len,
            Limit::Unlimited => usize::MAX,
        }
    }
}
