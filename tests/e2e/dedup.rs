//! Deduplication: client operations of one security context with the same normalised
//! request run as one upstream operation, counted at a real upstream (Yoga's own
//! `subscription_start` / `subscription_end` log), and that operation stops when its last
//! client leaves, on every path, even when the upstream sends nothing more.

use serde_json::{json, Value};
use subplex_tests::http::urlencode;
use subplex_tests::ws::{RawClient, Received};
use subplex_tests::*;

const TRANSPORT_WS: &str = "graphql-transport-ws";
const LEGACY_WS: &str = "graphql-ws";

/// Ticks every 50 ms, so a client proves it joined by receiving one.
const TICKING: &str = "subscription { forever(intervalMs: 50) { n user } }";
/// One tick at once, then nothing for an hour: an upstream operation that stays open after
/// its clients left would be seen, as nothing upstream would ever make it end.
const SILENT: &str = "subscription { forever(intervalMs: 3600000) { n } }";

fn subscribe(id: &str, query: &str, variables: Value) -> Value {
    json!({ "type": "subscribe", "id": id, "payload": { "query": query, "variables": variables } })
}

/// A graphql-transport-ws client with an empty init payload (one security context with
/// the other anonymous clients of these tests, SSE ones included).
async fn anonymous_client(gateway: &TestGateway) -> RawClient {
    let mut client = RawClient::connect(gateway.addr, TRANSPORT_WS, &[]).await;
    client.init(json!({})).await;
    client
}

/// The `n` of a `next` message for operation `id`, whatever field it ticks in.
fn tick_n(message: &Value, id: &str) -> u64 {
    assert_eq!(message["type"], "next", "{message}");
    assert_eq!(message["id"], id, "{message}");
    message["payload"]["data"]["forever"]["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("a tick: {message}"))
}

/// Reads `count` ticks of operation `id`; they must follow each other without a gap.
async fn expect_consecutive_ticks(client: &mut RawClient, id: &str, count: usize) -> u64 {
    let mut last = tick_n(&client.recv_json().await, id);
    for _ in 1..count {
        let n = tick_n(&client.recv_json().await, id);
        assert_eq!(n, last + 1, "no gap, no repeat");
        last = n;
    }
    last
}

fn upstream_starts(server: &NodeServer) -> usize {
    server.events_named("subscription_start").len()
}

#[tokio::test]
async fn clients_of_both_websocket_libraries_on_one_request_share_one_upstream_subscription() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, TRANSPORT_WS, "").await;
    // The graphql-ws and subscriptions-transport-ws clients send the same init payload,
    // so they are one security context on one upstream connection.
    let clients = (0..20)
        .map(|i| {
            let kind = ["graphql-ws", "subscriptions-transport-ws"][i % 2];
            client(kind, &gateway.url(), TICKING, "alice")
        })
        .collect();
    let mut held = HeldClients::subscribe(clients).await;
    for i in 0..20 {
        held.wait_until(i, |lines| nexts(lines).len() >= 3).await;
    }
    assert_eq!(upstream_starts(&server), 1, "one upstream subscription");
    assert_eq!(server.counters().subscriptions_active, 1);
    assert_eq!(server.counters().connections_total, 1);

    let lines = held.stop().await;
    for (i, client_lines) in lines.iter().enumerate() {
        // A late joiner starts where the shared operation is, then misses nothing.
        let ns: Vec<u64> = nexts(client_lines)
            .iter()
            .map(|payload| {
                assert_eq!(payload["data"]["forever"]["user"], "alice");
                payload["data"]["forever"]["n"].as_u64().unwrap()
            })
            .collect();
        assert!(
            ns.windows(2).all(|w| w[1] == w[0] + 1),
            "client {i}: {ns:?}"
        );
    }
    server
        .wait_for("the shared upstream subscription to end", |c| {
            c.subscriptions_active == 0
        })
        .await;
    assert_eq!(server.events_named("subscription_end").len(), 1);
}

#[tokio::test]
async fn distinct_variables_are_distinct_upstream_subscriptions_and_formatting_is_not() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, TRANSPORT_WS, "").await;
    let query = "subscription($ms: Int) { forever(intervalMs: $ms) { n } }";
    let reformatted = "# the same operation\nsubscription ($ms: Int) {\n  forever(intervalMs: $ms) {\n    n\n  }\n}\n";
    let mut one = anonymous_client(&gateway).await;
    one.send(subscribe("a", query, json!({ "ms": 50 }))).await;
    expect_consecutive_ticks(&mut one, "a", 2).await;
    let mut two = anonymous_client(&gateway).await;
    two.send(subscribe("b", query, json!({ "ms": 40 }))).await;
    expect_consecutive_ticks(&mut two, "b", 2).await;
    let mut three = anonymous_client(&gateway).await;
    three
        .send(subscribe("c", reformatted, json!({ "ms": 50 })))
        .await;
    expect_consecutive_ticks(&mut three, "c", 2).await;

    assert_eq!(
        upstream_starts(&server),
        2,
        "50 ms and 40 ms differ; the reformatted 50 ms request joins the first"
    );
    for (client, id) in [(&mut one, "a"), (&mut two, "b"), (&mut three, "c")] {
        client.send(json!({ "type": "complete", "id": id })).await;
    }
    server
        .wait_for("both upstream subscriptions to end", |c| {
            c.subscriptions_active == 0
        })
        .await;
}

#[tokio::test]
async fn different_security_contexts_never_share_an_upstream_subscription() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, TRANSPORT_WS, "").await;
    let mut clients = Vec::new();
    for user in ["alice", "bob", "alice", "bob"] {
        let auth = format!("Bearer {user}");
        let mut client =
            RawClient::connect(gateway.addr, TRANSPORT_WS, &[("authorization", &auth)]).await;
        client.init(json!({})).await;
        client.send(subscribe("1", TICKING, json!({}))).await;
        clients.push((user, client));
    }
    for (user, client) in &mut clients {
        for _ in 0..2 {
            let message = client.recv_json().await;
            assert_eq!(message["payload"]["data"]["forever"]["user"], *user);
        }
    }
    assert_eq!(upstream_starts(&server), 2, "one per security context");
    assert_eq!(server.counters().connections_total, 2);
}

/// How a client leaves an operation.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// graphql-transport-ws `complete`.
    Complete,
    /// legacy `stop`.
    LegacyStop,
    /// The socket closes without a word.
    Disconnect,
    /// A protocol violation: the gateway closes the session (4429, second init).
    ProtocolError,
    /// An SSE client drops its response.
    SseAbort,
}

const LEAVES: [Leave; 5] = [
    Leave::Complete,
    Leave::LegacyStop,
    Leave::Disconnect,
    Leave::ProtocolError,
    Leave::SseAbort,
];

/// A client of one operation, of the kind `leave` needs.
enum Member {
    Ws(Box<RawClient>),
    Sse(reqwest::Response),
}

impl Member {
    /// Starts `query` as operation `"op"` and returns once the client received a tick.
    async fn join(gateway: &TestGateway, leave: Leave, query: &str) -> Member {
        match leave {
            Leave::LegacyStop => {
                let mut client = RawClient::connect(gateway.addr, LEGACY_WS, &[]).await;
                client
                    .send(json!({ "type": "connection_init", "payload": {} }))
                    .await;
                assert_eq!(client.recv_json_skip_ka().await["type"], "connection_ack");
                client
                    .send(json!({ "type": "start", "id": "op", "payload": { "query": query } }))
                    .await;
                let message = client.recv_json_skip_ka().await;
                assert_eq!(message["type"], "data", "{message}");
                Member::Ws(Box::new(client))
            }
            Leave::SseAbort => {
                let url = format!("{}?query={}", gateway.url(), urlencode(query));
                let response = reqwest::Client::new()
                    .get(url)
                    .header("accept", "text/event-stream")
                    .send()
                    .await
                    .unwrap();
                let mut member = Member::Sse(response);
                member.wait_sse_tick().await;
                member
            }
            _ => {
                let mut client = anonymous_client(gateway).await;
                client.send(subscribe("op", query, json!({}))).await;
                tick_n(&client.recv_json().await, "op");
                Member::Ws(Box::new(client))
            }
        }
    }

    async fn wait_sse_tick(&mut self) {
        let Member::Sse(response) = self else {
            unreachable!()
        };
        let mut seen = String::new();
        while !seen.contains("event: next") {
            let chunk = tokio::time::timeout(EVENT_TIMEOUT, response.chunk())
                .await
                .expect("an SSE event within the timeout")
                .unwrap()
                .expect("the stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn leave(self, leave: Leave) {
        match (self, leave) {
            (Member::Ws(mut client), Leave::Complete) => {
                client.send(json!({ "type": "complete", "id": "op" })).await;
            }
            (Member::Ws(mut client), Leave::LegacyStop) => {
                client.send(json!({ "type": "stop", "id": "op" })).await;
            }
            (Member::Ws(client), Leave::Disconnect) => drop(client),
            (Member::Ws(mut client), Leave::ProtocolError) => {
                client
                    .send(json!({ "type": "connection_init", "payload": {} }))
                    .await;
                // Ticks already sent may come first.
                loop {
                    match client.recv().await {
                        Received::Json(message) => assert_eq!(message["type"], "next"),
                        Received::Close { code, .. } => break assert_eq!(code, 4429),
                        Received::Dropped => panic!("closed without a close frame"),
                    }
                }
            }
            (Member::Sse(response), Leave::SseAbort) => drop(response),
            (_, leave) => unreachable!("{leave:?}"),
        }
    }
}

#[tokio::test]
async fn the_last_client_leaving_stops_a_silent_upstream_operation_at_once_on_every_path() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, TRANSPORT_WS, "").await;
    for (round, leave) in LEAVES.into_iter().enumerate() {
        let member = Member::join(&gateway, leave, SILENT).await;
        server
            .wait_for("the upstream subscription", |c| c.subscriptions_active == 1)
            .await;
        member.leave(leave).await;
        // The upstream sends nothing for an hour: only the gateway's `complete` can end it.
        server
            .wait_for(
                &format!("{leave:?} to end the upstream subscription"),
                |c| c.subscriptions_active == 0,
            )
            .await;
        assert_eq!(upstream_starts(&server), round + 1);
    }
}

#[tokio::test]
async fn clients_leaving_a_shared_operation_on_every_path_leave_it_running_for_the_others() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, TRANSPORT_WS, "").await;
    let query = "subscription { forever(intervalMs: 50) { n } }";
    let mut keeper = anonymous_client(&gateway).await;
    keeper.send(subscribe("keep", query, json!({}))).await;
    expect_consecutive_ticks(&mut keeper, "keep", 1).await;
    let mut members = Vec::new();
    for leave in LEAVES {
        members.push((leave, Member::join(&gateway, leave, query).await));
    }
    assert_eq!(upstream_starts(&server), 1, "all six share one");
    for (leave, member) in members {
        member.leave(leave).await;
    }
    // Ticks keep coming to the keeper, in order, from the same upstream subscription.
    let mut last = 0;
    for _ in 0..5 {
        let n = tick_n(&keeper.recv_json().await, "keep");
        assert!(n > last);
        last = n;
    }
    assert_eq!(server.counters().subscriptions_active, 1);
    assert_eq!(upstream_starts(&server), 1);
    keeper
        .send(json!({ "type": "complete", "id": "keep" }))
        .await;
    server
        .wait_for("the last leave to end it", |c| c.subscriptions_active == 0)
        .await;
    assert_eq!(server.events_named("subscription_end").len(), 1);
}

/// A shared operation of 4 KiB events every millisecond, a client that reads everything,
/// and one that stops reading: the stuck one is cut alone (by the slow-consumer policy or
/// by the write timeout, whichever `config` makes come first), the reader keeps every
/// event, and the upstream operation ends only when the reader leaves too.
/// Reads `count` ticks of operation `"r"`, each following `last`.
async fn read_ticks(reader: &mut RawClient, last: &mut u64, count: usize) {
    for _ in 0..count {
        let n = tick_n(&reader.recv_json().await, "r");
        assert_eq!(n, *last + 1, "the reader misses nothing");
        *last = n;
    }
}

/// What cuts the stuck client off.
#[derive(Debug, Clone, Copy)]
enum Cut {
    SlowConsumer,
    WriteTimeout,
}

async fn a_stuck_client_of_a_shared_operation_is_cut_alone(config: &str, expected_cut: Cut) {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::start(&format!(
        "{config}\n[[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        config = config.replace("PORT", &server.port.to_string())
    ))
    .await;
    let query = "subscription { forever(intervalMs: 1) { n padding(bytes: 4096) } }";
    let mut reader = anonymous_client(&gateway).await;
    reader.send(subscribe("r", query, json!({}))).await;
    let mut last = tick_n(&reader.recv_json().await, "r");
    let mut stuck = RawClient::connect_with_small_receive_buffer(gateway.addr, TRANSPORT_WS).await;
    stuck.init(json!({})).await;
    stuck.send(subscribe("s", query, json!({}))).await;
    tick_n(&stuck.recv_json().await, "s");

    // The stuck client now reads nothing. Until it is cut, and after, the reader gets
    // every event in order.
    match expected_cut {
        Cut::SlowConsumer => {
            // 3,000 events of 4 KiB (12 MB) are far more than the stuck client's socket
            // buffers (the kernel's send buffer grows to 4 MB by default) and its 256 KiB
            // queue hold, while the reader's queue has room for a stall of 64 events.
            // (The session learns of the cut only once its pending write completes, so
            // the count is checked after the stuck client read again.)
            read_ticks(&mut reader, &mut last, 3000).await;
            // Still connected: once it reads, it finds the ticks written before the cut,
            // then the close. Bounded: a client that was not cut would read forever.
            let drain = async {
                loop {
                    match stuck.recv().await {
                        Received::Json(message) => {
                            tick_n(&message, "s");
                        }
                        other => break other,
                    }
                }
            };
            let close = tokio::time::timeout(EVENT_TIMEOUT, drain)
                .await
                .expect("the stuck client was cut: its stream ends");
            assert_eq!(
                close,
                Received::Close {
                    code: 1013,
                    reason: "Subscriber too slow".into()
                }
            );
            assert_eq!(gateway.stats.slow_consumers_cut(), 1);
            assert_eq!(gateway.stats.stuck_clients_cut(), 0);
        }
        Cut::WriteTimeout => {
            let cut = async {
                while gateway.stats.stuck_clients_cut() == 0 {
                    read_ticks(&mut reader, &mut last, 1).await;
                }
            };
            tokio::time::timeout(EVENT_TIMEOUT, cut)
                .await
                .expect("the stuck client is cut within the timeout");
            assert_eq!(stuck.drain_to_end().await, Received::Dropped);
            assert_eq!(gateway.stats.slow_consumers_cut(), 0);
        }
    }
    read_ticks(&mut reader, &mut last, 10).await;
    assert_eq!(upstream_starts(&server), 1);
    reader.send(json!({ "type": "complete", "id": "r" })).await;
    server
        .wait_for("the upstream subscription to end", |c| {
            c.subscriptions_active == 0
        })
        .await;
}

#[tokio::test]
async fn a_slow_client_of_a_shared_operation_is_cut_alone_by_the_slow_consumer_policy() {
    a_stuck_client_of_a_shared_operation_is_cut_alone(
        "[server]\nclient_write_timeout_ms = 600000\n[upstreams.up]\nurl = \"http://127.0.0.1:PORT/graphql\"\n\
         protocol = \"graphql-transport-ws\"\nsubscriber_queue = 1000000\nsubscriber_queue_bytes = 262144",
        Cut::SlowConsumer,
    )
    .await;
}

#[tokio::test]
async fn a_stuck_client_of_a_shared_operation_is_cut_alone_by_the_write_timeout() {
    a_stuck_client_of_a_shared_operation_is_cut_alone(
        "[server]\nclient_write_timeout_ms = 300\n[upstreams.up]\nurl = \"http://127.0.0.1:PORT/graphql\"\n\
         protocol = \"graphql-transport-ws\"\nsubscriber_queue = 1000000",
        Cut::WriteTimeout,
    )
    .await;
}

#[tokio::test]
async fn dedup_false_runs_one_upstream_operation_per_client_operation() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, TRANSPORT_WS, "dedup = false").await;
    let mut one = anonymous_client(&gateway).await;
    let mut two = anonymous_client(&gateway).await;
    for client in [&mut one, &mut two] {
        client.send(subscribe("1", TICKING, json!({}))).await;
        let message = client.recv_json().await;
        assert_eq!(message["payload"]["data"]["forever"]["n"], 1, "{message}");
    }
    assert_eq!(
        upstream_starts(&server),
        2,
        "each client's own, from tick 1"
    );
}
