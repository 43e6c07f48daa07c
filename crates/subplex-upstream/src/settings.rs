//! Plain settings for one upstream, built by the gateway from its validated config.

use std::sync::Arc;
use std::time::Duration;

use subplex_protocol::Subprotocol;

use crate::ReconnectSettings;

/// Everything the upstream layer needs to know about one GraphQL server.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The upstream's name in the config; part of every security context.
    pub name: Arc<str>,
    /// `ws://` or `wss://` URL of the WebSocket endpoint.
    pub ws_url: url::Url,
    /// The dialect spoken to this upstream.
    pub protocol: Subprotocol,
    /// Close a connection this long after its last subscription ended.
    pub idle_timeout: Duration,
    /// Give up on the TCP + WebSocket handshake after this long.
    pub connect_timeout: Duration,
    /// Give up waiting for `connection_ack` after this long.
    pub ack_timeout: Duration,
    /// Send a WebSocket ping this often.
    pub keepalive_interval: Duration,
    /// Declare the upstream dead when nothing was heard for `keepalive_interval` plus this.
    pub keepalive_timeout: Duration,
    /// Largest frame accepted from the upstream.
    pub max_message_bytes: usize,
    /// Events buffered per subscriber before the slow-consumer policy cuts it off.
    pub subscriber_queue: usize,
    /// TLS for `wss://` URLs: trusted roots and protocol versions. `None` refuses `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Backoff and give-up window after a retryable failure.
    pub reconnect: ReconnectSettings,
}

impl UpstreamSettings {
    /// Settings with the documented defaults for `name` at `ws_url`.
    pub fn new(name: &str, ws_url: url::Url, protocol: Subprotocol) -> Self {
        UpstreamSettings {
            name: Arc::from(name),
            ws_url,
            protocol,
            idle_timeout: Duration::from_millis(30_000),
            connect_timeout: Duration::from_millis(5_000),
            ack_timeout: Duration::from_millis(5_000),
            keepalive_interval: Duration::from_millis(10_000),
            keepalive_timeout: Duration::from_millis(10_000),
            max_message_bytes: 1024 * 1024,
            subscriber_queue: 128,
            tls: None,
            reconnect: ReconnectSettings::default(),
        }
    }
}
