//! A clean shutdown with live clients of every transport at once, against a real upstream
//! (graphql-yoga): each client's last bytes, and the upstream seeing its subscriptions
//! completed before the connection closes.

use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::json;
use subplex_tests::http::read_until;
use subplex_tests::ws::{RawClient, Received};
use subplex_tests::*;

const FOREVER: &str = "subscription { forever(intervalMs: 50) { n user } }";
const SHUTTING_DOWN: &str = r#"{"errors":[{"extensions":{"code":"SHUTTING_DOWN"},"message":"the gateway is shutting down"}]}"#;
const GRACE: Duration = Duration::from_secs(5);

/// A WebSocket client of `subprotocol` with one running operation (id "1").
async fn ws_client(addr: std::net::SocketAddr, subprotocol: &str, start: &str) -> RawClient {
    let mut client =
        RawClient::connect(addr, subprotocol, &[("authorization", "Bearer alice")]).await;
    client.send(json!({ "type": "connection_init" })).await;
    assert_eq!(client.recv_json_skip_ka().await["type"], "connection_ack");
    client
        .send(json!({ "type": start, "id": "1", "payload": { "query": FOREVER } }))
        .await;
    let first = client.recv_json_skip_ka().await;
    assert_eq!(first["id"], "1", "{first}");
    client
}

fn authorized(http: &Client, method: Method, url: &str) -> reqwest::RequestBuilder {
    http.request(method, url)
        .header("authorization", "Bearer alice")
}

#[tokio::test]
async fn shutdown_completes_every_transport_and_the_upstream_subscriptions() {
    let yoga = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::start(&format!(
        "[server]\nshutdown_grace_ms = {}\n\n[upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\nprotocol = \"graphql-transport-ws\"\n# One upstream subscription per client, each to be completed.\ndedup = false\n\n[[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        GRACE.as_millis(),
        yoga.port
    ))
    .await;
    let (addr, url, http) = (gateway.addr, gateway.url(), Client::new());

    let mut transport_ws = ws_client(addr, "graphql-transport-ws", "subscribe").await;
    let mut legacy_ws = ws_client(addr, "graphql-ws", "start").await;

    let sse = authorized(&http, Method::POST, &url)
        .header("accept", "text/event-stream")
        .json(&json!({ "query": FOREVER }))
        .send()
        .await
        .unwrap();
    let mut sse = sse.bytes_stream();
    read_until(&mut sse, |text| text.contains("event: next")).await;

    let token = authorized(&http, Method::PUT, &url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let single = authorized(&http, Method::GET, &url)
        .header("accept", "text/event-stream")
        .header("x-graphql-event-stream-token", &token)
        .send()
        .await
        .unwrap();
    let mut single = single.bytes_stream();
    let posted = authorized(&http, Method::POST, &url)
        .header("x-graphql-event-stream-token", &token)
        .json(&json!({ "query": FOREVER, "extensions": { "operationId": "op" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    read_until(&mut single, |text| text.contains("event: next")).await;

    let multipart = authorized(&http, Method::POST, &url)
        .header("accept", "multipart/mixed;subscriptionSpec=1.0")
        .json(&json!({ "query": FOREVER }))
        .send()
        .await
        .unwrap();
    let mut multipart = multipart.bytes_stream();
    read_until(&mut multipart, |text| {
        text.contains("\"payload\":{\"data\"")
    })
    .await;

    yoga.wait_for("five subscriptions", |c| c.subscriptions_active == 5)
        .await;

    let started = Instant::now();
    let shutdown = tokio::spawn(gateway.shutdown());

    // WebSocket clients: Close 1001, in both dialects.
    for client in [&mut transport_ws, &mut legacy_ws] {
        assert_eq!(
            client.drain_to_end().await,
            Received::Close {
                code: 1001,
                reason: "Gateway shutting down".into()
            }
        );
        // Reading on sends the client's answering Close (tungstenite queues it), after
        // which the gateway ends the connection.
        assert_eq!(client.recv().await, Received::Dropped);
    }
    // SSE, distinct connections: the operation ends with an error result naming the
    // shutdown, then `complete`; then the body ends.
    let end = format!("event: next\ndata: {SHUTTING_DOWN}\n\nevent: complete\ndata:\n\n");
    let text = read_until(&mut sse, |text| text.ends_with(&end)).await;
    assert!(
        !text.contains("event: complete\ndata:\n\nevent"),
        "{text:?}"
    );
    assert_body_ended(&mut sse).await;
    // SSE, single connection: the same for the stream's operation, with its id.
    let end = format!(
        "event: next\ndata: {{\"id\":\"op\",\"payload\":{SHUTTING_DOWN}}}\n\nevent: complete\ndata: {{\"id\":\"op\"}}\n\n"
    );
    read_until(&mut single, |text| text.ends_with(&end)).await;
    assert_body_ended(&mut single).await;
    // Multipart: a transport error part, then the closing boundary.
    let end = format!(
        "\r\ncontent-type: application/json\r\n\r\n{{\"payload\":null,{}\r\n--graphql--\r\n",
        &SHUTTING_DOWN[1..]
    );
    read_until(&mut multipart, |text| text.ends_with(&end)).await;
    assert_body_ended(&mut multipart).await;

    shutdown.await.unwrap();
    let took = started.elapsed();
    assert!(
        took < GRACE,
        "the drain took {took:?}, the grace is {GRACE:?}"
    );

    // The upstream saw every subscription end while its connection was still open: the
    // gateway sent `complete` for each, before closing the socket.
    yoga.wait_for("no subscriptions", |c| c.subscriptions_active == 0)
        .await;
    yoga.wait_for("no connections", |c| c.connections_open == 0)
        .await;
    let ends = yoga.events_named("subscription_end");
    assert_eq!(ends.len(), 5, "{ends:#?}");
    for end in &ends {
        assert!(
            end["connectionsOpen"].as_u64().unwrap() >= 1,
            "a subscription ended only with its connection: {:#?}",
            yoga.events()
        );
    }
}

async fn assert_body_ended(
    chunks: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
) {
    use futures_util::StreamExt;
    let next = tokio::time::timeout(EVENT_TIMEOUT, chunks.next())
        .await
        .expect("the body ends within the timeout");
    assert!(next.is_none(), "more after the end: {next:?}");
}
