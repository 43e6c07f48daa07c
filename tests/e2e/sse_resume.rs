//! Resuming a GraphQL over SSE stream with `Last-Event-ID` (`[server.sse]`), against
//! Yoga: a stream cut mid-way resumes on the same upstream operation with every event
//! exactly once, in order (raw HTTP, and Chromium's own `EventSource` through a proxy that
//! cuts the connection); after the window a fresh subscription; other credentials
//! cannot resume.

use reqwest::Client;
use serde_json::{json, Value};
use subplex_tests::browser::Browser;
use subplex_tests::http::{read_until, urlencode};
use subplex_tests::proxy::CuttingProxy;
use subplex_tests::*;

const TICKS: &str = "subscription { ticks(count: 20, intervalMs: 40) { n user } }";
const FOREVER: &str = "subscription { forever(intervalMs: 40) { n user } }";

async fn yoga_with_resume(window_ms: u64) -> (NodeServer, TestGateway) {
    yoga_with_sse_keys(&format!("resume_window_ms = {window_ms}")).await
}

async fn yoga_with_sse_keys(sse_keys: &str) -> (NodeServer, TestGateway) {
    let yoga = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::start(&format!(
        "[server.sse]\n{sse_keys}\n\n[upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\nprotocol = \"graphql-transport-ws\"\n\n[[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        yoga.port
    ))
    .await;
    (yoga, gateway)
}

/// One SSE event as the test reads it.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
    retry: Option<u64>,
}

/// The complete SSE blocks of `text` (a cut may leave a partial one at the end), comments
/// left out.
fn blocks(text: &str) -> Vec<SseEvent> {
    let mut complete: Vec<&str> = text.split("\n\n").collect();
    complete.pop(); // Whatever follows the last blank line is not a whole block.
    complete
        .into_iter()
        .filter(|block| !block.is_empty() && !block.starts_with(':'))
        .map(|block| {
            let mut event = SseEvent {
                id: None,
                event: None,
                data: String::new(),
                retry: None,
            };
            for line in block.lines() {
                let (field, value) = line
                    .split_once(": ")
                    .unwrap_or((line.trim_end_matches(':'), ""));
                match field {
                    "id" => event.id = Some(value.to_owned()),
                    "event" => event.event = Some(value.to_owned()),
                    "data" => event.data.push_str(value),
                    "retry" => event.retry = Some(value.parse().unwrap()),
                    other => panic!("unexpected field {other:?} in {block:?}"),
                }
            }
            event
        })
        .collect()
}

/// The `n` of each `next` event, with the user it was for.
fn ticks(events: &[SseEvent]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter(|e| e.event.as_deref() == Some("next"))
        .map(|e| {
            let data: Value = serde_json::from_str(&e.data).unwrap();
            let tick = data["data"].as_object().unwrap().values().next().unwrap();
            (
                tick["n"].as_u64().unwrap(),
                tick["user"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn open(
    http: &Client,
    url: &str,
    user: &str,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .get(url)
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {user}"));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response
}

/// Reads until `n` whole `next` events arrived, then drops the response: the cut.
async fn read_then_cut(response: reqwest::Response, n: usize) -> Vec<SseEvent> {
    let mut chunks = response.bytes_stream();
    let text = read_until(&mut chunks, |text| ticks(&blocks(text)).len() >= n).await;
    blocks(&text)
}

/// The gateway's URL for a `GET` stream of `query`.
fn stream_url(gateway: &TestGateway, query: &str) -> String {
    format!("{}?query={}", gateway.url(), urlencode(query))
}

/// Reads a stream to its `complete` event.
async fn read_to_complete(response: reqwest::Response) -> Vec<SseEvent> {
    let text = read_until(&mut response.bytes_stream(), |text| {
        text.ends_with("event: complete\ndata:\n\n")
    })
    .await;
    blocks(&text)
}

fn last_id(events: &[SseEvent]) -> String {
    events.iter().rev().find_map(|e| e.id.clone()).unwrap()
}

#[tokio::test]
async fn a_cut_stream_resumes_with_every_event_exactly_once_in_order() {
    let (yoga, gateway) = yoga_with_resume(10_000).await;
    let (http, url) = (Client::new(), stream_url(&gateway, TICKS));

    let before = read_then_cut(open(&http, &url, "alice", None).await, 3).await;
    // The stream starts with its `retry:` hint (half the window, at most a second), and
    // every event carries an id `<stream>:<n>`, numbered from 1.
    assert_eq!(before[0].retry, Some(1000));
    let ids: Vec<&str> = before.iter().filter_map(|e| e.id.as_deref()).collect();
    let stream = ids[0].split_once(':').unwrap().0;
    assert_eq!(stream.len(), 32, "128 random bits as hex: {stream}");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(*id, format!("{stream}:{}", i + 1));
    }

    let resumed = open(&http, &url, "alice", Some(&last_id(&before))).await;
    let after = read_to_complete(resumed).await;
    assert_eq!(after[0].retry, Some(1000));

    let mut all = ticks(&before);
    all.extend(ticks(&after));
    let expected: Vec<(u64, String)> = (1..=20).map(|n| (n, "alice".to_owned())).collect();
    assert_eq!(all, expected, "every tick exactly once, in order");
    // The ids go on where the first connection stopped.
    let first_after: u64 = after[1]
        .id
        .as_ref()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert_eq!(first_after, ticks(&before).len() as u64 + 1);
    // One upstream subscription throughout: the resume continued it.
    yoga.wait_for("the subscription ended", |c| c.subscriptions_active == 0)
        .await;
    assert_eq!(yoga.events_named("subscription_start").len(), 1);
}

#[tokio::test]
async fn after_the_window_a_fresh_subscription_starts_with_a_retry_hint() {
    let (yoga, gateway) = yoga_with_resume(200).await;
    let (http, url) = (Client::new(), stream_url(&gateway, FOREVER));

    let before = read_then_cut(open(&http, &url, "alice", None).await, 2).await;
    assert_eq!(before[0].retry, Some(100));
    // The parked operation is stopped upstream once the window passes.
    yoga.wait_for("the parked subscription stopped", |c| {
        c.subscriptions_active == 0
    })
    .await;

    let again = open(&http, &url, "alice", Some(&last_id(&before))).await;
    let fresh = read_then_cut(again, 2).await;
    assert_eq!(fresh[0].retry, Some(100), "{fresh:?}");
    assert_eq!(
        ticks(&fresh)[..2],
        [(1, "alice".to_owned()), (2, "alice".to_owned())]
    );
    assert_ne!(
        fresh[1].id.as_ref().unwrap().split_once(':').unwrap().0,
        last_id(&before).split_once(':').unwrap().0,
        "a new stream id"
    );
    assert_eq!(yoga.events_named("subscription_start").len(), 2);
}

/// A buffer that overflows while the client is away loses events it never got: the
/// operation stops at once, and the id then starts a fresh subscription.
#[tokio::test]
async fn a_buffer_overflow_while_away_ends_the_stream() {
    let (yoga, gateway) =
        yoga_with_sse_keys("resume_window_ms = 60000\nresume_buffer_events = 3").await;
    let (http, url) = (Client::new(), stream_url(&gateway, FOREVER));

    let before = read_then_cut(open(&http, &url, "alice", None).await, 2).await;
    // Long before the 60 s window: the fourth event after the cut overflows the buffer.
    yoga.wait_for("the overflowed subscription stopped", |c| {
        c.subscriptions_active == 0
    })
    .await;
    let again = open(&http, &url, "alice", Some(&last_id(&before))).await;
    let fresh = read_then_cut(again, 1).await;
    assert_eq!(ticks(&fresh)[0], (1, "alice".to_owned()));
    assert_eq!(yoga.events_named("subscription_start").len(), 2);
}

#[tokio::test]
async fn other_credentials_cannot_resume_a_stream() {
    let (yoga, gateway) = yoga_with_resume(10_000).await;
    let (http, url) = (Client::new(), stream_url(&gateway, TICKS));

    let alice = read_then_cut(open(&http, &url, "alice", None).await, 2).await;
    let stolen = last_id(&alice);

    // Bob presents Alice's id: he gets a subscription of his own, from the start.
    let bob = read_then_cut(open(&http, &url, "bob", Some(&stolen)).await, 2).await;
    assert_eq!(
        ticks(&bob)[..2],
        [(1, "bob".to_owned()), (2, "bob".to_owned())]
    );

    // Alice's stream was left alone: she resumes it, and gets the rest of her ticks.
    let resumed = open(&http, &url, "alice", Some(&stolen)).await;
    let mut all = ticks(&alice);
    all.extend(ticks(&read_to_complete(resumed).await));
    let expected: Vec<(u64, String)> = (1..=20).map(|n| (n, "alice".to_owned())).collect();
    assert_eq!(all, expected);
    let users: Vec<String> = yoga
        .events_named("subscription_start")
        .iter()
        .map(|e| e["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users, ["alice", "bob"]);
}

/// Chromium's own `EventSource`, through a proxy that cuts its first connection once the
/// page has the third event: the browser reconnects by itself, sends `Last-Event-ID`, and
/// the page sees every tick exactly once, in order, with one reconnect right after the
/// third; Yoga saw one subscription.
#[tokio::test]
async fn a_browser_event_source_resumes_by_itself() {
    let (yoga, gateway) = yoga_with_resume(10_000).await;
    let proxy = CuttingProxy::start(gateway.addr, "event: next", 3).await;
    let mut browser = Browser::start().await;

    browser
        .begin(
            "eventSourceResume",
            json!({
                "url": format!("http://{}/graphql", proxy.addr),
                "operation": { "query": TICKS },
            }),
        )
        .await;
    // Cut only once the page has the third tick: Chromium drops bytes it has not yet
    // handed to the page when the connection fails (see `proxy`).
    browser
        .wait_event("the third tick", |e| {
            e["type"] == "next" && e["payload"]["data"]["ticks"]["n"] == 3
        })
        .await;
    proxy.cut();
    let events = browser.finish().await;

    let nexts: Vec<Value> = events
        .iter()
        .filter(|e| e["type"] == "next")
        .map(|e| e["payload"]["data"]["ticks"]["n"].clone())
        .collect();
    assert_eq!(
        nexts,
        (1..=20).map(|n| json!(n)).collect::<Vec<_>>(),
        "{events:#?}"
    );
    assert!(events
        .iter()
        .filter(|e| e["type"] == "next")
        .all(|e| e["lastEventId"] == true));
    let reconnects: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["type"] == "reconnecting")
        .map(|(i, _)| i)
        .collect();
    // Ticks 1 to 3 come first: the one reconnect is the fourth event.
    assert_eq!(reconnects, [3], "{events:#?}");
    assert_eq!(events.last().unwrap(), &json!({ "type": "complete" }));
    yoga.wait_for("the subscription ended", |c| c.subscriptions_active == 0)
        .await;
    assert_eq!(yoga.events_named("subscription_start").len(), 1);
    browser.close().await;
}
