//! Event streams over HTTP/1 on plain TCP, byte by byte. The gateway serves them with its
//! own front (`crates/subplex/src/server/http1_streams.rs`) and hands every other request
//! to hyper: a connection must stay one HTTP/1 connection whichever serves it, with
//! keep-alive, pipelining, heads that arrive in pieces, `Connection: close` and
//! `Expect: 100-continue` as HTTP/1.1 has them, and a stuck client cut as on any path.

use subplex_tests::http::{gateway_cutting_stuck_writes, how_the_socket_ends, urlencode};
use subplex_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const TICKS: &str = "subscription { tick(count: 2, intervalMs: 5) }";
const EXPECTED: &str = ":\n\nevent: next\ndata: {\"data\":{\"tick\":1}}\n\nevent: next\ndata: {\"data\":{\"tick\":2}}\n\nevent: complete\ndata:\n\n";

/// One HTTP/1.1 response as read off the wire.
#[derive(Debug)]
struct RawResponse {
    /// The status line and headers, header names as sent.
    head: String,
    /// The body, de-chunked when it was chunked.
    body: String,
}

impl RawResponse {
    fn status_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    fn has_header(&self, line: &str) -> bool {
        self.head.lines().any(|l| l.eq_ignore_ascii_case(line))
    }
}

/// A client connection that writes raw requests and reads whole responses, keeping what
/// follows a response for the next one.
struct RawHttp {
    stream: TcpStream,
    buffered: Vec<u8>,
}

impl RawHttp {
    async fn connect(gateway: &TestGateway) -> RawHttp {
        RawHttp {
            stream: TcpStream::connect(gateway.addr).await.expect("connect"),
            buffered: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more; `false` at the end of the connection.
    async fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(EVENT_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("the gateway answers within the timeout")
            .expect("read");
        self.buffered.extend_from_slice(&chunk[..read]);
        read > 0
    }

    /// The next `len` bytes.
    async fn take(&mut self, len: usize) -> Vec<u8> {
        while self.buffered.len() < len {
            assert!(self.read_more().await, "connection ended mid-response");
        }
        self.buffered.drain(..len).collect()
    }

    /// The next line, without its CRLF.
    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buffered.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(end + 2).await;
                return String::from_utf8(line[..end].to_vec()).unwrap();
            }
            assert!(self.read_more().await, "connection ended mid-response");
        }
    }

    async fn response(&mut self) -> RawResponse {
        let mut head = String::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            head.push_str(&line);
            head.push('\n');
        }
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let mut body = Vec::new();
        if header("transfer-encoding").as_deref() == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.line().await, 16).expect("chunk size");
                let chunk = self.take(size + 2).await;
                assert_eq!(&chunk[size..], b"\r\n", "a chunk ends with CRLF");
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = header("content-length") {
            body = self.take(length.parse().unwrap()).await;
        }
        RawResponse {
            head,
            body: String::from_utf8(body).unwrap(),
        }
    }

    /// Whether the gateway closed the connection (after everything read so far).
    async fn closed(&mut self) -> bool {
        self.buffered.is_empty() && !self.read_more().await
    }
}

/// A query (not a stream): hyper's to serve.
const HELLO_QUERY: &str = "POST /graphql HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"query\":\"{ hello }\"}";

fn sse_get(query: &str) -> String {
    format!(
        "GET /graphql?query={} HTTP/1.1\r\nHost: gateway\r\nAccept: text/event-stream\r\n\r\n",
        urlencode(query)
    )
}

fn sse_post(query: &str, extra_headers: &str) -> (String, String) {
    let body = serde_json::json!({ "query": query }).to_string();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: gateway\r\nAccept: text/event-stream\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    );
    (head, body)
}

fn assert_event_stream(response: &RawResponse) {
    assert_eq!(response.status_line(), "HTTP/1.1 200 OK", "{response:?}");
    assert!(
        response.has_header("content-type: text/event-stream; charset=utf-8"),
        "{response:?}"
    );
    assert!(
        response.has_header("transfer-encoding: chunked"),
        "{response:?}"
    );
    assert!(
        response
            .head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("date: ")),
        "{response:?}"
    );
    assert_eq!(response.body, EXPECTED);
}

#[tokio::test]
async fn streams_and_a_query_follow_one_another_on_one_kept_alive_connection() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawHttp::connect(&gateway).await;

    client.send(sse_get(TICKS).as_bytes()).await;
    let first = client.response().await;
    assert_event_stream(&first);
    assert!(!first.has_header("connection: close"), "{first:?}");

    let (head, body) = sse_post(TICKS, "");
    client.send(format!("{head}{body}").as_bytes()).await;
    assert_event_stream(&client.response().await);

    // A query: hyper's from here on, on the same connection.
    client.send(HELLO_QUERY.as_bytes()).await;
    let answer = client.response().await;
    assert_eq!(answer.status_line(), "HTTP/1.1 200 OK", "{answer:?}");
    assert_eq!(answer.body, r#"{"data":{"hello":"world"}}"#);

    client.send(sse_get(TICKS).as_bytes()).await;
    assert_event_stream(&client.response().await);
}

#[tokio::test]
async fn a_request_pipelined_behind_a_stream_is_answered_after_it() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawHttp::connect(&gateway).await;
    let (head, body) = sse_post(TICKS, "");
    client
        .send(format!("{}{head}{body}", sse_get(TICKS)).as_bytes())
        .await;
    assert_event_stream(&client.response().await);
    assert_event_stream(&client.response().await);
}

#[tokio::test]
async fn a_request_in_pieces_is_served_whole() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawHttp::connect(&gateway).await;
    // The head in two writes, the body in a third.
    let (head, body) = sse_post(TICKS, "");
    let (start, rest) = head.split_at(20);
    for piece in [start, rest, &body] {
        client.send(piece.as_bytes()).await;
        tokio::task::yield_now().await;
    }
    assert_event_stream(&client.response().await);
}

#[tokio::test]
async fn connection_close_closes_after_the_stream() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawHttp::connect(&gateway).await;
    let (head, body) = sse_post(TICKS, "Connection: close\r\n");
    client.send(format!("{head}{body}").as_bytes()).await;
    let response = client.response().await;
    assert_event_stream(&response);
    assert!(response.has_header("connection: close"), "{response:?}");
    assert!(
        client.closed().await,
        "the connection ends after the stream"
    );
}

/// curl sends `Expect: 100-continue` with larger bodies and waits for the interim answer.
#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawHttp::connect(&gateway).await;
    let (head, body) = sse_post(TICKS, "Expect: 100-continue\r\n");
    client.send(head.as_bytes()).await;
    assert_eq!(client.line().await, "HTTP/1.1 100 Continue");
    assert_eq!(client.line().await, "");
    client.send(body.as_bytes()).await;
    assert_event_stream(&client.response().await);
}

#[tokio::test]
async fn a_malformed_stream_request_gets_a_json_error_and_the_connection_stays_usable() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawHttp::connect(&gateway).await;
    client
        .send(b"GET /graphql?operationName=x HTTP/1.1\r\nHost: gateway\r\nAccept: text/event-stream\r\n\r\n")
        .await;
    let refused = client.response().await;
    assert_eq!(
        refused.status_line(),
        "HTTP/1.1 400 Bad Request",
        "{refused:?}"
    );
    assert!(
        refused.has_header("content-type: application/json; charset=utf-8"),
        "{refused:?}"
    );
    assert!(
        refused.has_header(&format!("content-length: {}", refused.body.len())),
        "{refused:?}"
    );
    assert!(
        refused.body.contains("request has no \\\"query\\\" string"),
        "{refused:?}"
    );
    client.send(sse_get(TICKS).as_bytes()).await;
    assert_event_stream(&client.response().await);
}

/// As for WebSocket clients (`backpressure::a_client_cut_for_not_reading_is_reset_not_closed`):
/// an SSE client whose socket stays full past `client_write_timeout_ms` is cut, reset
/// rather than closed, and its operation stops upstream.
#[tokio::test]
async fn an_sse_client_that_stops_reading_is_reset_and_its_operation_stops() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = gateway_cutting_stuck_writes(server.port).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(gateway.addr).await.expect("connect");
    // 6.4 MB/s fills the socket buffers at once; the queue limits are far above what
    // arrives meanwhile, so the cut is the write timeout's.
    let request = sse_get("subscription { forever(intervalMs: 10) { n padding(bytes: 65536) } }");
    stuck.write_all(request.as_bytes()).await.unwrap();
    server.wait_for_events("subscription_end", 1).await;
    assert_eq!(gateway.stats.stuck_clients_cut(), 1);
    assert_eq!(
        how_the_socket_ends(&mut stuck).await,
        Err(std::io::ErrorKind::ConnectionReset)
    );
}

/// `server.client_request_timeout_ms`: a connection that has not sent a whole request in
/// time is closed, whichever server reads it: nothing at all, a head in part (hyper's),
/// a stream request's head without its body (the front's); a query whose body does not
/// come gets 408 from hyper's side.
#[tokio::test]
async fn a_connection_without_a_whole_request_in_time_is_closed() {
    let (gateway, _demo) = gateway_with_demo("client_request_timeout_ms = 300").await;
    let (sse_head, _) = sse_post(TICKS, "");
    let silent: [&[u8]; 3] = [
        b"",
        b"GET /graphql HTTP/1.1\r\nAccept: text/ev",
        sse_head.as_bytes(),
    ];
    for sent in silent {
        let mut client = RawHttp::connect(&gateway).await;
        client.send(sent).await;
        assert!(
            client.closed().await,
            "closed without an answer after {:?}",
            String::from_utf8_lossy(sent)
        );
    }

    let mut client = RawHttp::connect(&gateway).await;
    client
        .send(
            b"POST /graphql HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
              Content-Length: 21\r\n\r\n{\"query\"",
        )
        .await;
    let refused = client.response().await;
    assert_eq!(
        refused.status_line(),
        "HTTP/1.1 408 Request Timeout",
        "{refused:?}"
    );
    assert!(refused.body.contains("\"REQUEST_TIMEOUT\""), "{refused:?}");
}

/// The request timeout bounds requests, not responses: streams on the front and on hyper
/// last longer than it on one connection, which then closes once idle for that long.
#[tokio::test]
async fn streams_outlive_the_request_timeout_and_an_idle_connection_closes_after_it() {
    let (gateway, _demo) = gateway_with_demo("client_request_timeout_ms = 300").await;
    let slow = "subscription { tick(count: 4, intervalMs: 200) }";
    let mut expected = String::from(":\n\n");
    for tick in 1..=4 {
        expected.push_str(&format!(
            "event: next\ndata: {{\"data\":{{\"tick\":{tick}}}}}\n\n"
        ));
    }
    expected.push_str("event: complete\ndata:\n\n");
    let mut client = RawHttp::connect(&gateway).await;

    client.send(sse_get(slow).as_bytes()).await;
    assert_eq!(client.response().await.body, expected);
    // A query makes the rest of the connection hyper's.
    client.send(HELLO_QUERY.as_bytes()).await;
    assert_eq!(
        client.response().await.body,
        r#"{"data":{"hello":"world"}}"#
    );
    client.send(sse_get(slow).as_bytes()).await;
    assert_eq!(client.response().await.body, expected);
    assert!(client.closed().await, "the idle connection is closed");
}
