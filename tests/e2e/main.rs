//! End-to-end tests: the gateway in-process, real Node GraphQL servers as upstreams and
//! real client libraries as clients. One binary, one module per area.

mod legacy_ws;
mod matrix;
mod multiplexing;
mod probe;
mod sse;
mod transport_ws;
mod upstream_failure;
mod upstream_protocol;
