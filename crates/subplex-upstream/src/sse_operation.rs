//! The task that carries one operation to a GraphQL-over-SSE upstream.
//!
//! Over SSE each operation is its own HTTP request ([`SseClient`]), so this task is to an
//! SSE operation what [`UpstreamConnection`](crate::connection) is to a WebSocket: it owns
//! the request and the dial parameters, hands events to the [`Subscription`] with
//! `try_send` (the slow-consumer policy is the same), and when the stream fails in a
//! retryable way (refused, reset, cut short, 5xx, 429) it sends the same request again,
//! until `give_up_after_ms`. The client notices nothing but the upstream's own restart of
//! the operation (a new subscription upstream).
//!
//! The operations of one upstream share an [`SseGate`]. Until a request is answered, and
//! while the upstream is failing, they take turns: one request at a time, during an
//! outage on one backoff schedule, so a burst of operations toward a dead upstream is one
//! request at a time, not a burst. The first request that is answered ends the outage,
//! and the others send theirs at once.

use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue};
use subplex_protocol::GraphqlRequest;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{self, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::reconnect::{Backoff, ReconnectSettings, Retry};
use crate::registry::Registration;
use crate::sse::{SseClient, SseOperation};
use crate::subscription::{self, Subscriber};
use crate::{SecurityContext, Subscription, UpstreamError};

/// The health of one SSE upstream, shared by its operations.
#[derive(Debug)]
pub(crate) struct SseGate {
    state: Mutex<GateState>,
    /// Bumped after every change of `state`, to wake the operations waiting on it.
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct GateState {
    health: Health,
    backoff: Backoff,
    /// Whether one operation is sending its request on behalf of all (the others wait).
    trying: bool,
    /// The latest outage that ended in a give-up, with its error.
    gave_up: Option<(u64, UpstreamError)>,
    next_outage: u64,
}

/// Whether requests may go out at once.
#[derive(Debug, Clone, Copy)]
enum Health {
    /// No request answered yet, or none since a give-up: one request at a time until one
    /// is answered, so a burst toward a dead upstream is one request.
    Unknown,
    /// The latest request was answered: send at once.
    Answering,
    /// Outage `id`: one request at a time, the next at `next_try`.
    Failing { id: u64, next_try: Instant },
}

/// What an operation waiting out `outage` does next.
enum Turn {
    /// The upstream answers: send the request now.
    Go,
    /// Send the request on behalf of all, after `not_before` (and give up on it at
    /// `give_up_at`); the [`Trying`] guard ends the turn.
    Try {
        not_before: Instant,
        give_up_at: Option<Instant>,
    },
    /// Another operation is trying: wait for the outcome.
    Wait,
    /// The outage this operation waited out ended in a give-up.
    GaveUp(UpstreamError),
}

/// The turn of the operation that sends its request on behalf of all; ends on drop
/// (after its outcome is recorded, or when the operation leaves mid-try).
struct Trying<'a>(&'a SseGate);

impl Drop for Trying<'_> {
    fn drop(&mut self) {
        self.0.state().trying = false;
        self.0.changed.send_modify(|version| *version += 1);
    }
}

impl SseGate {
    pub fn new(settings: ReconnectSettings) -> Self {
        SseGate {
            state: Mutex::new(GateState {
                health: Health::Unknown,
                backoff: Backoff::new(settings),
                trying: false,
                gave_up: None,
                next_outage: 1,
            }),
            changed: watch::channel(0).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state is a few plain fields, consistent between statements.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|version| *version += 1);
    }

    fn is_answering(&self) -> bool {
        matches!(self.state().health, Health::Answering)
    }

    /// Decides the next step of an operation waiting out `outage` (`None`: none yet). An
    /// operation that sees an outage joins it (`outage` is set).
    fn turn_for(&self, outage: &mut Option<u64>) -> Turn {
        let mut state = self.state();
        if let (Some(mine), Some((gave_up, error))) = (*outage, &state.gave_up) {
            if mine == *gave_up {
                return Turn::GaveUp(error.clone());
            }
        }
        let not_before = match state.health {
            Health::Answering => return Turn::Go,
            Health::Unknown => Instant::now(),
            Health::Failing { id, next_try } => {
                *outage = Some(id);
                next_try
            }
        };
        if state.trying {
            return Turn::Wait;
        }
        state.trying = true;
        Turn::Try {
            not_before,
            give_up_at: state.backoff.give_up_at(),
        }
    }

    /// A request was answered: the outage, if any, is over.
    fn answered(&self) {
        let mut state = self.state();
        state.health = Health::Answering;
        state.backoff.reset();
        drop(state);
        self.notify();
    }

    /// A request or a running stream failed in a retryable way. A failure while the
    /// upstream is failing already joins that outage; a request sent on behalf of all
    /// (`on_behalf`) advances its schedule, or ends it in a give-up. Returns the outage.
    fn failed(&self, on_behalf: bool, failure: &UpstreamError, upstream: &Arc<str>) -> u64 {
        let mut state = self.state();
        let id = match state.health {
            Health::Failing { id, .. } if !on_behalf => return id,
            Health::Failing { id, .. } => id,
            Health::Unknown | Health::Answering => {
                let id = state.next_outage;
                state.next_outage += 1;
                id
            }
        };
        match state.backoff.after_failure(Instant::now()) {
            Retry::At(next_try) => state.health = Health::Failing { id, next_try },
            Retry::GiveUp { waited } => {
                state.health = Health::Unknown;
                state.backoff.reset();
                let error = UpstreamError::GaveUp {
                    upstream: upstream.clone(),
                    waited_ms: waited.as_millis() as u64,
                    last: Box::new(failure.clone()),
                };
                state.gave_up = Some((id, error));
            }
        }
        drop(state);
        self.notify();
        id
    }
}

/// One SSE operation's task.
pub(crate) struct SseOperationTask {
    client: SseClient,
    gate: Arc<SseGate>,
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

/// How a request, or the stream it opened, ended.
enum Attempt {
    /// The subscriber left, the operation completed, or the gateway is shutting down.
    Over,
    Failed(UpstreamError),
}

impl SseOperationTask {
    /// Spawns the task; its first request is sent at once, or in turn while the upstream
    /// is not known to answer. Returns once that request was answered with an event
    /// stream, or failed in a retryable way, or joined an outage under way (the operation
    /// then waits for the upstream); a permanent failure of the first request is returned
    /// instead, so the caller can react (probe again) before the client sees it.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        client: SseClient,
        gate: Arc<SseGate>,
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
        let (subscriber, subscription) = subscription::channel(
            client.settings().subscriber_queue,
            client.settings().subscriber_queue_bytes,
            unsubscribe,
            subscription::Leave {
                operation: id,
                subscriber: id,
            },
        );
        let span = tracing::info_span!(parent: None, "upstream", name = %client.settings().name, ctx = %key, sse_op = id);
        let (first_outcome, first) = oneshot::channel();
        let tasks = registration.tasks();
        let task = SseOperationTask {
            client,
            gate,
            headers,
            request,
            subscriber,
            registration,
            first_outcome: Some(first_outcome),
            shutdown,
        };
        tasks.spawn(task.run().instrument(span));
        match first.await {
            Ok(Ok(())) => Ok(subscription),
            Ok(Err(error)) => Err(error),
            // The task ended before an answer: only shutdown does that.
            Err(_) => Err(UpstreamError::ShuttingDown),
        }
    }

    async fn run(mut self) {
        let upstream = self.client.settings().name.clone();
        let gate = self.gate.clone();
        let mut changes = gate.changed.subscribe();
        // The outage this operation waits out; `None` while it streams.
        let mut outage: Option<u64> = None;
        loop {
            // Held by the operation that sends its request on behalf of all, until the
            // outcome is recorded, so the others see the schedule it sets.
            let mut trying = None;
            let opened = if outage.is_none() && gate.is_answering() {
                self.open(None).await
            } else {
                loop {
                    changes.borrow_and_update();
                    match gate.turn_for(&mut outage) {
                        Turn::GaveUp(error) => return self.fail(error),
                        Turn::Go => break self.open(None).await,
                        Turn::Try {
                            not_before,
                            give_up_at,
                        } => {
                            trying = Some(Trying(&gate));
                            if outage.is_some() {
                                // Joined an outage: accepted, waiting with the others.
                                self.settled();
                            }
                            if !self.sleep_until(not_before).await {
                                return;
                            }
                            break self.open(give_up_at).await;
                        }
                        Turn::Wait => {
                            if outage.is_some() {
                                self.settled();
                            }
                            tokio::select! {
                                biased;
                                _ = self.shutdown.cancelled() => return self.fail(UpstreamError::ShuttingDown),
                                _ = self.subscriber.closed() => return,
                                _ = changes.changed() => {}
                            }
                        }
                    }
                }
            };
            let failure = match opened {
                Ok(operation) => {
                    gate.answered();
                    drop(trying.take());
                    self.settled();
                    if outage.take().is_some() {
                        self.client.settings().stats.reconnected();
                        debug!("upstream event stream reopened");
                    }
                    match self.stream(operation).await {
                        Attempt::Over => return,
                        Attempt::Failed(error) => error,
                    }
                }
                Err(Attempt::Over) => return,
                Err(Attempt::Failed(error)) if !error.is_retryable() => error,
                Err(Attempt::Failed(error)) => {
                    outage = Some(gate.failed(trying.is_some(), &error, &upstream));
                    drop(trying.take());
                    self.settled();
                    debug!(error = %error, "upstream request failed; waiting for the upstream");
                    continue;
                }
            };
            drop(trying.take());
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
            // Debug, not warn: one line per operation would flood the log when an upstream
            // with many operations restarts.
            debug!(error = %failure, "upstream event stream failed; waiting for the upstream");
            outage = Some(gate.failed(false, &failure, &upstream));
        }
    }

    /// Sleeps until `when`; `false` if the subscriber left or the gateway is shutting
    /// down meanwhile (the subscription is then over).
    async fn sleep_until(&self, when: Instant) -> bool {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {
                self.over(UpstreamError::ShuttingDown);
                false
            }
            _ = self.subscriber.closed() => false,
            _ = time::sleep_until(when) => true,
        }
    }

    /// The caller of [`start`](Self::start) may return: the operation is under way.
    fn settled(&mut self) {
        if let Some(first_outcome) = self.first_outcome.take() {
            let _ = first_outcome.send(Ok(()));
        }
    }

    /// Sends the request; during an outage, gives up on it at `give_up_at`.
    async fn open(&self, give_up_at: Option<Instant>) -> Result<SseOperation, Attempt> {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Err(self.over(UpstreamError::ShuttingDown)),
            _ = self.subscriber.closed() => Err(Attempt::Over),
            _ = time::sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() => {
                Err(Attempt::Failed(UpstreamError::Connect {
                    upstream: self.client.settings().name.clone(),
                    reason: "still connecting when give_up_after_ms ran out".into(),
                    cause: crate::ConnectCause::Timeout,
                }))
            }
            opened = self.client.subscribe(&self.headers, &self.request) => opened.map_err(Attempt::Failed),
        }
    }

    /// Forwards the stream's events until it ends.
    async fn stream(&self, mut operation: SseOperation) -> Attempt {
        loop {
            let next = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return self.over(UpstreamError::ShuttingDown),
                // Dropping `operation` ends the HTTP request: the upstream stops it.
                _ = self.subscriber.closed() => return Attempt::Over,
                next = operation.recv() => next,
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(error)) => return Attempt::Failed(error),
                // The stream yields an error before it ends, unless it completed.
                None => return Attempt::Over,
            };
            let terminal = event.is_terminal();
            self.client.settings().stats.event_in();
            match self.subscriber.try_send(event) {
                Ok(()) if terminal => return Attempt::Over,
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Attempt::Over,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let error = self.client.settings().slow_consumer();
                    warn!(%error, "subscriber too slow; cutting it off");
                    return self.over(error);
                }
            }
        }
    }

    /// Ends the subscription with `error` without retrying.
    fn over(&self, error: UpstreamError) -> Attempt {
        self.subscriber.fail(error);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn gate(give_up_after_ms: u64) -> SseGate {
        SseGate::new(ReconnectSettings {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            give_up_after: Duration::from_millis(give_up_after_ms),
        })
    }

    fn refused() -> UpstreamError {
        UpstreamError::Connect {
            upstream: "up".into(),
            reason: "Connection refused".into(),
            cause: crate::ConnectCause::Network,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_request_at_a_time_on_one_schedule_until_an_answer() {
        let gate = gate(10_000);
        let upstream: Arc<str> = "up".into();
        // Nothing answered yet: the first operation tries, the others wait.
        let (mut first, mut second) = (None, None);
        let Turn::Try { not_before, .. } = gate.turn_for(&mut first) else {
            panic!("the first operation tries");
        };
        assert_eq!(not_before, Instant::now());
        assert!(matches!(gate.turn_for(&mut second), Turn::Wait));

        // Its request fails: an outage begins, and everyone waiting joins it.
        let start = Instant::now();
        let outage = gate.failed(true, &refused(), &upstream);
        drop(Trying(&gate));
        let Turn::Try { not_before, .. } = gate.turn_for(&mut second) else {
            panic!("the next operation tries");
        };
        assert_eq!(second, Some(outage));
        assert!(not_before - start <= Duration::from_millis(100));
        // Streams failing meanwhile join the outage without moving its schedule.
        for _ in 0..200 {
            assert_eq!(gate.failed(false, &refused(), &upstream), outage);
        }
        assert!(matches!(gate.turn_for(&mut first), Turn::Wait));
        // The try fails: the next is at least 100 ms (half the 200 ms bound) later.
        tokio::time::sleep_until(not_before).await;
        gate.failed(true, &refused(), &upstream);
        drop(Trying(&gate));
        let Turn::Try {
            not_before: second_try,
            ..
        } = gate.turn_for(&mut first)
        else {
            panic!("the next operation tries");
        };
        assert!(second_try - not_before >= Duration::from_millis(100));
        assert!(second_try - not_before <= Duration::from_millis(200));

        gate.answered();
        drop(Trying(&gate));
        assert!(gate.is_answering());
        assert!(matches!(gate.turn_for(&mut second), Turn::Go));
    }

    #[tokio::test(start_paused = true)]
    async fn a_give_up_reaches_every_waiter_of_that_outage() {
        let gate = gate(1_000);
        let upstream: Arc<str> = "up".into();
        let (mut trier, mut waiter) = (None, None);
        assert!(matches!(gate.turn_for(&mut trier), Turn::Try { .. }));
        let outage = gate.failed(true, &refused(), &upstream);
        drop(Trying(&gate));
        assert!(matches!(gate.turn_for(&mut waiter), Turn::Try { .. }));
        assert_eq!(waiter, Some(outage));
        tokio::time::advance(Duration::from_millis(1_000)).await;
        gate.failed(true, &refused(), &upstream);
        drop(Trying(&gate));
        for mut mine in [Some(outage), Some(outage)] {
            match gate.turn_for(&mut mine) {
                Turn::GaveUp(UpstreamError::GaveUp {
                    waited_ms, last, ..
                }) => {
                    assert_eq!(waited_ms, 1_000);
                    assert_eq!(*last, refused());
                }
                _ => panic!("the waiters of the outage give up"),
            }
        }
        // An operation arriving afterwards tries again.
        assert!(matches!(gate.turn_for(&mut None), Turn::Try { .. }));
    }
}
