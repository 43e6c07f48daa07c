//! Plain settings for one upstream, built by the gateway from its validated config.

use std::sync::Arc;
use std::time::Duration;

use subplex_protocol::Subprotocol;

use crate::{ReconnectSettings, SettingsFingerprint, UpstreamStats};

/// How subplex talks to an upstream, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// Find out by probing the upstream ([`crate::probe`]) before the first connection.
    Auto,
    /// WebSocket `graphql-transport-ws` (the graphql-ws library).
    GraphqlTransportWs,
    /// WebSocket `graphql-ws` (legacy subscriptions-transport-ws, Hasura).
    GraphqlWs,
    /// GraphQL over SSE, distinct-connections mode (graphql-sse, Yoga): one HTTP request
    /// per operation ([`crate::sse`]).
    Sse,
}

impl UpstreamProtocol {
    /// The config value.
    pub const fn config_name(self) -> &'static str {
        match self {
            UpstreamProtocol::Auto => "auto",
            UpstreamProtocol::GraphqlTransportWs => "graphql-transport-ws",
            UpstreamProtocol::GraphqlWs => "graphql-ws",
            UpstreamProtocol::Sse => "sse",
        }
    }

    /// The protocol with this config value.
    pub fn from_config_name(name: &str) -> Option<Self> {
        [
            UpstreamProtocol::Auto,
            UpstreamProtocol::GraphqlTransportWs,
            UpstreamProtocol::GraphqlWs,
            UpstreamProtocol::Sse,
        ]
        .into_iter()
        .find(|p| p.config_name() == name)
    }
}

impl From<Subprotocol> for UpstreamProtocol {
    fn from(dialect: Subprotocol) -> Self {
        match dialect {
            Subprotocol::GraphqlTransportWs => UpstreamProtocol::GraphqlTransportWs,
            Subprotocol::GraphqlWs => UpstreamProtocol::GraphqlWs,
        }
    }
}

/// The HTTP method of GraphQL over SSE requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SseMethod {
    /// A JSON body; works for every operation and every server.
    #[default]
    Post,
    /// The request in the query string; some servers and caches want it. No mutations.
    Get,
}

impl SseMethod {
    /// `"POST"` or `"GET"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SseMethod::Post => "POST",
            SseMethod::Get => "GET",
        }
    }
}

/// Everything the upstream layer needs to know about one GraphQL server.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The upstream's name in the config; part of every security context.
    pub name: Arc<str>,
    /// `ws://` or `wss://` URL of the WebSocket endpoint.
    pub ws_url: url::Url,
    /// `http://` or `https://` URL of the GraphQL endpoint: GraphQL over SSE and the
    /// probe's SSE step go here.
    pub http_url: url::Url,
    /// The protocol as configured: a fixed one, or `Auto`.
    pub configured_protocol: UpstreamProtocol,
    /// The WebSocket dialect connections speak: the configured one, or for `Auto` the one a
    /// probe found (until then `graphql-transport-ws`, which nothing uses before the probe).
    pub protocol: Subprotocol,
    /// The method of GraphQL over SSE requests.
    pub sse_method: SseMethod,
    /// Close a connection this long after its last subscription ended.
    pub idle_timeout: Duration,
    /// Give up on the TCP + WebSocket handshake after this long.
    pub connect_timeout: Duration,
    /// Give up waiting for `connection_ack` after this long; for GraphQL over SSE, for the
    /// response head.
    pub ack_timeout: Duration,
    /// Send a WebSocket ping this often.
    pub keepalive_interval: Duration,
    /// Declare the upstream dead when nothing was heard for `keepalive_interval` plus this.
    pub keepalive_timeout: Duration,
    /// Largest frame accepted from the upstream.
    pub max_message_bytes: usize,
    /// Events buffered per subscriber before the slow-consumer policy cuts it off.
    pub subscriber_queue: usize,
    /// Payload bytes buffered per subscriber (beyond its first queued event) before the
    /// slow-consumer policy cuts it off.
    pub subscriber_queue_bytes: usize,
    /// Run operations of one security context whose normalised requests are equal as one
    /// upstream operation (WebSocket upstreams).
    pub dedup: bool,
    /// TLS for `wss://` URLs: trusted roots and protocol versions. `None` refuses `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Backoff and give-up window after a retryable failure.
    pub reconnect: ReconnectSettings,
    /// A hash of everything configured for this upstream; part of every security context.
    pub fingerprint: SettingsFingerprint,
    /// Where this upstream's tasks count what they do. The gateway puts in the one its
    /// metrics read; every clone of these settings shares it.
    pub stats: Arc<UpstreamStats>,
}

impl UpstreamSettings {
    /// The error a subscriber cut off by the slow-consumer policy gets.
    pub(crate) fn slow_consumer(&self) -> crate::UpstreamError {
        crate::UpstreamError::SlowConsumer {
            queued_events: self.subscriber_queue,
            queued_bytes: self.subscriber_queue_bytes,
        }
    }

    /// Settings with the documented defaults for `name` at `ws_url`; `http_url` is
    /// `ws_url` with ws→http, wss→https.
    pub fn new(name: &str, ws_url: url::Url, protocol: Subprotocol) -> Self {
        let mut http_url = ws_url.clone();
        // ws→http and wss→https are always valid scheme changes.
        let _ = http_url.set_scheme(if ws_url.scheme() == "wss" {
            "https"
        } else {
            "http"
        });
        UpstreamSettings {
            name: Arc::from(name),
            ws_url,
            http_url,
            configured_protocol: protocol.into(),
            protocol,
            sse_method: SseMethod::Post,
            idle_timeout: Duration::from_millis(30_000),
            connect_timeout: Duration::from_millis(5_000),
            ack_timeout: Duration::from_millis(5_000),
            keepalive_interval: Duration::from_millis(10_000),
            keepalive_timeout: Duration::from_millis(10_000),
            max_message_bytes: 1024 * 1024,
            subscriber_queue: 128,
            subscriber_queue_bytes: 1024 * 1024,
            dedup: true,
            tls: None,
            reconnect: ReconnectSettings::default(),
            fingerprint: SettingsFingerprint::default(),
            stats: Arc::default(),
        }
    }
}
