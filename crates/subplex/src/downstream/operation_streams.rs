//! The running operations' streams of one client connection, polled by its session.
//!
//! Most connections run one operation at a time. That one is polled directly, so its
//! event wakes the session's task straight away; only further operations go into a
//! `SelectAll`, whose per-stream wakers cost a second wake-up and a queue push per event
//! (measured: a tenth of the gateway's CPU in the 1,000-client fan-out when every
//! operation went through it).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::SelectAll;
use futures_util::{Stream, StreamExt};

pub(crate) struct OperationStreams<S> {
    first: Option<S>,
    more: SelectAll<S>,
    /// Which side is polled first next time, flipped after each item so that neither the
    /// first operation nor the others can starve the other side.
    more_first: bool,
}

impl<S: Stream + Unpin> OperationStreams<S> {
    pub fn new() -> Self {
        OperationStreams {
            first: None,
            more: SelectAll::new(),
            more_first: false,
        }
    }

    pub fn push(&mut self, stream: S) {
        if self.first.is_none() {
            self.first = Some(stream);
        } else {
            self.more.push(stream);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.more.is_empty()
    }

    fn poll_first(&mut self, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let Some(first) = &mut self.first else {
            return Poll::Ready(None);
        };
        match first.poll_next_unpin(cx) {
            Poll::Ready(None) => {
                self.first = None;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.more.is_empty() {
            return Poll::Ready(None);
        }
        self.more.poll_next_unpin(cx)
    }
}

impl<S: Stream + Unpin> Stream for OperationStreams<S> {
    type Item = S::Item;

    /// The next item of any operation; `Ready(None)` only when there is no operation
    /// left (callers guard with [`is_empty`](OperationStreams::is_empty), as with
    /// `SelectAll`).
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        let order = if this.more_first {
            [true, false]
        } else {
            [false, true]
        };
        for more in order {
            let polled = if more {
                this.poll_more(cx)
            } else {
                this.poll_first(cx)
            };
            if let Poll::Ready(Some(item)) = polled {
                this.more_first = !more;
                return Poll::Ready(Some(item));
            }
        }
        if this.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    #[tokio::test]
    async fn every_item_of_every_stream_comes_out_and_then_none() {
        let mut streams = OperationStreams::new();
        assert!(streams.is_empty());
        streams.push(stream::iter(vec![1, 2, 3]));
        streams.push(stream::iter(vec![10, 20]));
        streams.push(stream::iter(vec![100]));
        let mut items: Vec<i32> = (&mut streams).collect().await;
        // Alternating between the first stream and the others, each in its own order.
        assert_eq!(items[0], 1);
        items.sort();
        assert_eq!(items, vec![1, 2, 3, 10, 20, 100]);
        assert!(streams.is_empty());
        // A stream pushed after the first ended takes its place.
        streams.push(stream::iter(vec![7]));
        assert_eq!(streams.next().await, Some(7));
        assert_eq!(streams.next().await, None);
    }

    #[tokio::test]
    async fn a_busy_first_stream_does_not_starve_the_others() {
        let mut streams = OperationStreams::new();
        streams.push(stream::iter((0..1000).collect::<Vec<i32>>()));
        streams.push(stream::iter(vec![-1]));
        let first_two: Vec<i32> = (&mut streams).take(2).collect().await;
        assert_eq!(first_two, vec![0, -1]);
    }
}
