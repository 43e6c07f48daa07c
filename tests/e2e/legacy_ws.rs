//! Legacy `graphql-ws` (subscriptions-transport-ws) downstream, with a raw client.
//!
//! The session's timing (periodic `ka`, the init timeout) is tested on paused time beside
//! the session, in `crates/subplex/src/downstream/ws/session.rs`.

use serde_json::json;
use subplex_tests::ws::RawClient;
use subplex_tests::*;

const PROTOCOL: &str = "graphql-ws";

fn start(id: &str, query: &str) -> serde_json::Value {
    json!({ "type": "start", "id": id, "payload": { "query": query } })
}

async fn initialised(gateway: &TestGateway) -> RawClient {
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "connection_ack" })
    );
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "ka" }),
        "ka right after the ack"
    );
    client
}

#[tokio::test]
async fn start_data_complete() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = initialised(&gateway).await;
    client
        .send(start("7", "subscription { tick(count: 2, intervalMs: 5) }"))
        .await;
    for n in 1..=2 {
        assert_eq!(
            client.recv_json_skip_ka().await,
            json!({ "type": "data", "id": "7", "payload": { "data": { "tick": n } } })
        );
    }
    assert_eq!(
        client.recv_json_skip_ka().await,
        json!({ "type": "complete", "id": "7" })
    );
}

#[tokio::test]
async fn stop_ends_the_upstream_subscription_and_terminate_closes_1000() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, "graphql-transport-ws", "").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client
        .send(json!({ "type": "connection_init", "payload": { "authorization": "Bearer hal" } }))
        .await;
    assert_eq!(client.recv_json().await["type"], "connection_ack");
    client
        .send(start(
            "s",
            "subscription { forever(intervalMs: 50) { n user } }",
        ))
        .await;
    assert_eq!(
        client.recv_json_skip_ka().await,
        json!({ "type": "data", "id": "s", "payload": { "data": { "forever": { "n": 1, "user": "hal" } } } })
    );
    client.send(json!({ "type": "stop", "id": "s" })).await;
    server
        .wait_for("the upstream subscription to end", |c| {
            c.subscriptions_active == 0
        })
        .await;
    client.send(json!({ "type": "connection_terminate" })).await;
    client.expect_close(1000).await;
}

#[tokio::test]
async fn start_before_init_is_an_operation_error() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.send(start("1", "{ hello }")).await;
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "error", "id": "1", "payload": { "message": "connection_init must be acknowledged before start" } })
    );
}

#[tokio::test]
async fn malformed_message_is_an_error_and_the_connection_survives() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = initialised(&gateway).await;
    client.send_text("{not json").await;
    let error = client.recv_json_skip_ka().await;
    assert_eq!(error["type"], "error");
    assert!(error.get("id").is_none());
    assert!(error["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    client.send(json!({ "type": "subscribe", "id": "1" })).await;
    let error = client.recv_json_skip_ka().await;
    assert_eq!(
        error["payload"]["message"],
        "unknown message type \"subscribe\""
    );
    client.send(start("2", "{ hello }")).await;
    assert_eq!(
        client.recv_json_skip_ka().await,
        json!({ "type": "data", "id": "2", "payload": { "data": { "hello": "world" } } })
    );
}

#[tokio::test]
async fn second_init_is_a_connection_error_then_close() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = initialised(&gateway).await;
    client
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    assert_eq!(
        client.recv_json_skip_ka().await,
        json!({ "type": "connection_error", "payload": { "message": "Too many initialisation requests" } })
    );
    client.expect_close(1011).await;
}

#[tokio::test]
async fn deprecated_aliases_are_understood() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, PROTOCOL, &[]).await;
    client.send(json!({ "type": "init", "payload": {} })).await;
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "connection_ack" })
    );
    client
        .send(
            json!({ "type": "subscription_start", "id": "1", "payload": { "query": "{ hello }" } }),
        )
        .await;
    assert_eq!(
        client.recv_json_skip_ka().await,
        json!({ "type": "data", "id": "1", "payload": { "data": { "hello": "world" } } })
    );
}
