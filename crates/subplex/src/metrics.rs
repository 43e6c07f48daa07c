//! Prometheus metrics, served at `/metrics` in OpenMetrics text.
//!
//! Every metric is an atomic created once, at start-up, per label value; the places where
//! events happen hold a handle to theirs, so an event costs one atomic add, with no lock,
//! lookup or allocation (the latency histogram: two, its bucket and its sum). What the
//! upstream crate counts ([`UpstreamStats`]: events read, reconnects) and its connection
//! counts are read at scrape time, so that crate needs no metrics library.
//!
//! Main types: [`Metrics`] (the registry), [`UpstreamMetrics`] (one upstream's counts, for
//! the places that count), [`LatencyHistogram`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use subplex_protocol::Subprotocol;
use subplex_upstream::UpstreamStats;
use tokio::time::Instant;

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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamDirectionLabels {
    upstream: String,
    direction: &'static str,
}

/// The gateway's metrics and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    /// Indexed like [`ClientTransport::ALL`].
    client_connections: [Gauge; 5],
    operations_active: Family<UpstreamLabel, Gauge>,
    upstream_connections: Family<UpstreamProtocolLabels, Gauge>,
    /// Events, reconnects, hook errors, latency and cuts, read at scrape time.
    counts: Arc<Counts>,
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
        let counts = Arc::new(Counts::default());
        registry.register_collector(Box::new(counts.clone()));
        Metrics {
            registry,
            client_connections,
            operations_active,
            upstream_connections,
            counts,
        }
    }

    /// The counts of the upstream named `name`, created on first use; the same ones for
    /// the same name afterwards, so counters run on across a rebuild of the upstream.
    pub fn upstream(&self, name: &str) -> Arc<UpstreamMetrics> {
        let mut upstreams = self
            .counts
            .upstreams
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = upstreams.iter().find(|u| &*u.name == name) {
            return found.clone();
        }
        let created = Arc::new(UpstreamMetrics {
            name: Arc::from(name),
            stats: Arc::default(),
            latency: LatencyHistogram::default(),
            hook_errors: AtomicU64::new(0),
        });
        upstreams.push(created.clone());
        created
    }

    /// Client connections open now, by `transport` label.
    pub fn client_connection_counts(&self) -> Vec<(&'static str, i64)> {
        ClientTransport::ALL
            .iter()
            .zip(&self.client_connections)
            .map(|(transport, gauge)| (transport.label(), gauge.get()))
            .collect()
    }

    /// Clients cut since start, by `reason` label.
    pub fn cut_counts(&self) -> [(&'static str, u64); 3] {
        self.counts.cuts()
    }

    /// The counter of clients closed for going over a limit (`reason="limit"`).
    pub fn limit_cuts(&self) -> Counter {
        self.counts.limit_cuts.clone()
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
        self.counts.write_timeout_cuts.clone()
    }

    /// The counter of clients ended as too slow (`reason="slow_consumer"`).
    pub fn slow_consumer_cuts(&self) -> Counter {
        self.counts.slow_consumer_cuts.clone()
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

/// One upstream's counts: what its tasks count ([`UpstreamStats`]), and what the gateway
/// counts for it. Every place that counts for an upstream holds one (through
/// [`crate::state::Upstream::metrics`]).
#[derive(Debug)]
pub(crate) struct UpstreamMetrics {
    name: Arc<str>,
    /// Handed to the upstream crate in the upstream's settings.
    pub stats: Arc<UpstreamStats>,
    /// From an event's frame read upstream to the event handed to its client; its count
    /// is the number of events sent to clients (`direction="out"`).
    latency: LatencyHistogram,
    hook_errors: AtomicU64,
}

impl UpstreamMetrics {
    /// One event, read from the upstream at `read_at`, handed to its client now.
    pub fn delivered(&self, read_at: Option<Instant>) {
        let latency = read_at.map(|at| at.elapsed()).unwrap_or_default();
        self.latency.observe(latency);
    }

    /// A hook script of this upstream failed (an error in it or a limit it hit; not a
    /// deliberate `throw`). Every hook point calls this where it handles the failure.
    pub fn hook_failed(&self) {
        self.hook_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Events read from the upstream.
    pub fn events_in(&self) -> u64 {
        self.stats.events_in()
    }

    /// Events handed to clients.
    pub fn events_out(&self) -> u64 {
        self.latency.count()
    }

    /// Hook script failures.
    pub fn hook_errors(&self) -> u64 {
        self.hook_errors.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency buckets, in nanoseconds (100 µs to 2.5 s; the last bucket,
/// `+Inf`, takes the rest). An event normally crosses the gateway in well under a
/// millisecond; the upper buckets catch events that waited in a slow client's queue.
const LATENCY_BOUNDS_NANOS: [u64; 14] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// A histogram of durations that records without a lock: one atomic add for the bucket,
/// one for the sum. (`prometheus-client`'s `Histogram` takes a lock per observation.)
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// Observations per bucket, not cumulative; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }

    /// `(upper bound in seconds, observations)` per bucket, not cumulative.
    fn buckets(&self) -> Vec<(f64, u64)> {
        LATENCY_BOUNDS_NANOS
            .iter()
            .map(|&bound| bound as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect()
    }

    fn sum_seconds(&self) -> f64 {
        self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// Reads one count of an upstream.
type CountOf = fn(&UpstreamMetrics) -> u64;

/// The counts read at scrape time: per upstream, and the client cuts by reason.
#[derive(Debug, Default)]
struct Counts {
    upstreams: RwLock<Vec<Arc<UpstreamMetrics>>>,
    write_timeout_cuts: Counter,
    limit_cuts: Counter,
    slow_consumer_cuts: Counter,
}

impl Counts {
    /// Clients cut since start, by `reason` label. Each client once: by the session that
    /// ended it, not by the operations cut (a client's operations may be cut several at
    /// a time, and one cut ends the client).
    fn cuts(&self) -> [(&'static str, u64); 3] {
        [
            ("slow_consumer", self.slow_consumer_cuts.get()),
            ("write_timeout", self.write_timeout_cuts.get()),
            ("limit", self.limit_cuts.get()),
        ]
    }
}

impl Collector for Counts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let upstreams = self
            .upstreams
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let counter = |value: u64| ConstCounter::new(value);

        let mut events = encoder.encode_descriptor(
            "events",
            "Events by upstream: read from the upstream (in), handed to clients (out)",
            None,
            MetricType::Counter,
        )?;
        for upstream in &upstreams {
            for (direction, value) in [("in", upstream.events_in()), ("out", upstream.events_out())]
            {
                let labels = UpstreamDirectionLabels {
                    upstream: upstream.name.to_string(),
                    direction,
                };
                counter(value).encode(events.encode_family(&labels)?)?;
            }
        }

        let per_upstream: [(&str, &str, CountOf); 2] = [
            (
                "upstream_reconnects",
                "Upstream connections established again after a failure (GraphQL over SSE: operation requests sent again)",
                |u| u.stats.reconnects(),
            ),
            (
                "hook_errors",
                "Hook script failures (errors in the script or limits it hit), by upstream",
                UpstreamMetrics::hook_errors,
            ),
        ];
        for (name, help, value) in per_upstream {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for upstream in &upstreams {
                let labels = UpstreamLabel {
                    upstream: upstream.name.to_string(),
                };
                counter(value(upstream)).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut latency = encoder.encode_descriptor(
            "upstream_to_client_latency",
            "Time from an event's frame read from the upstream to the event handed to its client",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for upstream in &upstreams {
            let labels = UpstreamLabel {
                upstream: upstream.name.to_string(),
            };
            let histogram = &upstream.latency;
            latency
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    histogram.sum_seconds(),
                    histogram.count(),
                    &histogram.buckets(),
                    None,
                )?;
        }

        let mut cuts = encoder.encode_descriptor(
            "client_cuts",
            "Clients cut off by the gateway, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in self.cuts() {
            counter(value).encode(cuts.encode_family(&ReasonLabel { reason })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(100));
        histogram.observe(Duration::from_micros(101));
        histogram.observe(Duration::from_secs(3));
        let buckets = histogram.buckets();
        assert_eq!(buckets[0], (0.0001, 1));
        assert_eq!(buckets[1], (0.00025, 1));
        assert_eq!(buckets[14], (f64::INFINITY, 1));
        assert_eq!(histogram.count(), 3);
        assert_eq!(histogram.sum_nanos.load(Ordering::Relaxed), 3_000_201_000);
    }
}
