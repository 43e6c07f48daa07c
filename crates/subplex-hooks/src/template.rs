//! `init_payload` templates: the common case of `on_connection_init` without a script.
//!
//! A template is a JSON object whose string values may hold placeholders:
//! `{header.NAME}` (a request header, lower-case name, repeated ones joined as in `ctx`)
//! and `{init.NAME}` (a field of the client's own init payload; `{init.a.b}` reads a
//! nested one). `{{` and `}}` are literal braces. Applying it sets the template's keys in
//! the client's payload (objects merged key by key), so the client's other fields still
//! reach the upstream, as with the example script.
//!
//! A string whose placeholder has no value (the header is missing, the field absent) is
//! left out with its key, and an object left empty that way is left out too: without an
//! `Authorization` header, `{ headers = { Authorization = "{header.authorization}" } }`
//! adds nothing, exactly as the script form.

use serde_json::{Map, Value};

/// A parsed template, checked at start-up.
#[derive(Clone, PartialEq, Eq)]
pub struct InitTemplate {
    root: Vec<(String, Node)>,
}

/// Only the top-level keys: a template's literal values can be secrets (an admin token).
impl std::fmt::Debug for InitTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitTemplate")
            .field(
                "keys",
                &self.root.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Object(Vec<(String, Node)>),
    Text(Vec<Piece>),
    /// Numbers, booleans, null and arrays: copied as they are.
    Literal(Value),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Header(String),
    /// A path into the client's init payload.
    Init(Vec<String>),
}

/// Why a template is refused: where (a dotted key path under the template) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TemplateError {
    pub key: String,
    pub reason: String,
}

impl InitTemplate {
    /// Parses a template object.
    pub fn parse(template: &Value) -> Result<InitTemplate, TemplateError> {
        let Value::Object(map) = template else {
            return Err(TemplateError {
                key: String::new(),
                reason: "must be a table (the payload's fields)".into(),
            });
        };
        Ok(InitTemplate {
            root: parse_object(map, "")?,
        })
    }

    /// The payload to send upstream: `client_payload` with the template's keys set.
    /// `headers` are the request headers, lower-case names, in order.
    pub fn apply(&self, headers: &[(&str, &str)], client_payload: &Value) -> Value {
        let mut payload = match client_payload {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        merge_object(&mut payload, &self.root, headers, client_payload);
        Value::Object(payload)
    }
}

fn parse_object(map: &Map<String, Value>, at: &str) -> Result<Vec<(String, Node)>, TemplateError> {
    map.iter()
        .map(|(name, value)| {
            let key = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}.{name}")
            };
            let node = match value {
                Value::Object(inner) => Node::Object(parse_object(inner, &key)?),
                Value::String(text) => {
                    Node::Text(parse_text(text).map_err(|reason| TemplateError {
                        key: key.clone(),
                        reason,
                    })?)
                }
                other => Node::Literal(other.clone()),
            };
            Ok((name.clone(), node))
        })
        .collect()
}

fn parse_text(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(['{', '}']) {
        literal.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{{") {
            literal.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            literal.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(format!(
                "\"{text}\": a lone `}}`; write `}}}}` for a literal brace"
            ));
        } else {
            let end = tail.find('}').ok_or_else(|| {
                format!("\"{text}\": a `{{` without its `}}`; write `{{{{` for a literal brace")
            })?;
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(
                placeholder(&tail[1..end]).map_err(|reason| format!("\"{text}\": {reason}"))?,
            );
            rest = &tail[end + 1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

fn placeholder(inner: &str) -> Result<Piece, String> {
    let unknown =
        || format!("`{{{inner}}}` is not a placeholder; use {{header.NAME}} or {{init.FIELD}}");
    let (kind, name) = inner.split_once('.').ok_or_else(unknown)?;
    if name.is_empty() {
        return Err(unknown());
    }
    match kind {
        "header" => {
            let lower = name.to_ascii_lowercase();
            if !lower.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(format!("\"{name}\" is not a header name"));
            }
            Ok(Piece::Header(lower))
        }
        "init" => {
            let path: Vec<String> = name.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(unknown());
            }
            Ok(Piece::Init(path))
        }
        _ => Err(unknown()),
    }
}

/// Sets `nodes` into `target`; returns whether anything was set.
fn merge_object(
    target: &mut Map<String, Value>,
    nodes: &[(String, Node)],
    headers: &[(&str, &str)],
    init: &Value,
) -> bool {
    let mut set_any = false;
    for (name, node) in nodes {
        match node {
            Node::Object(inner) => {
                let mut object = match target.get(name) {
                    Some(Value::Object(existing)) => existing.clone(),
                    _ => Map::new(),
                };
                // An empty table in the template is an empty object in the payload.
                if merge_object(&mut object, inner, headers, init) || inner.is_empty() {
                    target.insert(name.clone(), Value::Object(object));
                    set_any = true;
                }
            }
            Node::Text(pieces) => {
                if let Some(value) = render(pieces, headers, init) {
                    target.insert(name.clone(), value);
                    set_any = true;
                }
            }
            Node::Literal(value) => {
                target.insert(name.clone(), value.clone());
                set_any = true;
            }
        }
    }
    set_any
}

/// A string's value, or `None` when a placeholder has none. A string that is one
/// `{init...}` placeholder alone takes the field's JSON value as it is (a number stays
/// a number); mixed with text, a non-string field is written as its JSON text.
fn render(pieces: &[Piece], headers: &[(&str, &str)], init: &Value) -> Option<Value> {
    if let [Piece::Init(path)] = pieces {
        return init_field(init, path).cloned();
    }
    let mut text = String::new();
    for piece in pieces {
        match piece {
            Piece::Literal(literal) => text.push_str(literal),
            Piece::Header(name) => text.push_str(&header(headers, name)?),
            Piece::Init(path) => match init_field(init, path)? {
                Value::String(value) => text.push_str(value),
                other => text.push_str(&other.to_string()),
            },
        }
    }
    Some(Value::String(text))
}

fn init_field<'a>(init: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(init, |value, name| value.get(name))
        .filter(|value| !value.is_null())
}

/// A header's value; repeated ones joined as `ctx.headers` joins them.
fn header(headers: &[(&str, &str)], name: &str) -> Option<String> {
    let separator = if name == "cookie" { "; " } else { ", " };
    let mut values = headers
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .peekable();
    values.peek()?;
    Some(values.collect::<Vec<_>>().join(separator))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(value: Value) -> InitTemplate {
        InitTemplate::parse(&value).expect("valid template")
    }

    #[test]
    fn headers_and_init_fields_fill_the_payload_and_keep_the_clients_fields() {
        let t = template(json!({
            "headers": {
                "Authorization": "{header.authorization}",
                "x-hasura-role": "{header.X-Role}",
                "x-lang": "lang={init.lang}",
            },
            "version": 2,
        }));
        let headers = [("authorization", "Bearer alice"), ("x-role", "user")];
        let out = t.apply(&headers, &json!({ "lang": "en", "keep": true }));
        assert_eq!(
            out,
            json!({
                "lang": "en", "keep": true, "version": 2,
                "headers": { "Authorization": "Bearer alice", "x-hasura-role": "user", "x-lang": "lang=en" },
            })
        );
    }

    #[test]
    fn a_missing_value_leaves_its_key_out_and_an_emptied_object_too() {
        let t = template(json!({ "headers": { "Authorization": "{header.authorization}" } }));
        assert_eq!(t.apply(&[], &json!({ "a": 1 })), json!({ "a": 1 }));
        let t = template(json!({ "token": "Bearer {init.token}", "empty": {} }));
        assert_eq!(t.apply(&[], &json!({})), json!({ "empty": {} }));
    }

    #[test]
    fn a_lone_init_placeholder_keeps_the_json_type_and_nested_fields_read() {
        let t = template(json!({ "n": "{init.a.b}", "s": "n={init.a.b}" }));
        assert_eq!(
            t.apply(&[], &json!({ "a": { "b": 7 } })),
            json!({ "a": { "b": 7 }, "n": 7, "s": "n=7" })
        );
    }

    #[test]
    fn repeated_headers_join_and_braces_escape() {
        let t = template(json!({ "c": "{header.cookie}", "lit": "{{x}}" }));
        let headers = [("cookie", "a=1"), ("cookie", "b=2")];
        assert_eq!(
            t.apply(&headers, &json!({})),
            json!({ "c": "a=1; b=2", "lit": "{x}" })
        );
    }

    #[test]
    fn debug_shows_no_literal_value() {
        let t = template(json!({ "headers": { "x-hasura-admin-secret": "s3cr3t" } }));
        let shown = format!("{t:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn bad_placeholders_name_their_key() {
        for (value, reason) in [
            (json!({ "h": { "a": "{header}" } }), "is not a placeholder"),
            (
                json!({ "h": { "a": "{env.HOME}" } }),
                "is not a placeholder",
            ),
            (
                json!({ "h": { "a": "{header.authorization" } }),
                "without its",
            ),
            (json!({ "h": { "a": "x}" } }), "a lone"),
            (json!({ "h": { "a": "{init.}" } }), "is not a placeholder"),
        ] {
            let err = InitTemplate::parse(&value).unwrap_err();
            assert_eq!(err.key, "h.a", "{value}");
            assert!(err.reason.contains(reason), "{value}: {}", err.reason);
        }
        assert!(InitTemplate::parse(&json!("x")).is_err());
    }
}
