//! Everything that faces clients ("downstream"): WebSocket sessions in both dialects,
//! SSE streams, and plain HTTP forwarding.

pub(crate) mod http;
mod operation;
pub(crate) mod sse;
pub(crate) mod ws;
