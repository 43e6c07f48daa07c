//! Counts of what happened on one upstream, for the gateway's metrics.
//!
//! Plain atomics, not a metrics library: this crate stays free of Prometheus, and the
//! gateway reads the counts when it is scraped. Each count costs one relaxed atomic add
//! where it happens; nothing here locks or allocates.

use std::sync::atomic::{AtomicU64, Ordering};

/// What one upstream's connections and operations did since start. Shared (in an `Arc`)
/// by every pool, connection and operation task of the upstream, through
/// [`UpstreamSettings::stats`](crate::UpstreamSettings::stats).
#[derive(Debug, Default)]
pub struct UpstreamStats {
    events_in: AtomicU64,
    reconnects: AtomicU64,
}

impl UpstreamStats {
    /// Events (`next`, `error`, `complete`) read from the upstream for an operation the
    /// gateway still had, whether or not the subscriber's queue took them.
    pub fn events_in(&self) -> u64 {
        self.events_in.load(Ordering::Relaxed)
    }

    /// Connections established again after a retryable failure; over GraphQL over SSE,
    /// each operation's request sent again after its stream failed.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub(crate) fn event_in(&self) {
        self.events_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}
