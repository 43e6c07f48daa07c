//! Write-through: a WebSocket client's events written to its socket by the upstream
//! connection task that read them, without waking the client's session.
//!
//! Without it, every upstream event shared by N clients is N queue pushes, N task
//! wake-ups (most of them hand-offs between the runtime's threads), N session polls
//! (each also polling the client's socket for reads) and N writes. With it, the
//! connection task frames the event for each client (the operation's prefix, the shared
//! payload, one `writev`) and the sessions sleep on. In the 1,000-client fan-out the
//! queue, the wake-ups and the session's per-event work were about a third of the
//! gateway's CPU (docs/benchmarks.md, "Where the CPU goes").
//!
//! Every byte for a client goes through one [`ClientSocket`]: its outbox keeps what the
//! kernel did not take yet, and a lock makes each frame's append whole, so the session's
//! own frames (acks, pongs, terminal events, close) and the connection task's `next`
//! frames interleave only between frames, each in the order its writer wrote it. The
//! session drains the outbox when the kernel had no room (the connection task never
//! waits on a client), bounded like every session write by `client_write_timeout_ms`.
//!
//! Rules that keep the protocol's order:
//! - An operation's `next` frames are all written through once it runs (the events queued
//!   before are written first, `Subscription::write_through`); its terminal event still
//!   comes through the session, after every `next` the connection task wrote.
//! - A client's `complete` retires the operation's writer under the outbox lock
//!   ([`OperationWriter::retire`]), before the session acts on the client's next frame:
//!   no event of the old operation can follow one of a new operation with the same id.
//! - Once the session closes, the outbox refuses further frames: nothing follows the
//!   Close frame.
//!
//! Bursts: when the connection task finds more upstream frames ready after one, it
//! *holds* their frames in each client's outbox (`WriteThrough::hold`) and writes each
//! client's together at the end (`flush_held`): under load, one `writev` carries several
//! events, which is what keeps the gateway ahead when the upstream sends faster than one
//! write per client per event allows. Held frames do not wake the session.
//!
//! Backpressure: a client whose outbox holds more than `subscriber_queue` frames or
//! `subscriber_queue_bytes` bytes (beyond its first) is too slow. The outbox drops its
//! backlog (keeping a frame already partly written, so the stream stays well formed),
//! refuses more, and the session closes the connection with 1013, as for a full
//! subscription queue.
//!
//! Used for plain-TCP HTTP/1 clients (the socket is reachable after the upgrade) on
//! routes without operation hooks (a hook sees each event per client, in the session).
//! Clients over TLS keep the queue path.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes};
use subplex_protocol::{EventFramer, RawJson};
use subplex_upstream::{WriteThrough, WriteThroughRefused};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::UpstreamMetrics;
use crate::write_deadline::DiscardUnsent;

/// Chunks of the outbox written with one `writev` at most.
const MAX_CHUNKS_PER_WRITE: usize = 16;

/// A client's TCP socket, shared by its session and the upstream connection tasks that
/// write its operations' events.
#[derive(Debug)]
pub(crate) struct ClientSocket {
    tcp: TcpStream,
    /// Frames (chunks) waiting at most before the client is too slow.
    max_frames: usize,
    /// Bytes waiting at most before the client is too slow (a frame always fits an empty
    /// outbox).
    max_bytes: usize,
    outbox: Mutex<Outbox>,
}

/// What is waiting to be written, and why the session must look.
#[derive(Debug, Default)]
struct Outbox {
    /// Bytes the kernel did not take yet, in order. Each chunk starts at a frame boundary
    /// (a writer's whole frame, or whole frames); the first may be partly written.
    unsent: VecDeque<Unsent>,
    unsent_bytes: usize,
    /// The session's task, woken when it has something to do (see [`Attention`]).
    session: Option<Waker>,
    /// The session closed: the connection task may write nothing more.
    closing: bool,
    /// `unsent` holds frames a connection task held for the end of its burst (see
    /// `WriteThrough::hold`), not a backlog the kernel refused: the connection task
    /// flushes them, the session is not woken for them.
    held: bool,
    too_slow: bool,
    /// A write failed: the socket is broken.
    failed: Option<io::ErrorKind>,
}

/// Why the session must act on its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attention {
    /// Bytes wait in the outbox: flush them (within the write timeout).
    Flush,
    /// The client fell too far behind: close with 1013.
    TooSlow,
    /// A write failed: the connection is gone.
    Failed,
}

/// A chunk of the outbox.
#[derive(Debug)]
struct Unsent {
    bytes: Bytes,
    /// For an event's frame: counted as delivered once written whole (a frame dropped
    /// with a too-slow client's backlog never reached it).
    event: Option<EventDelivery>,
}

/// An event frame's delivery, to count once it is written.
#[derive(Debug)]
struct EventDelivery {
    metrics: Arc<UpstreamMetrics>,
    read_at: Instant,
}

impl EventDelivery {
    fn count(&self) {
        self.metrics.delivered(Some(self.read_at));
    }
}

impl Outbox {
    fn push(&mut self, bytes: Bytes, event: Option<EventDelivery>) {
        self.unsent_bytes += bytes.len();
        self.unsent.push_back(Unsent { bytes, event });
    }

    /// Appends an event's frame made of `parts`, but for its first `written` bytes
    /// (those the kernel took already); counted as delivered once written whole.
    fn push_event(
        &mut self,
        parts: &[&[u8]],
        written: usize,
        metrics: &Arc<UpstreamMetrics>,
        read_at: Instant,
    ) {
        let length: usize = parts.iter().map(|part| part.len()).sum();
        let mut rest = Vec::with_capacity(length - written);
        let mut skip = written;
        for part in parts {
            let from = skip.min(part.len());
            rest.extend_from_slice(&part[from..]);
            skip -= from;
        }
        let event = EventDelivery {
            metrics: metrics.clone(),
            read_at,
        };
        self.push(Bytes::from(rest), Some(event));
    }

    /// Why no frame of a connection task may be added now, if one may not.
    fn refusal(&self) -> Result<(), WriteThroughRefused> {
        if self.closing || self.failed.is_some() {
            Err(WriteThroughRefused::Closed)
        } else if self.too_slow {
            Err(WriteThroughRefused::TooSlow)
        } else {
            Ok(())
        }
    }

    fn wake_session(&mut self) {
        if let Some(waker) = self.session.take() {
            waker.wake();
        }
    }

    /// Writes what the kernel takes now. `Ok(true)` once the outbox is empty.
    fn write_unsent(&mut self, tcp: &TcpStream) -> io::Result<bool> {
        while !self.unsent.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_CHUNKS_PER_WRITE];
            let count = self.unsent.len().min(MAX_CHUNKS_PER_WRITE);
            for (slice, chunk) in slices.iter_mut().zip(&self.unsent) {
                *slice = IoSlice::new(&chunk.bytes);
            }
            let written = match tcp.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) => return Err(error),
            };
            self.consume(written);
        }
        Ok(true)
    }

    /// Drops `written` bytes from the front.
    fn consume(&mut self, mut written: usize) {
        self.unsent_bytes -= written;
        while written > 0 {
            let front = self.unsent.front_mut().expect("written bytes were queued");
            if written < front.bytes.len() {
                front.bytes.advance(written);
                return;
            }
            written -= front.bytes.len();
            if let Some(event) = self.unsent.pop_front().and_then(|chunk| chunk.event) {
                event.count();
            }
            if self.unsent.is_empty() {
                // A burst's room is not kept for the connection's whole life.
                self.unsent = VecDeque::new();
                // Whoever wrote them, nothing is held any more: the next held frame is a
                // new debt of its connection task.
                self.held = false;
            }
        }
    }

    /// The client is too slow: what it has not received is dropped, but for the first
    /// chunk, which may be partly written (whether it is is not tracked; keeping it costs
    /// at most one frame, and the client must get whole frames, then the Close).
    fn cut_too_slow(&mut self) {
        self.too_slow = true;
        self.held = false;
        self.unsent.truncate(1);
        self.unsent_bytes = self.unsent.iter().map(|chunk| chunk.bytes.len()).sum();
        self.wake_session();
    }
}

impl ClientSocket {
    /// `tcp`, whose outbox holds at most `max_frames` frames and `max_bytes` bytes
    /// (beyond the first) before the client counts as too slow.
    pub(crate) fn new(tcp: TcpStream, max_frames: usize, max_bytes: usize) -> ClientSocket {
        ClientSocket {
            tcp,
            max_frames: max_frames.max(1),
            max_bytes,
            outbox: Mutex::new(Outbox::default()),
        }
    }

    /// Whether a frame of `length` bytes would take `outbox` over the client's limits.
    fn full(&self, outbox: &Outbox, length: usize) -> bool {
        outbox.unsent.len() >= self.max_frames
            || outbox.unsent_bytes.saturating_add(length) > self.max_bytes
    }

    fn lock(&self) -> MutexGuard<'_, Outbox> {
        // Every update under the lock is a few field writes; a panic cannot leave it
        // half done in a way that matters.
        self.outbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one event's frame made of `parts`, writing it at once when nothing waits
    /// before it, and counts it delivered once written. Runs on the connection task:
    /// never waits.
    fn write_event(
        &self,
        outbox: &mut Outbox,
        parts: &[&[u8]],
        metrics: &Arc<UpstreamMetrics>,
        read_at: Instant,
    ) -> Result<(), WriteThroughRefused> {
        outbox.refusal()?;
        let length: usize = parts.iter().map(|part| part.len()).sum();
        let mut written = 0;
        if outbox.unsent.is_empty() {
            let slices: [IoSlice<'_>; 4] =
                std::array::from_fn(|k| IoSlice::new(parts.get(k).copied().unwrap_or_default()));
            match self.tcp.try_write_vectored(&slices[..parts.len().min(4)]) {
                Ok(n) if n == length => {
                    metrics.delivered(Some(read_at));
                    return Ok(());
                }
                Ok(n) => written = n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    outbox.failed = Some(error.kind());
                    outbox.wake_session();
                    return Err(WriteThroughRefused::Closed);
                }
            }
        } else if self.full(outbox, length) {
            outbox.cut_too_slow();
            return Err(WriteThroughRefused::TooSlow);
        }
        outbox.push_event(parts, written, metrics, read_at);
        outbox.wake_session();
        Ok(())
    }

    /// Appends one event's frame to the outbox for the end of the connection task's burst
    /// (see `WriteThrough::hold`). `Ok(true)` if the outbox held nothing before: the caller
    /// owes it a [`flush_held`](Self::flush_held). After a client's
    /// [`MAX_CHUNKS_PER_WRITE`] frames the burst's frames are written at once.
    fn hold_event(
        &self,
        outbox: &mut Outbox,
        parts: &[&[u8]],
        metrics: &Arc<UpstreamMetrics>,
        read_at: Instant,
    ) -> Result<bool, WriteThroughRefused> {
        let length: usize = parts.iter().map(|part| part.len()).sum();
        if outbox.held && self.full(outbox, length) {
            // Held frames count against the client's limits like a backlog: written now,
            // what the kernel refuses becomes one.
            self.write_held(outbox);
        }
        if !outbox.held && !outbox.unsent.is_empty() {
            // A backlog the session is flushing: nothing to hold it for, and the limits
            // decide whether the client is too slow.
            return self
                .write_event(outbox, parts, metrics, read_at)
                .map(|()| false);
        }
        outbox.refusal()?;
        let first = !outbox.held;
        outbox.held = true;
        outbox.push_event(parts, 0, metrics, read_at);
        if outbox.unsent.len() >= MAX_CHUNKS_PER_WRITE {
            self.write_held(outbox);
        }
        Ok(first)
    }

    /// Writes the frames held for a burst; what the kernel does not take becomes a
    /// backlog for the session.
    fn write_held(&self, outbox: &mut Outbox) {
        if !outbox.held {
            return;
        }
        match outbox.write_unsent(&self.tcp) {
            Ok(true) => outbox.held = false,
            Ok(false) => {
                outbox.held = false;
                outbox.wake_session();
            }
            Err(error) => {
                outbox.held = false;
                outbox.failed = Some(error.kind());
                outbox.wake_session();
            }
        }
    }

    /// Why the session must act now, or `Pending` (woken when that changes).
    pub(crate) fn poll_attention(&self, cx: &mut Context<'_>) -> Poll<Attention> {
        let mut outbox = self.lock();
        if outbox.failed.is_some() {
            Poll::Ready(Attention::Failed)
        } else if outbox.too_slow {
            Poll::Ready(Attention::TooSlow)
        } else if !outbox.unsent.is_empty() {
            Poll::Ready(Attention::Flush)
        } else {
            match &outbox.session {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => outbox.session = Some(cx.waker().clone()),
            }
            Poll::Pending
        }
    }

    /// The session is closing: from now on only its own frames (the Close) are written.
    pub(crate) fn close_to_upstream_writes(&self) {
        self.lock().closing = true;
    }

    /// Writes the outbox; `Ready(Ok)` once it is empty, `Pending` until the socket has
    /// room (the caller's task is woken then).
    fn poll_write_unsent(&self, outbox: &mut Outbox, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(kind) = outbox.failed {
                return Poll::Ready(Err(kind.into()));
            }
            match outbox.write_unsent(&self.tcp) {
                Ok(true) => return Poll::Ready(Ok(())),
                Ok(false) => {}
                Err(error) => {
                    outbox.failed = Some(error.kind());
                    return Poll::Ready(Err(error));
                }
            }
            // Readiness was cleared by the write that found no room: this registers the
            // task, or says the socket has had room since.
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }
}

/// One operation's writer: frames each `next` payload with the operation's prefix and
/// appends it to the client's socket.
#[derive(Debug)]
pub(crate) struct OperationWriter {
    socket: Arc<ClientSocket>,
    framer: Arc<EventFramer>,
    metrics: Arc<UpstreamMetrics>,
    /// Set when the client completed the operation: nothing more of it is written.
    retired: AtomicBool,
    written: AtomicU64,
}

impl OperationWriter {
    pub(crate) fn new(
        socket: Arc<ClientSocket>,
        framer: Arc<EventFramer>,
        metrics: Arc<UpstreamMetrics>,
    ) -> OperationWriter {
        OperationWriter {
            socket,
            framer,
            metrics,
            retired: AtomicBool::new(false),
            written: AtomicU64::new(0),
        }
    }

    /// Writes nothing more of this operation. Under the outbox lock: a frame being
    /// written now is whole before this returns, and none follows.
    pub(crate) fn retire(&self) {
        let _outbox = self.socket.lock();
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Frames `payload` (header, the operation's prefix, the payload, `}`) and hands the
    /// parts to `append` under the outbox lock, unless the operation was retired; counts
    /// it for the span once taken.
    fn append<R>(
        &self,
        payload: &RawJson,
        append: impl FnOnce(&ClientSocket, &mut Outbox, &[&[u8]]) -> Result<R, WriteThroughRefused>,
    ) -> Result<R, WriteThroughRefused> {
        let prefix = self.framer.next_prefix().as_bytes();
        let payload = payload.as_str().as_bytes();
        let (header, header_length) = text_frame_header(prefix.len() + payload.len() + 1);
        let appended = {
            let mut outbox = self.socket.lock();
            if self.retired.load(Ordering::Relaxed) {
                return Err(WriteThroughRefused::Closed);
            }
            let parts: [&[u8]; 4] = [&header[..header_length], prefix, payload, b"}"];
            append(&self.socket, &mut outbox, &parts)?
        };
        self.written.fetch_add(1, Ordering::Relaxed);
        Ok(appended)
    }
}

impl WriteThrough for OperationWriter {
    fn write(&self, payload: &RawJson, read_at: Instant) -> Result<(), WriteThroughRefused> {
        self.append(payload, |socket, outbox, parts| {
            socket.write_event(outbox, parts, &self.metrics, read_at)
        })
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn hold(&self, payload: &RawJson, read_at: Instant) -> Result<bool, WriteThroughRefused> {
        self.append(payload, |socket, outbox, parts| {
            socket.hold_event(outbox, parts, &self.metrics, read_at)
        })
    }

    fn flush_held(&self) {
        self.socket.write_held(&mut self.socket.lock());
    }
}

/// The header of an unmasked (server-to-client), unfragmented text frame with a payload of
/// `length` bytes (RFC 6455 §5.2), and how many of the ten bytes it uses.
fn text_frame_header(length: usize) -> ([u8; 10], usize) {
    let mut header = [0u8; 10];
    header[0] = 0x81; // FIN, opcode 1 (text)
    if length < 126 {
        header[1] = length as u8;
        (header, 2)
    } else if let Ok(short) = u16::try_from(length) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(length as u64).to_be_bytes());
        (header, 10)
    }
}

/// The session's view of a [`ClientSocket`], what tungstenite reads and writes: reads come
/// from the socket (after the bytes hyper had read past the upgrade request), writes go
/// through the outbox.
#[derive(Debug)]
pub(crate) struct SessionIo {
    socket: Arc<ClientSocket>,
    /// Bytes of the client read by hyper together with its upgrade request.
    unread: Bytes,
}

impl SessionIo {
    pub(crate) fn new(socket: Arc<ClientSocket>, unread: Bytes) -> SessionIo {
        // Copied: a slice would keep hyper's whole read buffer (kilobytes) alive for the
        // connection's life.
        let unread = Bytes::copy_from_slice(&unread);
        SessionIo { socket, unread }
    }
}

impl AsyncRead for SessionIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        let tcp = &self.socket.tcp;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            match tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for SessionIo {
    /// Takes all of `buf` or none of it, so that a frame is never split around one of the
    /// connection task's: what the kernel does not take now waits in the outbox. While
    /// the outbox holds anything, nothing new is taken (the session's writes wait, within
    /// their time bound).
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = &*self.socket;
        let mut outbox = socket.lock();
        loop {
            ready!(socket.poll_write_unsent(&mut outbox, cx))?;
            match socket.tcp.try_write(buf) {
                Ok(n) => {
                    if n < buf.len() {
                        outbox.push(Bytes::copy_from_slice(&buf[n..]), None);
                    }
                    return Poll::Ready(Ok(buf.len()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    ready!(socket.tcp.poll_write_ready(cx))?;
                }
                Err(error) => {
                    outbox.failed = Some(error.kind());
                    return Poll::Ready(Err(error));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &*self.socket;
        let mut outbox = socket.lock();
        socket.poll_write_unsent(&mut outbox, cx)
    }

    /// Flushes; the socket itself closes when the session drops it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl DiscardUnsent for SessionIo {
    fn discard_unsent_on_close(&self) {
        self.socket.tcp.discard_unsent_on_close();
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use futures_util::{SinkExt, StreamExt};
    use subplex_protocol::{Event, Subprotocol};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn frame_headers_match_tungstenite_at_every_length_class() {
        for length in [0, 1, 125, 126, 127, 65_535, 65_536, 1 << 20] {
            let frame = Frame::message(vec![b'x'; length], OpCode::Data(Data::Text), true);
            let mut expected = Vec::new();
            frame.format(&mut expected).unwrap();
            let (header, used) = text_frame_header(length);
            assert_eq!(&header[..used], &expected[..used], "length {length}");
            assert_eq!(expected.len(), used + length, "length {length}");
        }
    }

    /// A client socket on loopback (the gateway's end) and the client's raw end.
    async fn connected(max_frames: usize, max_bytes: usize) -> (Arc<ClientSocket>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (gateway_end, _) = listener.accept().await.unwrap();
        let socket = Arc::new(ClientSocket::new(gateway_end, max_frames, max_bytes));
        (socket, client)
    }

    fn writer(
        socket: &Arc<ClientSocket>,
        id: &str,
        metrics: &Arc<UpstreamMetrics>,
    ) -> OperationWriter {
        let framer = EventFramer::new(Subprotocol::GraphqlTransportWs, id.into());
        OperationWriter::new(socket.clone(), Arc::new(framer), metrics.clone())
    }

    fn payload(n: usize, padding: usize) -> RawJson {
        RawJson::parse(&format!(
            r#"{{"data":{{"n":{n},"pad":"{}"}}}}"#,
            "x".repeat(padding)
        ))
        .unwrap()
    }

    fn next_frame(id: &str, payload: &RawJson) -> Message {
        let framer = EventFramer::new(Subprotocol::GraphqlTransportWs, id.into());
        Message::text(framer.frame(&Event::Next(payload.clone())))
    }

    fn attention(socket: &ClientSocket) -> Poll<Attention> {
        let waker = futures_util::task::noop_waker();
        socket.poll_attention(&mut Context::from_waker(&waker))
    }

    #[tokio::test]
    async fn events_and_the_sessions_frames_arrive_whole_and_in_order() {
        let metrics = Metrics::new().upstream("up");
        let (socket, client) = connected(128, 1 << 20).await;
        let mut session = WebSocketStream::from_raw_socket(
            SessionIo::new(socket.clone(), Bytes::new()),
            Role::Server,
            None,
        )
        .await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let (one, two) = (
            writer(&socket, "1", &metrics),
            writer(&socket, "2", &metrics),
        );
        session
            .send(Message::text(r#"{"type":"connection_ack"}"#))
            .await
            .unwrap();
        one.write(&payload(1, 0), Instant::now()).unwrap();
        two.write(&payload(2, 200), Instant::now()).unwrap();
        session
            .send(Message::text(r#"{"type":"complete","id":"1"}"#))
            .await
            .unwrap();
        let mut received = Vec::new();
        for _ in 0..4 {
            received.push(client.next().await.unwrap().unwrap());
        }
        assert_eq!(
            received,
            [
                Message::text(r#"{"type":"connection_ack"}"#),
                next_frame("1", &payload(1, 0)),
                next_frame("2", &payload(2, 200)),
                Message::text(r#"{"type":"complete","id":"1"}"#),
            ]
        );
        assert_eq!(metrics.events_out(), 2);
        assert_eq!(attention(&socket), Poll::Pending);
    }

    #[tokio::test]
    async fn a_retired_operation_and_a_closing_session_write_nothing_more() {
        let metrics = Metrics::new().upstream("up");
        let (socket, _client) = connected(128, 1 << 20).await;
        let (one, two) = (
            writer(&socket, "1", &metrics),
            writer(&socket, "2", &metrics),
        );
        one.retire();
        assert_eq!(
            one.write(&payload(1, 0), Instant::now()),
            Err(WriteThroughRefused::Closed)
        );
        assert_eq!(two.write(&payload(1, 0), Instant::now()), Ok(()));
        socket.close_to_upstream_writes();
        assert_eq!(
            two.write(&payload(2, 0), Instant::now()),
            Err(WriteThroughRefused::Closed)
        );
        assert_eq!(
            (one.written(), two.written(), metrics.events_out()),
            (0, 1, 1)
        );
    }

    /// Frames held for a burst are not written (nor the session woken) until the flush,
    /// then go out together, in order, counted as delivered only then.
    #[tokio::test]
    async fn held_frames_wait_for_the_flush_then_go_out_together() {
        let metrics = Metrics::new().upstream("up");
        let (socket, client) = connected(128, 1 << 20).await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let (one, two) = (
            writer(&socket, "1", &metrics),
            writer(&socket, "2", &metrics),
        );
        assert_eq!(one.hold(&payload(1, 0), Instant::now()), Ok(true));
        assert_eq!(two.hold(&payload(2, 0), Instant::now()), Ok(false));
        assert_eq!(one.hold(&payload(3, 0), Instant::now()), Ok(false));
        assert_eq!(metrics.events_out(), 0);
        assert_eq!(attention(&socket), Poll::Ready(Attention::Flush));
        one.flush_held();
        for (id, n) in [("1", 1), ("2", 2), ("1", 3)] {
            let received = client.next().await.unwrap().unwrap();
            assert_eq!(received, next_frame(id, &payload(n, 0)));
        }
        assert_eq!(metrics.events_out(), 3);
        assert_eq!(attention(&socket), Poll::Pending);
        // The outbox is empty again: the next held frame is a new debt.
        assert_eq!(two.hold(&payload(4, 0), Instant::now()), Ok(true));
        two.flush_held();
        let received = client.next().await.unwrap().unwrap();
        assert_eq!(received, next_frame("2", &payload(4, 0)));
    }

    /// The client reads nothing: the kernel's buffers fill, then the outbox, and the
    /// event after `max_frames` waiting ones finds the client too slow. What the client
    /// finally reads is whole frames, in order, with no gap before the cut.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_too_slow_once_its_outbox_is_full() {
        let metrics = Metrics::new().upstream("up");
        let (socket, mut client) = connected(4, 1 << 20).await;
        let one = writer(&socket, "1", &metrics);
        let mut sent = 0;
        let refused = loop {
            match one.write(&payload(sent, 16 * 1024), Instant::now()) {
                Ok(()) => sent += 1,
                Err(refused) => break refused,
            }
            assert!(sent < 100_000, "never refused");
        };
        assert_eq!(refused, WriteThroughRefused::TooSlow);
        assert_eq!(attention(&socket), Poll::Ready(Attention::TooSlow));
        // Refused from now on, without another attempt to write.
        assert_eq!(
            one.write(&payload(0, 0), Instant::now()),
            Err(WriteThroughRefused::TooSlow)
        );
        // Four were waiting when the fifth came: the first stays (it may be partly
        // written), three are dropped, and the session's own close still gets through.
        let mut session = SessionIo::new(socket.clone(), Bytes::new());
        let reader = tokio::spawn(async move {
            let mut bytes = Vec::new();
            client.read_to_end(&mut bytes).await.unwrap();
            bytes
        });
        poll_fn(|cx| Pin::new(&mut session).poll_write(cx, &[0x88, 0x00]))
            .await
            .unwrap();
        poll_fn(|cx| Pin::new(&mut session).poll_flush(cx))
            .await
            .unwrap();
        drop(session);
        drop(one);
        drop(Arc::into_inner(socket).expect("the last reference"));
        let bytes = reader.await.unwrap();
        let mut frames = tokio_tungstenite::tungstenite::WebSocket::from_raw_socket(
            std::io::Cursor::new(bytes),
            Role::Client,
            None,
        );
        let mut delivered = 0;
        while let Ok(message) = frames.read() {
            match message {
                Message::Close(_) => break,
                message => assert_eq!(message, next_frame("1", &payload(delivered, 16 * 1024))),
            }
            delivered += 1;
        }
        assert_eq!(delivered, sent - 3);
        assert_eq!(metrics.events_out(), (sent - 3) as u64);
    }
}
