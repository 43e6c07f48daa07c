//! One operation's stream of events from an upstream connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use subplex_protocol::Event;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use crate::UpstreamError;

/// One client's end of an upstream operation. Dropping it before the operation ended
/// takes the client off the operation; the last client to leave stops it upstream
/// (`complete` / `stop`).
#[derive(Debug)]
pub struct Subscription {
    /// Each event with the instant its frame was read from the upstream.
    events: mpsc::Receiver<(Event, Instant)>,
    /// Set by the connection task before it drops the sender without a terminal event.
    failure: Arc<OnceLock<UpstreamError>>,
    /// Payload bytes in `events`, shared with the [`Subscriber`].
    queued_bytes: Arc<AtomicUsize>,
    /// Where to say "I left" on drop, and who is leaving which upstream operation.
    unsubscribe: mpsc::UnboundedSender<Leave>,
    leave: Leave,
    ended: bool,
    /// When the frame of the event `recv` returned last was read from the upstream.
    last_read_at: Option<Instant>,
}

/// A subscriber leaving an upstream operation, which may be shared by several clients
/// (deduplication): the operation stops upstream when its last subscriber left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leave {
    pub operation: u64,
    pub subscriber: u64,
}

/// The connection task's end of a [`Subscription`].
#[derive(Debug)]
pub(crate) struct Subscriber {
    events: mpsc::Sender<(Event, Instant)>,
    pub failure: Arc<OnceLock<UpstreamError>>,
    queued_bytes: Arc<AtomicUsize>,
    byte_limit: usize,
}

/// The payload bytes an event holds while it waits in a queue.
fn payload_bytes(event: &Event) -> usize {
    match event {
        Event::Next(payload) | Event::Error(payload) => payload.as_str().len(),
        Event::Complete => 0,
    }
}

impl Subscriber {
    /// Queues `event` without waiting. `Full` when the queue holds its count of events, or
    /// when the event would take its payload bytes over the byte limit: a count alone would
    /// let a slow client hold `subscriber_queue` times the largest event. An event always
    /// fits an empty queue, so one as large as the frame limit still gets through.
    ///
    /// Called right after the event's frame was read and decoded, with no wait in
    /// between, so the instant taken here is the frame's read time.
    pub fn try_send(&self, event: Event) -> Result<(), TrySendError<Event>> {
        let size = payload_bytes(&event);
        // Only this side adds, so the check cannot be overtaken; the receiver only
        // subtracts, which can only make room.
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        if queued > 0 && queued.saturating_add(size) > self.byte_limit {
            return Err(TrySendError::Full(event));
        }
        self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        self.events
            .try_send((event, Instant::now()))
            .map_err(|error| {
                self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                match error {
                    TrySendError::Full((event, _)) => TrySendError::Full(event),
                    TrySendError::Closed((event, _)) => TrySendError::Closed(event),
                }
            })
    }

    /// Resolves once the [`Subscription`] was dropped.
    pub async fn closed(&self) {
        self.events.closed().await
    }

    /// Ends the subscription with an error instead of a terminal event, once the caller
    /// drops this subscriber.
    pub fn fail(&self, error: UpstreamError) {
        let _ = self.failure.set(error);
    }
}

/// A subscription queue holding at most `capacity` events and, beyond its first event,
/// `byte_limit` payload bytes.
pub(crate) fn channel(
    capacity: usize,
    byte_limit: usize,
    unsubscribe: mpsc::UnboundedSender<Leave>,
    leave: Leave,
) -> (Subscriber, Subscription) {
    let (tx, rx) = mpsc::channel(capacity);
    let failure = Arc::new(OnceLock::new());
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (
        Subscriber {
            events: tx,
            failure: failure.clone(),
            queued_bytes: queued_bytes.clone(),
            byte_limit,
        },
        Subscription {
            events: rx,
            failure,
            queued_bytes,
            unsubscribe,
            leave,
            ended: false,
            last_read_at: None,
        },
    )
}

impl Subscription {
    /// The next event, or the error that ended the subscription. `None` after a terminal
    /// event or error.
    ///
    /// A subscriber cut off as too slow gets its [`UpstreamError::SlowConsumer`] at once,
    /// instead of the events still queued: those are the backlog the client could not
    /// take, so they are dropped with the queue, and the client's connection can be ended
    /// now rather than after another queue's worth of writes to a client that is behind.
    pub async fn recv(&mut self) -> Option<Result<Event, UpstreamError>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`recv`](Self::recv) for hand-written streams: the operation stream polls it
    /// directly, once per event and client.
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Event, UpstreamError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let received = ready!(self.events.poll_recv(cx));
        // Checked after the wait, not before: a receiver woken by the first of a burst
        // that ended in the cut must not deliver it either. The cut is set before the
        // sender drops, so a closed queue always shows it.
        if let Some(cut @ UpstreamError::SlowConsumer { .. }) = self.failure.get() {
            self.ended = true;
            return Poll::Ready(Some(Err(cut.clone())));
        }
        Poll::Ready(Some(match received {
            Some((event, read_at)) => {
                self.last_read_at = Some(read_at);
                self.queued_bytes
                    .fetch_sub(payload_bytes(&event), Ordering::Relaxed);
                self.ended = event.is_terminal();
                Ok(event)
            }
            None => {
                self.ended = true;
                Err(self
                    .failure
                    .get()
                    .cloned()
                    .unwrap_or(UpstreamError::Closed {
                        upstream: "unknown".into(),
                        code: 1006,
                        reason: String::new(),
                    }))
            }
        }))
    }

    /// When the frame of the event [`recv`](Self::recv) returned last was read from the
    /// upstream: the start of the event's way to the client.
    pub fn last_read_at(&self) -> Option<Instant> {
        self.last_read_at
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.ended {
            // Unbounded on purpose: each subscription sends at most this one message, so the
            // queue never holds more than the live subscription count, and a drop must not
            // block or be lost (a lost stop leaks the operation upstream).
            let _ = self.unsubscribe.send(self.leave);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use subplex_protocol::RawJson;

    /// A queue of `capacity` events and `byte_limit` bytes, and where its leave goes.
    fn queue(
        capacity: usize,
        byte_limit: usize,
    ) -> (Subscriber, Subscription, mpsc::UnboundedReceiver<Leave>) {
        let (unsubscribe, leaves) = mpsc::unbounded_channel();
        let leave = Leave {
            operation: 1,
            subscriber: 1,
        };
        let (subscriber, subscription) = channel(capacity, byte_limit, unsubscribe, leave);
        (subscriber, subscription, leaves)
    }

    fn next(bytes: usize) -> Event {
        // `"xxxx"`: a JSON string whose text is `bytes` long.
        Event::Next(RawJson::parse(&format!("\"{}\"", "x".repeat(bytes - 2))).unwrap())
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_as_well_as_in_events() {
        let (subscriber, mut subscription, _leaves) = queue(8, 100);
        // A first event larger than the byte limit still gets through an empty queue.
        subscriber.try_send(next(150)).unwrap();
        assert!(matches!(
            subscriber.try_send(next(10)),
            Err(TrySendError::Full(_))
        ));
        // Reading it makes room again.
        assert_eq!(subscription.recv().await, Some(Ok(next(150))));
        subscriber.try_send(next(60)).unwrap();
        subscriber.try_send(next(40)).unwrap();
        assert!(matches!(
            subscriber.try_send(next(2)),
            Err(TrySendError::Full(_))
        ));
        // `complete` carries no payload but still takes a slot of the event count.
        subscriber.try_send(Event::Complete).unwrap();
        assert_eq!(subscription.recv().await, Some(Ok(next(60))));
        assert_eq!(subscription.recv().await, Some(Ok(next(40))));
        assert_eq!(subscription.recv().await, Some(Ok(Event::Complete)));
        assert_eq!(subscription.queued_bytes.load(Ordering::Relaxed), 0);
        // Every event offered was counted in, refused ones too.
    }

    #[tokio::test]
    async fn a_slow_consumer_cut_comes_instead_of_the_backlog_and_ends_the_subscription() {
        let (subscriber, mut subscription, mut leaves) = queue(2, 1000);
        subscriber.try_send(next(10)).unwrap();
        subscriber.try_send(next(10)).unwrap();
        assert!(matches!(
            subscriber.try_send(next(10)),
            Err(TrySendError::Full(_))
        ));
        let cut = UpstreamError::SlowConsumer {
            queued_events: 2,
            queued_bytes: 1000,
        };
        subscriber.fail(cut.clone());
        drop(subscriber);
        assert_eq!(subscription.recv().await, Some(Err(cut)));
        assert_eq!(subscription.recv().await, None);
        // The connection task took the subscriber off already: no leave is sent.
        drop(subscription);
        assert!(leaves.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_receiver_woken_by_a_burst_that_ended_in_a_cut_gets_the_cut() {
        let (subscriber, mut subscription, _leaves) = queue(2, 1000);
        let receiving = tokio::spawn(async move { subscription.recv().await });
        // The receiver now waits on an empty queue (this test's runtime has one thread).
        tokio::task::yield_now().await;
        assert!(!receiving.is_finished());
        subscriber.try_send(next(10)).unwrap();
        subscriber.try_send(next(10)).unwrap();
        let cut = UpstreamError::SlowConsumer {
            queued_events: 2,
            queued_bytes: 1000,
        };
        subscriber.fail(cut.clone());
        drop(subscriber);
        assert_eq!(receiving.await.unwrap(), Some(Err(cut)));
    }

    #[tokio::test]
    async fn other_failures_come_after_the_events_queued_before_them() {
        let (subscriber, mut subscription, _leaves) = queue(2, 1000);
        subscriber.try_send(next(10)).unwrap();
        subscriber.fail(UpstreamError::ShuttingDown);
        drop(subscriber);
        assert_eq!(subscription.recv().await, Some(Ok(next(10))));
        assert_eq!(
            subscription.recv().await,
            Some(Err(UpstreamError::ShuttingDown))
        );
        assert_eq!(subscription.recv().await, None);
    }
}
