//! What operators see: `/healthz`, `/readyz` through a shutdown, and `/metrics` equal to
//! what a scripted scenario did.

use serde_json::{json, Value};
use subplex_tests::fake_upstream::FakeUpstream;
use subplex_tests::http::{read_until, urlencode};
use subplex_tests::ws::{RawClient, Received};
use subplex_tests::*;

/// A GET on the gateway, bounded.
async fn fetch(gateway: std::net::SocketAddr, path: &str) -> reqwest::Response {
    tokio::time::timeout(
        EVENT_TIMEOUT,
        reqwest::get(format!("http://{gateway}{path}")),
    )
    .await
    .expect("the gateway answers in time")
    .unwrap()
}

/// Status and body of a GET on the gateway.
async fn get(gateway: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = fetch(gateway, path).await;
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

/// The metric lines without those that depend on timing: events and their latency, which
/// the scenario below lets flow at their own pace.
fn untimed(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|line| {
            !line.starts_with("subplex_events_total")
                && !line.starts_with("subplex_upstream_to_client_latency_seconds")
        })
        .collect()
}

/// The exact metric lines (but [`untimed`]) for these client connections, by transport
/// (graphql-transport-ws, graphql-ws, sse, sse-single-connection, multipart), operations on
/// `demo`, and upstream connections to it.
fn expected(clients: [u32; 5], operations: u32, upstream_connections: u32) -> Vec<String> {
    let [transport_ws, legacy_ws, sse, sse_single, multipart] = clients;
    let mut lines = vec![
        "subplex_client_cuts_total{reason=\"limit\"} 0".to_owned(),
        "subplex_client_cuts_total{reason=\"slow_consumer\"} 0".to_owned(),
        "subplex_client_cuts_total{reason=\"write_timeout\"} 0".to_owned(),
        "subplex_hook_errors_total{upstream=\"demo\"} 0".to_owned(),
        "subplex_upstream_reconnects_total{upstream=\"demo\"} 0".to_owned(),
        format!("subplex_client_connections{{transport=\"graphql-transport-ws\"}} {transport_ws}"),
        format!("subplex_client_connections{{transport=\"graphql-ws\"}} {legacy_ws}"),
        format!("subplex_client_connections{{transport=\"multipart\"}} {multipart}"),
        format!("subplex_client_connections{{transport=\"sse\"}} {sse}"),
        format!("subplex_client_connections{{transport=\"sse-single-connection\"}} {sse_single}"),
        format!("subplex_operations_active{{upstream=\"demo\"}} {operations}"),
        format!(
            "subplex_upstream_connections{{upstream=\"demo\",protocol=\"graphql-transport-ws\"}} {upstream_connections}"
        ),
    ];
    lines.sort();
    lines
}

/// Two graphql-transport-ws clients, one legacy graphql-ws client, one SSE stream, one SSE
/// single-connection stream and one multipart stream, all anonymous (one security
/// context): the gauges say 2, 1, 1, 1 and 1, six operations on `demo`, one upstream
/// connection; once the clients leave, every
/// client and operation gauge is back to 0.
#[tokio::test]
async fn metrics_equal_what_the_scenario_did() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let addr = gateway.addr;
    let tick = "subscription { tick(count: 100000, intervalMs: 20) }";
    let mut ws_clients = Vec::new();
    for _ in 0..2 {
        let mut client = RawClient::connect(addr, "graphql-transport-ws", &[]).await;
        client.init(json!({})).await;
        client
            .send(json!({ "type": "subscribe", "id": "1", "payload": { "query": tick } }))
            .await;
        assert_eq!(client.recv_json().await["type"], "next");
        ws_clients.push(client);
    }
    let mut legacy = RawClient::connect(addr, "graphql-ws", &[]).await;
    legacy
        .send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    legacy
        .send(json!({ "type": "start", "id": "1", "payload": { "query": tick } }))
        .await;
    assert_eq!(legacy.recv_json_skip_ka().await["type"], "connection_ack");
    assert_eq!(legacy.recv_json_skip_ka().await["type"], "data");
    ws_clients.push(legacy);

    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}?query={}", gateway.url(), urlencode(tick)))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut sse = response.bytes_stream();
    read_until(&mut sse, |text| text.contains("event: next")).await;
    // Single connection mode: reserve a stream, open it, then run one operation on it.
    let token = http.put(gateway.url()).send().await.unwrap();
    assert_eq!(token.status(), 201);
    let token = token.text().await.unwrap();
    let response = http
        .get(gateway.url())
        .header("accept", "text/event-stream")
        .header("x-graphql-event-stream-token", &token)
        .send()
        .await
        .unwrap();
    let mut sse_single = response.bytes_stream();
    let accepted = http
        .post(gateway.url())
        .header("x-graphql-event-stream-token", &token)
        .json(&json!({ "query": tick, "extensions": { "operationId": "1" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    read_until(&mut sse_single, |text| text.contains("event: next")).await;
    let response = http
        .post(gateway.url())
        .header("accept", "multipart/mixed;subscriptionSpec=1.0")
        .json(&json!({ "query": tick }))
        .send()
        .await
        .unwrap();
    let mut multipart = response.bytes_stream();
    read_until(&mut multipart, |text| text.contains("\"tick\":1")).await;

    // Each gauge moved before the client saw its first event: no wait is needed.
    assert_eq!(
        untimed(metric_lines(addr).await),
        expected([2, 1, 1, 1, 1], 6, 1)
    );

    drop(ws_clients);
    drop(sse);
    drop(sse_single);
    drop(multipart);
    // The gateway sees the clients leave on its own tasks: poll, bounded.
    let mut lines = Vec::new();
    let settled = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            lines = untimed(metric_lines(addr).await);
            if lines == expected([0, 0, 0, 0, 0], 0, 1) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "metrics did not settle:\n{}",
        lines.join("\n")
    );
}

/// The latency histogram's lines for `upstream`, checked for shape (cumulative buckets,
/// `+Inf` equal to the count) and then replaced by its count alone, which is exact.
fn histogram_as_count(lines: Vec<String>, upstream: &str) -> Vec<String> {
    let prefix = "subplex_upstream_to_client_latency_seconds";
    let value = |line: &str| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    let buckets: Vec<f64> = lines
        .iter()
        .filter(|line| {
            line.starts_with(&format!("{prefix}_bucket{{"))
                && line.contains(&format!("upstream=\"{upstream}\""))
        })
        .map(|line| value(line))
        .collect();
    let count_line = format!("{prefix}_count{{upstream=\"{upstream}\"}}");
    let count = lines
        .iter()
        .find(|line| line.starts_with(&count_line))
        .map(|line| value(line))
        .expect("a histogram count");
    // 14 bounds and +Inf.
    assert_eq!(buckets.len(), 15, "{lines:#?}");
    let inf = lines
        .iter()
        .find(|line| line.contains("le=\"+Inf\""))
        .map(|line| value(line))
        .unwrap();
    assert_eq!(inf, count);
    assert!(buckets.iter().all(|&b| b <= count));
    lines
        .into_iter()
        .filter(|line| !line.starts_with(prefix) || line.starts_with(&count_line))
        .collect()
}

/// Sends `next` events numbered `numbers` for upstream id `id`, each received by `client`.
async fn relay(
    upstream: &mut subplex_tests::fake_upstream::FakeConnection,
    id: &Value,
    client: &mut RawClient,
    numbers: std::ops::Range<u64>,
) {
    for n in numbers {
        upstream
            .send(json!({ "type": "next", "id": id, "payload": { "data": { "a": n } } }))
            .await;
        assert_eq!(client.recv_json().await["payload"]["data"]["a"], n);
    }
}

/// A hook script that fails (an index out of bounds, not a `throw`) for clients whose
/// payload says `fail`, and passes every other payload through.
const FAILING_HOOK: &str = "fn on_connection_init(ctx, payload) {\n    if payload.fail == true {\n        let none = [];\n        return none[1];\n    }\n    payload\n}\n";

/// A scripted scenario against a scripted upstream, and `/metrics` saying exactly what it
/// did: 3 events, an upstream restart (one reconnect, the operation resubscribed), 2 events
/// and `complete` (6 in, 6 out, 6 latencies), a client closed 1009 for an oversized
/// message (one `limit` cut), and a client whose hook fails (one hook error, 4500).
#[tokio::test]
async fn counters_equal_what_a_scripted_scenario_did() {
    let mut fake = FakeUpstream::start("graphql-transport-ws").await;
    let hook = std::env::temp_dir().join(format!("subplex-metrics-{}.rhai", std::process::id()));
    std::fs::write(&hook, FAILING_HOOK).unwrap();
    let gateway = TestGateway::start(&format!(
        "[server]\nmax_message_bytes = 1024\n\
         [upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\nprotocol = \"graphql-transport-ws\"\n\
         hooks = {:?}\n[upstreams.up.reconnect]\ninitial_ms = 20\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        fake.addr.port(),
        hook.display().to_string(),
    ))
    .await;
    let addr = gateway.addr;
    let mut client = RawClient::connect(addr, "graphql-transport-ws", &[]).await;
    client.init(json!({})).await;
    client
        .send(
            json!({ "type": "subscribe", "id": "1", "payload": { "query": "subscription { a }" } }),
        )
        .await;
    let mut upstream = fake.accept().await;
    upstream.handshake().await;
    let id = upstream.recv_json().await["id"].clone();
    relay(&mut upstream, &id, &mut client, 0..3).await;
    // A restart: the gateway dials again and resubscribes; the client sees nothing of it.
    upstream.close(1012, "restarting").await;
    let mut upstream = fake.accept().await;
    upstream.handshake().await;
    let id = upstream.recv_json().await["id"].clone();
    relay(&mut upstream, &id, &mut client, 3..5).await;
    upstream.send(json!({ "type": "complete", "id": id })).await;
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "complete", "id": "1" })
    );

    let mut oversized = RawClient::connect(addr, "graphql-transport-ws", &[]).await;
    oversized
        .send(json!({ "type": "connection_init", "payload": { "pad": "x".repeat(2048) } }))
        .await;
    oversized.expect_close(1009).await;
    let mut failing = RawClient::connect(addr, "graphql-transport-ws", &[]).await;
    failing
        .send(json!({ "type": "connection_init", "payload": { "fail": true } }))
        .await;
    failing.expect_close(4500).await;
    drop((oversized, failing));
    std::fs::remove_file(&hook).unwrap();

    // Every count moved before the client saw its effect, but the two closed clients leave
    // on the gateway's own tasks: poll, bounded.
    let mut expected = vec![
        "subplex_client_connections{transport=\"graphql-transport-ws\"} 1",
        "subplex_client_connections{transport=\"graphql-ws\"} 0",
        "subplex_client_connections{transport=\"multipart\"} 0",
        "subplex_client_connections{transport=\"sse\"} 0",
        "subplex_client_connections{transport=\"sse-single-connection\"} 0",
        "subplex_client_cuts_total{reason=\"limit\"} 1",
        "subplex_client_cuts_total{reason=\"slow_consumer\"} 0",
        "subplex_client_cuts_total{reason=\"write_timeout\"} 0",
        "subplex_events_total{upstream=\"up\",direction=\"in\"} 6",
        "subplex_events_total{upstream=\"up\",direction=\"out\"} 6",
        "subplex_hook_errors_total{upstream=\"up\"} 1",
        "subplex_operations_active{upstream=\"up\"} 0",
        "subplex_upstream_connections{upstream=\"up\",protocol=\"graphql-transport-ws\"} 1",
        "subplex_upstream_reconnects_total{upstream=\"up\"} 1",
        "subplex_upstream_to_client_latency_seconds_count{upstream=\"up\"} 6",
    ];
    expected.sort();
    let mut lines = Vec::new();
    let settled = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            lines = histogram_as_count(metric_lines(addr).await, "up");
            if lines == expected {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "metrics:\n{}", lines.join("\n"));
}

/// The status page, on the admin listener only, in Chromium: the upstream's probed
/// protocol and evidence, its two security contexts (8 hex digits each, as
/// `/status.json` names them) with one connection each, two live operations, events per
/// second while ticks flow, and the client and cut counts. The screenshot it saves is the
/// one in docs/observability.md.
#[tokio::test]
async fn status_page_shows_live_values_in_chromium() {
    let demo = DemoServer::start().await;
    let gateway = TestGateway::start(&format!(
        "[admin]\nenabled = true\n[upstreams.demo]\nurl = \"http://127.0.0.1:{}/graphql\"\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"demo\"\n",
        demo.port
    ))
    .await;
    let admin = gateway.admin_addr.expect("the admin listener is on");
    assert_eq!(get(gateway.addr, "/status").await.0, 404);
    let refused = reqwest::Client::new()
        .post(format!("http://{admin}/status.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 405);

    let mut clients = Vec::new();
    for user in ["alice", "bob"] {
        let bearer = format!("Bearer {user}");
        let mut client = RawClient::connect(
            gateway.addr,
            "graphql-transport-ws",
            &[("authorization", &bearer)],
        )
        .await;
        client.init(json!({})).await;
        client
            .send(json!({ "type": "subscribe", "id": "1", "payload": {
                "query": "subscription { tick(count: 100000, intervalMs: 20) }" } }))
            .await;
        assert_eq!(client.recv_json().await["type"], "next");
        clients.push(client);
    }
    let (status, body) = get(admin, "/status.json").await;
    assert_eq!(status, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    let mut contexts: Vec<String> = status["upstreams"][0]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|connection| {
            assert_eq!(connection["open"], 1);
            connection["context"].as_str().unwrap().to_owned()
        })
        .collect();
    contexts.sort();
    assert_eq!(contexts.len(), 2);
    for context in &contexts {
        assert!(
            context.len() == 8 && context.chars().all(|c| c.is_ascii_hexdigit()),
            "{context}"
        );
    }

    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let fields = subplex_tests::browser::read_status_page(
        &format!("http://{admin}/status?every=300"),
        &screenshot,
    )
    .await;
    assert_eq!(fields["ready"], "ready", "{fields:#}");
    assert_eq!(fields["upstream.demo.protocol"], "graphql-transport-ws");
    let evidence = fields["upstream.demo.evidence"].as_str().unwrap();
    assert!(
        evidence.starts_with("probed: ") && evidence.contains("graphql-transport-ws"),
        "{evidence}"
    );
    assert_eq!(fields["upstream.demo.operations"], "2");
    assert_eq!(
        fields["upstream.demo.connections"],
        format!("{} 1 open{} 1 open", contexts[0], contexts[1])
    );
    // Two clients at 50 ticks per second each: about 100 events per second each way.
    for direction in ["in", "out"] {
        let rate: f64 = fields[format!("upstream.demo.rate_{direction}")]
            .as_str()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("a rate: {fields:#}"));
        assert!(rate > 10.0, "events/s {direction}: {rate}");
    }
    assert_eq!(fields["clients.graphql-transport-ws"], "2");
    assert_eq!(fields["clients.sse"], "0");
    for reason in ["slow_consumer", "write_timeout", "limit"] {
        assert_eq!(fields[format!("cuts.{reason}")], "0");
    }
    assert_eq!(fields["upstream.demo.reconnects"], "0");
    assert_eq!(fields["upstream.demo.hook_errors"], "0");
    drop(clients);
}
