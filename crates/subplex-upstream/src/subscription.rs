//! One operation's stream of events from an upstream connection.
//!
//! The queue between the connection task and a client is hand-made rather than a tokio
//! `mpsc` channel: tokio allocates the channel (about 500 bytes, cache-padded) and a
//! first block of 32 slots (about 1.3 KiB) when the channel is created, and an idle
//! subscription keeps both for its whole life; massif measured 1,824 bytes per idle
//! subscriber there. This one is a single allocation of about 200 bytes whose event
//! buffer grows only as events wait (to 4 slots for a client that keeps up). Its lock is
//! held to push or pop one event, never across an await.
//!
//! A subscription can also be given a [`WriteThrough`]: then the connection task writes
//! each `next` payload straight to the client (the gateway's WebSocket clients: framed and
//! written to the socket without waking the client's task), and only the terminal event
//! or failure goes through the queue. With one subscription per client and an event
//! shared by a thousand clients, that is a thousand task wake-ups and queue round trips
//! saved per event.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use subplex_protocol::{Event, RawJson};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use crate::UpstreamError;

/// Where a subscription's `next` payloads go instead of its queue: written to the client
/// by the connection task itself, in the order they arrive.
///
/// `write` runs on the upstream connection's task with the subscription's lock held, so
/// it must not block: it frames and writes what the client's socket takes now, and keeps
/// (or refuses) the rest.
pub trait WriteThrough: Send + Sync + std::fmt::Debug {
    /// Writes `payload` as the operation's next result. `read_at` is when its frame was
    /// read from the upstream.
    fn write(&self, payload: &RawJson, read_at: Instant) -> Result<(), WriteThroughRefused>;

    /// How many payloads it has written (for the operation's trace span).
    fn written(&self) -> u64;

    /// [`write`](Self::write), but the frame waits in the client's outbox until
    /// [`flush_held`](Self::flush_held): the connection task holds the frames of a burst
    /// of upstream events (several ready at once) and writes each client's together, one
    /// `writev` instead of one per event. `Ok(true)` when it is the first frame held for
    /// this sink's client since its last flush: the caller then owes this sink one
    /// `flush_held` (the connection task keeps a list of those).
    fn hold(&self, payload: &RawJson, read_at: Instant) -> Result<bool, WriteThroughRefused>;

    /// Writes what [`hold`](Self::hold) kept for the client.
    fn flush_held(&self);
}

/// The sinks owed a [`WriteThrough::flush_held`] at the end of a burst. Flushed when
/// dropped too, so no early return (an upstream failure mid-burst, a panic in a fan-out
/// task) leaves a client's frames waiting for nothing.
#[derive(Debug, Default)]
pub(crate) struct HeldWrites {
    sinks: Vec<Arc<dyn WriteThrough>>,
}

impl HeldWrites {
    /// Writes every held frame.
    pub(crate) fn flush(&mut self) {
        for sink in self.sinks.drain(..) {
            sink.flush_held();
        }
    }

    /// Takes over `other`'s debts (a fan-out task's).
    pub(crate) fn append(&mut self, other: &mut HeldWrites) {
        self.sinks.append(&mut other.sinks);
    }
}

impl Drop for HeldWrites {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Why a [`WriteThrough`] did not take a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteThroughRefused {
    /// The client is too far behind: the slow-consumer policy cuts this subscriber off.
    TooSlow,
    /// The client is going away: the subscriber is dropped, as for a closed queue.
    Closed,
}

/// One client's end of an upstream operation. Dropping it before the operation ended
/// takes the client off the operation; the last client to leave stops it upstream
/// (`complete` / `stop`).
#[derive(Debug)]
pub struct Subscription {
    queue: Arc<Queue>,
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
    queue: Arc<Queue>,
}

/// What both ends share.
#[derive(Debug)]
struct Queue {
    /// Events at most.
    capacity: usize,
    /// Payload bytes at most, beyond the first queued event.
    byte_limit: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Each event with the instant its frame was read from the upstream.
    events: VecDeque<(Event, Instant)>,
    /// Payload bytes in `events`.
    queued_bytes: usize,
    /// The [`Subscription`]'s task, woken when an event arrives or the subscriber goes.
    receiver: Option<Waker>,
    /// The task waiting in [`Subscriber::closed`], woken when the subscription goes.
    closed_waiter: Option<Waker>,
    subscriber_gone: bool,
    subscription_gone: bool,
    /// Set by the connection task before it drops the subscriber without a terminal event.
    failure: Option<UpstreamError>,
    /// Where `next` payloads go instead of `events`, once set.
    write_through: Option<Arc<dyn WriteThrough>>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the state is still
        // consistent (every update is a single push, pop or flag).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Stores `cx`'s waker in `slot` unless an equivalent one is there.
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The payload bytes an event holds while it waits in a queue.
fn payload_bytes(event: &Event) -> usize {
    match event {
        Event::Next(payload) | Event::Error(payload) => payload.as_str().len(),
        Event::Complete => 0,
    }
}

impl Subscriber {
    /// Queues `event` without waiting. `Closed` once the [`Subscription`] is gone. `Full`
    /// when the queue holds its count of events, or when the event would take its payload
    /// bytes over the byte limit: a count alone would let a slow client hold
    /// `subscriber_queue` times the largest event. An event always fits an empty queue, so
    /// one as large as the frame limit still gets through.
    ///
    /// Called right after the event's frame was read and decoded, with no wait in
    /// between, so the instant taken here is the frame's read time.
    pub fn try_send(&self, event: Event) -> Result<(), TrySendError<Event>> {
        self.try_send_with(event, Instant::now(), None)
    }

    /// [`try_send`](Self::try_send) of an event whose frame was read at `read_at`: a
    /// fan-out to thousands takes the instant once, and the latency each client's event
    /// is counted with starts when the frame arrived, not when its turn came. With
    /// `held`, a write-through `next` is held for the end of the burst (see
    /// [`WriteThrough::hold`]).
    pub(crate) fn try_send_with(
        &self,
        event: Event,
        read_at: Instant,
        held: Option<&mut HeldWrites>,
    ) -> Result<(), TrySendError<Event>> {
        let size = payload_bytes(&event);
        let queue = &*self.queue;
        let mut state = queue.lock();
        if state.subscription_gone {
            return Err(TrySendError::Closed(event));
        }
        if let (Some(sink), Event::Next(payload)) = (&state.write_through, &event) {
            // The queue holds no `next` once write-through is on (they were written when it
            // was turned on), so nothing queued can be overtaken.
            let written = match held {
                None => sink.write(payload, read_at),
                Some(held) => sink.hold(payload, read_at).map(|first| {
                    if first {
                        held.sinks.push(sink.clone());
                    }
                }),
            };
            return match written {
                Ok(()) => Ok(()),
                Err(WriteThroughRefused::TooSlow) => Err(TrySendError::Full(event)),
                Err(WriteThroughRefused::Closed) => Err(TrySendError::Closed(event)),
            };
        }
        let over_bytes =
            state.queued_bytes > 0 && state.queued_bytes.saturating_add(size) > queue.byte_limit;
        if state.events.len() >= queue.capacity || over_bytes {
            return Err(TrySendError::Full(event));
        }
        state.queued_bytes += size;
        state.events.push_back((event, read_at));
        let receiver = state.receiver.take();
        drop(state);
        if let Some(receiver) = receiver {
            receiver.wake();
        }
        Ok(())
    }

    /// Resolves once the [`Subscription`] was dropped.
    pub async fn closed(&self) {
        poll_fn(|cx| {
            let mut state = self.queue.lock();
            if state.subscription_gone {
                return Poll::Ready(());
            }
            register(&mut state.closed_waiter, cx);
            Poll::Pending
        })
        .await
    }

    /// Ends the subscription with an error instead of a terminal event, once the caller
    /// drops this subscriber. The first error set wins.
    pub fn fail(&self, error: UpstreamError) {
        let mut state = self.queue.lock();
        if state.failure.is_none() {
            state.failure = Some(error);
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let receiver = {
            let mut state = self.queue.lock();
            state.subscriber_gone = true;
            state.receiver.take()
        };
        if let Some(receiver) = receiver {
            receiver.wake();
        }
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
    let queue = Arc::new(Queue {
        // tokio's channel refused a capacity of 0 with a panic; a queue that can never
        // hold an event would cut every client at its first event.
        capacity: capacity.max(1),
        byte_limit,
        state: Mutex::new(State::default()),
    });
    (
        Subscriber {
            queue: queue.clone(),
        },
        Subscription {
            queue,
            unsubscribe,
            leave,
            ended: false,
            last_read_at: None,
        },
    )
}

impl Subscription {
    /// The next event, or the error that ended the subscription. `None` after a terminal
    /// event or error. Cancel-safe: an event is only taken from the queue when returned.
    ///
    /// A subscriber cut off as too slow gets its [`UpstreamError::SlowConsumer`] at once,
    /// instead of the events still queued: those are the backlog the client could not
    /// take, so they are dropped with the queue, and the client's connection can be ended
    /// now rather than after another queue's worth of writes to a client that is behind.
    pub async fn recv(&mut self) -> Option<Result<Event, UpstreamError>> {
        poll_fn(|cx| self.poll_recv(cx)).await
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
        let next = {
            let mut state = self.queue.lock();
            // Checked before the queue: a receiver woken by the first of a burst that
            // ended in the cut must not deliver it either.
            if matches!(state.failure, Some(UpstreamError::SlowConsumer { .. })) {
                state.events.clear();
                state.queued_bytes = 0;
                Err(state.failure.take())
            } else if let Some((event, read_at)) = state.events.pop_front() {
                state.queued_bytes -= payload_bytes(&event);
                Ok((event, read_at))
            } else if state.subscriber_gone {
                Err(state.failure.take())
            } else {
                register(&mut state.receiver, cx);
                return Poll::Pending;
            }
        };
        Poll::Ready(Some(match next {
            Ok((event, read_at)) => {
                self.last_read_at = Some(read_at);
                self.ended = event.is_terminal();
                Ok(event)
            }
            Err(failure) => {
                self.ended = true;
                Err(failure.unwrap_or(UpstreamError::Closed {
                    upstream: "unknown".into(),
                    code: 1006,
                    reason: String::new(),
                }))
            }
        }))
    }

    /// From now on, `next` payloads go to `sink` (see [`WriteThrough`]) and only the
    /// terminal event or failure comes from [`recv`](Self::recv). The `next` events
    /// already queued are written first, in order. If `sink` refuses one, the rest are
    /// dropped with it: a refusal means the client's connection is ending (cut as too
    /// slow, or closing), and the sink's owner acts on that.
    pub fn write_through(&mut self, sink: Arc<dyn WriteThrough>) {
        let mut state = self.queue.lock();
        let mut refused = false;
        while let Some((Event::Next(_), _)) = state.events.front() {
            let Some((Event::Next(payload), read_at)) = state.events.pop_front() else {
                unreachable!("the front was just matched");
            };
            state.queued_bytes -= payload.as_str().len();
            if !refused {
                refused = sink.write(&payload, read_at).is_err();
            }
        }
        state.write_through = Some(sink);
    }

    /// When the frame of the event [`recv`](Self::recv) returned last was read from the
    /// upstream: the start of the event's way to the client.
    pub fn last_read_at(&self) -> Option<Instant> {
        self.last_read_at
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let (events, closed_waiter) = {
            let mut state = self.queue.lock();
            state.subscription_gone = true;
            state.queued_bytes = 0;
            (
                (
                    std::mem::take(&mut state.events),
                    state.write_through.take(),
                ),
                state.closed_waiter.take(),
            )
        };
        // Dropped outside the lock. The sink goes with the subscription: the connection
        // task, which may keep the subscriber a little longer, holds no client socket.
        drop(events);
        if let Some(waiter) = closed_waiter {
            waiter.wake();
        }
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

    fn next(bytes: usize) -> Event {
        // `"xxxx"`: a JSON string whose text is `bytes` long.
        Event::Next(RawJson::parse(&format!("\"{}\"", "x".repeat(bytes - 2))).unwrap())
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_as_well_as_in_events() {
        let (unsubscribe, _stops) = mpsc::unbounded_channel();
        let leave = Leave {
            operation: 1,
            subscriber: 1,
        };
        let (subscriber, mut subscription) = channel(8, 100, unsubscribe, leave);
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
        assert_eq!(subscription.queue.lock().queued_bytes, 0);
        // Every event offered was counted in, refused ones too.
    }

    fn leave() -> Leave {
        Leave {
            operation: 7,
            subscriber: 9,
        }
    }

    #[tokio::test]
    async fn queued_events_come_before_the_failure_that_ended_the_subscription() {
        let (unsubscribe, _stops) = mpsc::unbounded_channel();
        let (subscriber, mut subscription) = channel(8, 1024, unsubscribe, leave());
        subscriber.try_send(next(10)).unwrap();
        subscriber.fail(UpstreamError::ShuttingDown);
        // The first error set is the one the client gets.
        subscriber.fail(UpstreamError::Closed {
            upstream: "up".into(),
            code: 1011,
            reason: String::new(),
        });
        drop(subscriber);
        assert_eq!(subscription.recv().await, Some(Ok(next(10))));
        assert_eq!(
            subscription.recv().await,
            Some(Err(UpstreamError::ShuttingDown))
        );
        assert_eq!(subscription.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_an_event_and_by_the_subscriber_leaving() {
        let (unsubscribe, _stops) = mpsc::unbounded_channel();
        let (subscriber, mut subscription) = channel(8, 1024, unsubscribe, leave());
        let receiver = tokio::spawn(async move {
            let first = subscription.recv().await;
            let second = subscription.recv().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        subscriber.try_send(next(4)).unwrap();
        tokio::task::yield_now().await;
        drop(subscriber);
        let (first, second) = receiver.await.unwrap();
        assert_eq!(first, Some(Ok(next(4))));
        // Gone without a terminal event or a failure: the connection closed under it.
        assert!(matches!(
            second,
            Some(Err(UpstreamError::Closed { code: 1006, .. }))
        ));
    }

    #[tokio::test]
    async fn dropping_the_subscription_closes_the_queue_and_says_it_left_once() {
        let (unsubscribe, mut stops) = mpsc::unbounded_channel();
        let (subscriber, subscription) = channel(8, 1024, unsubscribe, leave());
        subscriber.try_send(next(4)).unwrap();
        let waiting = tokio::spawn(async move {
            subscriber.closed().await;
            subscriber.try_send(next(4))
        });
        tokio::task::yield_now().await;
        drop(subscription);
        assert!(matches!(
            waiting.await.unwrap(),
            Err(TrySendError::Closed(_))
        ));
        assert_eq!(stops.recv().await, Some(leave()));
        assert!(stops.try_recv().is_err());
    }

    /// A queue of `capacity` events and `byte_limit` bytes, and where its leave goes.
    fn queue(
        capacity: usize,
        byte_limit: usize,
    ) -> (Subscriber, Subscription, mpsc::UnboundedReceiver<Leave>) {
        let (unsubscribe, leaves) = mpsc::unbounded_channel();
        let (subscriber, subscription) = channel(capacity, byte_limit, unsubscribe, leave());
        (subscriber, subscription, leaves)
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
}
