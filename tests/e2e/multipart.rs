//! Apollo multipart HTTP subscriptions: raw HTTP for exact bytes, heartbeats, failures and
//! disconnects, and Apollo Client's own `HttpLink`.

use reqwest::{Client, Response};
use serde_json::{json, Value};
use subplex_tests::http::{
    expected_step_lines, read_until, run_http_client, urlencode, yoga_behind_gateway,
};
use subplex_tests::*;

/// What Apollo Client 4's `HttpLink` sends for a subscription.
const APOLLO_ACCEPT: &str = "multipart/mixed;boundary=graphql;subscriptionSpec=1.0,application/graphql-response+json,application/json;q=0.9";
const CONTENT_TYPE: &str = "multipart/mixed;boundary=\"graphql\";subscriptionSpec=1.0";
const OPENING: &str = "\r\n--graphql\r\ncontent-type: application/json\r\n\r\n{}\r\n--graphql";
const END: &str = "--graphql--\r\n";

async fn post(http: &Client, url: &str, accept: &str, body: Value) -> Response {
    http.post(url)
        .header("accept", accept)
        .header("content-type", "application/json")
        .header("authorization", "Bearer alice")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn part(json: &str) -> String {
    format!("\r\ncontent-type: application/json\r\n\r\n{json}\r\n--graphql")
}

async fn body_text(response: Response) -> String {
    tokio::time::timeout(EVENT_TIMEOUT, response.text())
        .await
        .expect("the body ends")
        .expect("body")
}

#[tokio::test]
async fn a_subscription_body_is_exact_for_every_accept_form() {
    // No heartbeat between the parts, however slow the machine.
    let (gateway, _demo) =
        gateway_with_demo("[server.multipart]\nheartbeat_interval_ms = 86400000").await;
    let http = Client::new();
    let ticks = json!({ "query": "subscription { tick(count: 2, intervalMs: 5) }" });
    for accept in [
        APOLLO_ACCEPT,
        "multipart/mixed;subscriptionSpec=\"1.0\", application/json",
        "multipart/mixed;boundary=\"graphql\";subscriptionSpec=1.0,application/json",
        "multipart/mixed; boundary=\"graphql\"; subscriptionSpec=1.0",
        "multipart/mixed;subscriptionSpec=1.0",
    ] {
        let response = post(&http, &gateway.url(), accept, ticks.clone()).await;
        assert_eq!(response.status(), 200, "{accept}");
        assert_eq!(response.headers()["content-type"], CONTENT_TYPE, "{accept}");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        assert_eq!(
            body_text(response).await,
            format!(
                "{OPENING}{}{}--\r\n",
                part(r#"{"payload":{"data":{"tick":1}}}"#),
                part(r#"{"payload":{"data":{"tick":2}}}"#),
            ),
            "{accept}"
        );
    }
}

#[tokio::test]
async fn heartbeats_fill_idle_time() {
    let (gateway, _demo) =
        gateway_with_demo("[server.multipart]\nheartbeat_interval_ms = 20").await;
    let http = Client::new();
    let response = post(
        &http,
        &gateway.url(),
        APOLLO_ACCEPT,
        json!({ "query": "subscription { tick(count: 1, intervalMs: 60000) }" }),
    )
    .await;
    let mut chunks = response.bytes_stream();
    // The demo's first tick is a minute away: heartbeats only, the first one at once.
    let heartbeat = part("{}");
    let text = read_until(&mut chunks, |t| t.matches(&heartbeat).count() >= 4).await;
    let count = text.matches(&heartbeat).count();
    assert_eq!(
        text,
        format!("\r\n--graphql{}", heartbeat.repeat(count)),
        "only heartbeat parts while idle"
    );
}

#[tokio::test]
async fn an_upstream_failure_is_a_transport_error_then_the_end() {
    let mut server = NodeServer::start(Upstream::Yoga).await;
    // A short give-up window: within it the gateway would reconnect, unseen by the client.
    let gateway = TestGateway::for_upstream(
        server.port,
        "graphql-transport-ws",
        "[upstreams.up.reconnect]\ngive_up_after_ms = 300",
    )
    .await;
    let http = Client::new();
    let response = post(
        &http,
        &gateway.url(),
        APOLLO_ACCEPT,
        json!({ "query": "subscription { forever(intervalMs: 20) { n } }" }),
    )
    .await;
    let mut chunks = response.bytes_stream();
    read_until(&mut chunks, |t| {
        t.contains(r#"{"payload":{"data":{"forever":{"n":1}}}}"#)
    })
    .await;
    server.kill().await;
    let text = read_until(&mut chunks, |t| t.ends_with(END)).await;
    let last = text
        .rsplit("\r\ncontent-type: application/json\r\n\r\n")
        .next()
        .unwrap()
        .strip_suffix(&format!("\r\n{END}"))
        .unwrap_or_else(|| panic!("{text:?}"));
    let last: Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["payload"], Value::Null, "{last}");
    assert_eq!(
        last["errors"][0]["extensions"]["code"], "UPSTREAM_UNAVAILABLE",
        "{last}"
    );
    assert!(
        last["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("gave up reconnecting to upstream \"up\""),
        "{last}"
    );
    assert!(
        tokio::time::timeout(EVENT_TIMEOUT, futures_util::StreamExt::next(&mut chunks))
            .await
            .unwrap()
            .is_none(),
        "the body ends after the transport error"
    );
}

#[tokio::test]
async fn a_client_disconnect_stops_the_upstream_operation() {
    let (server, gateway) = yoga_behind_gateway().await;
    let http = Client::new();
    let response = post(
        &http,
        &gateway.url(),
        APOLLO_ACCEPT,
        json!({ "query": "subscription { forever(intervalMs: 20) { n user } }" }),
    )
    .await;
    let mut chunks = response.bytes_stream();
    let text = read_until(&mut chunks, |t| t.contains("\"n\":2")).await;
    assert!(text.contains(r#"{"payload":{"data":{"forever":{"n":1,"user":"alice"}}}}"#));
    server
        .wait_for("one subscription", |c| c.subscriptions_active == 1)
        .await;
    drop(chunks);
    server
        .wait_for("no subscription", |c| c.subscriptions_active == 0)
        .await;
}

#[tokio::test]
async fn queries_and_mutations_answer_as_apollo_router_does() {
    let (_server, gateway) = yoga_behind_gateway().await;
    let http = Client::new();
    let url = gateway.url();
    let mutation = json!({ "query": "mutation { echo(message: \"hi\") }" });

    // The client takes JSON too: plain JSON, forwarded over HTTP.
    let response = post(&http, &url, APOLLO_ACCEPT, json!({ "query": "{ whoami }" })).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application"));
    assert_eq!(
        serde_json::from_str::<Value>(&body_text(response).await).unwrap(),
        json!({ "data": { "whoami": "alice" } })
    );
    let response = post(&http, &url, APOLLO_ACCEPT, mutation.clone()).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body_text(response).await).unwrap(),
        json!({ "data": { "echo": "hi" } })
    );

    // Multipart only: one part, then the end.
    let only = "multipart/mixed;subscriptionSpec=1.0";
    let response = post(&http, &url, only, json!({ "query": "{ whoami }" })).await;
    assert_eq!(response.headers()["content-type"], CONTENT_TYPE);
    assert_eq!(
        body_text(response).await,
        format!(
            "{OPENING}{}--\r\n",
            part(r#"{"payload":{"data":{"whoami":"alice"}}}"#)
        )
    );
    let response = post(&http, &url, only, mutation).await;
    assert_eq!(
        body_text(response).await,
        format!(
            "{OPENING}{}--\r\n",
            part(r#"{"payload":{"data":{"echo":"hi"}}}"#)
        )
    );

    // GET works for subscriptions; a mutation over GET is refused.
    let get = |query: &str| {
        http.get(format!("{url}?query={}", urlencode(query)))
            .header("accept", only)
            .send()
    };
    let response = get("subscription { ticks(count: 1) { n } }").await.unwrap();
    assert_eq!(
        body_text(response).await,
        format!(
            "{OPENING}{}--\r\n",
            part(r#"{"payload":{"data":{"ticks":{"n":1}}}}"#)
        )
    );
    let response = get("mutation { echo(message: \"x\") }").await.unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn operation_errors_stay_inside_the_payload() {
    let (_server, gateway) = yoga_behind_gateway().await;
    let response = post(
        &Client::new(),
        &gateway.url(),
        APOLLO_ACCEPT,
        json!({ "query": "subscription { failing { n } }" }),
    )
    .await;
    let text = body_text(response).await;
    let body = text
        .strip_prefix(&format!(
            "{OPENING}\r\ncontent-type: application/json\r\n\r\n"
        ))
        .and_then(|t| t.strip_suffix(&format!("\r\n{END}")))
        .unwrap_or_else(|| panic!("{text:?}"));
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        body["payload"]["errors"][0]["message"], "failing on purpose",
        "{body}"
    );
}

#[tokio::test]
async fn apollo_client_http_link_runs_operations_in_sequence() {
    let (server, gateway) = yoga_behind_gateway().await;
    let ticks = "subscription { ticks(count: 3, intervalMs: 5) { n user } }";
    let lines = run_http_client(json!({
        "client": "apollo-http-link",
        "url": gateway.url(),
        "headers": { "authorization": "Bearer alice" },
        "steps": [
            { "query": ticks },
            { "query": "query { whoami }", "kind": "query" },
            { "query": "mutation { echo(message: \"hi\") }", "kind": "mutation" },
            { "query": "subscription { forever(intervalMs: 10) { n } }", "take": 2 },
            { "query": ticks },
        ],
    }))
    .await;
    let tick =
        |n: u64| json!({ "data": { "ticks": { "__typename": "Tick", "n": n, "user": "alice" } } });
    let forever = |n: u64| json!({ "data": { "forever": { "__typename": "Tick", "n": n } } });
    let expected = expected_step_lines(vec![
        (1..=3).map(tick).collect(),
        vec![json!({ "data": { "whoami": "alice" } })],
        vec![json!({ "data": { "echo": "hi" } })],
        vec![forever(1), forever(2)],
        (1..=3).map(tick).collect(),
    ]);
    assert_eq!(lines, expected);
    let counters = server
        .wait_for("no subscription left", |c| c.subscriptions_active == 0)
        .await;
    assert_eq!(
        counters.connections_total, 1,
        "every operation shared one upstream connection"
    );
}

#[tokio::test]
async fn gateway_shutdown_ends_the_body_with_a_transport_error() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let response = post(
        &Client::new(),
        &gateway.url(),
        APOLLO_ACCEPT,
        json!({ "query": "subscription { tick(count: 2, intervalMs: 60000) }" }),
    )
    .await;
    let mut chunks = response.bytes_stream();
    assert_eq!(read_until(&mut chunks, |t| t == OPENING).await, OPENING);
    let shutdown = tokio::spawn(gateway.shutdown());
    assert_eq!(
        read_until(&mut chunks, |t| t.ends_with(END)).await,
        format!(
            "{}--\r\n",
            part(
                r#"{"payload":null,"errors":[{"extensions":{"code":"SHUTTING_DOWN"},"message":"the gateway is shutting down"}]}"#
            )
        )
    );
    shutdown.await.unwrap();
}

#[tokio::test]
async fn apollo_client_reports_a_transport_error() {
    // Port 9 (discard) on loopback: nothing listens there.
    let gateway = TestGateway::start(
        "[upstreams.down]\nurl = \"http://127.0.0.1:9/graphql\"\n[[routes]]\npath = \"/graphql\"\nupstream = \"down\"\n",
    )
    .await;
    let lines = run_http_client(json!({
        "client": "apollo-http-link",
        "url": gateway.url(),
        "steps": [{ "query": "subscription { ticks(count: 1) { n } }", "expectError": true }],
    }))
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["type"], "error", "{lines:?}");
    let message = lines[0]["message"].as_str().unwrap();
    assert!(
        message.contains("could not connect to upstream \"down\""),
        "{message}"
    );
}
