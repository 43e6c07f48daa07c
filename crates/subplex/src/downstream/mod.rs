//! Everything that faces clients ("downstream"): WebSocket sessions in both dialects,
//! SSE streams (distinct and single-connection), Apollo multipart subscriptions, and
//! plain HTTP forwarding.

mod hooks;
pub(crate) mod http;
pub(crate) mod multipart;
pub(crate) mod operation;
mod operation_body;
mod operation_streams;
pub(crate) mod origins;
pub(crate) mod reservations;
pub(crate) mod sse;
mod sse_resume;
pub(crate) mod sse_single;
mod streaming;
pub(crate) mod ws;
