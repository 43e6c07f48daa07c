//! One operation's stream of events from an upstream connection.

use std::sync::{Arc, OnceLock};

use subplex_protocol::Event;
use tokio::sync::mpsc;

use crate::UpstreamError;

/// The receiving end of one upstream operation. Dropping it before the operation ended
/// stops the operation upstream (`complete` / `stop`).
#[derive(Debug)]
pub struct Subscription {
    events: mpsc::Receiver<Event>,
    /// Set by the connection task before it drops the sender without a terminal event.
    failure: Arc<OnceLock<UpstreamError>>,
    /// Where to say "stop" on drop, and which upstream operation.
    unsubscribe: mpsc::UnboundedSender<u64>,
    upstream_id: u64,
    ended: bool,
}

/// The connection task's end of a [`Subscription`].
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub events: mpsc::Sender<Event>,
    pub failure: Arc<OnceLock<UpstreamError>>,
}

impl Subscriber {
    /// Ends the subscription with an error instead of a terminal event.
    pub fn fail(self, error: UpstreamError) {
        let _ = self.failure.set(error);
    }
}

pub(crate) fn channel(
    capacity: usize,
    unsubscribe: mpsc::UnboundedSender<u64>,
    upstream_id: u64,
) -> (Subscriber, Subscription) {
    let (tx, rx) = mpsc::channel(capacity);
    let failure = Arc::new(OnceLock::new());
    (
        Subscriber {
            events: tx,
            failure: failure.clone(),
        },
        Subscription {
            events: rx,
            failure,
            unsubscribe,
            upstream_id,
            ended: false,
        },
    )
}

impl Subscription {
    /// The next event, or the error that ended the subscription. `None` after a terminal
    /// event or error.
    pub async fn recv(&mut self) -> Option<Result<Event, UpstreamError>> {
        if self.ended {
            return None;
        }
        match self.events.recv().await {
            Some(event) => {
                self.ended = event.is_terminal();
                Some(Ok(event))
            }
            None => {
                self.ended = true;
                let error = self
                    .failure
                    .get()
                    .cloned()
                    .unwrap_or(UpstreamError::Closed {
                        upstream: "unknown".into(),
                        code: 1006,
                        reason: String::new(),
                    });
                Some(Err(error))
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.ended {
            // Unbounded on purpose: each subscription sends at most this one message, so the
            // queue never holds more than the live subscription count, and a drop must not
            // block or be lost (a lost stop leaks the operation upstream).
            let _ = self.unsubscribe.send(self.upstream_id);
        }
    }
}
