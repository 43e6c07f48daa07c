//! Hook scripts (`hooks = "..."` on an upstream): `on_connection_init` rewrites the
//! payload sent upstream, that payload keys the upstream connection, and `throw` refuses
//! the client on every transport. Against the real Yoga fixture, counting its connections.

use serde_json::{json, Value};
use subplex_tests::ws::RawClient;
use subplex_tests::*;

/// The example script the docs point at: the `Authorization` header into
/// `payload.headers.Authorization`.
const HASURA_AUTH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/hooks/hasura-auth.rhai"
);
const DENY_ANONYMOUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/hooks/deny-anonymous.rhai"
);
const DENIED: &str = "Sign in first: subscriptions need an Authorization header";

const TICKS: &str = "subscription { ticks(count: 3, intervalMs: 20) { n user } }";

/// A gateway in front of `server` with `script` as the upstream's hook and neither keyed
/// nor forwarded headers: the identity can reach the upstream only through the hook.
async fn gateway_with_hook(server: &NodeServer, script: &str) -> TestGateway {
    // `dedup = false`: clients of one token run the same finite subscription at once, and
    // each must see all of it (a late joiner of a shared operation would not).
    TestGateway::for_upstream(
        server.port,
        "graphql-transport-ws",
        &format!("security_context = []\nforward_headers = []\nhooks = {script:?}\ndedup = false"),
    )
    .await
}

/// A graphql-ws client that authenticates with a header only (no connectionParams).
fn header_client(url: &str, user: &str) -> Value {
    json!({
        "client": "graphql-ws", "url": url, "query": TICKS,
        "headers": { "authorization": format!("Bearer {user}") },
    })
}

/// Two header-only clients through the example hook: each sees its own user (the
/// upstream got the token only in `payload.headers.Authorization`: nothing is forwarded and
/// the clients send no connectionParams), over `connections` upstream connections.
async fn two_clients_through_the_auth_hook(users: [&str; 2], connections: u64) {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = gateway_with_hook(&server, HASURA_AUTH).await;
    let clients = users
        .iter()
        .map(|user| header_client(&gateway.url(), user))
        .collect();
    let results = run_clients(clients).await;
    for (lines, user) in results.iter().zip(users) {
        assert_eq!(lines, &expected_tick_lines(user, 3), "{user}");
    }
    assert_eq!(server.counters().connections_total, connections);
}

#[tokio::test]
async fn a_hook_derived_payload_separates_tokens_even_with_no_keyed_header() {
    two_clients_through_the_auth_hook(["alice", "bob"], 2).await;
}

#[tokio::test]
async fn the_same_token_through_the_hook_shares_one_connection() {
    two_clients_through_the_auth_hook(["alice", "alice"], 1).await;
}

#[tokio::test]
async fn a_throwing_hook_closes_graphql_transport_ws_clients_4403_with_its_message() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = gateway_with_hook(&server, DENY_ANONYMOUS).await;

    let mut anonymous = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    anonymous
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    assert_eq!(anonymous.expect_close(4403).await, DENIED);

    // A client with a token passes the same hook and reaches the upstream.
    let mut signed_in = RawClient::connect(
        gateway.addr,
        "graphql-transport-ws",
        &[("authorization", "Bearer carol")],
    )
    .await;
    signed_in.init(json!({})).await;
    signed_in
        .send(json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { ticks(count: 1) { n user } }" } }))
        .await;
    assert_eq!(
        signed_in.recv_json().await,
        json!({ "id": "1", "type": "next", "payload": { "data": { "ticks": { "n": 1, "user": "anonymous" } } } }),
        "the deny hook passes the payload through unchanged; nothing is forwarded"
    );
    assert_eq!(
        signed_in.recv_json().await,
        json!({ "id": "1", "type": "complete" })
    );
    assert_eq!(
        server.counters().connections_total,
        1,
        "the refused client never caused an upstream connection"
    );
}

#[tokio::test]
async fn a_throwing_hook_answers_legacy_clients_with_connection_error_then_close() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = gateway_with_hook(&server, DENY_ANONYMOUS).await;

    let mut anonymous = RawClient::connect(gateway.addr, "graphql-ws", &[]).await;
    anonymous
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    assert_eq!(
        anonymous.recv_json().await,
        json!({ "type": "connection_error", "payload": { "message": DENIED } })
    );
    anonymous.expect_close(1011).await;
    assert_eq!(server.counters().connections_total, 0);
}

#[tokio::test]
async fn a_throwing_hook_answers_sse_multipart_and_single_connection_clients_403() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = gateway_with_hook(&server, DENY_ANONYMOUS).await;
    let http = reqwest::Client::new();
    let body = json!({ "query": TICKS }).to_string();
    for accept in [
        "text/event-stream",
        "multipart/mixed; subscriptionSpec=\"1.0\"",
    ] {
        let response = tokio::time::timeout(
            EVENT_TIMEOUT,
            http.post(gateway.url())
                .header("accept", accept)
                .header("content-type", "application/json")
                .body(body.clone())
                .send(),
        )
        .await
        .expect("answered within the timeout")
        .unwrap();
        assert_eq!(response.status(), 403, "{accept}");
        let errors: Value = response.json().await.unwrap();
        assert_eq!(
            errors,
            json!({ "errors": [{ "message": DENIED, "extensions": { "code": "FORBIDDEN" } }] }),
            "{accept}"
        );
    }
    // graphql-sse single connection mode: the reservation is already refused.
    let response = tokio::time::timeout(
        EVENT_TIMEOUT,
        http.put(gateway.url())
            .header("accept", "text/plain")
            .send(),
    )
    .await
    .expect("answered within the timeout")
    .unwrap();
    assert_eq!(response.status(), 403);
    let errors: Value = response.json().await.unwrap();
    assert_eq!(errors["errors"][0]["message"], DENIED);
    assert_eq!(server.counters().connections_total, 0);
}
