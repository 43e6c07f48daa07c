//! One OpenTelemetry span per client operation (cargo feature `otlp`).
//!
//! With the feature, [`OperationSpan`] is a `tracing` span on target `subplex::operation`
//! that lives as long as the operation: it carries the client side (transport, client id,
//! operation name) and the upstream side (upstream, its protocol, the security context's
//! short hash, and a child span `upstream subscribe` for starting the upstream operation),
//! and records why the operation ended (`complete`, `error`, `cancelled`, or the upstream
//! failure's code such as `UPSTREAM_UNAVAILABLE` or `SLOW_CONSUMER`) and how many events
//! reached the client. `telemetry` exports these spans over OTLP.
//!
//! Without the feature, it is a zero-sized type whose methods do nothing, so an operation
//! costs no span, no allocation and no byte of memory.

#[cfg(feature = "otlp")]
pub(crate) use enabled::OperationSpan;

/// The target of operation spans: what the OTLP layer's filter lets through.
#[cfg(feature = "otlp")]
pub(crate) const OPERATION_TARGET: &str = "subplex::operation";

#[cfg(feature = "otlp")]
mod enabled {
    use std::future::Future;

    use tracing::Instrument;

    use super::OPERATION_TARGET;
    use crate::downstream::operation::Operation;

    /// The span of one client operation; ends (and is exported) when dropped.
    #[derive(Debug)]
    pub(crate) struct OperationSpan {
        span: tracing::Span,
        events: u64,
        ended: bool,
    }

    impl OperationSpan {
        pub fn start(operation: &Operation) -> OperationSpan {
            let name = operation
                .request
                .operation_name
                .as_deref()
                .unwrap_or("graphql operation");
            let span = tracing::info_span!(
                target: OPERATION_TARGET,
                "operation",
                otel.name = name,
                otel.kind = "server",
                subplex.transport = operation.client.transport,
                subplex.client_operation_id = &*operation.id,
                subplex.upstream = &*operation.upstream.config.settings.name,
                subplex.security_context = %operation.connect.key,
                subplex.upstream_protocol = tracing::field::Empty,
                subplex.events = tracing::field::Empty,
                subplex.end_reason = tracing::field::Empty,
            );
            OperationSpan {
                span,
                events: 0,
                ended: false,
            }
        }

        /// Runs the upstream subscribe under a child span.
        pub fn subscribing<F: Future>(
            &self,
            upstream: &crate::state::Upstream,
            subscribe: F,
        ) -> impl Future<Output = F::Output> {
            let child = tracing::info_span!(
                target: OPERATION_TARGET,
                parent: &self.span,
                "upstream subscribe",
                subplex.upstream = &*upstream.config.settings.name,
            );
            subscribe.instrument(child)
        }

        /// The upstream operation started on this protocol.
        pub fn upstream_protocol(&self, protocol: Option<&'static str>) {
            if let Some(protocol) = protocol {
                self.span.record("subplex.upstream_protocol", protocol);
            }
        }

        /// One event handed to the client.
        pub fn event(&mut self) {
            self.events += 1;
        }

        /// Events delivered without passing through the operation's stream
        /// (write-through).
        pub fn add_events(&mut self, events: u64) {
            self.events += events;
        }

        /// Why the operation ended; the first reason recorded wins.
        pub fn end(&mut self, reason: &str) {
            if !self.ended {
                self.ended = true;
                self.span.record("subplex.end_reason", reason);
            }
        }
    }

    impl Drop for OperationSpan {
        /// Dropped without an end: the client stopped the operation or left.
        fn drop(&mut self) {
            self.end("cancelled");
            // As i64: the OpenTelemetry bridge records a u64 field as a string.
            let events = i64::try_from(self.events).unwrap_or(i64::MAX);
            self.span.record("subplex.events", events);
        }
    }
}

/// Without the `otlp` feature: nothing.
#[cfg(not(feature = "otlp"))]
#[derive(Debug)]
pub(crate) struct OperationSpan;

#[cfg(not(feature = "otlp"))]
impl OperationSpan {
    pub fn start(_operation: &crate::downstream::operation::Operation) -> OperationSpan {
        OperationSpan
    }

    pub fn subscribing<F: std::future::Future>(
        &self,
        _upstream: &crate::state::Upstream,
        subscribe: F,
    ) -> F {
        subscribe
    }

    pub fn upstream_protocol(&self, _protocol: Option<&'static str>) {}

    pub fn event(&mut self) {}

    pub fn add_events(&mut self, _events: u64) {}

    pub fn end(&mut self, _reason: &str) {}
}
