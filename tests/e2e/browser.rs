//! A real browser: headless Chromium (see `tests/support/browser.rs`) on a page served from
//! another origin than the gateway's, so every request is a cross-origin one. The page
//! uses the browser's own `EventSource`, `WebSocket` and `fetch`, and the browser builds
//! of graphql-ws and graphql-sse with their default options, several operations in
//! sequence; Yoga is the upstream. A bare browser `WebSocket` covers the closes the gateway
//! starts. Each test asserts the exact events the page saw.

use serde_json::{json, Value};
use subplex_tests::browser::Browser;
use subplex_tests::*;

const TICKS: &str = "subscription ($c: Int!) { ticks(count: $c) { n user } }";

/// Yoga behind the gateway, with the `authorization` header forwarded (so Yoga's `whoami`
/// and `Tick.user` show who the browser said it was) and extra `[server]` keys.
async fn yoga_behind_gateway(server_keys: &str) -> (NodeServer, TestGateway) {
    let yoga = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::start(&format!(
        "[server]\n{server_keys}\n\
         [upstreams.yoga]\nurl = \"http://127.0.0.1:{}/graphql\"\n\
         forward_headers = [\"authorization\"]\nsecurity_context = [\"authorization\"]\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"yoga\"\n",
        yoga.port
    ))
    .await;
    (yoga, gateway)
}

fn ticks(count: u64) -> Value {
    json!({ "query": TICKS, "variables": { "c": count } })
}

fn operation(query: &str) -> Value {
    json!({ "query": query })
}

/// `next` for each tick of operation `op`, without the closing event.
fn tick_events(op: u64, user: &str, count: u64) -> Vec<Value> {
    expected_ticks(user, count)
        .into_iter()
        .map(|payload| json!({ "type": "next", "op": op, "payload": payload }))
        .collect()
}

fn next(op: u64, data: Value) -> Value {
    json!({ "type": "next", "op": op, "payload": { "data": data } })
}

fn complete(op: u64) -> Value {
    json!({ "type": "complete", "op": op })
}

fn response(op: u64, data: Value) -> Value {
    json!({ "type": "response", "op": op, "status": 200, "body": { "data": data } })
}

/// The gateway's answer to the browser's CORS preflight for a POST with `Authorization`
/// and `Content-Type` from `origin` (docs/configuration.md, `[server.cors]`), as the
/// browser reports it.
fn preflight_allowed(url: &str, origin: &str) -> Value {
    json!({
        "type": "preflight", "url": url, "status": 204,
        "headers": {
            "access-control-allow-origin": origin,
            "access-control-allow-methods": "GET, POST, PUT, DELETE, OPTIONS",
            "access-control-allow-headers": "authorization,content-type",
            "access-control-max-age": "600",
        },
    })
}

/// Compares the page's events with `expected`, printing both one event per line.
fn assert_events(events: &[Value], expected: &[Value]) {
    let show = |events: &[Value]| {
        events
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        events == expected,
        "the page saw:\n{}\nexpected:\n{}",
        show(events),
        show(expected)
    );
}

/// Waits until Yoga has no subscription left and checks how many it ran.
async fn assert_upstream_subscriptions(yoga: &NodeServer, started: usize) {
    yoga.wait_for("every upstream subscription to end", |c| {
        c.subscriptions_active == 0
    })
    .await;
    assert_eq!(yoga.events_named("subscription_start").len(), started);
}

#[tokio::test]
async fn event_source_subscribes_over_get_and_the_listener_closes_it() {
    let (yoga, gateway) = yoga_behind_gateway("").await;
    let mut browser = Browser::start().await;

    let events = browser
        .run(
            "eventSource",
            json!({ "url": gateway.url(), "operations": [ticks(3), operation("{ hello }")] }),
        )
        .await;

    // EventSource cannot send headers, so the caller is anonymous. `readyState` 2
    // (CLOSED) after `complete`: the listener closed the source, so it does not reconnect.
    let mut expected = tick_events(0, "anonymous", 3);
    expected.push(json!({ "type": "complete", "op": 0, "readyState": 2 }));
    expected.push(next(1, json!({ "hello": "world" })));
    expected.push(json!({ "type": "complete", "op": 1, "readyState": 2 }));
    assert_events(&events, &expected);
    assert_upstream_subscriptions(&yoga, 1).await;
    browser.close().await;
}

#[tokio::test]
async fn graphql_ws_browser_build_closes_each_lazy_socket_cleanly() {
    let (yoga, gateway) = yoga_behind_gateway("").await;
    let mut browser = Browser::start().await;

    let operations = [
        ticks(3),
        operation("{ whoami }"),
        operation("mutation { echo(message: \"from the browser\") }"),
        ticks(2),
    ];
    let events = browser
        .run(
            "graphqlWsClient",
            json!({
                "url": gateway.url(),
                "connectionParams": { "authorization": "Bearer bob" },
                "operations": operations,
            }),
        )
        .await;

    // The client is lazy: each operation opens a socket, and once it completes the client
    // closes with 1000. A clean close (the gateway answered the Close frame) is
    // `wasClean: true` with the code echoed; a dropped TCP connection would be 1006.
    let results = [
        tick_events(0, "bob", 3),
        vec![next(1, json!({ "whoami": "bob" }))],
        vec![next(2, json!({ "echo": "from the browser" }))],
        tick_events(3, "bob", 2),
    ];
    let mut expected = Vec::new();
    for (op, nexts) in results.into_iter().enumerate() {
        expected.push(socket_open("graphql-transport-ws"));
        expected.extend(nexts);
        expected.push(complete(op as u64));
        expected.push(socket_closed_cleanly(1000));
    }
    assert_events(&events, &expected);
    assert_upstream_subscriptions(&yoga, 2).await;
    browser.close().await;
}

#[tokio::test]
async fn graphql_sse_browser_build_sends_authorization_after_a_preflight() {
    let (yoga, gateway) = yoga_behind_gateway("").await;
    let mut browser = Browser::start().await;

    let events = browser
        .run(
            "graphqlSseClient",
            json!({
                "url": gateway.url(),
                "headers": { "authorization": "Bearer alice" },
                "operations": [
                    ticks(3),
                    operation("{ whoami }"),
                    operation("mutation { echo(message: \"over SSE\") }"),
                ],
            }),
        )
        .await;

    let mut expected = tick_events(0, "alice", 3);
    expected.push(complete(0));
    expected.push(next(1, json!({ "whoami": "alice" })));
    expected.push(complete(1));
    expected.push(next(2, json!({ "echo": "over SSE" })));
    expected.push(complete(2));
    // One preflight: the browser caches the answer (max-age) for the next two requests.
    expected.push(preflight_allowed(&gateway.url(), "*"));
    assert_events(&events, &expected);
    assert_upstream_subscriptions(&yoga, 1).await;
    browser.close().await;
}

#[tokio::test]
async fn fetch_with_authorization_from_the_allowed_origin() {
    let mut browser = Browser::start().await;
    let (_yoga, gateway) = yoga_behind_gateway(&format!(
        "[server.cors]\nallow_origins = [\"{}\"]",
        browser.origin
    ))
    .await;

    let events = browser
        .run(
            "fetchPost",
            json!({
                "url": gateway.url(),
                "headers": { "authorization": "Bearer alice" },
                "operations": [
                    operation("{ whoami }"),
                    operation("mutation { echo(message: \"over fetch\") }"),
                ],
            }),
        )
        .await;

    // The browser asked first (one preflight, cached for the second request), and `whoami`
    // is alice: the Authorization header it then sent reached Yoga.
    assert_events(
        &events,
        &[
            response(0, json!({ "whoami": "alice" })),
            response(1, json!({ "echo": "over fetch" })),
            preflight_allowed(&gateway.url(), &browser.origin),
        ],
    );
    browser.close().await;
}

#[tokio::test]
async fn the_browser_refuses_responses_to_an_origin_that_is_not_allowed() {
    let (_yoga, gateway) =
        yoga_behind_gateway("[server.cors]\nallow_origins = [\"https://app.example\"]").await;
    let mut browser = Browser::start().await;

    let fetched = browser
        .run(
            "fetchPost",
            json!({
                "url": gateway.url(),
                "headers": { "authorization": "Bearer alice" },
                "operations": [operation("{ whoami }")],
            }),
        )
        .await;
    // The preflight's answer has no CORS headers, so the browser never sends the POST.
    assert_events(
        &fetched,
        &[
            json!({
                "type": "fetch_failed", "op": 0,
                "error": { "name": "TypeError", "message": "Failed to fetch" },
            }),
            json!({ "type": "preflight", "url": gateway.url(), "status": 204, "headers": {} }),
        ],
    );

    let streamed = browser
        .run(
            "eventSource",
            json!({ "url": gateway.url(), "operations": [ticks(1)] }),
        )
        .await;
    // EventSource makes no preflight: the gateway serves the stream, and the browser
    // fails the source (CLOSED, no retry) because the response does not allow the origin.
    assert_events(
        &streamed,
        &[json!({ "type": "error", "op": 0, "readyState": 2 })],
    );
    browser.close().await;
}

/// `socket_open` for a socket that negotiated `protocol`.
fn socket_open(protocol: &str) -> Value {
    json!({ "type": "socket_open", "protocol": protocol })
}

/// A socket closed with `code` after both Close frames were exchanged.
fn socket_closed_cleanly(code: u16) -> Value {
    json!({ "type": "socket_close", "code": code, "wasClean": true })
}

fn message(message: Value) -> Value {
    json!({ "type": "message", "message": message })
}

#[tokio::test]
async fn shutdown_closes_a_browser_websocket_cleanly_with_1001() {
    let (_yoga, gateway) = yoga_behind_gateway("").await;
    let mut browser = Browser::start().await;

    let subscribe = json!({
        "id": "1", "type": "subscribe",
        "payload": { "query": "subscription { forever(intervalMs: 60000) { n } }" },
    });
    browser
        .begin(
            "webSocket",
            json!({
                "url": gateway.url(),
                "protocol": "graphql-transport-ws",
                "messages": [{ "type": "connection_init" }, subscribe],
            }),
        )
        .await;
    browser
        .wait_event("the first event", |e| e["message"]["type"] == "next")
        .await;
    gateway.shutdown().await;

    assert_events(
        &browser.finish().await,
        &[
            socket_open("graphql-transport-ws"),
            message(json!({ "type": "connection_ack" })),
            message(
                json!({ "id": "1", "type": "next", "payload": { "data": { "forever": { "n": 1 } } } }),
            ),
            socket_closed_cleanly(1001),
        ],
    );
    browser.close().await;
}

/// What the browser's own WebSocket sees when it speaks `protocol` to the gateway, sending
/// `messages`, until the gateway closes it.
async fn browser_websocket(protocol: &str, messages: Value) -> Vec<Value> {
    let (_yoga, gateway) = yoga_behind_gateway("").await;
    let mut browser = Browser::start().await;
    let events = browser
        .run(
            "webSocket",
            json!({ "url": gateway.url(), "protocol": protocol, "messages": messages }),
        )
        .await;
    browser.close().await;
    events
}

#[tokio::test]
async fn a_protocol_violation_closes_a_browser_websocket_cleanly() {
    // `subscribe` before `connection_init`: the gateway closes with 4401.
    let events = browser_websocket(
        "graphql-transport-ws",
        json!([{ "id": "1", "type": "subscribe", "payload": { "query": "{ hello }" } }]),
    )
    .await;
    assert_events(
        &events,
        &[
            socket_open("graphql-transport-ws"),
            socket_closed_cleanly(4401),
        ],
    );
}

#[tokio::test]
async fn legacy_connection_terminate_closes_a_browser_websocket_cleanly() {
    let events = browser_websocket(
        "graphql-ws",
        json!([{ "type": "connection_init", "payload": {} }, { "type": "connection_terminate" }]),
    )
    .await;
    assert_events(
        &events,
        &[
            socket_open("graphql-ws"),
            message(json!({ "type": "connection_ack" })),
            message(json!({ "type": "ka" })),
            socket_closed_cleanly(1000),
        ],
    );
}
