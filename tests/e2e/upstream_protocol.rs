//! The gateway as an upstream client, against a scripted upstream: id remapping, pings,
//! Hasura's habits, dead peers, refusals, garbage and the slow-consumer policy.

use serde_json::json;
use subplex_tests::fake_upstream::{FakeConnection, FakeUpstream};
use subplex_tests::ws::{RawClient, Received};
use subplex_tests::*;

async fn gateway_for(fake: &FakeUpstream, protocol: &str, extra: &str) -> TestGateway {
    TestGateway::for_upstream(fake.addr.port(), protocol, extra).await
}

/// A gateway in front of `fake` (extra `[upstreams.up]` keys in `extra`) and a
/// graphql-transport-ws client whose operation "1", `subscription { a }`, runs on an
/// acknowledged upstream connection.
async fn one_live_operation(
    fake: &mut FakeUpstream,
    extra: &str,
) -> (TestGateway, RawClient, FakeConnection) {
    let gateway = gateway_for(fake, "graphql-transport-ws", extra).await;
    let (client, upstream) = live_operation(&gateway, fake).await;
    (gateway, client, upstream)
}

/// [`one_live_operation`] through a gateway of the caller's.
async fn live_operation(
    gateway: &TestGateway,
    fake: &mut FakeUpstream,
) -> (RawClient, FakeConnection) {
    let mut client = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    client.init(json!({})).await;
    client.send(subscribe("1", "subscription { a }")).await;
    let mut upstream = fake.accept().await;
    upstream.handshake().await;
    assert_eq!(upstream.recv_json().await["type"], "subscribe");
    (client, upstream)
}

fn subscribe(id: &str, query: &str) -> serde_json::Value {
    json!({ "type": "subscribe", "id": id, "payload": { "query": query } })
}

#[tokio::test]
async fn ids_are_remapped_per_upstream_connection_and_events_reach_only_their_client() {
    let mut fake = FakeUpstream::start("graphql-transport-ws").await;
    let gateway = gateway_for(&fake, "graphql-transport-ws", "").await;
    let mut alice_1 = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    let mut alice_2 = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    alice_1.init(json!({ "token": "a" })).await;
    alice_2.init(json!({ "token": "a" })).await;

    // Both clients use id "1"; upstream they must become two distinct operations.
    alice_1.send(subscribe("1", "subscription { a }")).await;
    let mut upstream = fake.accept().await;
    assert_eq!(
        upstream.handshake().await,
        json!({ "token": "a" }),
        "the client's own init payload"
    );
    let first = upstream.recv_json().await;
    assert_eq!(
        first,
        json!({ "type": "subscribe", "id": "1", "payload": { "query": "subscription { a }" } })
    );
    alice_2.send(subscribe("1", "subscription { b }")).await;
    let second = upstream.recv_json().await;
    assert_eq!(
        second,
        json!({ "type": "subscribe", "id": "2", "payload": { "query": "subscription { b }" } })
    );

    upstream
        .send(json!({ "type": "next", "id": "2", "payload": { "data": { "b": 2 } } }))
        .await;
    upstream
        .send(json!({ "type": "next", "id": "1", "payload": { "data": { "a": 1 } } }))
        .await;
    assert_eq!(
        alice_2.recv_json().await,
        json!({ "type": "next", "id": "1", "payload": { "data": { "b": 2 } } })
    );
    assert_eq!(
        alice_1.recv_json().await,
        json!({ "type": "next", "id": "1", "payload": { "data": { "a": 1 } } })
    );
    // An event for an id the gateway never issued is ignored.
    upstream
        .send(json!({ "type": "next", "id": "99", "payload": { "data": {} } }))
        .await;
    upstream
        .send(json!({ "type": "complete", "id": "1" }))
        .await;
    assert_eq!(
        alice_1.recv_json().await,
        json!({ "type": "complete", "id": "1" })
    );

    // Client 2 stops: the upstream is told with its own id.
    alice_2.send(json!({ "type": "complete", "id": "1" })).await;
    assert_eq!(
        upstream.recv_json().await,
        json!({ "type": "complete", "id": "2" })
    );
    assert!(
        !fake.has_pending_connection(),
        "one context, one upstream connection"
    );
}

#[tokio::test]
async fn forwarded_headers_reach_the_handshake_and_hop_headers_do_not() {
    let mut fake = FakeUpstream::start("graphql-transport-ws").await;
    let gateway = gateway_for(
        &fake,
        "graphql-transport-ws",
        "forward_headers = [\"authorization\", \"x-tenant\"]",
    )
    .await;
    let mut client = RawClient::connect(
        gateway.addr,
        "graphql-transport-ws",
        &[
            ("authorization", "Bearer kim"),
            ("x-tenant", "t1"),
            ("x-other", "no"),
        ],
    )
    .await;
    client.init(json!({})).await;
    client.send(subscribe("1", "subscription { a }")).await;
    let upstream = fake.accept().await;
    assert_eq!(upstream.headers["authorization"], "Bearer kim");
    assert_eq!(upstream.headers["x-tenant"], "t1");
    assert!(upstream.headers.get("x-other").is_none());
    assert_eq!(
        upstream.headers["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    // The client's own handshake key is not replayed upstream.
    assert_eq!(
        upstream.headers.get_all("sec-websocket-key").iter().count(),
        1
    );
}

#[tokio::test]
async fn ping_before_ack_and_mid_stream_is_answered_with_pong() {
    let mut fake = FakeUpstream::start("graphql-transport-ws").await;
    let gateway = gateway_for(&fake, "graphql-transport-ws", "").await;
    let mut client = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    client.init(json!({})).await;
    client.send(subscribe("x", "subscription { a }")).await;

    let mut upstream = fake.accept().await;
    assert_eq!(upstream.recv_json().await["type"], "connection_init");
    // Hasura in graphql-transport-ws mode pings before acknowledging.
    upstream
        .send(json!({ "type": "ping", "payload": { "message": "keepalive" } }))
        .await;
    assert_eq!(upstream.recv_json().await, json!({ "type": "pong" }));
    upstream.send(json!({ "type": "connection_ack" })).await;
    assert_eq!(upstream.recv_json().await["type"], "subscribe");
    upstream.send(json!({ "type": "ping" })).await;
    assert_eq!(upstream.recv_json().await, json!({ "type": "pong" }));
    upstream.send(json!({ "type": "pong" })).await;
    upstream
        .send(json!({ "type": "next", "id": "1", "payload": { "data": { "a": 1 } } }))
        .await;
    // Pings and pongs never reach the client; the event does.
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "next", "id": "x", "payload": { "data": { "a": 1 } } })
    );
}

#[tokio::test]
async fn legacy_upstream_ka_before_ack_error_shapes_and_stop() {
    let mut fake = FakeUpstream::start("graphql-ws").await;
    let gateway = gateway_for(&fake, "graphql-ws", "").await;
    let mut client = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    client.init(json!({ "authorization": "Bearer lee" })).await;
    client.send(subscribe("a", "subscription { a }")).await;
    client.send(subscribe("b", "subscription { b }")).await;

    let mut upstream = fake.accept().await;
    upstream.send(json!({ "type": "ka" })).await;
    assert_eq!(
        upstream.recv_json().await,
        json!({ "type": "connection_init", "payload": { "authorization": "Bearer lee" } })
    );
    upstream.send(json!({ "type": "ka" })).await;
    upstream.send(json!({ "type": "connection_ack" })).await;
    upstream.send(json!({ "type": "ka" })).await;
    assert_eq!(
        upstream.recv_json().await,
        json!({ "type": "start", "id": "1", "payload": { "query": "subscription { a }" } })
    );
    assert_eq!(upstream.recv_json().await["type"], "start");
    upstream
        .send(json!({ "type": "data", "id": "1", "payload": { "data": { "a": 1 } } }))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "next", "id": "a", "payload": { "data": { "a": 1 } } })
    );
    // Hasura's error payload is an object, not an array: clients get a GraphQL errors array.
    upstream
        .send(json!({ "type": "error", "id": "2", "payload": { "message": "no such field" } }))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "error", "id": "b", "payload": [{ "message": "no such field" }] })
    );
    client.send(json!({ "type": "complete", "id": "a" })).await;
    assert_eq!(
        upstream.recv_json().await,
        json!({ "type": "stop", "id": "1" })
    );
}

#[tokio::test]
async fn unresponsive_upstream_is_replaced_and_the_operation_resubscribed_unnoticed() {
    let mut fake = FakeUpstream::start("graphql-transport-ws").await;
    let gateway = gateway_for(
        &fake,
        "graphql-transport-ws",
        "keepalive_interval_ms = 100\nkeepalive_timeout_ms = 200\n[upstreams.up.reconnect]\ninitial_ms = 20",
    )
    .await;
    let mut client = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    client.init(json!({ "token": "t" })).await;
    client
        .send(json!({ "type": "subscribe", "id": "s", "payload": { "query": "subscription { a }", "variables": { "v": 1 } } }))
        .await;
    let mut upstream = fake.accept().await;
    assert_eq!(upstream.handshake().await, json!({ "token": "t" }));
    let first = upstream.recv_json().await;
    assert_eq!(first["type"], "subscribe");
    let _hung = upstream.hang();

    // The keep-alive check gives up on the hung socket; the gateway dials again with the
    // same connection_init and the same request, and the client is none the wiser.
    let mut upstream = fake.accept().await;
    assert_eq!(upstream.handshake().await, json!({ "token": "t" }));
    let again = upstream.recv_json().await;
    assert_eq!(again["type"], "subscribe");
    assert_eq!(again["payload"], first["payload"]);
    upstream
        .send(json!({ "type": "next", "id": again["id"], "payload": { "data": { "a": 2 } } }))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "next", "id": "s", "payload": { "data": { "a": 2 } } })
    );
    assert!(!fake.has_pending_connection());
}

#[tokio::test]
async fn an_outage_past_the_give_up_window_errors_then_completes() {
    let mut fake = FakeUpstream::start("graphql-transport-ws").await;
    let (_gateway, mut client, upstream) = one_live_operation(
        &mut fake,
        "[upstreams.up.reconnect]\ninitial_ms = 20\nmax_ms = 50\ngive_up_after_ms = 400",
    )
    .await;
    // "Service restart": retryable. Every later dial is accepted but never acknowledged.
    upstream.close(1012, "restarting").await;
    let started = std::time::Instant::now();
    let failure = client.recv_json().await;
    let waited = started.elapsed();
    assert_eq!(failure["type"], "next");
    assert_eq!(failure["id"], "1");
    let error = &failure["payload"]["errors"][0];
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("gave up reconnecting to upstream \"up\" after 4"),
        "{message}"
    );
    assert_eq!(
        error["extensions"]["code"], "UPSTREAM_UNAVAILABLE",
        "{message}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(350)
            && waited < std::time::Duration::from_secs(3),
        "gave up after {waited:?}"
    );
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "complete", "id": "1" })
    );
}

#[tokio::test]
async fn shutdown_during_an_outage_is_prompt() {
    let mut fake = FakeUpstream::start("graphql-transport-ws").await;
    let (gateway, mut client, upstream) = one_live_operation(&mut fake, "").await;
    // Retryable, and every redial is accepted but never acknowledged: the connection
    // task is reconnecting, with the default 30 s give-up window ahead of it.
    upstream.close(1012, "restarting").await;
    fake.accept().await;
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(gateway.shutdown());
    match client.recv().await {
        subplex_tests::ws::Received::Close { code, .. } => assert_eq!(code, 1001),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    // Reading on sends the client's answering Close, as every client library does; the
    // gateway waits for it (bounded) before it drops the connection.
    assert_eq!(client.recv().await, subplex_tests::ws::Received::Dropped);
    shutdown.await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_auth_close_is_not_retried() {
    let mut fake = FakeUpstream::start("graphql-transport-ws").await;
    let (_gateway, mut client, upstream) =
        one_live_operation(&mut fake, "[upstreams.up.reconnect]\ninitial_ms = 1").await;
    upstream.close(4403, "Forbidden").await;
    let failure = client.recv_json().await;
    assert_eq!(
        failure["payload"]["errors"][0]["extensions"]["code"],
        "UPSTREAM_REJECTED"
    );
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "complete", "id": "1" })
    );

    // Had operation 1 been retried (1 ms backoff), its dial would be the next connection
    // and would carry `a`; the next connection is operation 2's, carrying only `b`.
    client.send(subscribe("2", "subscription { b }")).await;
    let mut upstream = fake.accept().await;
    upstream.handshake().await;
    assert_eq!(
        upstream.recv_json().await["payload"]["query"],
        "subscription { b }"
    );
    assert!(!fake.has_pending_connection());
}

#[tokio::test]
async fn refused_init_and_garbage_end_operations_with_their_codes() {
    let mut fake = FakeUpstream::start("graphql-ws").await;
    let gateway = gateway_for(&fake, "graphql-ws", "").await;
    let mut client = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    client.init(json!({})).await;

    client.send(subscribe("1", "subscription { a }")).await;
    let mut upstream = fake.accept().await;
    assert_eq!(upstream.recv_json().await["type"], "connection_init");
    upstream
        .send(json!({ "type": "connection_error", "payload": { "message": "invalid token" } }))
        .await;
    let failure = client.recv_json().await;
    assert_eq!(
        failure["payload"]["errors"][0]["extensions"]["code"],
        "UPSTREAM_REJECTED"
    );
    assert_eq!(
        failure["payload"]["errors"][0]["message"],
        "upstream \"up\" refused the connection: invalid token"
    );
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "complete", "id": "1" })
    );
    // A refusal is permanent: no redial carried operation 1 anywhere.
    assert!(!fake.has_pending_connection());

    // A new operation opens a new connection; this one answers with garbage. It carries
    // operation 2 only: operation 1 was not retried after the refusal.
    client.send(subscribe("2", "subscription { b }")).await;
    let mut upstream = fake.accept().await;
    upstream.handshake().await;
    let start = upstream.recv_json().await;
    assert_eq!(start["type"], "start");
    assert_eq!(start["payload"]["query"], "subscription { b }");
    upstream.send_text("{\"type\":\"surprise\"}").await;
    let failure = client.recv_json().await;
    assert_eq!(
        failure["payload"]["errors"][0]["extensions"]["code"],
        "UPSTREAM_PROTOCOL_ERROR"
    );
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "complete", "id": "2" })
    );
    upstream.expect_closed().await;
}

#[tokio::test]
async fn upstream_close_code_is_reported() {
    let mut fake = FakeUpstream::start("graphql-transport-ws").await;
    let (_gateway, mut client, upstream) = one_live_operation(&mut fake, "").await;
    upstream.close(4500, "boom").await;
    let failure = client.recv_json().await;
    assert_eq!(
        failure["payload"]["errors"][0]["extensions"]["code"],
        "UPSTREAM_CLOSED"
    );
    assert_eq!(
        failure["payload"]["errors"][0]["message"],
        "upstream \"up\" closed the connection (code 4500: boom)"
    );
}

#[tokio::test]
async fn slow_client_is_cut_off_and_the_upstream_operation_stopped() {
    let mut fake = FakeUpstream::start("graphql-transport-ws").await;
    let gateway = gateway_for(&fake, "graphql-transport-ws", "subscriber_queue = 4").await;
    let mut slow = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    slow.init(json!({})).await;
    slow.send(subscribe("1", "subscription { flood }")).await;
    let mut upstream = fake.accept().await;
    upstream.handshake().await;
    assert_eq!(upstream.recv_json().await["type"], "subscribe");

    // Far more than socket buffers, the session queue and the subscriber queue hold,
    // while the client reads nothing.
    upstream.flood("1", 600, 64 * 1024).await;
    // The gateway stops the operation upstream instead of buffering without bound.
    assert_eq!(
        upstream.recv_json().await,
        json!({ "type": "complete", "id": "1" })
    );

    // The client, reading at last, finds a prefix of the events in order, then the close:
    // 1013, which graphql-ws clients retry.
    let mut expected_n = 0;
    let close = loop {
        match slow.recv().await {
            Received::Json(message) => {
                assert_eq!(message["payload"]["data"]["n"], expected_n, "{message}");
                expected_n += 1;
            }
            other => break other,
        }
    };
    assert_eq!(
        close,
        Received::Close {
            code: 1013,
            reason: "Subscriber too slow".into()
        }
    );
    assert!(expected_n < 600, "some events were cut off");
    // Counted once as a `slow_consumer` cut. Every event read for the operation is counted
    // in: those the client read, the 3 behind the first in its full outbox (4 frames
    // waiting for the socket: the first, which may be partly written, is kept so the
    // stream stays whole; the rest are dropped when it is cut, not sent to a client
    // already behind) and the one that found the outbox full; those the client read are
    // counted out.
    let lines = metric_lines(gateway.addr).await;
    for expected in [
        "subplex_client_cuts_total{reason=\"slow_consumer\"} 1".to_owned(),
        format!(
            "subplex_events_total{{upstream=\"up\",direction=\"in\"}} {}",
            expected_n + 3 + 1
        ),
        format!("subplex_events_total{{upstream=\"up\",direction=\"out\"}} {expected_n}"),
    ] {
        assert!(lines.contains(&expected), "{expected} in {lines:#?}");
    }
}

#[tokio::test]
async fn wss_upstream_with_a_private_ca_serves_subscriptions() {
    let certificates = subplex_tests::fake_upstream::test_certificates();
    let ca_file = std::env::temp_dir().join(format!("subplex-e2e-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &certificates.ca_pem).unwrap();
    let mut fake =
        FakeUpstream::start_tls("graphql-transport-ws", certificates.server.clone()).await;
    let gateway = TestGateway::start(&format!(
        "[upstreams.up]\nurl = \"https://127.0.0.1:{}/graphql\"\ntls_ca_file = {:?}\n\
         protocol = \"graphql-transport-ws\"\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        fake.addr.port(),
        ca_file.display().to_string()
    ))
    .await;
    let mut client = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    client.init(json!({ "token": "t" })).await;
    client.send(subscribe("1", "subscription { a }")).await;
    let mut upstream = fake.accept().await;
    assert_eq!(upstream.handshake().await, json!({ "token": "t" }));
    assert_eq!(upstream.recv_json().await["type"], "subscribe");
    upstream
        .send(json!({ "type": "next", "id": "1", "payload": { "data": { "a": 1 } } }))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "next", "id": "1", "payload": { "data": { "a": 1 } } })
    );
    let _ = std::fs::remove_file(&ca_file);
}

#[tokio::test]
async fn wss_upstream_with_an_untrusted_certificate_is_refused_clearly() {
    let certificates = subplex_tests::fake_upstream::test_certificates();
    let fake = FakeUpstream::start_tls("graphql-transport-ws", certificates.server.clone()).await;
    // No tls_ca_file: only public roots are trusted, so the private CA is not.
    let gateway = TestGateway::start(&format!(
        "[upstreams.up]\nurl = \"https://127.0.0.1:{}/graphql\"\n[[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        fake.addr.port()
    ))
    .await;
    let mut client = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    client.init(json!({})).await;
    client.send(subscribe("1", "subscription { a }")).await;
    let failure = client.recv_json().await;
    let error = &failure["payload"]["errors"][0];
    assert_eq!(error["extensions"]["code"], "UPSTREAM_UNAVAILABLE");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "{message}"
    );
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "complete", "id": "1" })
    );
}

#[tokio::test]
async fn https_upstream_serves_plain_http_queries() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certificates = subplex_tests::fake_upstream::test_certificates();
    let ca_file =
        std::env::temp_dir().join(format!("subplex-e2e-http-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &certificates.ca_pem).unwrap();
    // A minimal HTTPS server: one canned GraphQL response per connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(certificates.server.clone());
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(stream).await else {
                continue;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tls.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            let body = r#"{"data":{"hello":"over tls"}}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            tls.write_all(response.as_bytes()).await.unwrap();
            tls.shutdown().await.ok();
        }
    });
    let gateway = TestGateway::start(&format!(
        "[upstreams.up]\nurl = \"https://127.0.0.1:{port}/graphql\"\ntls_ca_file = {:?}\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        ca_file.display().to_string()
    ))
    .await;
    let response = reqwest::Client::new()
        .post(gateway.url())
        .header("content-type", "application/json")
        .body(r#"{"query":"{ hello }"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"data":{"hello":"over tls"}}"#
    );
    server.abort();
    let _ = std::fs::remove_file(&ca_file);
}

/// Upstream events that arrive together are a burst: the gateway writes the first at once
/// and holds the rest for one write per client at the burst's end (write-through). All of
/// them reach the client, in order, without anything else waking its session: its timers
/// (init timeout, pings) are set far beyond the test, so a held frame nobody flushed
/// would never arrive.
#[tokio::test]
async fn a_burst_of_upstream_events_reaches_the_client_whole_and_in_order() {
    let mut fake = FakeUpstream::start("graphql-transport-ws").await;
    let gateway = TestGateway::start(&format!(
        "[server]\nconnection_init_timeout_ms = 600000\nkeepalive_interval_ms = 600000\n\
         [upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\nprotocol = \"graphql-transport-ws\"\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        fake.addr.port()
    ))
    .await;
    let (mut client, mut upstream) = live_operation(&gateway, &mut fake).await;
    // One flush: the gateway reads the twenty frames together.
    upstream.flood("1", 20, 16).await;
    for n in 0..20 {
        let Received::Json(message) = client.recv().await else {
            panic!("expected event {n}");
        };
        assert_eq!(message["id"], "1", "{message}");
        assert_eq!(message["payload"]["data"]["n"], n, "{message}");
    }
}
