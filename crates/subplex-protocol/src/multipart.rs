//! Apollo's multipart HTTP subscription protocol
//! ([multipart-protocol](https://www.apollographql.com/docs/graphos/routing/operations/subscriptions/multipart-protocol)),
//! as Apollo Router serves it and Apollo Client's `HttpLink` reads it.
//!
//! One HTTP response per operation, `Content-Type:
//! multipart/mixed;boundary="graphql";subscriptionSpec=1.0`. Each part is
//! `--graphql` CRLF `content-type: application/json` CRLF CRLF `<json>` CRLF; the body ends
//! with `--graphql--` CRLF. Every delimiter is written right after the part before it (not
//! held back until the next part), because Apollo Client and Apollo Kotlin only hand a part
//! over once they have seen the delimiter that ends it. Part bodies are
//! `{"payload":<ExecutionResult>}`, the heartbeat `{}`, and a transport failure
//! `{"payload":null,"errors":[...]}` followed by the end.
//!
//! The byte stream is the concatenation of [`OPENING`], any number of parts from
//! [`encode_event`] / [`HEARTBEAT`], and one final piece that closes the body
//! ([`encode_event`] of a terminal event, [`encode_transport_error`] or [`CLOSING`]).

use crate::{Event, RawJson};

/// The response `Content-Type`. The boundary is quoted because Apollo Client reads an
/// unquoted boundary up to the next `"` and would take `;subscriptionSpec=1.0` into it.
pub const CONTENT_TYPE: &str = "multipart/mixed;boundary=\"graphql\";subscriptionSpec=1.0";

/// The first bytes of a body: an empty preamble and the first delimiter.
pub const OPENING: &str = "\r\n--graphql";

/// A heartbeat part (`{}`, which clients skip), ending in the next delimiter.
pub const HEARTBEAT: &str = "\r\ncontent-type: application/json\r\n\r\n{}\r\n--graphql";

/// Turns the delimiter already written after the last part into the close delimiter.
pub const CLOSING: &str = "--\r\n";

const PART_HEAD: &str = "\r\ncontent-type: application/json\r\n\r\n";
const PART_TAIL: &str = "\r\n--graphql";

/// Whether an `Accept` header value asks for multipart subscriptions: a
/// `multipart/mixed` media range with `subscriptionSpec=1.0` (quoted or not), in any
/// position of a comma-separated list, with or without spaces around `;` and `=`.
pub fn accepts_subscriptions(accept: &str) -> bool {
    media_ranges(accept).any(|(essence, mut params)| {
        essence.eq_ignore_ascii_case("multipart/mixed")
            && params.any(|(name, value)| {
                name.eq_ignore_ascii_case("subscriptionSpec") && value == "1.0"
            })
    })
}

/// Whether an `Accept` header value takes a plain JSON response: `application/json`,
/// `application/graphql-response+json` or `*/*` (as Apollo Router decides it).
pub fn accepts_json(accept: &str) -> bool {
    media_ranges(accept).any(|(essence, _)| {
        [
            "application/json",
            "application/graphql-response+json",
            "*/*",
        ]
        .iter()
        .any(|json| essence.eq_ignore_ascii_case(json))
    })
}

/// `(essence, parameters)` of each media range in an `Accept` value; parameter values
/// lose their quotes. Quoted commas and semicolons are not special-cased: no media type a
/// GraphQL client sends has them.
fn media_ranges(accept: &str) -> impl Iterator<Item = (&str, impl Iterator<Item = (&str, &str)>)> {
    accept.split(',').map(|range| {
        let mut pieces = range.split(';');
        let essence = pieces.next().unwrap_or("").trim();
        let params = pieces.filter_map(|param| {
            let (name, value) = param.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.trim(), value))
        });
        (essence, params)
    })
}

/// Encodes an operation event. `next` becomes a `{"payload":…}` part; a terminal `error`
/// (GraphQL errors of the operation, such as validation errors) becomes a part whose
/// payload carries the errors, then the end; `complete` ends the body.
pub fn encode_event(event: &Event) -> String {
    match event {
        Event::Next(result) => part("{\"payload\":", result.as_str(), "}"),
        Event::Error(errors) => {
            let mut out = part("{\"payload\":{\"errors\":", errors.as_str(), "}}");
            out.push_str(CLOSING);
            out
        }
        Event::Complete => CLOSING.to_owned(),
    }
}

/// A failure of the transport (the upstream connection, the gateway shutting down) as the
/// protocol reports it: a part with a `null` payload and top-level `errors`, then the end.
pub fn encode_transport_error(errors: &RawJson) -> String {
    let mut out = part("{\"payload\":null,\"errors\":", errors.as_str(), "}");
    out.push_str(CLOSING);
    out
}

/// A part whose body is `before`, `json`, `after`, in one allocation.
fn part(before: &str, json: &str, after: &str) -> String {
    let mut out = String::with_capacity(
        PART_HEAD.len() + before.len() + json.len() + after.len() + PART_TAIL.len(),
    );
    for piece in [PART_HEAD, before, json, after, PART_TAIL] {
        out.push_str(piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> RawJson {
        RawJson::parse(text).unwrap()
    }

    #[test]
    fn accept_values_apollo_clients_send() {
        for accept in [
            "multipart/mixed;subscriptionSpec=1.0",
            "multipart/mixed;subscriptionSpec=\"1.0\"",
            "multipart/mixed;boundary=\"graphql\";subscriptionSpec=1.0,application/json",
            "multipart/mixed; boundary=\"graphql\"; subscriptionSpec=\"1.0\", application/json",
            "application/json, multipart/mixed;subscriptionSpec=1.0",
            "Multipart/Mixed; SubscriptionSpec = 1.0",
        ] {
            assert!(accepts_subscriptions(accept), "{accept}");
        }
        for accept in [
            "multipart/mixed",
            "multipart/mixed;deferSpec=20220824",
            "multipart/mixed;subscriptionSpec=2.0",
            "application/json",
            "text/event-stream",
            "",
        ] {
            assert!(!accepts_subscriptions(accept), "{accept}");
        }
    }

    #[test]
    fn json_accept_values() {
        assert!(accepts_json(
            "multipart/mixed;boundary=\"graphql\";subscriptionSpec=1.0,application/json"
        ));
        assert!(accepts_json("application/graphql-response+json;q=0.9"));
        assert!(accepts_json("*/*"));
        assert!(!accepts_json("multipart/mixed;subscriptionSpec=1.0"));
        assert!(!accepts_json("text/plain"));
    }

    #[test]
    fn a_subscription_body_is_exact() {
        let mut body = String::from(OPENING);
        body.push_str(HEARTBEAT);
        body.push_str(&encode_event(&Event::Next(json(r#"{"data":{"t":1}}"#))));
        body.push_str(&encode_event(&Event::Next(json(r#"{"data":{"t":2}}"#))));
        body.push_str(&encode_event(&Event::Complete));
        assert_eq!(
            body,
            "\r\n--graphql\r\ncontent-type: application/json\r\n\r\n{}\r\n--graphql\
             \r\ncontent-type: application/json\r\n\r\n{\"payload\":{\"data\":{\"t\":1}}}\r\n--graphql\
             \r\ncontent-type: application/json\r\n\r\n{\"payload\":{\"data\":{\"t\":2}}}\r\n--graphql--\r\n"
        );
    }

    #[test]
    fn operation_errors_go_inside_the_payload_then_the_body_ends() {
        let error = Event::Error(json(r#"[{"message":"no"}]"#));
        assert_eq!(
            encode_event(&error),
            "\r\ncontent-type: application/json\r\n\r\n{\"payload\":{\"errors\":[{\"message\":\"no\"}]}}\r\n--graphql--\r\n"
        );
    }

    #[test]
    fn transport_errors_have_a_null_payload_then_the_body_ends() {
        let errors = json(r#"[{"message":"gone","extensions":{"code":"UPSTREAM_CLOSED"}}]"#);
        assert_eq!(
            encode_transport_error(&errors),
            "\r\ncontent-type: application/json\r\n\r\n{\"payload\":null,\"errors\":[{\"message\":\"gone\",\"extensions\":{\"code\":\"UPSTREAM_CLOSED\"}}]}\r\n--graphql--\r\n"
        );
    }

    #[test]
    fn every_line_break_is_crlf() {
        let mut body = String::from(OPENING);
        body.push_str(HEARTBEAT);
        body.push_str(&encode_event(&Event::Next(json(r#"{"data":null}"#))));
        body.push_str(&encode_transport_error(&json("[]")));
        let bare_lf = body
            .char_indices()
            .filter(|&(i, c)| c == '\n' && !body[..i].ends_with('\r'))
            .count();
        assert_eq!(bare_lf, 0, "{body:?}");
    }
}
