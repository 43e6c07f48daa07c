//! The gateway as a client of an SSE upstream, and the protocol probe: an upstream
//! `next` event's data (`sse_client::decode_event`), the per-event size guard fed whole
//! and byte by byte, and any frame a probed server might send (`probe::ProbeFrame`,
//! `HandshakeJudge`).
//!
//! Nothing may panic; a decoded result must be the data untouched; the size guard must
//! not depend on chunking (the oracles are shared with `tests/properties.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/mod.rs"]
mod support;

/// The limit the gateway applies by default; inputs over it exercise `TooLarge`.
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    support::check_event_size_guard(data, data.len() / 2);
    // Event data and WebSocket text frames are UTF-8 by the time they are decoded.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    support::check_sse_upstream_event(text, LIMIT);
    support::check_sse_upstream_event(text, text.len().saturating_sub(1));
    support::check_probe_frame(text);
});
