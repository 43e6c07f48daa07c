//! Client sessions: the closing handshake on every path, stuck clients cut off without
//! stalling anyone else, and the per-connection operation limits.

use serde_json::json;
use subplex_tests::ws::{RawClient, Received};
use subplex_tests::*;

const TRANSPORT_WS: &str = "graphql-transport-ws";
const LEGACY_WS: &str = "graphql-ws";

fn subscribe(id: &str, query: &str) -> serde_json::Value {
    json!({ "type": "subscribe", "id": id, "payload": { "query": query } })
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame_in_both_dialects() {
    let (gateway, _demo) = gateway_with_demo("").await;
    for protocol in [TRANSPORT_WS, LEGACY_WS] {
        let mut client = RawClient::connect(gateway.addr, protocol, &[]).await;
        client
            .send(json!({ "type": "connection_init", "payload": {} }))
            .await;
        assert_eq!(client.recv_json().await["type"], "connection_ack");
        // The reply echoes the client's code (RFC 6455 §5.5.1); without it the client would
        // see 1006, as the graphql-ws client's lazy close did.
        let mut reply = client.close(1000, "bye").await;
        while matches!(&reply, Received::Json(message) if message["type"] == "ka") {
            reply = client.recv().await;
        }
        assert_eq!(
            reply,
            Received::Close {
                code: 1000,
                reason: "bye".into()
            },
            "{protocol}"
        );
        assert_eq!(client.recv().await, Received::Dropped, "{protocol}");
    }
}

#[tokio::test]
async fn a_client_close_while_operations_run_is_answered_and_stops_them() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, TRANSPORT_WS, &[]).await;
    client.init(json!({})).await;
    client
        .send(subscribe(
            "1",
            "subscription { tick(count: 1000, intervalMs: 5) }",
        ))
        .await;
    assert_eq!(client.recv_json().await["type"], "next");
    let mut reply = client.close(4499, "Terminated").await;
    while let Received::Json(message) = &reply {
        assert_eq!(message["type"], "next");
        reply = client.recv().await;
    }
    assert_eq!(
        reply,
        Received::Close {
            code: 4499,
            reason: "Terminated".into()
        }
    );
}

#[tokio::test]
async fn legacy_connection_terminate_closes_1000_cleanly() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, LEGACY_WS, &[]).await;
    client
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    assert_eq!(client.recv_json().await["type"], "connection_ack");
    client.send(json!({ "type": "connection_terminate" })).await;
    client.expect_close(1000).await;
    // The client's reply (sent by tungstenite as it read the Close) completes the
    // handshake, and the gateway then ends the connection.
    assert_eq!(client.recv().await, Received::Dropped);
}

/// A short write timeout, and subscriber queues far longer than the tests run, so that a
/// stuck client can only be cut by the write timeout, never by the slow-consumer policy.
const STUCK_CONFIG: &str = "[server]\nclient_write_timeout_ms = 300\n";
const STUCK_UPSTREAM: &str = "subscriber_queue = 1000000";

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_others_are_unaffected() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::start(&format!(
        "{STUCK_CONFIG}[upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\n{STUCK_UPSTREAM}\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        server.port
    ))
    .await;
    let mut stuck = RawClient::connect_with_small_receive_buffer(gateway.addr, TRANSPORT_WS).await;
    stuck.init(json!({})).await;
    for id in 0..10 {
        stuck
            .send(subscribe(
                &id.to_string(),
                "subscription { forever(intervalMs: 1) { n } }",
            ))
            .await;
    }
    // Same security context, so the same upstream connection as the stuck client.
    let mut healthy = RawClient::connect(gateway.addr, TRANSPORT_WS, &[]).await;
    healthy.init(json!({})).await;
    healthy
        .send(subscribe(
            "h",
            "subscription { forever(intervalMs: 20) { n } }",
        ))
        .await;
    // The stuck client's ten identical operations are one upstream subscription
    // (deduplication); the healthy client's differs in its interval.
    server
        .wait_for("every subscription upstream", |c| {
            c.subscriptions_active == 2
        })
        .await;

    // `stuck` reads nothing: its socket buffers fill, the gateway's write waits, and after
    // `client_write_timeout_ms` the session is cut, which ends its ten operations and so
    // their upstream subscription.
    server
        .wait_for("the stuck client's operations to end", |c| {
            c.subscriptions_active == 1
        })
        .await;
    // Meanwhile the healthy client kept receiving, in order, and still does.
    let mut last = 0;
    for _ in 0..5 {
        let message = healthy.recv_json().await;
        assert_eq!(message["type"], "next", "{message}");
        let n = message["payload"]["data"]["forever"]["n"].as_u64().unwrap();
        assert!(n > last, "ticks in order");
        last = n;
    }
    // The cut client gets what was buffered, then the connection ends without a close
    // frame (none could be written to a client that does not read).
    assert_eq!(stuck.drain_to_end().await, Received::Dropped);
    assert_eq!(gateway.stats.stuck_clients_cut(), 1, "counted once");
    // The metric is the same counter.
    let metrics = reqwest::get(format!("http://{}/metrics", gateway.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line == "subplex_client_cuts_total{reason=\"write_timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn operations_over_the_per_connection_limit_are_refused_one_by_one() {
    let (gateway, _demo) = gateway_with_demo("max_operations_per_connection = 2").await;
    for protocol in [TRANSPORT_WS, LEGACY_WS] {
        let mut client = RawClient::connect(gateway.addr, protocol, &[]).await;
        client
            .send(json!({ "type": "connection_init", "payload": {} }))
            .await;
        assert_eq!(client.recv_json_skip_ka().await["type"], "connection_ack");
        let start = |id: &str| {
            let query = "subscription { tick(count: 1000, intervalMs: 50) }";
            if protocol == TRANSPORT_WS {
                subscribe(id, query)
            } else {
                json!({ "type": "start", "id": id, "payload": { "query": query } })
            }
        };
        client.send(start("1")).await;
        client.send(start("2")).await;
        client.send(start("3")).await;
        // The third is refused with an `error` for its id; the first two keep running.
        let refusal = loop {
            let message = client.recv_json_skip_ka().await;
            if message["id"] == "3" {
                break message;
            }
            assert!(message["id"] == "1" || message["id"] == "2", "{message}");
        };
        assert_eq!(refusal["type"], "error", "{protocol}: {refusal}");
        let error = if protocol == TRANSPORT_WS {
            &refusal["payload"][0]
        } else {
            &refusal["payload"]
        };
        let error = if error.is_array() { &error[0] } else { error };
        assert_eq!(
            error["extensions"]["code"], "TOO_MANY_OPERATIONS",
            "{refusal}"
        );
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("server.max_operations_per_connection"),
            "{refusal}"
        );
        // The connection stays usable.
        let stop = if protocol == TRANSPORT_WS {
            json!({ "type": "complete", "id": "1" })
        } else {
            json!({ "type": "stop", "id": "1" })
        };
        client.send(stop).await;
        client.send(start("3")).await;
        loop {
            let message = client.recv_json_skip_ka().await;
            if message["id"] == "3" {
                assert_ne!(message["type"], "error", "{protocol}: {message}");
                break;
            }
        }
    }
}

#[tokio::test]
async fn an_over_long_operation_id_closes_4400_naming_the_key() {
    let (gateway, _demo) = gateway_with_demo("max_operation_id_bytes = 16").await;
    let mut client = RawClient::connect(gateway.addr, TRANSPORT_WS, &[]).await;
    client.init(json!({})).await;
    client.send(subscribe(&"x".repeat(17), "{ hello }")).await;
    let reason = client.expect_close(4400).await;
    assert!(reason.contains("server.max_operation_id_bytes"), "{reason}");
}

/// A client completes a fast operation and at once reuses its id, while the old
/// operation's events are still in flight. Events the gateway sent before it read the
/// `complete` may arrive; once the new operation's first event arrived, none of the old
/// one may follow. Repeated, so the race has many chances to go wrong.
#[tokio::test]
async fn no_event_of_a_completed_operation_follows_the_next_one_with_the_same_id() {
    let demo = DemoServer::start().await;
    // A queue for seconds of a 1 ms stream: a test client stalled by a loaded machine
    // must not meet the slow-consumer cut, which this test is not about.
    let gateway = TestGateway::start(&format!(
        "[upstreams.demo]\nurl = \"http://127.0.0.1:{}/graphql\"\nsubscriber_queue = 10000\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"demo\"\n",
        demo.port
    ))
    .await;
    for protocol in [TRANSPORT_WS, LEGACY_WS] {
        let mut client = RawClient::connect(gateway.addr, protocol, &[]).await;
        client
            .send(json!({ "type": "connection_init", "payload": {} }))
            .await;
        assert_eq!(client.recv_json_skip_ka().await["type"], "connection_ack");
        let (start, stop, event) = if protocol == TRANSPORT_WS {
            (
                "subscribe",
                json!({ "type": "complete", "id": "x" }),
                "next",
            )
        } else {
            ("start", json!({ "type": "stop", "id": "x" }), "data")
        };
        let start = |round: usize| {
            let query = format!("subscription {{ r{round}: tick(count: 100000, intervalMs: 1) }}");
            json!({ "type": start, "id": "x", "payload": { "query": query } })
        };
        client.send(start(0)).await;
        for round in 1..=30 {
            // Wait until the running operation really streams.
            let key = format!("r{}", round - 1);
            loop {
                let message = client.recv_json_skip_ka().await;
                if message["payload"]["data"].get(&key).is_some() {
                    break;
                }
            }
            client.send(stop.clone()).await;
            client.send(start(round)).await;
            let key = format!("r{round}");
            let mut new_started = false;
            let mut seen_new = 0;
            while seen_new < 3 {
                let message = client.recv_json_skip_ka().await;
                assert_eq!(message["id"], "x", "{protocol}: {message}");
                assert_eq!(message["type"], event, "{protocol}: {message}");
                let data = &message["payload"]["data"];
                if data.get(&key).is_some() {
                    new_started = true;
                    seen_new += 1;
                } else {
                    assert!(
                        !new_started,
                        "{protocol} round {round}: an event of the completed operation after the new one's: {message}"
                    );
                }
            }
        }
    }
}

/// SSE and multipart clients that stop reading: the connection's write deadline fails the
/// stuck write, hyper drops the connection, and the operation stops upstream.
#[tokio::test]
async fn streamed_http_clients_that_stop_reading_are_cut() {
    use tokio::io::AsyncWriteExt;
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::start(&format!(
        "{STUCK_CONFIG}[upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\n{STUCK_UPSTREAM}\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        server.port
    ))
    .await;
    let query = "subscription%7Bforever(intervalMs:1)%7Bn%20padding(bytes:4096)%7D%7D";
    for accept in [
        "text/event-stream",
        "multipart/mixed;subscriptionSpec=\"1.0\"",
    ] {
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        tcp.set_recv_buffer_size(4096).unwrap();
        let mut stuck = tcp.connect(gateway.addr).await.unwrap();
        let request = format!(
            "GET /graphql?query={query} HTTP/1.1\r\nhost: {}\r\naccept: {accept}\r\n\r\n",
            gateway.addr
        );
        stuck.write_all(request.as_bytes()).await.unwrap();
        server
            .wait_for("the stuck client's subscription", |c| {
                c.subscriptions_active == 1
            })
            .await;
        // Never read: the gateway's writes stall and the deadline cuts the connection.
        server
            .wait_for("the stuck client's subscription to end", |c| {
                c.subscriptions_active == 0
            })
            .await;
        drop(stuck);
    }
    assert_eq!(
        gateway.stats.stuck_clients_cut(),
        2,
        "each cut counted once"
    );
}

/// Sends `request` (raw HTTP/1.1) over a socket whose receive buffer is tiny, and reads
/// the response head (200 asserted); the test then reads nothing more until it chooses to,
/// so the gateway's writes stall after a few KiB.
async fn stalled_http_request(
    addr: std::net::SocketAddr,
    request: &str,
) -> tokio::io::BufReader<tokio::net::TcpStream> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let mut stream = tcp.connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = tokio::io::BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut header = String::new();
    while header != "\r\n" {
        header.clear();
        reader.read_line(&mut header).await.unwrap();
    }
    reader
}

/// Reads a chunked response body to its last chunk and returns its text.
async fn read_chunked_body(reader: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let read = async {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.unwrap();
            let size = usize::from_str_radix(size.trim_end(), 16)
                .unwrap_or_else(|_| panic!("a chunk size: {size:?}"));
            // The chunk and its CRLF; the last chunk is empty, then the final CRLF.
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.unwrap();
            if size == 0 {
                return String::from_utf8(body).unwrap();
            }
            body.extend_from_slice(&chunk[..size]);
        }
    };
    tokio::time::timeout(EVENT_TIMEOUT, read)
        .await
        .expect("the body ends within the timeout")
}

/// The `(event, data)` of each SSE event in `body`, keep-alive comments left out.
fn sse_events(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter(|block| !block.is_empty() && !block.starts_with(':'))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(|value| value.trim_start().to_owned())
                    .unwrap_or_else(|| panic!("{name} in {block:?}"))
            };
            (field("event:"), field("data:"))
        })
        .collect()
}

/// Asserts that `errors` (a GraphQL errors array) is the slow-consumer cut.
fn assert_slow_consumer(errors: &serde_json::Value) {
    assert_eq!(errors[0]["extensions"]["code"], "SLOW_CONSUMER", "{errors}");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("65536 bytes"),
        "{errors}"
    );
}

/// Ticks `{"forever":{"n":…}}` in order, each following the one before.
fn assert_ticks_in_order(results: &[serde_json::Value]) {
    let ticks: Vec<u64> = results
        .iter()
        .map(|result| {
            result["data"]["forever"]["n"]
                .as_u64()
                .unwrap_or_else(|| panic!("a tick: {result}"))
        })
        .collect();
    assert!(
        ticks.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{ticks:?}"
    );
}

/// SSE (both modes) and multipart clients too slow for their operation: it is cut off by
/// the slow-consumer policy (room for a million events, but 64 KiB) long before the write
/// timeout, and once the client reads again it finds the events written before the cut,
/// an error event naming `SLOW_CONSUMER`, and the end of the stream. In single-connection
/// mode the whole stream ends, as a WebSocket does: every unfinished operation gets the
/// error, and the one that was keeping up stops upstream too. Each client counted once.
#[tokio::test]
async fn streamed_http_clients_too_slow_get_an_error_event_then_the_end() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = slow_consumer_gateway(&server).await;
    let fast = "subscription { forever(intervalMs: 1) { n padding(bytes: 4096) } }";
    let get = |accept: &str| {
        format!(
            "GET /graphql?query={} HTTP/1.1\r\nhost: {}\r\naccept: {accept}\r\n\r\n",
            subplex_tests::http::urlencode(fast),
            gateway.addr
        )
    };

    // SSE, distinct connections mode.
    let mut sse = stalled_http_request(gateway.addr, &get("text/event-stream")).await;
    server.wait_for_events("subscription_start", 1).await;
    server.wait_for_events("subscription_end", 1).await;
    let events = sse_events(&read_chunked_body(&mut sse).await);
    let (ticks, ending) = events.split_at(events.len() - 2);
    assert!(ticks.iter().all(|(event, _)| event == "next"), "{ticks:?}");
    let results: Vec<serde_json::Value> = ticks
        .iter()
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    assert_ticks_in_order(&results);
    assert_eq!(ending[0].0, "next");
    let error: serde_json::Value = serde_json::from_str(&ending[0].1).unwrap();
    assert_slow_consumer(&error["errors"]);
    assert_eq!(ending[1], ("complete".to_owned(), String::new()));
    assert_eq!(gateway.stats.slow_consumers_cut(), 1);

    // Multipart: the transport-error part, then the closing boundary.
    let mut multipart = stalled_http_request(
        gateway.addr,
        &get("multipart/mixed;subscriptionSpec=\"1.0\""),
    )
    .await;
    server.wait_for_events("subscription_start", 2).await;
    server.wait_for_events("subscription_end", 2).await;
    let body = read_chunked_body(&mut multipart).await;
    let parts: Vec<serde_json::Value> = body
        .strip_prefix("\r\n--graphql")
        .and_then(|body| body.strip_suffix("--\r\n"))
        .unwrap_or_else(|| panic!("a multipart body that ends: {body:?}"))
        .split("\r\n--graphql")
        .filter(|part| !part.is_empty())
        .map(|part| {
            let json = part
                .strip_prefix("\r\ncontent-type: application/json\r\n\r\n")
                .unwrap_or_else(|| panic!("a part: {part:?}"));
            serde_json::from_str(json).unwrap()
        })
        .filter(|part| *part != json!({}))
        .collect();
    let (last, ticks) = parts.split_last().unwrap();
    let results: Vec<serde_json::Value> =
        ticks.iter().map(|part| part["payload"].clone()).collect();
    assert_ticks_in_order(&results);
    assert_eq!(last["payload"], serde_json::Value::Null, "{last}");
    assert_slow_consumer(&last["errors"]);
    assert_eq!(gateway.stats.slow_consumers_cut(), 2);

    // SSE, single connection mode: a fast operation the client cannot keep up with, and a
    // slow one it could.
    let http = reqwest::Client::new();
    let token = http
        .put(gateway.url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut single = stalled_http_request(
        gateway.addr,
        &format!(
            "GET /graphql HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n\
             x-graphql-event-stream-token: {token}\r\n\r\n",
            gateway.addr
        ),
    )
    .await;
    for (id, query) in [
        ("fast", fast),
        ("slow", "subscription { forever(intervalMs: 1000) { n } }"),
    ] {
        let posted = http
            .post(gateway.url())
            .header("x-graphql-event-stream-token", &token)
            .header("content-type", "application/json")
            .body(json!({ "query": query, "extensions": { "operationId": id } }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 202);
    }
    server.wait_for_events("subscription_start", 4).await;
    // The fast one is cut; the slow one runs until the client reads again.
    server.wait_for_events("subscription_end", 3).await;
    let events = sse_events(&read_chunked_body(&mut single).await);
    let (running, ending) = events.split_at(events.len() - 4);
    let mut fast_results = Vec::new();
    for (event, data) in running {
        assert_eq!(event, "next", "{data}");
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        if data["id"] == "fast" {
            fast_results.push(data["payload"].clone());
        } else {
            assert_eq!(data["id"], "slow", "{data}");
        }
    }
    assert_ticks_in_order(&fast_results);
    for (pair, id) in ending.chunks(2).zip(["fast", "slow"]) {
        assert_eq!(pair[0].0, "next");
        let error: serde_json::Value = serde_json::from_str(&pair[0].1).unwrap();
        assert_eq!(error["id"], id, "{error}");
        assert_slow_consumer(&error["payload"]["errors"]);
        assert_eq!(
            pair[1],
            ("complete".to_owned(), json!({ "id": id }).to_string())
        );
    }
    // Both operations stopped upstream with the stream.
    server
        .wait_for("every subscription to end", |c| c.subscriptions_active == 0)
        .await;
    assert_eq!(gateway.stats.slow_consumers_cut(), 3, "each client once");
    assert_eq!(gateway.stats.stuck_clients_cut(), 0);
}

/// On HTTP/2 one connection carries any number of streams, so each streamed response
/// takes a place of its own under `server.max_connections`.
#[tokio::test]
async fn http2_streams_count_against_max_connections() {
    // Three places: the connection, the first stream, and the one the accept loop holds
    // for the next connection.
    let (gateway, _demo) = gateway_with_demo("max_connections = 3").await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!(
        "{}?query=subscription%7Btick(count:1000,intervalMs:50)%7D",
        gateway.url()
    );
    let open = || {
        client
            .get(&url)
            .header("accept", "text/event-stream")
            .send()
    };
    let first = open().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
    let refused = open().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "TOO_MANY_CONNECTIONS"
    );
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("server.max_connections"));
    // Ending the first stream (an HTTP/2 reset) gives its place back. The release happens
    // in the gateway with no signal a client could await, so retry, bounded.
    drop(first);
    let reopened = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let response = open().await.unwrap();
            if response.status() == 200 {
                return response;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a place is free again once the first stream ended");
    assert_eq!(reopened.version(), reqwest::Version::HTTP_2);
}

/// A gateway in front of `server` whose subscriber queues hold a million events but only
/// 64 KiB, and whose write timeout is far longer than the tests: a client that falls
/// behind a stream of 4 KiB events is cut by the slow-consumer policy, never by the
/// write timeout.
async fn slow_consumer_gateway(server: &NodeServer) -> TestGateway {
    TestGateway::start(&format!(
        "[server]\nclient_write_timeout_ms = 600000\n[upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\n\
         subscriber_queue = 1000000\nsubscriber_queue_bytes = 65536\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        server.port
    ))
    .await
}

/// What a client that stops reading can hold in the gateway is bounded in bytes, not only
/// in events: with room for a million events but 64 KiB, a stalled client's subscription
/// of 4 KiB events is cut off by the slow-consumer policy long before the write timeout.
/// The client, in either dialect, then finds its socket closed 1013 (graphql-ws clients
/// retry that code), counted once as a `slow_consumer` cut.
#[tokio::test]
async fn a_stalled_client_holds_at_most_subscriber_queue_bytes_then_is_closed_1013() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = slow_consumer_gateway(&server).await;
    let query = "subscription { forever(intervalMs: 1) { n padding(bytes: 4096) } }";
    for (cut, protocol) in [TRANSPORT_WS, LEGACY_WS].into_iter().enumerate() {
        let mut stuck = RawClient::connect_with_small_receive_buffer(gateway.addr, protocol).await;
        // Ack first in both dialects (legacy sends its `ka` after it).
        stuck.init(json!({})).await;
        let (start, event) = if protocol == TRANSPORT_WS {
            ("subscribe", "next")
        } else {
            ("start", "data")
        };
        stuck
            .send(json!({ "type": start, "id": "1", "payload": { "query": query } }))
            .await;
        server
            .wait_for("the subscription", |c| c.subscriptions_active == 1)
            .await;
        server
            .wait_for("the stalled client's subscription to be cut off", |c| {
                c.subscriptions_active == 0
            })
            .await;
        // Reading at last, the client finds the events the gateway had written, in order,
        // then the close: no error result, no `complete`, which would end the operation
        // for good instead of letting the client retry it.
        let mut last = None;
        let reason = loop {
            match stuck.recv().await {
                Received::Json(message) if message["type"] == "ka" => continue,
                Received::Json(message) => {
                    assert_eq!(message["type"], event, "{protocol}: {message}");
                    let n = message["payload"]["data"]["forever"]["n"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("{protocol}: a tick: {message}"));
                    assert!(
                        last.is_none_or(|last| n == last + 1),
                        "{protocol}: in order"
                    );
                    last = Some(n);
                }
                Received::Close { code, reason } => {
                    assert_eq!(code, 1013, "{protocol}: {reason}");
                    break reason;
                }
                Received::Dropped => panic!("{protocol}: dropped without a close frame"),
            }
        };
        assert_eq!(reason, "Subscriber too slow", "{protocol}");
        // tungstenite answered the Close as it read it; the gateway then ends the connection.
        assert_eq!(stuck.recv().await, Received::Dropped, "{protocol}");
        assert_eq!(
            gateway.stats.slow_consumers_cut(),
            cut as u64 + 1,
            "{protocol}"
        );
    }
    assert_eq!(gateway.stats.stuck_clients_cut(), 0);
    let lines = metric_lines(gateway.addr).await;
    for expected in [
        "subplex_client_cuts_total{reason=\"slow_consumer\"} 2",
        "subplex_client_cuts_total{reason=\"write_timeout\"} 0",
    ] {
        assert!(
            lines.iter().any(|line| line == expected),
            "{expected} in {lines:#?}"
        );
    }
}

/// A query's response over plain HTTP is read up to `max_response_bytes`, then refused.
#[tokio::test]
async fn an_oversized_upstream_http_response_is_refused() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::start(&format!(
        "[upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\nmax_response_bytes = 1024\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        server.port
    ))
    .await;
    let http = reqwest::Client::new();
    let query = |aliases: usize| {
        let fields: Vec<String> = (0..aliases).map(|i| format!("a{i}: hello")).collect();
        json!({ "query": format!("{{ {} }}", fields.join(" ")) })
    };
    let small = http
        .post(gateway.url())
        .json(&query(2))
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    let large = http
        .post(gateway.url())
        .json(&query(200))
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), 502);
    let body: serde_json::Value = large.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "UPSTREAM_RESPONSE_TOO_LARGE"
    );
    assert_eq!(
        body["errors"][0]["message"],
        "upstream response is larger than the 1024 byte limit (max_response_bytes)"
    );
}
