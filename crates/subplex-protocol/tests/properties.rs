//! Property-style tests without extra crates: a deterministic xorshift generator feeds
//! many random byte strings, JSON-ish token soups, structured (mostly valid) frames and
//! mutations of them to every decoder. The oracles live in `support/mod.rs` (shared with
//! the fuzz targets): decoding never panics, over-limit frames are `TooLarge`, and
//! anything that decodes re-encodes to something that decodes to the same value.
//!
//! `SUBPLEX_PROPTEST_CASES` scales the number of cases (default 3000 per generator);
//! `SUBPLEX_PROPTEST_SEED` picks another seed.

mod support;

use subplex_protocol::Subprotocol;
use support::*;

/// xorshift64*: small, deterministic, good enough to drive input generation.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

fn cases() -> usize {
    std::env::var("SUBPLEX_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn seed(salt: u64) -> u64 {
    let base = std::env::var("SUBPLEX_PROPTEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x05ee_d0f5_u64);
    base ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

const TYPES: &[&str] = &[
    // graphql-transport-ws
    "connection_init",
    "connection_ack",
    "ping",
    "pong",
    "subscribe",
    "next",
    "error",
    "complete",
    // legacy graphql-ws
    "start",
    "stop",
    "data",
    "ka",
    "connection_error",
    "connection_terminate",
    // deprecated legacy aliases
    "init",
    "init_success",
    "init_fail",
    "subscription_start",
    "subscription_end",
    "subscription_data",
    "subscription_fail",
    "subscription_success",
    "keepalive",
    // nonsense
    "",
    "PING",
    "p\\u0069ng",
    "nëxt",
];

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

/// A JSON string literal (always valid except, rarely, a lone surrogate escape).
fn json_string(rng: &mut Rng) -> String {
    let mut out = String::from("\"");
    for _ in 0..rng.below(6) {
        out.push_str(rng.pick(STRING_BITS));
    }
    if rng.chance(2) {
        out.push_str("\\ud800");
    }
    out.push('"');
    out
}

fn json_number(rng: &mut Rng) -> String {
    let n: &[&str] = &[
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
    rng.pick(n).to_owned()
}

fn whitespace(rng: &mut Rng) -> &'static str {
    if rng.chance(80) {
        ""
    } else {
        rng.pick(&[" ", "\n", "\t", "\r\n", "  "])
    }
}

/// A random JSON value of bounded depth, with random insignificant whitespace.
fn json_value(rng: &mut Rng, depth: usize) -> String {
    let choice = if depth == 0 {
        rng.below(4)
    } else {
        rng.below(6)
    };
    match choice {
        0 => rng.pick(&["null", "true", "false"]).to_owned(),
        1 => json_number(rng),
        2 | 3 => json_string(rng),
        4 => {
            let items: Vec<String> = (0..rng.below(4))
                .map(|_| json_value(rng, depth - 1))
                .collect();
            format!("[{}{}]", whitespace(rng), items.join(","))
        }
        _ => json_object(rng, depth - 1),
    }
}

fn json_object(rng: &mut Rng, depth: usize) -> String {
    let fields: Vec<String> = (0..rng.below(4))
        .map(|_| {
            format!(
                "{}{}{}:{}{}",
                whitespace(rng),
                json_string(rng),
                whitespace(rng),
                whitespace(rng),
                json_value(rng, depth)
            )
        })
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// A GraphQL request object, usually valid.
fn request(rng: &mut Rng) -> String {
    let mut fields = Vec::new();
    match rng.below(10) {
        0 => {}
        1 => fields.push(format!("\"query\":{}", json_value(rng, 1))),
        2 => fields.push("\"query\":null".to_owned()),
        _ => fields.push(format!("\"query\":{}", json_string(rng))),
    }
    if rng.chance(50) {
        let name = match rng.below(4) {
            0 => "null".to_owned(),
            1 => "\"\"".to_owned(),
            _ => json_string(rng),
        };
        fields.push(format!("\"operationName\":{name}"));
    }
    for field in ["variables", "extensions"] {
        if rng.chance(50) {
            let value = match rng.below(6) {
                0 => "null".to_owned(),
                1 => json_value(rng, 2),
                _ => json_object(rng, 2),
            };
            fields.push(format!("\"{field}\":{}{value}", whitespace(rng)));
        }
    }
    if rng.chance(10) {
        fields.push(format!("\"extra\":{}", json_value(rng, 1)));
    }
    shuffle(rng, &mut fields);
    format!("{{{}}}", fields.join(","))
}

fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
}

/// A `{type, id?, payload?}` frame, valid for some decoder most of the time.
fn structured_frame(rng: &mut Rng) -> String {
    let mut fields = Vec::new();
    if !rng.chance(5) {
        let kind = if rng.chance(5) {
            json_value(rng, 1)
        } else {
            format!("\"{}\"", rng.pick(TYPES))
        };
        fields.push(format!("\"type\":{kind}"));
    }
    match rng.below(10) {
        0 => {}
        1 => fields.push(format!("\"id\":{}", json_number(rng))),
        2 => fields.push(format!(
            "\"id\":{}",
            rng.pick(&["null", "true", "\"\"", "[1]", "{}"])
        )),
        _ => fields.push(format!("\"id\":{}", json_string(rng))),
    }
    match rng.below(10) {
        0 => {}
        1 => fields.push("\"payload\":null".to_owned()),
        2 | 3 => fields.push(format!("\"payload\":{}", json_value(rng, 3))),
        4 => fields.push(format!("\"payload\":{}", json_object(rng, 2))),
        5 => {
            let errors: Vec<String> = (0..rng.below(3))
                .map(|_| format!("{{\"message\":{}}}", json_string(rng)))
                .collect();
            let errors = format!("[{}]", errors.join(","));
            let payload = if rng.chance(50) {
                errors
            } else {
                format!("{{\"errors\":{errors}}}")
            };
            fields.push(format!("\"payload\":{payload}"));
        }
        _ => fields.push(format!("\"payload\":{}{}", whitespace(rng), request(rng))),
    }
    if rng.chance(10) {
        fields.push(format!("\"extra\":{}", json_value(rng, 1)));
    }
    shuffle(rng, &mut fields);
    let fields: Vec<String> = fields
        .into_iter()
        .map(|f| format!("{}{f}{}", whitespace(rng), whitespace(rng)))
        .collect();
    format!(
        "{}{{{}}}{}",
        whitespace(rng),
        fields.join(","),
        whitespace(rng)
    )
}

/// A token soup: JSON punctuation, keywords and strings in random order.
fn token_soup(rng: &mut Rng) -> String {
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
        "\"1\"",
        "1",
        "null",
        "true",
        "\"",
        "\\",
        " ",
        "\n",
        "-",
        "e",
        ".",
        "\u{0}",
        "é",
    ];
    let mut out = String::new();
    for _ in 0..rng.below(24) {
        out.push_str(rng.pick(TOKENS));
    }
    out
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    (0..rng.below(64))
        .map(|_| (rng.next() & 0xff) as u8)
        .collect()
}

/// Truncates, duplicates, deletes or replaces a random slice of a frame.
fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..=rng.below(3) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len());
        match rng.below(5) {
            0 => bytes.truncate(at),
            1 => {
                bytes.remove(at);
            }
            2 => bytes[at] = (rng.next() & 0xff) as u8,
            3 => {
                let token = rng.pick(&[
                    &b"\""[..],
                    b"{",
                    b"}",
                    b",",
                    b":",
                    b"\\",
                    b"null",
                    b"[",
                    b"0",
                ]);
                bytes.splice(at..at, token.iter().copied());
            }
            _ => {
                let end = (at + rng.below(8)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Some limits under, at and over the text's length.
fn limit_for(rng: &mut Rng, text: &str) -> usize {
    match rng.below(5) {
        0 => rng.below(text.len() + 2),
        1 => text.len(),
        _ => usize::MAX,
    }
}

/// Per decoder, how many inputs it accepted.
#[derive(Default, Debug)]
struct Accepted {
    transport_client: usize,
    transport_server: usize,
    legacy_client: usize,
    legacy_server: usize,
    upstream_transport: usize,
    upstream_legacy: usize,
    any: usize,
}

fn run(text: &str, limit: usize, accepted: &mut Accepted) {
    let tc = check_transport_client(text, limit).is_some();
    let ts = check_transport_server(text, limit).is_some();
    let lc = check_legacy_client(text, limit).is_some();
    let ls = check_legacy_server(text, limit).is_some();
    let ut = check_upstream(Subprotocol::GraphqlTransportWs, text, limit).is_some();
    let ul = check_upstream(Subprotocol::GraphqlWs, text, limit).is_some();
    check_sse_body(text.as_bytes());
    check_sse_query(text);
    check_sse_upstream_event(text, limit);
    check_probe_frame(text);
    check_event_size_guard(text.as_bytes(), limit.min(text.len() / 2));
    accepted.transport_client += usize::from(tc);
    accepted.transport_server += usize::from(ts);
    accepted.legacy_client += usize::from(lc);
    accepted.legacy_server += usize::from(ls);
    accepted.upstream_transport += usize::from(ut);
    accepted.upstream_legacy += usize::from(ul);
    accepted.any += usize::from(tc || ts || lc || ls);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng::new(seed(1));
    let mut accepted = Accepted::default();
    for _ in 0..cases() {
        let bytes = random_bytes(&mut rng);
        check_sse_body(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let limit = limit_for(&mut rng, &text);
        run(&text, limit, &mut accepted);
    }
}

#[test]
fn token_soup_never_panics_and_round_trips() {
    let mut rng = Rng::new(seed(2));
    let mut accepted = Accepted::default();
    for _ in 0..cases() {
        let text = token_soup(&mut rng);
        let limit = limit_for(&mut rng, &text);
        run(&text, limit, &mut accepted);
    }
}

#[test]
fn structured_frames_round_trip() {
    let mut rng = Rng::new(seed(3));
    let mut accepted = Accepted::default();
    let n = cases() * 4;
    for _ in 0..n {
        let text = structured_frame(&mut rng);
        run(&text, usize::MAX, &mut accepted);
    }
    eprintln!("{n} structured frames, accepted: {accepted:?}");
    // The generator must actually reach the round-trip checks of every decoder.
    let floor = n / 100;
    assert!(accepted.transport_client > floor, "{accepted:?}");
    assert!(accepted.transport_server > floor, "{accepted:?}");
    assert!(accepted.legacy_client > floor, "{accepted:?}");
    assert!(accepted.legacy_server > floor, "{accepted:?}");
    assert!(accepted.upstream_transport > floor, "{accepted:?}");
    assert!(accepted.upstream_legacy > floor, "{accepted:?}");
}

#[test]
fn mutated_frames_never_panic_and_round_trip() {
    let mut rng = Rng::new(seed(4));
    let mut accepted = Accepted::default();
    for _ in 0..cases() * 2 {
        let frame = structured_frame(&mut rng);
        let text = mutate(&mut rng, &frame);
        let limit = limit_for(&mut rng, &text);
        run(&text, limit, &mut accepted);
    }
}

#[test]
fn request_bodies_round_trip() {
    let mut rng = Rng::new(seed(5));
    let mut ok = 0;
    let n = cases() * 2;
    for _ in 0..n {
        let mut body = request(&mut rng);
        if rng.chance(20) {
            body = mutate(&mut rng, &body);
        }
        ok += usize::from(check_sse_body(body.as_bytes()).is_some());
    }
    assert!(ok > n / 10, "only {ok} of {n} bodies decoded");
}

#[test]
fn query_strings_round_trip() {
    let mut rng = Rng::new(seed(6));
    let mut ok = 0;
    let n = cases() * 2;
    for _ in 0..n {
        let mut pairs = Vec::new();
        for _ in 0..rng.below(5) {
            let key = rng.pick(&[
                "query",
                "operationName",
                "variables",
                "extensions",
                "x",
                "",
                "query",
            ]);
            let value = match rng.below(4) {
                0 => json_object(&mut rng, 2),
                1 => json_value(&mut rng, 2),
                2 => token_soup(&mut rng),
                _ => request(&mut rng),
            };
            pairs.push((key, value));
        }
        let text = if rng.chance(70) {
            // Properly encoded.
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &pairs {
                ser.append_pair(k, v);
            }
            ser.finish()
        } else {
            // Raw, as a careless client might send it.
            let raw: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            mutate(&mut rng, &raw.join("&"))
        };
        ok += usize::from(check_sse_query(&text).is_some());
    }
    assert!(ok > n / 20, "only {ok} of {n} query strings decoded");
}

/// Known-good frames from the reference libraries stay good under every mutation depth.
#[test]
fn reference_frames_and_their_mutations() {
    const FRAMES: &[&str] = &[
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
    let mut rng = Rng::new(seed(7));
    let mut accepted = Accepted::default();
    for frame in FRAMES {
        run(frame, usize::MAX, &mut accepted);
    }
    assert_eq!(accepted.any, FRAMES.len());
    for _ in 0..cases() {
        let frame = FRAMES[rng.below(FRAMES.len())];
        let text = mutate(&mut rng, frame);
        let limit = limit_for(&mut rng, &text);
        run(&text, limit, &mut accepted);
    }
}

#[test]
fn xorshift_is_deterministic() {
    let a: Vec<u64> = {
        let mut rng = Rng::new(7);
        (0..5).map(|_| rng.next()).collect()
    };
    let b: Vec<u64> = {
        let mut rng = Rng::new(7);
        (0..5).map(|_| rng.next()).collect()
    };
    assert_eq!(a, b);
    assert_ne!(a[0], a[1]);
}
