//! Frames for one client operation's events, with the envelope around the payload built
//! once when the operation starts.
//!
//! An upstream event reaches many clients (deduplication shares one upstream operation),
//! so the fan-out path must do as little per client as it can: the payload is shared
//! bytes, and each client's frame is its own envelope and id around them. [`EventFramer`]
//! holds that envelope up to the payload (`{"type":"next","id":"7","payload":`), so a
//! `next` frame is one allocation and two copies: prefix, payload, closing brace. Nothing
//! is re-serialised. Terminal events are rare and use the general encoders.

use std::sync::Arc;

use crate::envelope::frame;
use crate::graphql::push_json_string;
use crate::{legacy_ws, transport_ws, Event, Subprotocol};

/// The framing of one operation's events in one WebSocket dialect.
#[derive(Debug)]
pub struct EventFramer {
    subprotocol: Subprotocol,
    /// Shared with whoever else holds the operation's id (the session's map of operations).
    id: Arc<str>,
    /// Everything of a `next` (or legacy `data`) frame before the payload.
    next_prefix: Box<str>,
}

impl EventFramer {
    pub fn new(subprotocol: Subprotocol, id: Arc<str>) -> Self {
        let kind = match subprotocol {
            Subprotocol::GraphqlTransportWs => "next",
            Subprotocol::GraphqlWs => "data",
        };
        // The same envelope `frame` writes, without the payload and the closing brace.
        let mut next_prefix = frame(kind, Some(&id), Some(""));
        next_prefix.pop();
        EventFramer {
            subprotocol,
            id,
            next_prefix: next_prefix.into_boxed_str(),
        }
    }

    /// The operation's id as the client gave it.
    /// The start of this operation's `next` (`data`) frame: the frame is this, then the
    /// payload, then `}`. For writers that put the parts together themselves (`writev`).
    pub fn next_prefix(&self) -> &str {
        &self.next_prefix
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The frame for `event`, byte for byte what the dialect's `encode_event` makes.
    pub fn frame(&self, event: &Event) -> String {
        match event {
            Event::Next(payload) => {
                let payload = payload.as_str();
                let mut out = String::with_capacity(self.next_prefix.len() + payload.len() + 1);
                out.push_str(&self.next_prefix);
                out.push_str(payload);
                out.push('}');
                out
            }
            terminal => match self.subprotocol {
                Subprotocol::GraphqlTransportWs => {
                    transport_ws::ServerMessage::encode_event(&self.id, terminal)
                }
                Subprotocol::GraphqlWs => {
                    legacy_ws::ServerMessage::encode_event(&self.id, terminal)
                }
            },
        }
    }
}

/// The JSON text of `id` as a string (quoted and escaped): the start of an operation's
/// single-connection SSE prefix, built once per operation.
pub(crate) fn quoted(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 2);
    push_json_string(&mut out, id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RawJson;

    #[test]
    fn frames_match_the_dialect_encoders() {
        let events = [
            Event::Next(RawJson::parse(r#"{"data":{"n":1}}"#).unwrap()),
            Event::Error(RawJson::parse(r#"[{"message":"no"}]"#).unwrap()),
            Event::Complete,
        ];
        for id in ["1", "a\"b\\c\n", "\u{1F600}"] {
            let transport = EventFramer::new(Subprotocol::GraphqlTransportWs, id.into());
            let legacy = EventFramer::new(Subprotocol::GraphqlWs, id.into());
            assert_eq!(transport.id(), id);
            for event in &events {
                assert_eq!(
                    transport.frame(event),
                    transport_ws::ServerMessage::encode_event(id, event)
                );
                assert_eq!(
                    legacy.frame(event),
                    legacy_ws::ServerMessage::encode_event(id, event)
                );
            }
        }
        let framer = EventFramer::new(Subprotocol::GraphqlWs, "7".into());
        assert_eq!(
            format!("{}{}}}", framer.next_prefix(), r#"{"data":{"n":1}}"#),
            framer.frame(&events[0])
        );
        assert_eq!(
            EventFramer::new(Subprotocol::GraphqlTransportWs, "7".into()).frame(&events[0]),
            r#"{"type":"next","id":"7","payload":{"data":{"n":1}}}"#
        );
    }
}
