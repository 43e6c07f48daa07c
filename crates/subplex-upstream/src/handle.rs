//! The handle others hold to talk to an upstream connection task.

use subplex_protocol::GraphqlRequest;
use tokio::sync::{mpsc, oneshot};

use crate::request_key::RequestKey;
use crate::{Subscription, UpstreamError};

/// A request to the connection task.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        request: GraphqlRequest,
        /// Set when deduplication is on; computed by the caller, off the connection task.
        dedup_key: Option<RequestKey>,
        reply: oneshot::Sender<Result<Subscription, SubscribeRefused>>,
    },
}

/// Why a connection did not take a subscription.
#[derive(Debug)]
pub(crate) enum SubscribeRefused {
    /// The connection is closing (idle); the pool should open a new one.
    Closing,
    /// The connection failed; the subscriber gets this error.
    Failed(UpstreamError),
}

/// A cheap, cloneable handle to one upstream connection task.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamHandle {
    /// Unique per connection, so the pool removes only the entry it means to.
    pub id: u64,
    pub commands: mpsc::Sender<Command>,
}

impl UpstreamHandle {
    /// Asks the connection to start `request`, or to join the running operation with the
    /// same `dedup_key`. Waits while the connection's first dial is under way; during a
    /// later outage the operation is taken at once and starts with the next socket.
    pub async fn subscribe(
        &self,
        request: GraphqlRequest,
        dedup_key: Option<RequestKey>,
    ) -> Result<Subscription, SubscribeRefused> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::Subscribe {
                request,
                dedup_key,
                reply,
            })
            .await
            .map_err(|_| SubscribeRefused::Closing)?;
        response.await.unwrap_or(Err(SubscribeRefused::Closing))
    }
}
