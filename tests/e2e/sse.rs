//! GraphQL over SSE downstream (distinct connections), and plain HTTP queries.

use futures_util::StreamExt;
use serde_json::{json, Value};
use subplex_tests::http::{read_until, urlencode};
use subplex_tests::*;

fn sse_request(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
) -> reqwest::RequestBuilder {
    client
        .request(method, url)
        .header("accept", "text/event-stream")
}

async fn body_text(response: reqwest::Response) -> String {
    tokio::time::timeout(EVENT_TIMEOUT, response.text())
        .await
        .expect("stream ends")
        .expect("body")
}

const TICKS: &str = "subscription { tick(count: 2, intervalMs: 5) }";
const EXPECTED: &str = ":\n\nevent: next\ndata: {\"data\":{\"tick\":1}}\n\nevent: next\ndata: {\"data\":{\"tick\":2}}\n\nevent: complete\ndata:\n\n";

#[tokio::test]
async fn get_stream_is_exact() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let http = reqwest::Client::new();
    let url = format!("{}?query={}", gateway.url(), urlencode(TICKS));
    let response = sse_request(&http, reqwest::Method::GET, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert_eq!(body_text(response).await, EXPECTED);
}

#[tokio::test]
async fn post_stream_with_variables_is_exact() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let http = reqwest::Client::new();
    let body = json!({
        "query": "subscription T($n: Int!) { tick(count: $n, intervalMs: 5) }",
        "operationName": "T",
        "variables": { "n": 2 },
    });
    let response = sse_request(&http, reqwest::Method::POST, &gateway.url())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(body_text(response).await, EXPECTED);
}

#[tokio::test]
async fn keep_alive_comments_reach_the_client() {
    // `keepalive_interval_ms` reaches the stream over real HTTP. The exact timing is a
    // paused-time unit test of the feed (`crates/subplex/src/downstream/sse.rs`); here
    // the first tick is a minute away, so however loaded the machine, three keep-alives
    // come first.
    let (gateway, _demo) = gateway_with_demo("keepalive_interval_ms = 40").await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}?query={}",
        gateway.url(),
        urlencode("subscription { tick(count: 1, intervalMs: 60000) }")
    );
    let response = sse_request(&http, reqwest::Method::GET, &url)
        .send()
        .await
        .unwrap();
    let mut chunks = response.bytes_stream();
    let text = read_until(&mut chunks, |text| text.matches(":\n\n").count() >= 3).await;
    assert!(
        !text.contains("event:"),
        "only keep-alives before the first tick: {text:?}"
    );
}

async fn expect_bad_request(response: reqwest::Response, status: u16, message: &str) {
    assert_eq!(response.status(), status);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    let got = body["errors"][0]["message"].as_str().unwrap();
    assert!(got.contains(message), "{got:?} lacks {message:?}");
}

#[tokio::test]
async fn malformed_requests_get_4xx_with_json_errors() {
    let (gateway, _demo) = gateway_with_demo("max_message_bytes = 2048").await;
    let http = reqwest::Client::new();
    let get = |query: &str| {
        sse_request(
            &http,
            reqwest::Method::GET,
            &format!("{}?{query}", gateway.url()),
        )
        .send()
    };
    expect_bad_request(
        get("operationName=x").await.unwrap(),
        400,
        "request has no \"query\" string",
    )
    .await;
    expect_bad_request(
        get("query=%7Bhello%7D&variables=%7Bnope").await.unwrap(),
        400,
        "parameter \"variables\" is not valid JSON",
    )
    .await;
    expect_bad_request(
        get("query=%7Bhello%7D&variables=%5B1%5D").await.unwrap(),
        400,
        "\"variables\" must be a JSON object",
    )
    .await;
    let post = |body: String| {
        sse_request(&http, reqwest::Method::POST, &gateway.url())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_bad_request(
        post("{not json".into()).await.unwrap(),
        400,
        "not a JSON object",
    )
    .await;
    expect_bad_request(
        post("x".repeat(4096)).await.unwrap(),
        413,
        "2048 byte limit",
    )
    .await;
    // PUT and DELETE belong to single-connection mode (`sse_single`).
    let patch = sse_request(&http, reqwest::Method::PATCH, &gateway.url())
        .send()
        .await
        .unwrap();
    assert_eq!(patch.headers()["allow"], "GET, POST");
    expect_bad_request(patch, 405, "GET or POST").await;
}

#[tokio::test]
async fn client_disconnect_ends_the_upstream_subscription() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, "graphql-transport-ws", "").await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}?query={}",
        gateway.url(),
        urlencode("subscription { forever(intervalMs: 50) { n user } }")
    );
    let response = sse_request(&http, reqwest::Method::GET, &url)
        .header("authorization", "Bearer ivy")
        .send()
        .await
        .unwrap();
    let mut chunks = response.bytes_stream();
    let seen = read_until(&mut chunks, |text| text.contains("event: next")).await;
    assert!(
        seen.contains(r#"data: {"data":{"forever":{"n":1,"user":"ivy"}}}"#),
        "{seen}"
    );
    server
        .wait_for("the upstream subscription", |c| c.subscriptions_active == 1)
        .await;
    drop(chunks);
    server
        .wait_for("the upstream subscription to end", |c| {
            c.subscriptions_active == 0
        })
        .await;
}

#[tokio::test]
async fn queries_and_mutations_over_http_are_forwarded() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, "graphql-transport-ws", "").await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(gateway.url())
            .header("content-type", "application/json")
            .header("authorization", "Bearer jo")
            .body(body.to_string())
            .send()
    };
    let response = post(json!({ "query": "{ hello whoami }" })).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "data": { "hello": "world", "whoami": "jo" } })
    );
    let body: Value = post(json!({ "query": "mutation { echo(message: \"hi\") }" }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({ "data": { "echo": "hi" } }));
}

/// Reads a streaming body until the text so far satisfies `done`. Chunk boundaries are
/// not events (they coalesce under load), so conditions look at the accumulated text.
#[tokio::test]
async fn cors_lets_any_origin_read_streams_by_default() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let http = reqwest::Client::new();
    let preflight = http
        .request(reqwest::Method::OPTIONS, gateway.url())
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        preflight.headers()["access-control-allow-methods"],
        "GET, POST, PUT, DELETE, OPTIONS"
    );
    assert_eq!(
        preflight.headers()["access-control-allow-headers"],
        "authorization, content-type"
    );

    let url = format!("{}?query={}", gateway.url(), urlencode(TICKS));
    let response = sse_request(&http, reqwest::Method::GET, &url)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert_eq!(body_text(response).await, EXPECTED);
}

#[tokio::test]
async fn cors_with_credentials_allows_only_listed_origins() {
    let (gateway, _demo) = gateway_with_demo(
        "[server.cors]\nallow_origins = [\"https://app.example\"]\nallow_credentials = true",
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}?query={}", gateway.url(), urlencode(TICKS));
    let allowed = sse_request(&http, reqwest::Method::GET, &url)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    assert_eq!(allowed.headers()["vary"], "origin");
    let other = sse_request(&http, reqwest::Method::GET, &url)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

/// The last bytes of a distinct-mode stream the gateway ends because it shuts down.
const SHUTDOWN_END: &str = "event: next\ndata: {\"errors\":[{\"extensions\":{\"code\":\"SHUTTING_DOWN\"},\"message\":\"the gateway is shutting down\"}]}\n\nevent: complete\ndata:\n\n";

#[tokio::test]
async fn gateway_shutdown_completes_open_streams_and_drains() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}?query={}",
        gateway.url(),
        urlencode("subscription { tick(count: 1000, intervalMs: 20) }")
    );
    let response = sse_request(&http, reqwest::Method::GET, &url)
        .send()
        .await
        .unwrap();
    let mut chunks = response.bytes_stream();
    read_until(&mut chunks, |text| text.contains("event: next")).await;
    let shutdown = tokio::spawn(gateway.shutdown());
    // The stream ends with the operation's end: an error result naming the shutdown, then
    // `complete`; and the gateway finishes draining.
    let text = read_until(&mut chunks, |text| {
        text.ends_with("event: complete\ndata:\n\n")
    })
    .await;
    assert!(
        text.ends_with(SHUTDOWN_END),
        "the stream ends with the shutdown's error and complete: {text:?}"
    );
    assert!(tokio::time::timeout(EVENT_TIMEOUT, chunks.next())
        .await
        .unwrap()
        .is_none());
    shutdown.await.unwrap();
}

#[tokio::test]
async fn healthz_answers_ok() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let response = reqwest::get(format!("http://{}/healthz", gateway.addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok\n");
    let missing = reqwest::get(format!("http://{}/nope", gateway.addr))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["errors"][0]["message"], "no route for path /nope");
}

#[tokio::test]
async fn http_forwarding_times_out_with_a_clear_error() {
    // An upstream that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let gateway =
        TestGateway::for_upstream(port, "graphql-transport-ws", "request_timeout_ms = 300").await;
    // The silent upstream leaves the gateway's timeout as the only possible outcome; the
    // test's own wait is bounded too.
    let request = reqwest::Client::new()
        .post(gateway.url())
        .header("content-type", "application/json")
        .body(r#"{"query":"{ hello }"}"#)
        .send();
    let response = tokio::time::timeout(EVENT_TIMEOUT, request)
        .await
        .expect("the gateway answers")
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "UPSTREAM_UNAVAILABLE"
    );
    assert_eq!(
        body["errors"][0]["message"],
        "upstream \"up\" is unavailable over HTTP: timed out (request_timeout_ms)"
    );
    hold.abort();
}

#[tokio::test]
async fn get_mutations_over_plain_http_are_refused_before_the_upstream() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, "graphql-transport-ws", "").await;
    let get = |query: &str| reqwest::get(format!("{}?query={}", gateway.url(), urlencode(query)));
    let response = get("mutation { echo(message: \"x\") }").await.unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    // Yoga words its own refusal differently: this one is the gateway's.
    expect_bad_request(response, 405, "mutations cannot be sent with GET; use POST").await;
    // A GET query is forwarded as before.
    let response = get("{ hello }").await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "data": { "hello": "world" } }));
}
