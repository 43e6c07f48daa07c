//! `/status.json`: what the status page shows, read from the metrics and the pools at
//! request time. Security contexts appear as the first 8 hex digits of their hash only.

use serde_json::{json, Value};

use crate::state::GatewayState;

/// The gateway's state now.
pub(super) fn snapshot(state: &GatewayState) -> Value {
    let routes = state.routes();
    let upstreams: Vec<Value> = routes
        .upstreams()
        .into_iter()
        .map(|upstream| {
            let pool = &upstream.pool;
            let mut connections: Vec<(String, usize)> = pool
                .open_connections_by_context()
                .into_iter()
                .map(|(key, open)| (key.short(), open))
                .collect();
            connections.sort();
            let metrics = &upstream.metrics;
            json!({
                "name": &*upstream.config.settings.name,
                "configured_protocol": upstream.config.settings.configured_protocol.config_name(),
                "protocol": pool.current_protocol(),
                "probe": pool.last_probe().map(|probe| json!({
                    "protocol": probe.protocol,
                    "evidence": probe.evidence,
                })),
                "operations": upstream.operations_active.get(),
                "events_in": metrics.events_in(),
                "events_out": metrics.events_out(),
                "reconnects": metrics.stats.reconnects(),
                "hook_errors": metrics.hook_errors(),
                "connections": connections
                    .into_iter()
                    .map(|(context, open)| json!({ "context": context, "open": open }))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let clients: serde_json::Map<String, Value> = state
        .metrics
        .client_connection_counts()
        .into_iter()
        .map(|(transport, open)| (transport.to_owned(), json!(open)))
        .collect();
    let cuts: serde_json::Map<String, Value> = state
        .metrics
        .cut_counts()
        .into_iter()
        .map(|(reason, count)| (reason.to_owned(), json!(count)))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": state.is_ready(),
        "clients": clients,
        "cuts": cuts,
        "upstreams": upstreams,
    })
}
