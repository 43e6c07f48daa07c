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
    let send = |event: Event| {
        let out = out.clone();
        let id = id.clone();
        async move {
            out.send(Outbound {
                id,
                generation,
                event,
            })
            .await
            .is_ok()
        }
    };
    let mut subscription = match upstream.pool.subscribe(&params, request).await {
        Ok(subscription) => subscription,
        Err(error) => {
            debug!(%error, "operation could not start upstream");
            for event in failure_events(&error) {
                if !send(event).await {
                    return;
                }
            }
            return;
        }
    };
    while let Some(item) = subscription.recv().await {
        let events = match item {
            Ok(event) => vec![event],
            Err(error) => failure_events(&error).to_vec(),
        };
        for event in events {
            if !send(event).await {
                return;
            }
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
