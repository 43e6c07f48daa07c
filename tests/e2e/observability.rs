//! What operators see: `/healthz`, `/readyz` through a shutdown.

use serde_json::{json, Value};
use subplex_tests::ws::{RawClient, Received};
use subplex_tests::*;

/// Status and body of a GET on the gateway.
async fn get(gateway: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = tokio::time::timeout(
        EVENT_TIMEOUT,
        reqwest::get(format!("http://{gateway}{path}")),
    )
    .await
    .expect("the gateway answers in time")
    .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Readiness turns 503 as soon as shutdown starts, while a WebSocket client is still being
/// drained; liveness stays 200, and a new client is refused with a clear 503.
#[tokio::test]
async fn readiness_turns_503_while_a_websocket_client_drains() {
    // The client below does not answer the Close frame until it reads again: the session
    // waits for it up to client_write_timeout_ms, which keeps the drain open meanwhile.
    let (gateway, _demo) =
        gateway_with_demo("client_write_timeout_ms = 30000\nshutdown_grace_ms = 30000").await;
    let addr = gateway.addr;
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_owned()));
    let mut client = RawClient::connect(addr, "graphql-transport-ws", &[]).await;
    client.init(json!({})).await;
    client
        .send(json!({ "type": "subscribe", "id": "1", "payload": {
            "query": "subscription { tick(count: 1000, intervalMs: 20) }" } }))
        .await;
    assert_eq!(client.recv_json().await["type"], "next");

    let shutdown = tokio::spawn(gateway.shutdown());
    // The flip follows the cancellation on the gateway's task: poll it, bounded.
    let flipped = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let answer = get(addr, "/readyz").await;
            if answer.0 != 200 {
                break answer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("readiness flips");
    assert_eq!(flipped, (503, "shutting down\n".to_owned()));
    assert!(
        !shutdown.is_finished(),
        "the WebSocket client is still draining"
    );
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    let (status, body) = get(addr, "/graphql?query=%7Bhello%7D").await;
    assert_eq!(status, 503);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "SHUTTING_DOWN");
    assert!(!shutdown.is_finished());

    // The client reads on to the Close and hangs up, and the drain completes.
    match client.drain_to_end().await {
        Received::Close { code, .. } => assert_eq!(code, 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    drop(client);
    shutdown.await.unwrap();
}
