//! Every client library × every upstream protocol: exact events, completion, and no
//! upstream subscription left behind. Each client runs with its library's default options
//! and several operations in sequence, so the graphql-ws client's lazy close and reopen
//! happen between them, and any error a library reports fails the test.

use subplex_tests::*;

const QUERY: &str = "subscription { ticks(count: 3) { n user } }";

/// Operations each client runs one after another.
const SEQUENCE: usize = 3;

async fn matrix_against(kind: Upstream) {
    let server = NodeServer::start(kind).await;
    let gateway = TestGateway::for_upstream(server.port, kind.protocol(), "").await;

    let users: Vec<String> = CLIENT_KINDS.iter().map(|k| format!("user-{k}")).collect();
    let clients = CLIENT_KINDS
        .iter()
        .zip(&users)
        .map(|(k, user)| {
            let mut spec = client(k, &gateway.url(), QUERY, user);
            spec["sequence"] = SEQUENCE.into();
            spec
        })
        .collect();
    let results = run_clients(clients).await;

    for ((client_kind, user), lines) in CLIENT_KINDS.iter().zip(&users).zip(&results) {
        assert_eq!(
            lines,
            &std::iter::repeat_n(expected_tick_lines(user, 3), SEQUENCE)
                .flatten()
                .collect::<Vec<_>>(),
            "{client_kind} client through subplex to {kind:?}"
        );
    }
    server
        .wait_for("every upstream subscription to end", |c| {
            c.subscriptions_active == 0
        })
        .await;
    assert_eq!(
        server.events_named("subscription_start").len(),
        CLIENT_KINDS.len() * SEQUENCE
    );
    // Four users, four security contexts: at most one upstream connection each at a time
    // (a context's connection outlives its operations until the idle timeout).
    assert_eq!(
        server.counters().connections_total,
        CLIENT_KINDS.len() as u64
    );
}

#[tokio::test]
async fn every_client_through_yoga() {
    matrix_against(Upstream::Yoga).await;
}

#[tokio::test]
async fn every_client_through_apollo() {
    matrix_against(Upstream::Apollo).await;
}

#[tokio::test]
async fn every_client_through_legacy_subscriptions_transport_ws() {
    matrix_against(Upstream::Legacy).await;
}

#[tokio::test]
async fn every_client_through_legacy_server_sending_ka_before_ack() {
    matrix_against(Upstream::LegacyKaBeforeAck).await;
}
