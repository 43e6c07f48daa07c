//! Resuming a GraphQL over SSE stream (distinct connections mode) with `Last-Event-ID`,
//! when `[server.sse] resume_window_ms` is set.
//!
//! Each stream gets an unguessable id (128 bits from the OS CSPRNG) and numbers its
//! events: `id: <stream>:<n>`. Its task keeps the most recent events in a [`ReplayBuffer`]
//! bounded in events and bytes. When the client goes, the task parks: the upstream
//! operation keeps running into the buffer for `resume_window_ms`. A request carrying
//! `Last-Event-ID` within the window, with the same security context as the stream's
//! ([`ResumableStreams::resume`]), is handed to the task, which replays every event after
//! that id and carries on live. A parked stream ends (and its operation stops upstream)
//! when the window passes, when the gateway drains, or when an event the client never got
//! would have to leave the buffer: it could no longer be resumed exactly.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use subplex_protocol::{sse, Event};
use subplex_upstream::SecurityContext;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{self, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::operation::shutdown_event;
use super::streaming::push;
use crate::config::SseResumeConfig;

/// Random bytes of a stream id: 128 bits, as hex.
const STREAM_ID_BYTES: usize = 16;

/// How long a resuming request waits for the stream's task to accept it. The task answers
/// from its loop at once, unless its client's queue is full; then the request starts over.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request that takes over a parked (or still attached) stream.
struct Attach {
    tx: mpsc::Sender<Bytes>,
    /// The number of the last event the client got (from `Last-Event-ID`).
    after: u64,
    accepted: oneshot::Sender<bool>,
}

struct Entry {
    key: SecurityContext,
    /// One pending takeover at a time: a second concurrent one is refused.
    attach: mpsc::Sender<Attach>,
}

/// The streams that can be resumed, by id. Handles only; each stream's state is its task's.
#[derive(Default)]
pub(crate) struct ResumableStreams {
    streams: Mutex<HashMap<Arc<str>, Entry>>,
}

impl std::fmt::Debug for ResumableStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumableStreams").finish_non_exhaustive()
    }
}

/// A stream's place in [`ResumableStreams`]; leaves it when dropped.
pub(crate) struct Registration {
    streams: Arc<ResumableStreams>,
    id: Arc<str>,
    attaches: mpsc::Receiver<Attach>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.streams.lock().remove(&self.id);
    }
}

impl ResumableStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        // Poisoning needs a panic while the lock is held; no holder can panic.
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new stream of security context `key` under a fresh random id.
    pub fn register(
        self: &Arc<Self>,
        key: SecurityContext,
    ) -> Result<Registration, getrandom::Error> {
        let mut bytes = [0u8; STREAM_ID_BYTES];
        getrandom::fill(&mut bytes)?;
        let id: Arc<str> = bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into();
        let (attach, attaches) = mpsc::channel(1);
        self.lock().insert(id.clone(), Entry { key, attach });
        Ok(Registration {
            streams: self.clone(),
            id,
            attaches,
        })
    }

    /// Hands stream `id` to a client that got its events up to number `after` and now
    /// reads `tx`. False, and nothing changes, if there is no such stream (never was, or
    /// ended), it belongs to another security context (told apart from "no such stream"
    /// by nobody: the caller starts a fresh subscription in both cases), or the events
    /// after `after` are no longer all buffered.
    pub async fn resume(
        &self,
        id: &str,
        key: &SecurityContext,
        after: u64,
        tx: mpsc::Sender<Bytes>,
    ) -> bool {
        let attach = match self.lock().get(id) {
            Some(entry) if entry.key == *key => entry.attach.clone(),
            _ => return false,
        };
        let (accepted, answer) = oneshot::channel();
        if attach
            .try_send(Attach {
                tx,
                after,
                accepted,
            })
            .is_err()
        {
            return false;
        }
        matches!(time::timeout(ACCEPT_TIMEOUT, answer).await, Ok(Ok(true)))
    }
}

/// `Last-Event-ID` as this gateway writes ids: `<stream id>:<event number>`.
pub(crate) fn parse_last_event_id(value: &str) -> Option<(&str, u64)> {
    let (stream, number) = value.trim().split_once(':')?;
    Some((stream, number.parse().ok()?))
}

/// The most recent events of one stream, bounded in events and bytes.
struct ReplayBuffer {
    events: VecDeque<(u64, Bytes)>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl ReplayBuffer {
    fn new(settings: &SseResumeConfig) -> Self {
        ReplayBuffer {
            events: VecDeque::new(),
            bytes: 0,
            max_events: settings.buffer_events,
            max_bytes: settings.buffer_bytes,
        }
    }

    /// Keeps event `number`; returns the number of the newest event that had to leave for
    /// it, if any did. An event larger than the whole byte bound leaves at once.
    fn push(&mut self, number: u64, text: Bytes) -> Option<u64> {
        self.bytes += text.len();
        self.events.push_back((number, text));
        let mut evicted = None;
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some((gone, text)) = self.events.pop_front() else {
                break;
            };
            self.bytes -= text.len();
            evicted = Some(gone);
        }
        evicted
    }

    /// Every event after number `after`, if all of them are still here; `newest` is the
    /// number of the last event the stream made.
    fn since(&self, after: u64, newest: u64) -> Option<Vec<Bytes>> {
        if after > newest {
            return None;
        }
        let complete = after == newest
            || self
                .events
                .front()
                .is_some_and(|(first, _)| *first <= after + 1);
        complete.then(|| {
            self.events
                .iter()
                .filter(|(number, _)| *number > after)
                .map(|(_, text)| text.clone())
                .collect()
        })
    }
}

/// Where a resumable stream's client is.
enum Client {
    Attached(mpsc::Sender<Bytes>),
    /// Gone at event number `left_at`; the stream waits for it until `until`.
    Away {
        until: Instant,
        left_at: u64,
    },
}

/// The `retry:` hint each resumable stream starts with: reconnect well within the window.
fn retry_ms(window: Duration) -> u64 {
    (window.as_millis() as u64 / 2).clamp(1, 1000)
}

/// Feeds one operation's events to its client as SSE events with ids, parking while the
/// client is away (see the module's documentation).
pub(crate) async fn feed(
    events: impl Stream<Item = Event>,
    first: mpsc::Sender<Bytes>,
    mut registration: Registration,
    settings: SseResumeConfig,
    keepalive_every: Duration,
    shutdown: CancellationToken,
) {
    let opening = format!(
        "{}{}",
        sse::KEEP_ALIVE,
        sse::encode_retry(retry_ms(settings.window))
    );
    if !push(&first, opening.clone()).await {
        return;
    }
    let stream_id = registration.id.clone();
    let mut client = Client::Attached(first);
    let mut buffer = ReplayBuffer::new(&settings);
    let mut newest = 0u64;
    // The operation has ended upstream (its terminal event is buffered).
    let mut ended = false;
    tokio::pin!(events);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut keepalive = time::interval_at(Instant::now() + keepalive_every, keepalive_every);
    loop {
        let (attached, away_until) = match &client {
            Client::Attached(tx) => (Some(tx.clone()), None),
            Client::Away { until, .. } => (None, Some(*until)),
        };
        let client_left = async {
            match &attached {
                Some(tx) => tx.closed().await,
                None => std::future::pending().await,
            }
        };
        let window_passed = async {
            match away_until {
                Some(until) => time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        // Biased: a draining gateway first; then the client leaving or coming back, so
        // that no event is sent to a client that has gone; upstream events after.
        tokio::select! {
            biased;
            _ = &mut cancelled => {
                if let Some(tx) = attached {
                    let text = sse::encode_event_with_id(&format!("{stream_id}:{}", newest + 1), &shutdown_event());
                    push(&tx, text).await;
                }
                return;
            }
            _ = client_left => {
                debug!(event = newest, "client left; keeping the stream for a resume");
                client = Client::Away { until: Instant::now() + settings.window, left_at: newest };
            }
            _ = window_passed => {
                debug!("resume window passed; stopping the operation");
                return;
            }
            Some(attach) = registration.attaches.recv() => {
                let Some(replay) = buffer.since(attach.after, newest) else {
                    let _ = attach.accepted.send(false);
                    continue;
                };
                let _ = attach.accepted.send(true);
                debug!(after = attach.after, replayed = replay.len(), "stream resumed");
                let tx = attach.tx;
                let mut delivered = push(&tx, opening.clone()).await;
                for text in replay {
                    delivered = delivered && tx.send(text).await.is_ok();
                }
                client = if ended || !delivered {
                    // Everything there is was handed over; the body ends when `tx` drops.
                    Client::Away { until: Instant::now() + settings.window, left_at: newest }
                } else {
                    Client::Attached(tx)
                };
            }
            event = events.next(), if !ended => {
                let Some(event) = event else {
                    ended = true;
                    continue;
                };
                newest += 1;
                ended = event.is_terminal();
                let text = Bytes::from(sse::encode_event_with_id(&format!("{stream_id}:{newest}"), &event));
                let evicted = buffer.push(newest, text.clone());
                match &client {
                    Client::Away { left_at, .. } => {
                        if evicted.is_some_and(|gone| gone > *left_at) {
                            debug!("resume buffer full while the client was away; stopping the operation");
                            return;
                        }
                    }
                    Client::Attached(tx) => {
                        let delivered = tx.send(text).await.is_ok();
                        if !delivered || ended {
                            // Kept for the window in case the last events were cut off too.
                            let left_at = if delivered { newest } else { newest - 1 };
                            client = Client::Away { until: Instant::now() + settings.window, left_at };
                        }
                    }
                }
            }
            _ = keepalive.tick(), if attached.is_some() => {
                if let Some(tx) = &attached {
                    push(tx, sse::KEEP_ALIVE.to_owned()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(events: usize, bytes: usize) -> SseResumeConfig {
        SseResumeConfig {
            window: Duration::from_secs(1),
            buffer_events: events,
            buffer_bytes: bytes,
        }
    }

    #[test]
    fn the_buffer_replays_what_follows_while_nothing_was_lost() {
        let mut buffer = ReplayBuffer::new(&settings(3, 1000));
        for n in 1..=5 {
            let evicted = buffer.push(n, Bytes::from(format!("e{n}")));
            assert_eq!(evicted, n.checked_sub(3).filter(|gone| *gone > 0));
        }
        // 3, 4 and 5 are kept: a client at 2 or later can resume, one at 1 cannot.
        assert_eq!(buffer.since(2, 5).unwrap(), ["e3", "e4", "e5"]);
        assert_eq!(buffer.since(4, 5).unwrap(), ["e5"]);
        assert_eq!(buffer.since(5, 5).unwrap(), Vec::<Bytes>::new());
        assert!(buffer.since(1, 5).is_none());
        assert!(buffer.since(6, 5).is_none());
    }

    #[test]
    fn the_byte_bound_evicts_too() {
        let mut buffer = ReplayBuffer::new(&settings(100, 10));
        assert_eq!(buffer.push(1, Bytes::from_static(b"123456")), None);
        assert_eq!(buffer.push(2, Bytes::from_static(b"123456")), Some(1));
        // Larger than the whole bound: it cannot stay either.
        assert_eq!(buffer.push(3, Bytes::from_static(b"12345678901")), Some(3));
        assert!(buffer.since(2, 3).is_none());
    }

    #[test]
    fn last_event_ids_parse_as_written() {
        assert_eq!(parse_last_event_id("ab12:7"), Some(("ab12", 7)));
        assert_eq!(parse_last_event_id(" ab12:7 "), Some(("ab12", 7)));
        assert_eq!(parse_last_event_id("ab12"), None);
        assert_eq!(parse_last_event_id("ab12:x"), None);
    }
}
