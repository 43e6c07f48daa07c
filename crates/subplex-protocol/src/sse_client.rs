//! The client side of GraphQL over SSE, distinct-connections mode
//! ([graphql-sse PROTOCOL.md](https://github.com/enisdenjo/graphql-sse/blob/master/PROTOCOL.md)),
//! as a gateway talking to an SSE upstream needs it: what a response status and content
//! type mean, an upstream event turned into an [`Event`], and a guard that bounds the size
//! of one event before the whole of it is buffered.
//!
//! No I/O: the upstream crate feeds bytes and parsed `(event, data)` pairs in.

use crate::{DecodeError, Event, GraphqlRequest, RawJson};

/// The `Accept` value an SSE request sends. The graphql-sse reference handler accepts
/// this exact value only.
pub const ACCEPT: &str = "text/event-stream";

/// What a response head means before any event is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// 200 with `text/event-stream`: events follow.
    EventStream,
    /// A failure that may pass: 5xx, 429, 408 (overload, restart, a proxy in between).
    Retryable,
    /// A failure that will not pass by asking again: any other 4xx, or a 2xx that is not an
    /// event stream (the server does not speak GraphQL over SSE at this URL).
    Permanent,
}

/// Classifies a response head by its status and `Content-Type`.
pub fn classify_response(status: u16, content_type: Option<&str>) -> ResponseVerdict {
    match status {
        200 if content_type.is_some_and(is_event_stream) => ResponseVerdict::EventStream,
        408 | 429 | 500..=599 => ResponseVerdict::Retryable,
        _ => ResponseVerdict::Permanent,
    }
}

/// Whether a `Content-Type` value is `text/event-stream`, whatever its parameters.
pub fn is_event_stream(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// The query-string parameters of a GET request (GraphQL over HTTP): `query`,
/// `operationName`, and `variables` / `extensions` as JSON text. The inverse of
/// [`crate::sse::request_from_query`].
pub fn query_parameters(request: &GraphqlRequest) -> Vec<(&'static str, &str)> {
    let mut pairs = vec![("query", request.query.as_str())];
    if let Some(name) = &request.operation_name {
        pairs.push(("operationName", name));
    }
    if let Some(variables) = &request.variables {
        pairs.push(("variables", variables.as_str()));
    }
    if let Some(extensions) = &request.extensions {
        pairs.push(("extensions", extensions.as_str()));
    }
    pairs
}

/// An upstream event as an [`Event`]. `next` carries an execution result, passed on
/// untouched (an `errors` member included); `complete` ends the operation. Other event
/// types (`message`, anything newer) carry nothing for us and give `None`. An owned
/// `data` is kept as the payload without a copy.
pub fn decode_event(
    event_type: &str,
    data: impl Into<String>,
    limit: usize,
) -> Result<Option<Event>, DecodeError> {
    match event_type {
        "next" => {
            let data = data.into();
            if data.len() > limit {
                return Err(DecodeError::TooLarge {
                    len: data.len(),
                    limit,
                });
            }
            let result = RawJson::parse_owned(data).map_err(DecodeError::not_json)?;
            if !result.is_object() {
                return Err(DecodeError::InvalidPayload {
                    kind: "next",
                    reason: "an execution result must be a JSON object".into(),
                });
            }
            Ok(Some(Event::Next(result)))
        }
        "complete" => Ok(Some(Event::Complete)),
        _ => Ok(None),
    }
}

/// Bounds the bytes of one event while they arrive, so an upstream can never make the
/// gateway buffer more than `limit` bytes (plus one read) waiting for an event's end.
///
/// It counts the bytes since the last blank line (the end of an event, or of a comment
/// block such as the `:` keep-alive), recognising the three SSE line endings (CRLF, LF,
/// CR) even when a chunk splits them.
#[derive(Debug, Clone)]
pub struct EventSizeGuard {
    limit: usize,
    /// Bytes since the last blank line.
    pending: usize,
    /// At the start of a line (after a line ending, or at the start of the stream).
    line_start: bool,
    /// The previous byte was `\r`: a `\n` now completes a CRLF, not a new line.
    after_cr: bool,
}

/// An event grew past the limit before it ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event is over the {limit} byte limit")]
pub struct EventTooLarge {
    pub limit: usize,
}

impl EventSizeGuard {
    /// A guard for events of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        EventSizeGuard {
            limit,
            pending: 0,
            line_start: true,
            after_cr: false,
        }
    }

    /// Accounts for the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), EventTooLarge> {
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => {
                    self.after_cr = false;
                    // The LF of a blank CRLF line: it ends the blank line, it does not
                    // start the next event. (`pending` is 0 only right after a blank line.)
                    if self.pending == 0 {
                        continue;
                    }
                }
                b'\r' | b'\n' => {
                    if self.line_start {
                        // A blank line: whatever came before has been dispatched.
                        self.pending = 0;
                        self.after_cr = byte == b'\r';
                        continue;
                    }
                    self.line_start = true;
                    self.after_cr = byte == b'\r';
                }
                _ => {
                    self.line_start = false;
                    self.after_cr = false;
                }
            }
            self.pending += 1;
            if self.pending > self.limit {
                return Err(EventTooLarge { limit: self.limit });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads() {
        use ResponseVerdict::*;
        let sse = Some("text/event-stream; charset=utf-8");
        assert_eq!(classify_response(200, sse), EventStream);
        assert_eq!(
            classify_response(200, Some("TEXT/EVENT-STREAM")),
            EventStream
        );
        assert_eq!(classify_response(200, Some("application/json")), Permanent);
        assert_eq!(classify_response(200, None), Permanent);
        for retryable in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify_response(retryable, sse), Retryable, "{retryable}");
        }
        for permanent in [400, 401, 403, 404, 405, 406, 413, 204, 301] {
            assert_eq!(classify_response(permanent, sse), Permanent, "{permanent}");
        }
    }

    #[test]
    fn get_parameters_round_trip() {
        let mut request = GraphqlRequest::new("subscription { t }");
        request.operation_name = Some("T".into());
        request.variables = Some(RawJson::parse(r#"{"n":1}"#).unwrap());
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query_parameters(&request))
            .finish();
        assert_eq!(crate::sse::request_from_query(&query), Ok(request));
    }

    #[test]
    fn events_pass_results_through_untouched() {
        let with_errors = r#"{"errors":[{"message":"no"}],"data":null}"#;
        assert_eq!(
            decode_event("next", with_errors, 1024),
            Ok(Some(Event::Next(RawJson::parse(with_errors).unwrap())))
        );
        assert_eq!(
            decode_event("complete", "", 1024),
            Ok(Some(Event::Complete))
        );
        assert_eq!(decode_event("message", "{}", 1024), Ok(None));
        assert_eq!(
            decode_event("next", "{\"data\":1}", 5),
            Err(DecodeError::TooLarge { len: 10, limit: 5 })
        );
        assert!(matches!(
            decode_event("next", "{nope", 1024),
            Err(DecodeError::NotJson { .. })
        ));
        assert!(matches!(
            decode_event("next", "[1]", 1024),
            Err(DecodeError::InvalidPayload { kind: "next", .. })
        ));
    }

    #[test]
    fn size_guard_resets_at_blank_lines_in_every_line_ending() {
        for ending in ["\n", "\r\n", "\r"] {
            let event = format!("event: next{ending}data: 12345{ending}{ending}");
            let mut guard = EventSizeGuard::new(event.len());
            for _ in 0..100 {
                guard.feed(event.as_bytes()).unwrap();
            }
            // Split anywhere, even inside a CRLF.
            let mut guard = EventSizeGuard::new(event.len());
            for _ in 0..10 {
                for byte in event.as_bytes() {
                    guard.feed(&[*byte]).unwrap();
                }
            }
        }
    }

    #[test]
    fn size_guard_does_not_count_a_blank_crlf_line_toward_the_next_event() {
        let mut guard = EventSizeGuard::new(4);
        guard.feed(b"ab\r\n\r\n").unwrap();
        guard.feed(b"cde\n\n").unwrap();
    }

    #[test]
    fn size_guard_refuses_an_event_that_never_ends() {
        let mut guard = EventSizeGuard::new(16);
        guard.feed(b":\n\n:\n\n").unwrap();
        guard.feed(b"data: 0123456789").unwrap();
        assert_eq!(guard.feed(b"\n"), Err(EventTooLarge { limit: 16 }));
        // One line per chunk, no blank line: still one growing event.
        let mut guard = EventSizeGuard::new(16);
        guard.feed(b"data: 1\n").unwrap();
        guard.feed(b"data: 2\n").unwrap();
        assert!(guard.feed(b"data: 3\n").is_err());
    }
}
