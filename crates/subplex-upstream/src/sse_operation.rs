//! The task that carries one operation to a GraphQL-over-SSE upstream.
//!
//! Over SSE each operation is its own HTTP request ([`SseClient`]), so this task is to an
//! SSE operation what [`UpstreamConnection`](crate::connection) is to a WebSocket: it owns
//! the request and the dial parameters, hands events to the [`Subscription`] with
//! `try_send` (the slow-consumer policy is the same), and when the stream fails in a
//! retryable way (refused, reset, cut short, 5xx, 429) it sends the same request again
//! with the same backoff, until `give_up_after_ms`. The client notices nothing but the
//! upstream's own restart of the operation (a new subscription upstream).

use http::{HeaderName, HeaderValue};
use subplex_protocol::GraphqlRequest;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{self, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::reconnect::{Backoff, Retry};
use crate::registry::Registration;
use crate::sse::{SseClient, SseOperation};
use crate::subscription::{self, Subscriber};
use crate::{SecurityContext, Subscription, UpstreamError};

/// One SSE operation's task.
pub(crate) struct SseOperationTask {
    client: SseClient,
    headers: Vec<(HeaderName, HeaderValue)>,
    request: GraphqlRequest,
    subscriber: Subscriber,
    /// Counts this operation as an open upstream connection while it runs.
    registration: Registration,
    /// Told how the first request went: the stream opened (or is being retried), or a
    /// permanent failure the caller returns itself, as a refused WebSocket subscribe is.
    first_outcome: Option<oneshot::Sender<Result<(), UpstreamError>>>,
    shutdown: CancellationToken,
}

/// How one attempt (request + stream) ended.
enum Attempt {
    /// The subscriber left, the operation completed, or the gateway is shutting down.
    Over,
    Failed(UpstreamError),
}

impl SseOperationTask {
    /// Spawns the task; its first request is sent at once. Returns once that request was
    /// answered with an event stream or failed in a retryable way (the operation then
    /// waits for the upstream); a permanent failure of the first request is returned
    /// instead, so the caller can react (probe again) before the client sees it.
    pub async fn start(
        client: SseClient,
        key: SecurityContext,
        id: u64,
        headers: Vec<(HeaderName, HeaderValue)>,
        request: GraphqlRequest,
        registration: Registration,
        shutdown: CancellationToken,
    ) -> Result<Subscription, UpstreamError> {
        // Stops are seen as the subscriber's queue closing; the unsubscribe queue of a
        // WebSocket connection has no use here, so its receiving end is dropped.
        let (unsubscribe, _) = mpsc::unbounded_channel();
        let (subscriber, subscription) =
            subscription::channel(client.settings().subscriber_queue, unsubscribe, id);
        let span = tracing::info_span!(parent: None, "upstream", name = %client.settings().name, ctx = %key, sse_op = id);
        let (first_outcome, first) = oneshot::channel();
        let task = SseOperationTask {
            client,
            headers,
            request,
            subscriber,
            registration,
            first_outcome: Some(first_outcome),
            shutdown,
        };
        tokio::spawn(task.run().instrument(span));
        match first.await {
            Ok(Ok(())) => Ok(subscription),
            Ok(Err(error)) => Err(error),
            // The task ended before an answer: only shutdown does that.
            Err(_) => Err(UpstreamError::ShuttingDown),
        }
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(self.client.settings().reconnect);
        let mut reopened = false;
        loop {
            let failure = match self.attempt(&mut backoff, reopened).await {
                Attempt::Over => return,
                Attempt::Failed(error) => error,
            };
            if !failure.is_retryable() {
                if let Some(first_outcome) = self.first_outcome.take() {
                    if failure.is_protocol_mismatch() {
                        self.registration.report_protocol_mismatch();
                    }
                    let _ = first_outcome.send(Err(failure));
                    return;
                }
                return self.fail(failure);
            }
            self.settled();
            reopened = true;
            let mut retry = backoff.after_failure(Instant::now());
            loop {
                match retry {
                    Retry::GiveUp { waited } => {
                        let upstream = self.client.settings().name.clone();
                        return self.fail(UpstreamError::GaveUp {
                            upstream,
                            waited_ms: waited.as_millis() as u64,
                            last: Box::new(failure),
                        });
                    }
                    Retry::At(when) => {
                        // Debug, not warn: one line per operation would flood the log
                        // when an upstream with many operations restarts.
                        debug!(error = %failure, retry_in_ms = (when - Instant::now()).as_millis() as u64, "upstream event stream failed; reopening");
                        tokio::select! {
                            biased;
                            _ = self.shutdown.cancelled() => return self.fail(UpstreamError::ShuttingDown),
                            _ = self.subscriber.events.closed() => return,
                            _ = time::sleep_until(when) => {}
                        }
                        if backoff.give_up_at().is_some_and(|at| Instant::now() < at) {
                            break;
                        }
                        retry = backoff.after_failure(Instant::now());
                    }
                }
            }
        }
    }

    /// Sends the request and forwards its events until the stream ends.
    /// The caller of [`start`](Self::start) may return: the operation is under way.
    fn settled(&mut self) {
        if let Some(first_outcome) = self.first_outcome.take() {
            let _ = first_outcome.send(Ok(()));
        }
    }

    async fn attempt(&mut self, backoff: &mut Backoff, reopened: bool) -> Attempt {
        let give_up_at = backoff.give_up_at();
        let opened = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return self.over(UpstreamError::ShuttingDown),
            _ = self.subscriber.events.closed() => return Attempt::Over,
            _ = time::sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() => {
                return Attempt::Failed(UpstreamError::Connect {
                    upstream: self.client.settings().name.clone(),
                    reason: "still connecting when give_up_after_ms ran out".into(),
                    cause: crate::ConnectCause::Timeout,
                });
            }
            opened = self.client.subscribe(&self.headers, &self.request) => opened,
        };
        let mut operation: SseOperation = match opened {
            Ok(operation) => operation,
            Err(error) => return Attempt::Failed(error),
        };
        backoff.reset();
        self.settled();
        if reopened {
            debug!("upstream event stream reopened");
        } else {
            debug!("operation started");
        }
        loop {
            let next = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return self.over(UpstreamError::ShuttingDown),
                // Dropping `operation` ends the HTTP request: the upstream stops it.
                _ = self.subscriber.events.closed() => return Attempt::Over,
                next = operation.recv() => next,
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(error)) => return Attempt::Failed(error),
                // The stream yields an error before it ends, unless it completed.
                None => return Attempt::Over,
            };
            let terminal = event.is_terminal();
            match self.subscriber.events.try_send(event) {
                Ok(()) if terminal => return Attempt::Over,
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Attempt::Over,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let queued = self.client.settings().subscriber_queue;
                    warn!(queued, "subscriber too slow; cutting it off");
                    return self.over(UpstreamError::SlowConsumer { queued });
                }
            }
        }
    }

    /// Ends the subscription with `error` without retrying.
    fn over(&self, error: UpstreamError) -> Attempt {
        let _ = self.subscriber.failure.set(error);
        Attempt::Over
    }

    fn fail(self, error: UpstreamError) {
        if error.is_protocol_mismatch() {
            // The upstream no longer answers with an event stream: a probed protocol is
            // stale, and the next subscriber probes again.
            self.registration.report_protocol_mismatch();
        }
        warn!(error = %error, "upstream operation failed");
        self.subscriber.fail(error);
    }
}
