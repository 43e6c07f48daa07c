//! The tick event: what the emitter sends and the load generator checks.
//!
//! Every `next` payload is `{"data":{"tick":{"n":N,"t":NANOS,"pad":"xx…"}}}`: `n` counts
//! the events of one subscription from 1, so a client sees loss and reordering as a break
//! in the sequence; `t` is the emitter's wall clock (nanoseconds since the Unix epoch)
//! just before the frame is written, so a client on the same machine gets the end-to-end
//! latency as its own clock minus `t`; `pad` fills the payload to the configured size.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// The subscription every bench client starts. The emitter accepts any subscription that
/// mentions `tick`; the selection is what the peers' schema (`bench/peers/emitter.graphql`)
/// needs.
pub const QUERY: &str = "subscription Tick { tick { n t } }";

/// The same subscription with a variable, so that each client's request is distinct and
/// no gateway may share one upstream operation between two clients.
pub const KEYED_QUERY: &str = "subscription KeyedTick($key: Int!) { tick(key: $key) { n t } }";

/// The `n` of a priming event: sent before the measured events, so the harness knows each
/// client is attached end to end (see `crate::emitter`). Not part of the sequence.
pub const PRIMING_N: u64 = 0;

/// Whether the emitter should serve `query` as a tick stream.
pub fn is_tick_subscription(query: &str) -> bool {
    query.trim_start().starts_with("subscription") && query.contains("tick")
}

/// Nanoseconds since the Unix epoch. The wall clock, not `Instant`, because the emitter
/// and the load generator are different processes: `CLOCK_REALTIME` is the clock they
/// share. Nothing on a benchmark machine should step it during a 10 s run.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Pre-encoded pieces of one subscription's `next` frames, so the emitter's hot path is
/// string appends: the id is JSON-escaped once, not per event.
#[derive(Debug, Clone)]
pub struct NextFrame {
    prefix: String,
    suffix: String,
}

/// Length of the payload without padding for typical `n` and `t` values (`t` has 19
/// digits until 2286), used to size the padding.
fn unpadded_payload_len() -> usize {
    r#"{"data":{"tick":{"n":1000,"t":1700000000000000000,"pad":""}}}"#.len()
}

impl NextFrame {
    /// Frames for operation `id` whose payloads are about `payload_bytes` long.
    pub fn new(id: &str, payload_bytes: usize) -> Self {
        // A str always serialises.
        let id = serde_json::to_string(id).unwrap_or_default();
        let pad = "x".repeat(payload_bytes.saturating_sub(unpadded_payload_len()));
        NextFrame {
            prefix: format!(r#"{{"type":"next","id":{id},"payload":{{"data":{{"tick":{{"n":"#),
            suffix: format!(r#","pad":"{pad}"}}}}}}}}"#),
        }
    }

    /// The frame for event `n` stamped `t`.
    pub fn encode(&self, n: u64, t: u64) -> String {
        let mut out = String::with_capacity(self.prefix.len() + self.suffix.len() + 32);
        // Writing to a String cannot fail.
        let _ = write!(out, "{}{n},\"t\":{t}{}", self.prefix, self.suffix);
        out
    }
}

/// The `tick` of a `next` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub n: u64,
    pub t: u64,
}

#[derive(Deserialize)]
struct Payload {
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    tick: WireTick,
}

#[derive(Deserialize)]
struct WireTick {
    n: u64,
    t: u64,
}

impl Tick {
    /// Reads a `next` payload; `None` when it is not a tick result (e.g. an errors-only
    /// result, which is how subplex reports a subscription it cut off).
    pub fn decode(payload: &str) -> Option<Tick> {
        let payload: Payload = serde_json::from_str(payload).ok()?;
        Some(Tick {
            n: payload.data.tick.n,
            t: payload.data.tick.t,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use subplex_protocol::transport_ws::ServerMessage;

    #[test]
    fn frames_decode_as_next_with_the_tick() {
        let frame = NextFrame::new("op \"7\"", 256);
        let text = frame.encode(4242, 1_700_000_000_123_456_789);
        let ServerMessage::Next { id, payload } = ServerMessage::decode(&text, 1 << 20).unwrap()
        else {
            panic!("not a next frame: {text}");
        };
        assert_eq!(id, "op \"7\"");
        assert_eq!(payload.as_str().len(), 256);
        assert_eq!(
            Tick::decode(payload.as_str()),
            Some(Tick {
                n: 4242,
                t: 1_700_000_000_123_456_789
            })
        );
    }

    #[test]
    fn small_payload_sizes_mean_no_padding() {
        let text = NextFrame::new("1", 0).encode(1, 2);
        assert!(text.contains(r#""pad":"""#), "{text}");
    }

    #[test]
    fn error_results_are_not_ticks() {
        assert_eq!(Tick::decode(r#"{"errors":[{"message":"cut off"}]}"#), None);
    }

    #[test]
    fn tick_queries() {
        assert!(is_tick_subscription(QUERY));
        assert!(!is_tick_subscription("query { tick }"));
        assert!(!is_tick_subscription("subscription { other }"));
    }
}
