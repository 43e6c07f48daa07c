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
    "/../examples/hooks/auth-header-to-init.rhai"
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

/// A script written for one test, in its own directory (removed on drop).
struct ScriptFile {
    dir: std::path::PathBuf,
}

impl ScriptFile {
    fn new(name: &str, source: &str) -> ScriptFile {
        let dir = std::env::temp_dir().join(format!("subplex-hooks-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hooks.rhai"), source).unwrap();
        ScriptFile { dir }
    }

    fn path(&self) -> String {
        self.dir.join("hooks.rhai").display().to_string()
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A gateway in front of `server` whose upstream runs `script` with `[hooks]` keys
/// `limits`; also returns the compiled script, to read its call counts.
async fn gateway_with_script(
    server: &NodeServer,
    script: &ScriptFile,
    limits: &str,
) -> (TestGateway, std::sync::Arc<subplex_hooks::HookScript>) {
    let text = format!(
        "[hooks]\n{limits}\n[upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\nprotocol = \"graphql-transport-ws\"\nhooks = {:?}\n[[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        server.port,
        script.path()
    );
    let config = subplex::Config::parse(&text, "test.toml").expect("valid");
    let hooks = config.routes[0]
        .hooks
        .clone()
        .expect("the route has the script");
    (TestGateway::start_config(config).await, hooks)
}

const BOOKKEEPING: &str = r#"
fn on_subscribe(ctx, request) {
    if ctx.operation_name == "Refused" { throw "refused by name"; }
    // A cap the upstream sees: no client gets more than three ticks.
    if type_of(request.variables) == "map" && request.variables.count > 3 {
        request.variables.count = 3;
    }
    request
}
fn on_next(ctx, payload) { payload }
fn on_complete(ctx) { }
"#;

#[tokio::test]
async fn on_complete_runs_once_per_operation_on_every_ending_path() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let script = ScriptFile::new("bookkeeping", BOOKKEEPING);
    let (gateway, hooks) = gateway_with_script(&server, &script, "").await;
    let mut client = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    client.init(json!({})).await;
    let subscribe =
        |id: &str, payload: Value| json!({ "id": id, "type": "subscribe", "payload": payload });

    // 1. The upstream completes; on_subscribe capped the count it asked for.
    client
        .send(subscribe(
            "1",
            json!({ "query": "subscription Ticks($count: Int!) { ticks(count: $count, intervalMs: 5) { n } }",
                    "variables": { "count": 10 } }),
        ))
        .await;
    for n in 1..=3 {
        assert_eq!(
            client.recv_json().await,
            json!({ "id": "1", "type": "next", "payload": { "data": { "ticks": { "n": n } } } })
        );
    }
    assert_eq!(
        client.recv_json().await,
        json!({ "id": "1", "type": "complete" })
    );
    assert_eq!(
        server.events_named("subscribe")[0]["variables"],
        json!({ "count": 3 })
    );
    assert_eq!(
        hooks.calls().complete,
        1,
        "before the client saw `complete`"
    );

    // 2. The client completes a running operation: on_complete runs before the upstream
    // subscription is dropped, so it has run once the upstream saw the end.
    let forever = json!({ "query": "subscription { forever(intervalMs: 10) { n } }" });
    client.send(subscribe("2", forever.clone())).await;
    assert_eq!(client.recv_json().await["id"], "2");
    client.send(json!({ "id": "2", "type": "complete" })).await;
    server.wait_for_events("subscription_end", 2).await;
    assert_eq!(hooks.calls().complete, 2);

    // 3. on_subscribe refuses: the operation never starts upstream, and still completes.
    client
        .send(subscribe(
            "3",
            json!({ "query": "subscription Refused { ticks(count: 1) { n } }", "operationName": "Refused" }),
        ))
        .await;
    // Results of operation 2 the gateway wrote before it read the client's `complete`
    // may still be on the wire (its stream ticks every 10 ms): only those may come first.
    let refusal = loop {
        let message = client.recv_json().await;
        if message["id"] == "2" && message["type"] == "next" {
            continue;
        }
        break message;
    };
    assert_eq!(
        refusal,
        json!({ "id": "3", "type": "error", "payload": [{ "message": "refused by name", "extensions": { "code": "FORBIDDEN" } }] })
    );
    assert_eq!(hooks.calls().complete, 3);

    // 4. The upstream fails the operation.
    client
        .send(subscribe(
            "4",
            json!({ "query": "subscription { failing { n } }" }),
        ))
        .await;
    // (graphql-ws delivers a throwing `subscribe` as a result with `errors`, then
    // `complete`.)
    let failed = client.recv_json().await;
    assert_eq!(
        failed["payload"]["errors"][0]["message"], "failing on purpose",
        "{failed}"
    );
    assert_eq!(
        client.recv_json().await,
        json!({ "id": "4", "type": "complete" })
    );
    assert_eq!(hooks.calls().complete, 4);

    // 5. The client goes away mid-operation.
    client.send(subscribe("5", forever.clone())).await;
    assert_eq!(client.recv_json().await["id"], "5");
    drop(client);
    server.wait_for_events("subscription_end", 3).await;
    assert_eq!(hooks.calls().complete, 5);

    // 6. An SSE client goes away mid-operation.
    let response = reqwest::Client::new()
        .post(gateway.url())
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(forever.to_string())
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    subplex_tests::http::read_until(&mut body, |text| text.contains("event: next")).await;
    drop(body);
    server.wait_for_events("subscription_end", 4).await;
    assert_eq!(hooks.calls().complete, 6);
    assert_eq!(hooks.calls().subscribe, 6, "one on_subscribe per operation");
    assert_eq!(
        server.events_named("subscribe").len(),
        5,
        "the refused one never went upstream"
    );
}

#[tokio::test]
async fn a_limit_hit_in_on_next_ends_only_that_operation() {
    let server = NodeServer::start(Upstream::Yoga).await;
    // Work proportional to a variable: one operation stays within the configured
    // operation limit, the other does not.
    let script = ScriptFile::new(
        "limits",
        "fn on_next(ctx, payload) {\n    for i in 0..ctx.variables.work { }\n    payload\n}\n",
    );
    let (gateway, hooks) = gateway_with_script(&server, &script, "max_operations = 1000").await;
    let mut client = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    client.init(json!({})).await;
    let query = "subscription { ticks(count: 3, intervalMs: 20) { n } }";
    for (id, work) in [("light", 10), ("heavy", 100_000)] {
        client
            .send(json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": { "work": work } } }))
            .await;
    }
    let mut light = Vec::new();
    let mut heavy = Vec::new();
    while !(light
        .last()
        .is_some_and(|m: &Value| m["type"] == "complete")
        && heavy.last().is_some_and(|m: &Value| m["type"] == "error"))
    {
        let message = client.recv_json().await;
        match message["id"].as_str() {
            Some("light") => light.push(message),
            Some("heavy") => heavy.push(message),
            other => panic!("unexpected message for {other:?}: {message}"),
        }
    }
    assert_eq!(
        heavy,
        [
            json!({ "id": "heavy", "type": "error", "payload": [{ "message": "the operation's hook failed", "extensions": { "code": "INTERNAL_SERVER_ERROR" } }] })
        ]
    );
    let ticks: Vec<Value> = (1..=3)
        .map(|n| json!({ "id": "light", "type": "next", "payload": { "data": { "ticks": { "n": n } } } }))
        .chain([json!({ "id": "light", "type": "complete" })])
        .collect();
    assert_eq!(light, ticks);
    // The connection and the gateway carry on.
    client
        .send(json!({ "id": "again", "type": "subscribe", "payload": { "query": query, "variables": { "work": 1 } } }))
        .await;
    assert_eq!(client.recv_json().await["type"], "next");
    assert!(hooks.calls().next >= 5);
}
