//! Prometheus metrics, served at `/metrics` in OpenMetrics text.
//!
//! Every metric is an atomic created once, at start-up, per label value; the places where
//! events happen hold a handle to theirs, so an event costs one atomic add, with no lock,
//! lookup or allocation. Upstream connection counts are read from the pools at scrape
//! time instead, so the upstream crate needs no instrumenting.

use std::fmt;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use subplex_protocol::Subprotocol;

/// The `Content-Type` of the exposition (what `prometheus-client` writes).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How a client is connected, as the `transport` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientTransport {
    GraphqlTransportWs,
    GraphqlWs,
    Sse,
    SseSingleConnection,
    Multipart,
}

impl ClientTransport {
    const ALL: [ClientTransport; 5] = [
        ClientTransport::GraphqlTransportWs,
        ClientTransport::GraphqlWs,
        ClientTransport::Sse,
        ClientTransport::SseSingleConnection,
        ClientTransport::Multipart,
    ];

    fn label(self) -> &'static str {
        match self {
            ClientTransport::GraphqlTransportWs => "graphql-transport-ws",
            ClientTransport::GraphqlWs => "graphql-ws",
            ClientTransport::Sse => "sse",
            ClientTransport::SseSingleConnection => "sse-single-connection",
            ClientTransport::Multipart => "multipart",
        }
    }
}

impl From<Subprotocol> for ClientTransport {
    fn from(subprotocol: Subprotocol) -> Self {
        match subprotocol {
            Subprotocol::GraphqlTransportWs => ClientTransport::GraphqlTransportWs,
            Subprotocol::GraphqlWs => ClientTransport::GraphqlWs,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamProtocolLabels {
    upstream: String,
    protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The gateway's metrics and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    /// Indexed like [`ClientTransport::ALL`].
    client_connections: [Gauge; 5],
    operations_active: Family<UpstreamLabel, Gauge>,
    upstream_connections: Family<UpstreamProtocolLabels, Gauge>,
    client_cuts: Family<ReasonLabel, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("subplex");
        let client_connections_family = Family::<TransportLabel, Gauge>::default();
        let client_connections = ClientTransport::ALL.map(|transport| {
            client_connections_family.get_or_create_owned(&TransportLabel {
                transport: transport.label(),
            })
        });
        registry.register(
            "client_connections",
            "Client connections open, by transport: WebSocket sessions after the upgrade, SSE and multipart streams while their response is open",
            client_connections_family,
        );
        let operations_active = Family::default();
        registry.register(
            "operations_active",
            "Client operations running, by upstream, from the client's subscribe until the operation ends",
            operations_active.clone(),
        );
        let upstream_connections = Family::default();
        registry.register(
            "upstream_connections",
            "Upstream connections open (connecting, serving, reconnecting or closing), by upstream and protocol, read from the pools at scrape time",
            upstream_connections.clone(),
        );
        let client_cuts = Family::default();
        registry.register(
            "client_cuts",
            "Clients cut off by the gateway, by reason",
            client_cuts.clone(),
        );
        Metrics {
            registry,
            client_connections,
            operations_active,
            upstream_connections,
            client_cuts,
        }
    }

    /// Counts a client connection of `transport` as open until the returned guard drops.
    pub fn client_connected(&self, transport: ClientTransport) -> OpenGauge {
        let index = ClientTransport::ALL
            .iter()
            .position(|&t| t == transport)
            .unwrap_or(0);
        OpenGauge::open(self.client_connections[index].clone())
    }

    /// The gauge of operations running on `upstream`, for its [`crate::state::Upstream`].
    pub fn operations_active(&self, upstream: &str) -> Gauge {
        self.operations_active.get_or_create_owned(&UpstreamLabel {
            upstream: upstream.to_owned(),
        })
    }

    /// The counter of clients cut for a write that timed out (`reason="write_timeout"`).
    pub fn write_timeout_cuts(&self) -> Counter {
        self.client_cuts.get_or_create_owned(&ReasonLabel {
            reason: "write_timeout",
        })
    }

    /// The exposition, with the upstream connections as the pools count them now.
    pub fn encode<'a>(
        &self,
        upstream_connections: impl IntoIterator<Item = (&'a str, &'static str, usize)>,
    ) -> String {
        // Rebuilt at each scrape: a re-probe can change an upstream's protocol, and the
        // old label must not linger.
        self.upstream_connections.clear();
        for (upstream, protocol, open) in upstream_connections {
            self.upstream_connections
                .get_or_create(&UpstreamProtocolLabels {
                    upstream: upstream.to_owned(),
                    protocol,
                })
                .set(i64::try_from(open).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A gauge counted up while this lives: one per open client connection or operation.
#[derive(Debug)]
pub(crate) struct OpenGauge(Gauge);

impl OpenGauge {
    pub fn open(gauge: Gauge) -> OpenGauge {
        gauge.inc();
        OpenGauge(gauge)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
