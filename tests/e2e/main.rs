//! End-to-end tests: the gateway in-process, real Node GraphQL servers as upstreams and
//! real client libraries as clients. One binary, one module per area.

mod backpressure;
mod browser;
mod dedup;
mod hook_examples;
mod hooks;
mod http1_streams;
mod legacy_ws;
mod matrix;
mod multipart;
mod multiplexing;
mod observability;
mod operations;
mod origins;
#[cfg(feature = "otlp")]
mod otlp;
mod probe;
mod sessions;
mod shutdown;
mod sse;
mod sse_resume;
mod sse_single;
mod tls;
mod transport_ws;
mod upstream_failure;
mod upstream_protocol;
