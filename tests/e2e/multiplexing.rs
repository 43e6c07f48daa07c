//! Upstream connections are shared within a security context and never across contexts.

use subplex_tests::*;

const FOREVER: &str = "subscription { forever(intervalMs: 100) { n user } }";

#[tokio::test]
async fn fifty_clients_with_one_authorization_share_one_upstream_connection() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway =
        TestGateway::for_upstream(server.port, "graphql-transport-ws", "idle_timeout_ms = 300")
            .await;

    let clients = (0..50)
        .map(|_| client("graphql-ws", &gateway.url(), FOREVER, "alice"))
        .collect();
    let held = HeldClients::subscribe(clients).await;
    // Every client has its first event, so all 50 run; being identical, they are one
    // upstream subscription (deduplication), on one connection.
    let counters = server.counters();
    assert_eq!(counters.subscriptions_active, 1);
    assert_eq!(server.events_named("subscription_start").len(), 1);
    assert_eq!(
        counters.connections_total, 1,
        "one upstream connection for one context"
    );

    let lines = held.stop().await;
    for client_lines in &lines {
        for payload in nexts(client_lines) {
            assert_eq!(payload["data"]["forever"]["user"], "alice");
        }
    }
    server
        .wait_for("the idle connection to close", |c| c.connections_open == 0)
        .await;
    // From the fixture's own event log: the last subscription ended while the connection
    // was still open, and only then (after idle_timeout_ms) did the connection close.
    let events = server.events();
    let last_end = events
        .iter()
        .rposition(|e| e["event"] == "subscription_end")
        .expect("subscriptions ended");
    assert_eq!(events[last_end]["subscriptionsActive"], 0);
    assert_eq!(
        events[last_end]["connectionsOpen"], 1,
        "the idle connection outlives its subscriptions"
    );
    let close = events
        .iter()
        .position(|e| e["event"] == "connection_close")
        .expect("the idle connection closed");
    assert!(close > last_end);
    assert_eq!(server.counters().connections_total, 1);
}

#[tokio::test]
async fn different_authorizations_never_share_and_see_only_their_own_data() {
    let server = NodeServer::start(Upstream::Yoga).await;
    // `dedup = false`: each client must see all three ticks, which a late joiner of a
    // shared operation would not (deduplication is tested in `dedup`).
    let gateway =
        TestGateway::for_upstream(server.port, "graphql-transport-ws", "dedup = false").await;

    let query = "subscription { ticks(count: 3, intervalMs: 20) { n user } }";
    let users = ["alice", "bob"];
    let clients = (0..20)
        .map(|i| client("graphql-ws", &gateway.url(), query, users[i % 2]))
        .collect();
    let results = run_clients(clients).await;
    for (i, lines) in results.iter().enumerate() {
        assert_eq!(lines, &expected_tick_lines(users[i % 2], 3), "client {i}");
    }
    assert_eq!(
        server.counters().connections_total,
        2,
        "one upstream connection per context"
    );
}

#[tokio::test]
async fn forwarded_header_is_part_of_the_security_context() {
    // SSE clients authenticate with a header that is forwarded to the upstream handshake:
    // two users behind the same (empty) init payload must still get separate connections.
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(
        server.port,
        "graphql-transport-ws",
        "security_context = []\nforward_headers = [\"authorization\"]",
    )
    .await;
    let query = "subscription { ticks(count: 2) { n user } }";
    let clients = vec![
        client("graphql-sse", &gateway.url(), query, "carol"),
        client("graphql-sse", &gateway.url(), query, "dave"),
    ];
    let results = run_clients(clients).await;
    assert_eq!(results[0], expected_tick_lines("carol", 2));
    assert_eq!(results[1], expected_tick_lines("dave", 2));
    assert_eq!(server.counters().connections_total, 2);
}
