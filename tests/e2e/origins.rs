//! `server.allowed_origins`: each subscription transport refuses a browser origin that is
//! not allowed (the WebSocket before its upgrade), requests without `Origin` pass, and
//! plain HTTP queries are left to CORS.

use reqwest::{Client, Method};
use serde_json::{json, Value};
use subplex_tests::http::urlencode;
use subplex_tests::ws::RawClient;
use subplex_tests::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const ALLOWED: &str = "https://app.example";
const EVIL: &str = "https://evil.example";

fn refusal_body(origin: &str) -> Value {
    json!({ "errors": [{
        "message": format!("origin \"{origin}\" is not allowed; add it to server.allowed_origins"),
        "extensions": { "code": "ORIGIN_NOT_ALLOWED" },
    }]})
}

/// A WebSocket upgrade with this `Origin`: `Ok(())` when upgraded, else the refusal.
async fn upgrade(addr: std::net::SocketAddr, origin: &str) -> Result<(), (u16, Value)> {
    let mut request = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    headers.insert("origin", HeaderValue::from_str(origin).unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            serde_json::from_slice(response.body().as_deref().unwrap_or(b"null")).unwrap(),
        )),
        Err(other) => panic!("unexpected upgrade failure: {other}"),
    }
}

/// Status and JSON body of each HTTP subscription transport's first request.
async fn http_transports(
    http: &Client,
    url: &str,
    origin: Option<&str>,
) -> Vec<(String, u16, Value)> {
    let subscription = "subscription { tick(count: 1, intervalMs: 5) }";
    let requests = [
        (
            "sse",
            http.get(format!("{url}?query={}", urlencode(subscription)))
                .header("accept", "text/event-stream"),
        ),
        (
            "multipart",
            http.post(url)
                .header("accept", "multipart/mixed;subscriptionSpec=1.0")
                .body(json!({ "query": subscription }).to_string()),
        ),
        ("sse single connection", http.request(Method::PUT, url)),
    ];
    let mut results = Vec::new();
    for (name, request) in requests {
        let request = match origin {
            Some(origin) => request.header("origin", origin),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        // Streams are not read to their end: only the refusals have a JSON body.
        let body = if status == 403 {
            serde_json::from_str(&response.text().await.unwrap()).unwrap()
        } else {
            Value::Null
        };
        results.push((name.to_owned(), status, body));
    }
    results
}

#[tokio::test]
async fn every_subscription_transport_refuses_an_unknown_origin() {
    let (gateway, _demo) = gateway_with_demo(&format!("allowed_origins = [\"{ALLOWED}\"]")).await;
    assert_eq!(
        upgrade(gateway.addr, EVIL).await,
        Err((403, refusal_body(EVIL)))
    );
    let http = Client::new();
    for (name, status, body) in http_transports(&http, &gateway.url(), Some(EVIL)).await {
        assert_eq!((status, body), (403, refusal_body(EVIL)), "{name}");
    }

    // The allowed origin, and non-browser clients without Origin, pass.
    assert_eq!(upgrade(gateway.addr, ALLOWED).await, Ok(()));
    RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    for origin in [Some(ALLOWED), None] {
        for (name, status, _) in http_transports(&http, &gateway.url(), origin).await {
            let expected = if name == "sse single connection" {
                201
            } else {
                200
            };
            assert_eq!(status, expected, "{name} from {origin:?}");
        }
    }

    // Plain HTTP queries are not a subscription transport: CORS decides what a page reads.
    let query = http
        .post(gateway.url())
        .header("origin", EVIL)
        .header("content-type", "application/json")
        .body(r#"{"query":"{ hello }"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 200);
}

#[tokio::test]
async fn any_origin_is_allowed_by_default() {
    let (gateway, _demo) = gateway_with_demo("").await;
    assert_eq!(upgrade(gateway.addr, EVIL).await, Ok(()));
    for (name, status, _) in http_transports(&Client::new(), &gateway.url(), Some(EVIL)).await {
        let expected = if name == "sse single connection" {
            201
        } else {
            200
        };
        assert_eq!(status, expected, "{name}");
    }
}

#[test]
fn a_keyed_cookie_with_any_origin_is_refused_at_start() {
    let config = "[upstreams.app]\nurl = \"http://127.0.0.1:1/graphql\"\nforward_headers = [\"authorization\", \"cookie\"]\n\n[[routes]]\npath = \"/graphql\"\nupstream = \"app\"\n";
    let err = subplex::Config::parse(config, "gateway.toml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "gateway.toml: invalid configuration:\n  server.allowed_origins: allows any origin (\"*\", the default), \
         but upstreams.app.forward_headers uses the \"cookie\" header: any web site could open subscriptions \
         with its visitors' cookies (cross-site WebSocket hijacking); list the origins of your own pages instead, \
         e.g. allowed_origins = [\"https://app.example.com\"]"
    );
    let fixed = format!("[server]\nallowed_origins = [\"{ALLOWED}\"]\n{config}");
    subplex::Config::parse(&fixed, "gateway.toml").unwrap();
}
