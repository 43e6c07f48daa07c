//! GraphQL over SSE requests: `sse::request_from_body` (POST, raw bytes) and
//! `sse::request_from_query` (GET query string).
//!
//! Parsing must never panic; whatever parses must encode (as a JSON body and as GET
//! parameters) to something that parses to an equal request (the oracle is shared with the
//! property tests in `tests/properties.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/mod.rs"]
mod support;

fuzz_target!(|data: &[u8]| {
    // POST bodies are raw bytes: invalid UTF-8 must be an error, not a panic.
    support::check_sse_body(data);
    // A query string is whatever follows `?` in the request target.
    let query = String::from_utf8_lossy(data);
    support::check_sse_query(&query);
});
