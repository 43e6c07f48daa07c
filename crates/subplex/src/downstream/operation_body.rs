//! The response body of a stream that carries one operation (SSE distinct connections
//! mode, multipart), driven by the operation itself: hyper polls the body, the body polls
//! the operation's stream and frames what it yields. No task and no queue stand in
//! between; an idle subscriber would keep both for its whole life (a task cell and a
//! channel of chunks, about 3 KiB).
//!
//! The body opens with a chunk at once (some browsers and proxies stall until the first
//! bytes arrive), sends a keep-alive every interval, ends with the framing's shutdown
//! chunk once the gateway drains, and ends after the operation's last item. A client that
//! disconnects makes hyper drop the body, and with it the operation's stream: that stops
//! the operation upstream. A client that stops reading makes hyper stop polling the body
//! once its write buffer is full; the operation's own queue then fills and the upstream
//! connection cuts it off (slow-consumer policy), while a write stuck longer than
//! `server.client_write_timeout_ms` ends the connection (`WriteDeadline`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use hyper::body::{Body, Frame};
use pin_project_lite::pin_project;
use tokio::time::{self, Duration, Instant, Interval};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::{debug, Span};

/// How one transport frames an operation's stream.
pub(crate) trait Framing {
    /// What the operation's stream yields.
    type Item;
    /// Whether an item postpones the next keep-alive, so that keep-alives fill idle time
    /// only; otherwise they come at a fixed pace.
    const KEEP_ALIVE_FILLS_IDLE_TIME: bool;
    /// The first chunk, sent before the operation yields anything.
    fn opening(&self) -> Bytes;
    /// The chunk sent every keep-alive interval.
    fn keep_alive(&self) -> Bytes;
    /// One item's chunk, and whether it is the stream's last.
    fn encode(&self, item: Self::Item) -> (Bytes, bool);
    /// The last chunk when the gateway drains.
    fn shutdown(&self) -> Bytes;
    /// The last chunk when the operation's stream ends without a last item, if any.
    fn end(&self) -> Option<Bytes>;
}

/// Where the body is.
enum Stage {
    /// The opening chunk is still to be sent.
    Opening,
    Streaming,
    /// The last chunk was sent; the operation's stream is dropped.
    Ended,
}

pin_project! {
    /// A response body that polls one operation's stream `S` and frames it with `F`.
    pub(crate) struct OperationBody<S, F> {
        // `None` once the body ended: the stream is dropped at once, which stops the
        // operation upstream without waiting for hyper to drop the body.
        #[pin]
        events: Option<S>,
        #[pin]
        shutdown: WaitForCancellationFutureOwned,
        keep_alive: Interval,
        framing: F,
        stage: Stage,
        // The operation's span, entered while the body polls it.
        span: Span,
    }

    impl<S, F> PinnedDrop for OperationBody<S, F> {
        fn drop(this: Pin<&mut Self>) {
            if !matches!(this.stage, Stage::Ended) {
                debug!(parent: &this.span, "client left; stopping the operation");
            }
        }
    }
}

impl<S, F> OperationBody<S, F>
where
    S: Stream<Item = F::Item>,
    F: Framing,
{
    /// The body of `events`, with a keep-alive every `keep_alive_every`, ended by
    /// `shutdown`.
    pub(crate) fn new(
        events: S,
        framing: F,
        keep_alive_every: Duration,
        shutdown: WaitForCancellationFutureOwned,
        span: Span,
    ) -> OperationBody<S, F> {
        OperationBody {
            events: Some(events),
            shutdown,
            keep_alive: time::interval_at(Instant::now() + keep_alive_every, keep_alive_every),
            framing,
            stage: Stage::Opening,
            span,
        }
    }
}

impl<S, F> Body for OperationBody<S, F>
where
    S: Stream<Item = F::Item>,
    F: Framing,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut this = self.project();
        let _entered = this.span.enter();
        match this.stage {
            Stage::Ended => return Poll::Ready(None),
            Stage::Opening => {
                *this.stage = Stage::Streaming;
                return data(this.framing.opening());
            }
            Stage::Streaming => {}
        }
        // Biased: a draining gateway ends the stream before anything else is read from
        // the upstream.
        if this.shutdown.as_mut().poll(cx).is_ready() {
            this.events.set(None);
            *this.stage = Stage::Ended;
            return data(this.framing.shutdown());
        }
        if let Some(events) = this.events.as_mut().as_pin_mut() {
            match events.poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    let (chunk, last) = this.framing.encode(item);
                    if last {
                        this.events.set(None);
                        *this.stage = Stage::Ended;
                    } else if F::KEEP_ALIVE_FILLS_IDLE_TIME {
                        this.keep_alive.reset();
                    }
                    return data(chunk);
                }
                Poll::Ready(None) => {
                    this.events.set(None);
                    *this.stage = Stage::Ended;
                    return Poll::Ready(this.framing.end().map(|chunk| Ok(Frame::data(chunk))));
                }
                Poll::Pending => {}
            }
        }
        ready!(this.keep_alive.poll_tick(cx));
        data(this.framing.keep_alive())
    }
}

fn data(chunk: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
    Poll::Ready(Some(Ok(Frame::data(chunk))))
}

#[cfg(test)]
mod tests {
    use futures_util::{stream, StreamExt};
    use http_body_util::BodyExt;
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Items are numbers; 0 is the last one.
    struct Numbers;

    impl Framing for Numbers {
        type Item = u32;
        const KEEP_ALIVE_FILLS_IDLE_TIME: bool = true;
        fn opening(&self) -> Bytes {
            Bytes::from_static(b"open")
        }
        fn keep_alive(&self) -> Bytes {
            Bytes::from_static(b"ka")
        }
        fn encode(&self, item: u32) -> (Bytes, bool) {
            (Bytes::from(item.to_string()), item == 0)
        }
        fn shutdown(&self) -> Bytes {
            Bytes::from_static(b"bye")
        }
        fn end(&self) -> Option<Bytes> {
            Some(Bytes::from_static(b"end"))
        }
    }

    /// The body's chunks with the paused clock's milliseconds at which they came.
    async fn chunks<S: Stream<Item = u32>>(body: OperationBody<S, Numbers>) -> Vec<(u128, Bytes)> {
        let started = Instant::now();
        let mut body = std::pin::pin!(body);
        let mut chunks = Vec::new();
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
            chunks.push((started.elapsed().as_millis(), chunk));
        }
        chunks
    }

    fn body<S: Stream<Item = u32>>(
        events: S,
        shutdown: &CancellationToken,
    ) -> OperationBody<S, Numbers> {
        OperationBody::new(
            events,
            Numbers,
            Duration::from_millis(1000),
            shutdown.clone().cancelled_owned(),
            Span::none(),
        )
    }

    async fn at(ms: u64, item: u32) -> u32 {
        time::sleep(Duration::from_millis(ms)).await;
        item
    }

    /// Keep-alives fill idle time, on paused time: exact instants, no wall-clock wait.
    #[tokio::test(start_paused = true)]
    async fn opens_at_once_keeps_alive_when_idle_and_ends_after_the_last_item() {
        let shutdown = CancellationToken::new();
        // 1 at 1.5 intervals, the last at 3.
        let events = stream::once(at(1500, 1)).chain(stream::once(at(1500, 0)));
        let received = chunks(body(events, &shutdown)).await;
        let expected: Vec<(u128, Bytes)> = vec![
            (0, Bytes::from_static(b"open")),
            (1000, Bytes::from_static(b"ka")),
            (1500, Bytes::from_static(b"1")),
            // The item postponed the keep-alive to 2500.
            (2500, Bytes::from_static(b"ka")),
            (3000, Bytes::from_static(b"0")),
        ];
        assert_eq!(received, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_without_a_last_item_gets_the_end_chunk() {
        let shutdown = CancellationToken::new();
        let received = chunks(body(stream::iter([3, 4]), &shutdown)).await;
        let expected: Vec<(u128, Bytes)> = ["open", "3", "4", "end"]
            .into_iter()
            .map(|chunk| (0, Bytes::from_static(chunk.as_bytes())))
            .collect();
        assert_eq!(received, expected);
    }

    /// Shutdown ends the body with its chunk and drops the operation's stream at once.
    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_body_and_drops_the_stream() {
        let shutdown = CancellationToken::new();
        let dropped = CancellationToken::new();
        let guard = dropped.clone().drop_guard();
        let events = stream::once(async move {
            let _guard = guard;
            std::future::pending::<u32>().await
        });
        let mut body = std::pin::pin!(body(events, &shutdown));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "open");
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            time::sleep(Duration::from_millis(2500)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let mut rest = Vec::new();
        while let Some(frame) = body.frame().await {
            rest.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(rest, ["ka", "ka", "bye"]);
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
        assert!(dropped.is_cancelled(), "the operation's stream was dropped");
    }
}
