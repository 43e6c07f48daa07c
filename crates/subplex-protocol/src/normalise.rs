//! The normalised form of a GraphQL request: equal for requests that differ only in
//! formatting, so a gateway can run them as one upstream operation (deduplication).
//!
//! What counts as formatting: in the document, whitespace, commas and comments (the
//! lexer's ignored tokens, GraphQL spec §2.1.7); in `variables` and `extensions`,
//! whitespace and the order of object keys, and `{}` against absent (GraphQL over HTTP
//! gives both the same meaning). Everything else is kept: the operation name,
//! the document's tokens, string contents and number spellings (`1` and `1.0` stay
//! different, as the upstream may treat them differently).

use apollo_parser::{Lexer, TokenKind};
use serde_json::Value;

use crate::GraphqlRequest;

/// The normalised text of `request`. Two requests with the same text run the same
/// operation with the same inputs. A document the lexer cannot read is kept verbatim:
/// only byte-identical copies of it then match, which is still correct.
pub fn normalised_request(request: &GraphqlRequest) -> String {
    let mut out = String::with_capacity(request.query.len() + 64);
    push_document(&mut out, &request.query);
    // Field separators that cannot occur in a token or in JSON text.
    out.push('\u{0}');
    if let Some(name) = &request.operation_name {
        out.push_str(name);
    }
    for raw in [&request.variables, &request.extensions] {
        out.push('\u{0}');
        if let Some(raw) = raw {
            match serde_json::from_str::<Value>(raw.as_str()) {
                Ok(Value::Object(map)) if map.is_empty() => {}
                Ok(value) => push_canonical_json(&mut out, &value),
                // RawJson is validated; this arm only keeps the function total.
                Err(_) => out.push_str(raw.as_str()),
            }
        }
    }
    out
}

/// The document's significant tokens, one space apart.
fn push_document(out: &mut String, document: &str) {
    let start = out.len();
    for token in Lexer::new(document) {
        let Ok(token) = token else {
            out.truncate(start);
            out.push_str(document);
            return;
        };
        match token.kind() {
            TokenKind::Whitespace | TokenKind::Comment | TokenKind::Comma | TokenKind::Eof => {}
            _ => {
                if out.len() > start {
                    out.push(' ');
                }
                out.push_str(token.data());
            }
        }
    }
}

/// JSON without whitespace, object keys sorted, whatever map order serde_json was built
/// with (another crate in the tree could turn on its `preserve_order`).
fn push_canonical_json(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                crate::graphql::push_json_string(out, key);
                out.push(':');
                push_canonical_json(out, value);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_canonical_json(out, item);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RawJson;

    fn request(query: &str, variables: Option<&str>) -> GraphqlRequest {
        GraphqlRequest {
            query: query.into(),
            operation_name: None,
            variables: variables.map(|v| RawJson::parse(v).unwrap()),
            extensions: None,
        }
    }

    #[test]
    fn formatting_of_the_document_does_not_matter() {
        let a = request("subscription{ticks(count:3){n user}}", None);
        let b = request(
            "# a comment\nsubscription {\n  ticks(count: 3) {\n    n,\n    user\n  }\n}\n",
            None,
        );
        assert_eq!(normalised_request(&a), normalised_request(&b));
        assert_eq!(
            normalised_request(&a),
            "subscription { ticks ( count : 3 ) { n user } }\u{0}\u{0}\u{0}"
        );
    }

    #[test]
    fn key_order_and_whitespace_of_variables_do_not_matter() {
        let a = request(
            "subscription($a:Int,$b:Int){x}",
            Some(r#"{"a":1,"b":{"d":[1, 2],"c":"z"}}"#),
        );
        let b = request(
            "subscription($a:Int,$b:Int){x}",
            Some(r#"{ "b": {"c": "z", "d": [1,2]}, "a": 1 }"#),
        );
        assert_eq!(normalised_request(&a), normalised_request(&b));
    }

    #[test]
    fn empty_variables_are_absent_variables() {
        let a = request("subscription{x}", Some("{ }"));
        let b = request("subscription{x}", None);
        assert_eq!(normalised_request(&a), normalised_request(&b));
    }

    #[test]
    fn different_inputs_stay_different() {
        let base = request("subscription($a:Int){x}", Some(r#"{"a":1}"#));
        let variants = [
            request("subscription($a:Int){x}", Some(r#"{"a":2}"#)),
            request("subscription($a:Int){x}", Some(r#"{"a":1.0}"#)),
            request("subscription($a:Int){x}", None),
            request("subscription($a:Int){y}", Some(r#"{"a":1}"#)),
            request(r#"subscription($a:Int){x(s:"a  b")}"#, Some(r#"{"a":1}"#)),
            GraphqlRequest {
                operation_name: Some("X".into()),
                ..base.clone()
            },
            GraphqlRequest {
                extensions: Some(RawJson::parse(r#"{"a":1}"#).unwrap()),
                variables: None,
                ..base.clone()
            },
        ];
        for variant in &variants {
            assert_ne!(
                normalised_request(&base),
                normalised_request(variant),
                "{variant:?}"
            );
        }
        // Whitespace inside a string literal is part of the token.
        assert_ne!(
            normalised_request(&request(r#"{x(s:"a b")}"#, None)),
            normalised_request(&request(r#"{x(s:"a  b")}"#, None))
        );
    }

    #[test]
    fn an_unreadable_document_is_kept_verbatim() {
        let broken = request("subscription { x(s: \"unterminated }", None);
        assert!(
            normalised_request(&broken).starts_with("subscription { x(s: \"unterminated }\u{0}")
        );
    }
}
