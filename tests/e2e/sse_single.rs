//! GraphQL over SSE, single-connection mode: raw HTTP for exact bytes and status codes,
//! token binding and expiry, `DELETE`, and graphql-sse's own client in that mode.

use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{json, Value};
use subplex_tests::http::{
    expected_step_lines, read_until, run_http_client, urlencode, yoga_behind_gateway,
};
use subplex_tests::*;

const TOKEN: &str = "x-graphql-event-stream-token";

fn request(http: &Client, method: Method, url: &str, user: &str) -> RequestBuilder {
    http.request(method, url)
        .header("authorization", format!("Bearer {user}"))
}

/// `PUT`: reserves a stream and returns its token.
async fn reserve(http: &Client, url: &str, user: &str) -> String {
    let response = request(http, Method::PUT, url, user).send().await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let token = response.text().await.unwrap();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    token
}

/// Opens the stream of `token` with `GET`.
async fn open(http: &Client, url: &str, user: &str, token: &str) -> Response {
    request(http, Method::GET, url, user)
        .header("accept", "text/event-stream")
        .header(TOKEN, token)
        .send()
        .await
        .unwrap()
}

/// `POST`s an operation with `extensions.operationId`; returns the status code.
async fn post_operation(
    http: &Client,
    url: &str,
    user: &str,
    token: &str,
    id: &str,
    query: &str,
) -> u16 {
    request(http, Method::POST, url, user)
        .header(TOKEN, token)
        .header("content-type", "application/json")
        .body(json!({ "query": query, "extensions": { "operationId": id } }).to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `DELETE ?operationId=id` with the token in the header; returns the response.
async fn delete(http: &Client, url: &str, user: &str, token: &str, id: &str) -> Response {
    request(
        http,
        Method::DELETE,
        &format!("{url}?operationId={id}"),
        user,
    )
    .header(TOKEN, token)
    .send()
    .await
    .unwrap()
}

async fn status_and_json(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn one_stream_carries_several_operations_with_exact_bytes() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let (http, url) = (Client::new(), gateway.url());
    let token = reserve(&http, &url, "alice").await;
    let stream = open(&http, &url, "alice", &token).await;
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(stream.headers()["cache-control"], "no-cache");
    let mut chunks = stream.bytes_stream();

    let ticks = "subscription { tick(count: 2, intervalMs: 5) }";
    assert_eq!(
        post_operation(&http, &url, "alice", &token, "op1", ticks).await,
        202
    );
    let text = read_until(&mut chunks, |t| t.contains("data: {\"id\":\"op1\"}\n\n")).await;
    assert_eq!(
        text,
        ":\n\n\
         event: next\ndata: {\"id\":\"op1\",\"payload\":{\"data\":{\"tick\":1}}}\n\n\
         event: next\ndata: {\"id\":\"op1\",\"payload\":{\"data\":{\"tick\":2}}}\n\n\
         event: complete\ndata: {\"id\":\"op1\"}\n\n"
    );

    // A query, posted with GET and the token as a query parameter; the id of an ended
    // operation can be used again.
    let query_url = format!(
        "{url}?token={token}&query={}&extensions={}",
        urlencode("{ hello }"),
        urlencode(r#"{"operationId":"op1"}"#)
    );
    let response = request(&http, Method::GET, &query_url, "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let text = read_until(&mut chunks, |t| t.ends_with("data: {\"id\":\"op1\"}\n\n")).await;
    assert_eq!(
        text,
        "event: next\ndata: {\"id\":\"op1\",\"payload\":{\"data\":{\"hello\":\"world\"}}}\n\n\
         event: complete\ndata: {\"id\":\"op1\"}\n\n"
    );
}

#[tokio::test]
async fn status_codes_follow_the_reference_handler() {
    let (gateway, _demo) = gateway_with_demo(
        "[server.sse_single_connection]\nmax_operations_per_stream = 1\nmax_streams = 2",
    )
    .await;
    let (http, url) = (Client::new(), gateway.url());

    let wrong_accept = request(&http, Method::PUT, &url, "alice")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_accept.status(), 406);

    let token = reserve(&http, &url, "alice").await;
    let (status, body) = status_and_json(
        request(&http, Method::POST, &url, "alice")
            .header(TOKEN, "0".repeat(64))
            .header("content-type", "application/json")
            .body(r#"{"query":"{ hello }","extensions":{"operationId":"1"}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"errors":[{"message":"stream not found","extensions":{"code":"STREAM_NOT_FOUND"}}]})
    );

    let patch = request(&http, Method::PATCH, &url, "alice")
        .header(TOKEN, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 405);
    assert_eq!(patch.headers()["allow"], "GET, POST, PUT, DELETE");

    let stream = open(&http, &url, "alice", &token).await;
    assert_eq!(stream.status(), 200);
    let mut chunks = stream.bytes_stream();
    let (status, body) = status_and_json(open(&http, &url, "alice", &token).await).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "STREAM_ALREADY_OPEN"
    );

    let not_json = request(&http, Method::POST, &url, "alice")
        .header(TOKEN, &token)
        .header("accept", "text/html")
        .body(r#"{"query":"{ hello }","extensions":{"operationId":"1"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 406);

    let (status, body) = status_and_json(
        request(&http, Method::POST, &url, "alice")
            .header(TOKEN, &token)
            .body(r#"{"query":"{ hello }"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "MISSING_OPERATION_ID"
    );

    let forever = "subscription { tick(count: 1000, intervalMs: 1000) }";
    assert_eq!(
        post_operation(&http, &url, "alice", &token, "a", forever).await,
        202
    );
    read_until(&mut chunks, |t| t.contains("\"id\":\"a\"")).await;
    assert_eq!(
        post_operation(&http, &url, "alice", &token, "a", forever).await,
        409,
        "an active operation id"
    );
    let (status, body) = status_and_json(
        request(&http, Method::POST, &url, "alice")
            .header(TOKEN, &token)
            .body(json!({ "query": forever, "extensions": { "operationId": "b" } }).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(
        body["errors"][0]["message"],
        "at most 1 operations per stream (server.sse_single_connection.max_operations_per_stream)"
    );

    let mutation_over_get = request(
        &http,
        Method::GET,
        &format!(
            "{url}?query={}&extensions={}",
            urlencode("mutation { hello }"),
            urlencode(r#"{"operationId":"m"}"#)
        ),
        "alice",
    )
    .header(TOKEN, &token)
    .send()
    .await
    .unwrap();
    assert_eq!(mutation_over_get.status(), 405);

    let delete_without_id = request(&http, Method::DELETE, &url, "alice")
        .header(TOKEN, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(delete_without_id.status(), 400);
    let delete_unknown_stream = request(
        &http,
        Method::DELETE,
        &format!("{url}?operationId=a&token={}", "f".repeat(64)),
        "alice",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(delete_unknown_stream.status(), 404);
    let delete = delete(&http, &url, "alice", &token, "a").await;
    assert_eq!(delete.status(), 200);
    assert_eq!(delete.text().await.unwrap(), "");
    assert_eq!(
        post_operation(&http, &url, "alice", &token, "b", "{ hello }").await,
        202,
        "room again after DELETE"
    );

    reserve(&http, &url, "alice").await;
    let (status, body) = status_and_json(
        request(&http, Method::PUT, &url, "alice")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["errors"][0]["extensions"]["code"], "TOO_MANY_STREAMS");
}

#[tokio::test]
async fn a_token_never_opens_for_other_credentials() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let (http, url) = (Client::new(), gateway.url());
    let token = reserve(&http, &url, "alice").await;

    assert_eq!(open(&http, &url, "bob", &token).await.status(), 404);
    let anonymous = http
        .get(format!("{url}?token={token}"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 404);
    assert_eq!(
        post_operation(&http, &url, "bob", &token, "1", "{ hello }").await,
        404
    );
    let delete = delete(&http, &url, "bob", &token, "1").await;
    assert_eq!(delete.status(), 404);

    // None of that used the reservation up.
    let stream = open(&http, &url, "alice", &token).await;
    assert_eq!(stream.status(), 200);
    assert_eq!(
        post_operation(&http, &url, "bob", &token, "1", "{ hello }").await,
        404,
        "an open stream neither"
    );
    assert_eq!(
        post_operation(&http, &url, "alice", &token, "1", "{ hello }").await,
        202
    );
    let mut chunks = stream.bytes_stream();
    read_until(&mut chunks, |t| t.contains("event: complete")).await;
}

#[tokio::test]
async fn an_unused_token_expires() {
    let (gateway, _demo) =
        gateway_with_demo("[server.sse_single_connection]\ntoken_ttl_ms = 1").await;
    let (http, url) = (Client::new(), gateway.url());
    let unused = reserve(&http, &url, "alice").await;
    // The event that shows the 1 ms TTL has passed: a subscription whose second tick the
    // upstream sends 5 ms after the first.
    let ticks = format!(
        "{url}?query={}",
        urlencode("subscription { tick(count: 2, intervalMs: 5) }")
    );
    let response = http
        .get(ticks)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    read_until(&mut response.bytes_stream(), |t| {
        t.contains("event: complete")
    })
    .await;
    let (status, body) = status_and_json(open(&http, &url, "alice", &unused).await).await;
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0]["extensions"]["code"], "STREAM_NOT_FOUND");
}

#[tokio::test]
async fn delete_and_disconnect_stop_the_upstream_operation() {
    let (server, gateway) = yoga_behind_gateway().await;
    let (http, url) = (Client::new(), gateway.url());
    let token = reserve(&http, &url, "alice").await;
    let mut chunks = open(&http, &url, "alice", &token).await.bytes_stream();
    let forever = "subscription { forever(intervalMs: 20) { n user } }";
    for id in ["a", "b"] {
        assert_eq!(
            post_operation(&http, &url, "alice", &token, id, forever).await,
            202
        );
    }
    let counters = server
        .wait_for("two subscriptions", |c| c.subscriptions_active == 2)
        .await;
    assert_eq!(
        counters.connections_total, 1,
        "one upstream connection for the security context"
    );
    let delete = delete(&http, &url, "alice", &token, "a").await;
    assert_eq!(delete.status(), 200);
    server
        .wait_for("one subscription left", |c| c.subscriptions_active == 1)
        .await;
    // The stream and the other operation go on.
    let text = read_until(&mut chunks, |t| t.matches("\"id\":\"b\"").count() >= 3).await;
    assert!(text.contains("\"user\":\"alice\""), "{text}");

    drop(chunks);
    server
        .wait_for("no subscription", |c| c.subscriptions_active == 0)
        .await;
    // A closed stream's token is gone.
    assert_eq!(
        post_operation(&http, &url, "alice", &token, "c", "{ hello }").await,
        404
    );
}

#[tokio::test]
async fn queries_and_mutations_work_on_a_stream() {
    let (_server, gateway) = yoga_behind_gateway().await;
    let (http, url) = (Client::new(), gateway.url());
    let token = reserve(&http, &url, "alice").await;
    let mut chunks = open(&http, &url, "alice", &token).await.bytes_stream();
    let mutation = r#"mutation { echo(message: "hi") }"#;
    assert_eq!(
        post_operation(&http, &url, "alice", &token, "m", mutation).await,
        202
    );
    assert_eq!(
        post_operation(&http, &url, "alice", &token, "q", "{ whoami }").await,
        202
    );
    let text = read_until(&mut chunks, |t| t.matches("event: complete").count() == 2).await;
    assert!(
        text.contains(
            "event: next\ndata: {\"id\":\"m\",\"payload\":{\"data\":{\"echo\":\"hi\"}}}\n\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "event: next\ndata: {\"id\":\"q\",\"payload\":{\"data\":{\"whoami\":\"alice\"}}}\n\n"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn graphql_sse_client_in_single_connection_mode() {
    let (server, gateway) = yoga_behind_gateway().await;
    let ticks = "subscription { ticks(count: 3, intervalMs: 5) { n user } }";
    let lines = run_http_client(json!({
        "client": "graphql-sse-single",
        "url": gateway.url(),
        "headers": { "authorization": "Bearer alice" },
        "steps": [
            { "query": ticks },
            { "query": "{ whoami }" },
            { "query": "mutation { echo(message: \"hi\") }" },
            { "query": "subscription { forever(intervalMs: 10) { n } }", "take": 2 },
            { "query": ticks },
        ],
    }))
    .await;
    let expected = expected_step_lines(vec![
        expected_ticks("alice", 3),
        vec![json!({ "data": { "whoami": "alice" } })],
        vec![json!({ "data": { "echo": "hi" } })],
        vec![
            json!({ "data": { "forever": { "n": 1 } } }),
            json!({ "data": { "forever": { "n": 2 } } }),
        ],
        expected_ticks("alice", 3),
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
async fn gateway_shutdown_completes_running_operations() {
    let (gateway, _demo) = gateway_with_demo("").await;
    let (http, url) = (Client::new(), gateway.url());
    let token = reserve(&http, &url, "alice").await;
    let stream = open(&http, &url, "alice", &token).await;
    let forever = "subscription { tick(count: 2, intervalMs: 60000) }";
    assert_eq!(
        post_operation(&http, &url, "alice", &token, "a", forever).await,
        202
    );
    let shutdown = tokio::spawn(gateway.shutdown());
    // The stream ends the running operation: an error result naming the shutdown, then
    // its `complete`.
    let text = tokio::time::timeout(EVENT_TIMEOUT, stream.text())
        .await
        .expect("the stream ends")
        .unwrap();
    assert_eq!(
        text,
        concat!(
            ":\n\n",
            "event: next\ndata: {\"id\":\"a\",\"payload\":{\"errors\":[{\"extensions\":{\"code\":\"SHUTTING_DOWN\"},\"message\":\"the gateway is shutting down\"}]}}\n\n",
            "event: complete\ndata: {\"id\":\"a\"}\n\n",
        )
    );
    shutdown.await.unwrap();
}
