//! Legacy `graphql-ws` server frames, deprecated aliases included: `legacy_ws::ServerMessage::decode`.
//!
//! Decoding must never panic; whatever decodes must encode to a frame that decodes to an
//! equal value (the oracle is shared with the property tests in `tests/properties.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/mod.rs"]
mod support;

/// The limit the gateway applies by default; frames over it exercise `TooLarge`.
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 by the time a decoder sees them.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    support::check_legacy_server(text, LIMIT);
    support::check_legacy_server(text, text.len().saturating_sub(1));
});
