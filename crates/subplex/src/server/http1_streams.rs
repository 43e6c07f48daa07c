//! The HTTP/1 front for event streams: SSE (both modes) and multipart subscriptions on
//! plain TCP, served without hyper.
//!
//! hyper's HTTP/1 server gives every connection an 8 KiB read buffer and an 8 KiB
//! response-head buffer for the connection's whole life, and its API cannot size them:
//! about 9 KiB of the 14.3 KiB an idle SSE subscriber cost. A stream's connection, though,
//! needs nothing of HTTP/1 after its response head but writing chunks and noticing the
//! client leave. So the request head is peeked (not read) and parsed with `httparse`; a
//! stream request is then read, handed to the same `routes::handle` as every other request,
//! and its response written here: the head in one piece, the body as chunks straight from
//! the response body to the socket, without a buffer kept between writes.
//!
//! Whatever this does not take (a request that does not stream, a head that has not
//! arrived whole, a chunked body, `Expect`, HTTP/1.0, a head over 16 KiB) is still in the
//! socket untouched, and the connection goes to hyper for the rest of its life; one
//! that opens with the HTTP/2 preface goes to hyper-util's detecting server. After a
//! stream ends, the connection serves the client's next request the same way.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Body;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::ConnectionPermit;
use crate::responses::{RequestBody, ResponseBody};
use crate::routes;
use crate::state::GatewayState;
use crate::write_deadline::WriteDeadline;

/// The largest request head looked at; a larger one (big cookies, say) is hyper's.
const HEAD_PEEK_BYTES: usize = 16 * 1024;
/// Headers parsed per request, as many as hyper allows.
const MAX_HEADERS: usize = 100;
/// Encoded chunks that are ready at once go out in one write up to this size.
const BATCH_BYTES: usize = 64 * 1024;
/// Why a connection that did not send a whole request in time is closed.
const REQUEST_TIMEOUT: &str = "no whole request within server.client_request_timeout_ms";
/// The chunk that ends a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a connection left the front.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// Closed: by the client, after a response that had to close it, or by the drain.
    Closed,
    /// Its next request is not one the front serves; it is still unread in the socket.
    ToHyper,
    /// It opens with (a part of) the HTTP/2 preface, still unread in the socket.
    MaybeHttp2,
}

/// Serves the stream requests that open `io`, one after another, until the client
/// leaves, the drain closes it, or a request comes that is hyper's.
///
/// A stream keeps this future, inside its connection's task, for its whole life: only
/// the response's body and framing are held while it streams; reading and routing the
/// request happen in a box that is gone by then.
pub(crate) async fn serve(
    io: &mut WriteDeadline<TcpStream>,
    state: &Arc<GatewayState>,
    peer: SocketAddr,
    permit: &ConnectionPermit,
) -> io::Result<Served> {
    let mut first = true;
    loop {
        let response = match Box::pin(next_response(io, state, peer, permit, first)).await? {
            Next::Response(response) => response,
            Next::Other => return Ok(Served::ToHyper),
            Next::MaybeHttp2 => return Ok(Served::MaybeHttp2),
            Next::Closed => return Ok(Served::Closed),
        };
        first = false;
        match write_body(io, response).await? {
            Written::KeepAlive => {}
            Written::Close => {
                let _ = io.shutdown().await;
                return Ok(Served::Closed);
            }
            Written::ClientGone => return Ok(Served::Closed),
        }
    }
}

/// The next request on a connection, as far as the front is concerned.
enum Next {
    /// The response to a stream request, ready to be written.
    Response(Started),
    /// A request the front does not serve, left unread.
    Other,
    /// The connection's first bytes are (so far) the HTTP/2 preface, left unread.
    MaybeHttp2,
    /// The client closed the connection, or the drain did between requests.
    Closed,
}

/// A response whose head is encoded: all a streaming connection keeps of it.
struct Started {
    /// The head, then what of the body is not written yet.
    out: Vec<u8>,
    body: ResponseBody,
    framing: Framing,
    /// The connection closes after this response.
    close: bool,
}

/// Waits for the next request (the connection's `first`, or one after a response); if it
/// is a stream request, reads it, routes it and returns its response.
async fn next_response(
    io: &mut WriteDeadline<TcpStream>,
    state: &Arc<GatewayState>,
    peer: SocketAddr,
    permit: &ConnectionPermit,
    first: bool,
) -> io::Result<Next> {
    let timeout = state.server.client_request_timeout;
    let read = tokio::select! {
        biased;
        // Between requests (or before the first), the drain simply closes.
        _ = state.downstream_shutdown.cancelled() => return Ok(Next::Closed),
        read = tokio::time::timeout(timeout, read_request(io, state.server.max_message_bytes, first)) => match read {
            // A connection idle for that long, or slow to send its request, is closed, as
            // hyper's header timeout closes its own.
            Err(_elapsed) => {
                debug!(%peer, reason = REQUEST_TIMEOUT, "client connection closed");
                return Ok(Next::Closed);
            }
            Ok(Err(eof)) if eof.kind() == io::ErrorKind::UnexpectedEof => return Ok(Next::Closed),
            Ok(read) => read?,
        },
    };
    let (mut request, close) = match read {
        Read::Stream { request, close } => (request, close),
        Read::Other => return Ok(Next::Other),
        Read::MaybeHttp2 => return Ok(Next::MaybeHttp2),
    };
    request.extensions_mut().insert(permit.clone());
    let response = routes::handle(request, state.clone(), peer).await;
    let close = close || state.downstream_shutdown.is_cancelled();
    let (parts, body) = response.into_parts();
    let framing = Framing::of(parts.status, body.size_hint().exact());
    Ok(Next::Response(Started {
        out: encode_head(parts, framing, close),
        body,
        framing,
        close,
    }))
}

/// What [`read_request`] found.
// Returned once per request and taken apart at once: its size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Read {
    /// A stream request, read whole; `close` when the client asked to close after it.
    Stream {
        request: Request<RequestBody>,
        close: bool,
    },
    /// Another request, left unread.
    Other,
    /// The connection's first bytes are (so far) the HTTP/2 preface, left unread.
    MaybeHttp2,
}

/// Waits for the next request (the connection's `first`, or one after a response) and
/// reads it if it is a stream request. A client that closed instead reads as
/// `UnexpectedEof`.
async fn read_request(
    io: &mut WriteDeadline<TcpStream>,
    max_body_bytes: usize,
    first: bool,
) -> io::Result<Read> {
    // No buffer while a kept-alive connection waits for its next request.
    io.get_ref().readable().await?;
    let mut buf = vec![0u8; HEAD_PEEK_BYTES];
    let peeked = io.get_ref().peek(&mut buf).await?;
    if peeked == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if first && may_be_http2(&buf[..peeked]) {
        return Ok(Read::MaybeHttp2);
    }
    let Some(head) = parse_head(&buf[..peeked], max_body_bytes) else {
        return Ok(Read::Other);
    };
    // Peeked, so already here: reading it takes it out of the socket.
    io.read_exact(&mut buf[..head.length]).await?;
    drop(buf);
    let mut body = vec![0u8; head.body_length];
    io.read_exact(&mut body).await?;
    let request = head
        .request
        .map(|()| Either::Right(Full::new(Bytes::from(body))));
    Ok(Read::Stream {
        request,
        close: head.close,
    })
}

/// Whether a connection's first bytes are (so far) the HTTP/2 preface of a client with
/// prior knowledge. An HTTP/1 request line differs from the preface (`PRI * HTTP/2.0`)
/// within its first bytes, so one peek decides; what it cannot decide goes to the
/// detecting server.
fn may_be_http2(first_bytes: &[u8]) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let seen = first_bytes.len().min(PREFACE.len());
    first_bytes[..seen] == PREFACE[..seen]
}

/// A parsed request head the front serves.
#[derive(Debug)]
struct Head {
    request: Request<()>,
    /// Bytes of the head, through its blank line.
    length: usize,
    /// `Content-Length`, 0 without one.
    body_length: usize,
    /// `Connection: close`.
    close: bool,
}

/// The head at the start of `bytes` if it is whole and a stream request the front
/// serves: HTTP/1.1 `GET` or `POST`, a body of at most `max_body_bytes` given by one
/// `Content-Length` (or none). Anything unusual is left to hyper, which knows every
/// corner of HTTP/1 and answers malformed requests.
fn parse_head(bytes: &[u8], max_body_bytes: usize) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(length) = parsed.parse(bytes).ok()? else {
        return None;
    };
    if parsed.version != Some(1) {
        return None;
    }
    let method = match parsed.method? {
        "GET" => Method::GET,
        "POST" => Method::POST,
        _ => return None,
    };
    let path = parsed.path?;
    if !path.starts_with('/') {
        return None;
    }
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .version(Version::HTTP_11)
        .body(())
        .ok()?;
    let mut body_length = None;
    let mut close = false;
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        if name == header::CONTENT_LENGTH {
            if body_length.is_some() {
                return None;
            }
            body_length = Some(content_length(&value)?);
        } else if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
        {
            return None;
        } else if name == header::CONNECTION {
            for token in value.to_str().ok()?.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    return None;
                }
            }
        }
        request.headers_mut().append(name, value);
    }
    let body_length = body_length.unwrap_or(0);
    if body_length > max_body_bytes || !routes::is_streamed(&request) {
        return None;
    }
    Some(Head {
        request,
        length,
        body_length,
        close,
    })
}

/// A `Content-Length` value: digits only (Rust's integer parse would take a `+`).
fn content_length(value: &HeaderValue) -> Option<usize> {
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// What became of the connection once a response was written.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    /// Whole, and the connection can serve another request.
    KeepAlive,
    /// Whole; the connection closes (the client asked, or the gateway drains).
    Close,
    /// The client left before the body ended.
    ClientGone,
}

/// Writes a response: its head, then its body as it comes, in chunks unless its length
/// is known. While waiting for the body the socket is watched for the client leaving,
/// which drops the body (and so ends the operation behind it).
async fn write_body(io: &mut WriteDeadline<TcpStream>, response: Started) -> io::Result<Written> {
    let Started {
        mut out,
        mut body,
        framing,
        close,
    } = response;
    let done = if close {
        Written::Close
    } else {
        Written::KeepAlive
    };
    if framing == Framing::None {
        io.write_all(&out).await?;
        return Ok(done);
    }
    let mut watch_client = true;
    loop {
        // Everything the body has ready goes out in one write; then wait for more.
        let ready = poll_fn(|cx| Poll::Ready(poll_step(cx, &mut body, None))).await;
        let step = match ready {
            Poll::Ready(step) => step,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(&out).await?;
                    // Not kept: an idle stream holds no buffer.
                    out = Vec::new();
                }
                let mut client = Some((io.get_ref(), &mut watch_client));
                poll_fn(|cx| poll_step(cx, &mut body, client.as_mut())).await
            }
        };
        match step {
            Step::Data(data) => {
                framing.encode(&mut out, &data);
                if out.len() >= BATCH_BYTES {
                    io.write_all(&out).await?;
                    out = Vec::new();
                }
            }
            Step::End => {
                if framing == Framing::Chunked {
                    out.extend_from_slice(LAST_CHUNK);
                }
                io.write_all(&out).await?;
                return Ok(done);
            }
            Step::ClientGone => return Ok(Written::ClientGone),
        }
    }
}

/// What comes next on a response being written.
enum Step {
    /// A piece of the body.
    Data(Bytes),
    /// The end of the body.
    End,
    /// The client left first (end of stream or reset).
    ClientGone,
}

/// Polls the body for its next step and, with `client`, the client's socket for the
/// client leaving. Once the client has sent something (its next request, pipelined), it
/// is left in the socket for after this response and the socket is no longer watched:
/// it stays readable, and a client that then leaves is noticed by the next write.
fn poll_step(
    cx: &mut std::task::Context<'_>,
    body: &mut ResponseBody,
    client: Option<&mut (&TcpStream, &mut bool)>,
) -> Poll<Step> {
    if let Some((socket, watching)) = client {
        if **watching {
            let mut probe = [0u8; 1];
            let mut probe = ReadBuf::new(&mut probe);
            match socket.poll_peek(cx, &mut probe) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Step::ClientGone),
                Poll::Ready(Ok(_)) => **watching = false,
                Poll::Pending => {}
            }
        }
    }
    // Trailers are skipped: none of the gateway's bodies has them, and a chunked body
    // here ends without.
    while let Some(frame) = ready!(Pin::new(&mut *body).poll_frame(cx)) {
        let Ok(frame) = frame;
        if let Ok(data) = frame.into_data() {
            return Poll::Ready(Step::Data(data));
        }
    }
    Poll::Ready(Step::End)
}

/// How a response's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all (204, 304).
    None,
    /// `Content-Length`: a body whose size is known (a JSON error, say).
    Length(u64),
    /// `Transfer-Encoding: chunked`: a stream.
    Chunked,
}

impl Framing {
    fn of(status: StatusCode, exact_length: Option<u64>) -> Framing {
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::None
        } else {
            exact_length.map_or(Framing::Chunked, Framing::Length)
        }
    }

    fn encode(self, out: &mut Vec<u8>, data: &[u8]) {
        match self {
            Framing::None => {}
            Framing::Length(_) => out.extend_from_slice(data),
            // An empty chunk would end the body.
            Framing::Chunked if data.is_empty() => {}
            Framing::Chunked => {
                // The size in hex without a `format!` allocation per chunk.
                use std::io::Write;
                let _ = write!(out, "{:x}\r\n", data.len());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// The response head as hyper writes it: status line, the response's headers, `date`,
/// the body's framing, and `connection: close` when the connection closes after it.
fn encode_head(parts: http::response::Parts, framing: Framing, close: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    let mut line = |name: &[u8], value: &[u8]| {
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    for (name, value) in &parts.headers {
        // The framing and the connection are this connection's to say.
        if name != header::CONTENT_LENGTH
            && name != header::TRANSFER_ENCODING
            && name != header::CONNECTION
        {
            line(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !parts.headers.contains_key(header::DATE) {
        line(
            b"date",
            httpdate::fmt_http_date(SystemTime::now()).as_bytes(),
        );
    }
    match framing {
        Framing::None => {}
        Framing::Length(length) => line(b"content-length", length.to_string().as_bytes()),
        Framing::Chunked => line(b"transfer-encoding", b"chunked"),
    }
    if close {
        line(b"connection", b"close");
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[cfg(test)]
mod tests {
    use http::Response;

    use super::*;

    const SSE_GET: &[u8] = b"GET /graphql?query=subscription%7Bt%7D HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n\r\n";

    #[test]
    fn a_whole_stream_request_is_taken_with_its_length_and_headers() {
        let head = parse_head(SSE_GET, 1024).expect("an SSE GET is the front's");
        assert_eq!(head.length, SSE_GET.len());
        assert_eq!(head.body_length, 0);
        assert!(!head.close);
        assert_eq!(head.request.method(), Method::GET);
        assert_eq!(head.request.uri().path(), "/graphql");
        assert_eq!(
            head.request.uri().query(),
            Some("query=subscription%7Bt%7D")
        );
        assert_eq!(head.request.headers()["host"], "gw");

        let post = b"POST /graphql HTTP/1.1\r\nAccept: multipart/mixed;subscriptionSpec=1.0\r\ncontent-length: 15\r\nConnection: keep-alive, close\r\n\r\n{\"query\":\"{a}\"}";
        let head = parse_head(post, 1024).expect("a multipart POST is the front's");
        assert_eq!((head.length, head.body_length), (post.len() - 15, 15));
        assert!(head.close);
    }

    #[test]
    fn requests_that_are_not_streams_or_are_unusual_are_left_to_hyper() {
        let left = [
            // Not whole yet.
            &b"GET /graphql HTTP/1.1\r\nAccept: text/event-stream\r\n"[..],
            // Not a stream.
            b"POST /graphql HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            b"GET /graphql HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nAccept: text/event-stream\r\n\r\n",
            // HTTP/1.0, another method, an absolute target.
            b"GET /graphql HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
            b"PUT /graphql HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n",
            b"GET http://gw/graphql HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n",
            // Bodies hyper frames: chunked, two lengths, a signed length, over the limit.
            b"POST /graphql HTTP/1.1\r\nAccept: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /graphql HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            b"POST /graphql HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: +2\r\n\r\n",
            b"POST /graphql HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 1025\r\n\r\n",
            // 100-continue.
            b"POST /graphql HTTP/1.1\r\nAccept: text/event-stream\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            // Malformed.
            b"GET /graphql HTTP/1.1\r\nAccept text/event-stream\r\n\r\n",
        ];
        for request in left {
            assert!(
                parse_head(request, 1024).is_none(),
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn only_a_start_of_the_http2_preface_may_be_http2() {
        assert!(may_be_http2(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"
        ));
        assert!(may_be_http2(b"PRI * HT"));
        assert!(may_be_http2(b"P"));
        assert!(!may_be_http2(b"POST /graphql HTTP/1.1\r\n"));
        assert!(!may_be_http2(SSE_GET));
    }

    #[test]
    fn the_head_says_status_headers_date_framing_and_close() {
        let mut response = Response::new(());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let (parts, ()) = response.into_parts();
        let head = String::from_utf8(encode_head(parts, Framing::Chunked, true)).unwrap();
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "HTTP/1.1 200 OK");
        assert_eq!(lines[1], "content-type: text/event-stream");
        assert!(
            lines[2].starts_with("date: ") && lines[2].ends_with(" GMT"),
            "{head}"
        );
        assert_eq!(
            &lines[3..],
            ["transfer-encoding: chunked", "connection: close", "", ""]
        );

        let mut response = Response::new(());
        *response.status_mut() = StatusCode::FORBIDDEN;
        let (parts, ()) = response.into_parts();
        let head = String::from_utf8(encode_head(parts, Framing::Length(12), false)).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 403 Forbidden\r\ndate: "),
            "{head}"
        );
        assert!(
            head.ends_with(" GMT\r\ncontent-length: 12\r\n\r\n"),
            "{head}"
        );
    }

    #[test]
    fn chunks_carry_their_length_in_hex_and_empty_data_is_skipped() {
        let mut out = Vec::new();
        Framing::Chunked.encode(&mut out, &[b'x'; 26]);
        Framing::Chunked.encode(&mut out, b"");
        Framing::Chunked.encode(&mut out, b": \n\n");
        let mut expected = b"1a\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 26]);
        expected.extend_from_slice(b"\r\n4\r\n: \n\n\r\n");
        assert_eq!(out, expected);
        assert_eq!(Framing::of(StatusCode::OK, Some(3)), Framing::Length(3));
        assert_eq!(Framing::of(StatusCode::NO_CONTENT, Some(0)), Framing::None);
        assert_eq!(Framing::of(StatusCode::OK, None), Framing::Chunked);
    }
}
