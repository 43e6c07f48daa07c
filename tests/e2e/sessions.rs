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

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_others_are_unaffected() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::start(&format!(
        "[server]\nclient_write_timeout_ms = 300\n[upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\n\
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
    server
        .wait_for("every subscription upstream", |c| {
            c.subscriptions_active == 11
        })
        .await;

    // `stuck` reads nothing: its socket buffers fill, the gateway's write waits, and after
    // `client_write_timeout_ms` the session is cut, which ends its ten upstream operations.
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
    let (gateway, _demo) = gateway_with_demo("").await;
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
