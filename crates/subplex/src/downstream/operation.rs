//! One client operation's way to and from its upstream, shared by every downstream kind.
//!
//! The operation runs as its own task so that waiting for an upstream connection never
//! blocks the client session. It forwards events into the session's bounded queue; when
//! that queue is full the task waits, its upstream queue fills, and the upstream
//! connection cuts the subscription off (slow-consumer policy) instead of buffering.

use std::sync::Arc;

use subplex_protocol::{Event, GraphqlRequest, RawJson};
use subplex_upstream::{ConnectParams, UpstreamError};
use tokio::sync::mpsc;
use tracing::debug;

use crate::routes::Upstream;

/// Events a session receives from its operations, tagged so that a late event of an
/// operation that was already replaced under the same client id is recognised.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub id: Arc<str>,
    pub generation: u64,
    pub event: Event,
}

/// Runs one operation to its end, sending every event to `out`. Dropping the future
/// (abort) drops the upstream subscription, which stops the operation upstream.
pub(crate) async fn run(
    upstream: Arc<Upstream>,
    params: ConnectParams,
    request: GraphqlRequest,
    id: Arc<str>,
    generation: u64,
    out: mpsc::Sender<Outbound>,
) {
    let mut subscription = match upstream.pool.subscribe(&params, request).await {
        Ok(subscription) => subscription,
        Err(error) => {
            debug!(%error, "operation could not start upstream");
            deliver_failure(&out, &id, generation, &error).await;
            return;
        }
    };
    // The hot path: one event in, one event out, no allocation besides the id's refcount.
    while let Some(item) = subscription.recv().await {
        match item {
            Ok(event) => {
                if !deliver(&out, &id, generation, event).await {
                    return; // The session is gone; dropping the subscription stops it.
                }
            }
            Err(error) => {
                deliver_failure(&out, &id, generation, &error).await;
                return;
            }
        }
    }
}

/// Queues one event for the session; false once the session has ended.
async fn deliver(
    out: &mpsc::Sender<Outbound>,
    id: &Arc<str>,
    generation: u64,
    event: Event,
) -> bool {
    let outbound = Outbound {
        id: id.clone(),
        generation,
        event,
    };
    out.send(outbound).await.is_ok()
}

async fn deliver_failure(
    out: &mpsc::Sender<Outbound>,
    id: &Arc<str>,
    generation: u64,
    error: &UpstreamError,
) {
    for event in failure_events(error) {
        if !deliver(out, id, generation, event).await {
            return;
        }
    }
}

/// An upstream failure as the client sees it: a result carrying the GraphQL error, then
/// completion. Every client library surfaces that as data plus a clean end, in every
/// dialect, rather than as a transport error some libraries would retry.
pub(crate) fn failure_events(error: &UpstreamError) -> [Event; 2] {
    let errors = error.to_graphql_errors();
    let result = format!("{{\"errors\":{}}}", errors.as_str());
    // Built from a valid errors array, so it is valid JSON.
    let result = RawJson::parse(&result).unwrap_or_else(|_| RawJson::empty_object());
    [Event::Next(result), Event::Complete]
}
