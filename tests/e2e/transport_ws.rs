//! graphql-transport-ws downstream: the protocol rules and close codes, with a raw client.
//!
//! The session's timing (pings, dropping silent clients, the init timeout, the write
//! timeout) is tested on paused time beside the session, in
//! `crates/subplex/src/downstream/ws/session.rs`; here only what needs the real upstream.

use serde_json::json;
use subplex_tests::ws::{RawClient, Received};
use subplex_tests::*;
use tokio_tungstenite::tungstenite;

const PROTOCOL: &str = "graphql-transport-ws";

fn subscribe(id: &str, query: &str) -> serde_json::Value {
    json!({ "type": "subscribe", "id": id, "payload": { "query": query } })
}

#[tokio::test]
async fn subscription_events_are_exact_and_in_order() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.init(json!({})).await;
    client
        .send(subscribe(
            "a",
            "subscription { tick(count: 3, intervalMs: 5) }",
        ))
        .await;
    for n in 1..=3 {
        assert_eq!(
            client.recv_json().await,
            json!({ "type": "next", "id": "a", "payload": { "data": { "tick": n } } })
        );
    }
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "complete", "id": "a" })
    );
}

#[tokio::test]
async fn query_over_subscribe_gets_one_next_then_complete() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.init(json!({})).await;
    client.send(subscribe("q", "{ hello }")).await;
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "next", "id": "q", "payload": { "data": { "hello": "world" } } })
    );
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "complete", "id": "q" })
    );
}

#[tokio::test]
async fn subscribe_before_ack_closes_4401() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.send(subscribe("1", "{ hello }")).await;
    assert_eq!(client.expect_close(4401).await, "Unauthorized");
}

#[tokio::test]
async fn second_init_closes_4429() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.init(json!({})).await;
    client.send(json!({ "type": "connection_init" })).await;
    assert_eq!(
        client.expect_close(4429).await,
        "Too many initialisation requests"
    );
}

#[tokio::test]
async fn duplicate_active_id_closes_4409() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.init(json!({})).await;
    let long = "subscription { tick(count: 100, intervalMs: 1000) }";
    client.send(subscribe("dup", long)).await;
    client.send(subscribe("dup", long)).await;
    assert_eq!(
        client.expect_close(4409).await,
        "Subscriber for dup already exists"
    );
}

#[tokio::test]
async fn ids_are_reusable_after_completion() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.init(json!({})).await;
    for _ in 0..2 {
        client.send(subscribe("same", "{ hello }")).await;
        assert_eq!(client.recv_json().await["type"], "next");
        assert_eq!(
            client.recv_json().await,
            json!({ "type": "complete", "id": "same" })
        );
    }
}

#[tokio::test]
async fn invalid_messages_close_4400_naming_the_problem() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let cases = [
        ("not json", "message is not valid JSON"),
        (r#"{"type":"nope"}"#, "unknown message type \"nope\""),
        (r#"{"id":"1"}"#, "message has no string \"type\" field"),
        (
            r#"{"type":"subscribe","id":"1"}"#,
            "\"subscribe\" message needs a \"payload\"",
        ),
        (
            r#"{"type":"subscribe","payload":{"query":"{a}"}}"#,
            "\"subscribe\" message needs a non-empty string \"id\"",
        ),
        (
            r#"{"type":"subscribe","id":"1","payload":{}}"#,
            "request has no \"query\" string",
        ),
        (
            r#"{"type":"connection_init","payload":[1]}"#,
            "payload must be a JSON object",
        ),
    ];
    for (frame, expected) in cases {
        let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
        if frame.contains("subscribe") {
            client.init(json!({})).await;
        }
        client.send_text(frame).await;
        let reason = client.expect_close(4400).await;
        assert!(
            reason.contains(expected),
            "{frame}: reason {reason:?} lacks {expected:?}"
        );
    }
}

#[tokio::test]
async fn ping_is_answered_with_pong_before_and_after_ack() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.recv_json().await, json!({ "type": "pong" }));
    client.init(json!({})).await;
    client
        .send(json!({ "type": "ping", "payload": { "x": 1 } }))
        .await;
    assert_eq!(client.recv_json().await, json!({ "type": "pong" }));
    // An unsolicited pong is a heartbeat: no answer, the connection stays usable.
    client.send(json!({ "type": "pong" })).await;
    client.send(subscribe("1", "{ hello }")).await;
    assert_eq!(client.recv_json().await["type"], "next");
}

#[tokio::test]
async fn oversized_message_closes_1009() {
    let (gateway, _demo) = gateway_with_demo("max_message_bytes = 2048").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.init(json!({})).await;
    let big = format!(
        "{{\"type\":\"subscribe\",\"id\":\"1\",\"payload\":{{\"query\":\"{}\"}}}}",
        "x".repeat(4096)
    );
    client.send_text(&big).await;
    client.expect_close(1009).await;
}

#[tokio::test]
async fn websocket_without_a_graphql_subprotocol_is_refused_with_400() {
    let (gateway, _demo) = gateway_with_demo("").await;
    for offered in [Some("chat, mqtt"), None] {
        use tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}/graphql", gateway.addr)
            .into_client_request()
            .unwrap();
        if let Some(offered) = offered {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", offered.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400);
                let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                let message = body["errors"][0]["message"].as_str().unwrap();
                assert!(
                    message.contains("graphql-transport-ws") && message.contains("graphql-ws"),
                    "{message}"
                );
                assert_eq!(
                    body["errors"][0]["extensions"]["code"],
                    "UNSUPPORTED_SUBPROTOCOL"
                );
            }
            other => panic!("expected HTTP 400, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn client_complete_stops_the_upstream_subscription() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, PROTOCOL, "").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.init(json!({ "authorization": "Bearer gina" })).await;
    client
        .send(subscribe(
            "1",
            "subscription { forever(intervalMs: 50) { n user } }",
        ))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "next", "id": "1", "payload": { "data": { "forever": { "n": 1, "user": "gina" } } } })
    );
    server
        .wait_for("the upstream subscription", |c| c.subscriptions_active == 1)
        .await;
    client.send(json!({ "type": "complete", "id": "1" })).await;
    server
        .wait_for("the upstream subscription to end", |c| {
            c.subscriptions_active == 0
        })
        .await;
    // The id is free again and the connection still serves.
    client
        .send(subscribe(
            "1",
            "subscription { ticks(count: 1) { n user } }",
        ))
        .await;
    // Late `next`s of the stopped operation must not appear: the first message for id 1
    // is the new operation's.
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "next", "id": "1", "payload": { "data": { "ticks": { "n": 1, "user": "gina" } } } })
    );
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "complete", "id": "1" })
    );
}

#[tokio::test]
async fn upstream_validation_error_reaches_the_client_as_error() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, PROTOCOL, "").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.init(json!({})).await;
    client.send(subscribe("v", "subscription { nope }")).await;
    let message = client.recv_json().await;
    assert_eq!(message["type"], "error");
    assert_eq!(message["id"], "v");
    assert_eq!(
        message["payload"][0]["message"],
        "Cannot query field \"nope\" on type \"Subscription\"."
    );
    // `error` is terminal: the next message belongs to a new operation.
    client.send(subscribe("w", "{ hello }")).await;
    assert_eq!(client.recv_json().await["id"], "w");
}

#[tokio::test]
async fn gateway_shutdown_closes_clients_with_1001() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.init(json!({})).await;
    client
        .send(subscribe(
            "1",
            "subscription { tick(count: 100, intervalMs: 20) }",
        ))
        .await;
    assert_eq!(client.recv_json().await["type"], "next");
    let shutdown = tokio::spawn(gateway.shutdown());
    loop {
        match client.recv().await {
            Received::Json(message) => assert_eq!(message["type"], "next"),
            Received::Close { code, .. } => {
                assert_eq!(code, 1001);
                break;
            }
            Received::Dropped => panic!("dropped without a close frame"),
        }
    }
    shutdown.await.unwrap();
}

#[tokio::test]
async fn a_vanished_client_is_dropped_and_its_upstream_operation_ends() {
    // The interval only sets how soon the client is dropped (after two to three of them):
    // it is long enough that no stall of a loaded machine between the client's `init` and
    // its first event passes for silence. The exact timing is a paused-time unit test.
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::start(&format!(
        "[server]\nkeepalive_interval_ms = 1000\n[upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        server.port
    ))
    .await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.init(json!({})).await;
    client
        .send(subscribe(
            "1",
            "subscription { forever(intervalMs: 50) { n } }",
        ))
        .await;
    assert_eq!(client.recv_json().await["type"], "next");
    server
        .wait_for("the upstream subscription", |c| c.subscriptions_active == 1)
        .await;
    // From now on the client neither reads nor answers pings, like a peer that vanished
    // without closing: the gateway ends its session and the upstream operation.
    server
        .wait_for("the upstream subscription to end", |c| {
            c.subscriptions_active == 0
        })
        .await;
    drop(client);
}

#[tokio::test]
async fn websocket_sessions_count_against_max_connections() {
    let (gateway, _demo) = gateway_with_demo("max_connections = 2").await;
    let mut first = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    first.init(json!({})).await;
    let mut second = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    second.init(json!({})).await;

    // The upgraded sessions still hold their places: a third client waits in the backlog.
    // No event marks "not served", so this is a window; it can only let a wrong gateway
    // pass on a stalled machine, never fail a right one (the third is never served early).
    let addr = gateway.addr;
    let mut third = tokio::spawn(async move { RawClient::connect(addr, PROTOCOL, &[]).await });
    let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut third).await;
    assert!(
        early.is_err(),
        "a third connection was served while two sessions were open"
    );

    first
        .send(json!({ "type": "complete", "id": "none" }))
        .await;
    drop(first);
    let mut third = tokio::time::timeout(EVENT_TIMEOUT, third)
        .await
        .expect("served once a place is free")
        .unwrap();
    third.init(json!({})).await;
}
