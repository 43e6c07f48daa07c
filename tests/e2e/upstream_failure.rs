//! An upstream that restarts, dies or is not there. A restart within the give-up window is
//! invisible to clients: their operations are resubscribed on a new upstream connection.
//! Past the window, or when the upstream is unreachable, clients get a GraphQL error and
//! completion. A dial that fails is made once per security context, with backoff.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use subplex_tests::ws::RawClient;
use subplex_tests::*;

fn assert_failure_then_complete(lines: &[Value], code: &str, who: &str) {
    let n = lines.len();
    assert!(n >= 2, "{who}: too few lines: {lines:#?}");
    assert_eq!(lines[n - 1]["type"], "complete", "{who}: {lines:#?}");
    let failure = &lines[n - 2];
    assert_eq!(failure["type"], "next", "{who}: {lines:#?}");
    assert_eq!(
        failure["payload"]["errors"][0]["extensions"]["code"], code,
        "{who}: {lines:#?}"
    );
}

/// The restart tests each run 200 clients and two servers: one at a time, so that on a
/// small machine their timing measures the gateway, not three of them competing for CPU.
static ONE_RESTART_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How many upstream subscriptions served a client: its first `forever` counter, and each
/// one that did not follow the previous (the counter restarts at 1 with a new upstream
/// subscription). A client that joined a running deduplicated operation starts past 1.
fn starts(lines: &[Value]) -> usize {
    let mut previous = None;
    let mut starts = 0;
    for line in lines {
        let Some(n) = line["payload"]["data"]["forever"]["n"].as_u64() else {
            continue;
        };
        if previous.is_none_or(|p| n != p + 1) {
            starts += 1;
        }
        previous = Some(n);
    }
    starts
}

/// 200 live subscriptions (graphql-ws, subscriptions-transport-ws and graphql-sse clients,
/// four users) survive a kill and restart of `kind` on the same port, and end upstream
/// when their clients leave.
async fn restart_is_invisible_to_clients(kind: Upstream) {
    const CLIENTS: usize = 200;
    // Over WebSocket: four users, each one security context for its WebSocket clients
    // (the same init payload from both libraries) and one for its SSE clients (a header,
    // `{}`); the identical operations of each context are one upstream subscription.
    // Over GraphQL over SSE every operation is its own request, never shared.
    let upstream_operations = if kind == Upstream::YogaSseOnly {
        CLIENTS as u64
    } else {
        8
    };
    const KINDS: [&str; 3] = ["graphql-ws", "subscriptions-transport-ws", "graphql-sse"];
    let _alone = ONE_RESTART_AT_A_TIME.lock().await;
    let mut server = NodeServer::start(kind).await;
    let port = server.port;
    // max_ms bounds the wait between the server being back and the next dial; the
    // defaults (100 ms doubling to 5 s) are otherwise in force.
    let gateway = TestGateway::for_upstream(
        port,
        kind.protocol(),
        "[upstreams.up.reconnect]\nmax_ms = 1000",
    )
    .await;
    let query = "subscription { forever(intervalMs: 1000) { n user } }";
    let clients = (0..CLIENTS)
        .map(|i| {
            let kind = KINDS[i % KINDS.len()];
            let mut spec = client(kind, &gateway.url(), query, &format!("u{}", i % 4));
            if kind == "subscriptions-transport-ws" {
                // The one option not at its default: the library gives up on a socket still
                // connecting after `minTimeout` (1 s), and 200 clients starting at once on a
                // loaded 2-core test machine can take longer than that to connect.
                spec["options"] = json!({ "minTimeout": 10_000 });
            }
            spec
        })
        .collect();
    let mut held = HeldClients::subscribe(clients).await;
    server
        .wait_for("every subscription live upstream", |c| {
            c.subscriptions_active == upstream_operations
        })
        .await;

    server.kill().await;
    let restarted = NodeServer::start_on(kind, port).await;
    let back = Instant::now();
    for i in 0..CLIENTS {
        held.wait_until(i, |lines| starts(lines) >= 2).await;
    }
    let all_receiving = back.elapsed();
    assert!(
        all_receiving < Duration::from_secs(2),
        "{kind:?}: every client received again only {all_receiving:?} after the restart"
    );

    // Exactly one upstream subscription per live upstream operation: none lost, none
    // doubled.
    restarted
        .wait_for("every operation resubscribed", |c| {
            c.subscriptions_active == upstream_operations
        })
        .await;
    let counters = restarted.counters();
    assert_eq!(counters.subscriptions_active, upstream_operations);
    // One connection per security context, each dialled once after the restart.
    assert_eq!(counters.connections_open, counters.connections_total);

    // No client saw an error or an end: each client library reports a closed connection
    // as an error (retries are off in the driver), so none was closed either.
    for (i, lines) in held.lines().iter().enumerate() {
        for line in lines {
            assert_eq!(line["type"], "next", "{kind:?} client {i}: {lines:#?}");
            assert!(
                line["payload"]["errors"].is_null(),
                "{kind:?} client {i}: {lines:#?}"
            );
        }
        assert_eq!(starts(lines), 2, "{kind:?} client {i}: {lines:#?}");
    }
    held.stop().await;
    // Clients that leave end their operations upstream.
    restarted
        .wait_for("every subscription ended upstream", |c| {
            c.subscriptions_active == 0
        })
        .await;
    eprintln!("{kind:?}: {CLIENTS} clients receiving again {all_receiving:?} after the restart");
}

#[tokio::test]
async fn yoga_restart_is_invisible_to_200_clients() {
    restart_is_invisible_to_clients(Upstream::Yoga).await;
}

#[tokio::test]
async fn legacy_restart_is_invisible_to_200_clients() {
    restart_is_invisible_to_clients(Upstream::Legacy).await;
}

/// Over GraphQL over SSE each operation is its own request: the cut streams are reopened.
#[tokio::test]
async fn sse_only_yoga_restart_is_invisible_to_200_clients() {
    restart_is_invisible_to_clients(Upstream::YogaSseOnly).await;
}

#[tokio::test]
async fn killed_upstream_past_the_give_up_window_errors_and_completes_every_client() {
    let mut server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(
        server.port,
        "graphql-transport-ws",
        "[upstreams.up.reconnect]\ngive_up_after_ms = 500",
    )
    .await;
    let query = "subscription { forever(intervalMs: 50) { n user } }";
    let clients = CLIENT_KINDS
        .iter()
        .map(|k| client(k, &gateway.url(), query, "erin"))
        .collect();
    let mut held = HeldClients::subscribe(clients).await;

    server.kill().await;
    for i in 0..CLIENT_KINDS.len() {
        // The complete line is the last line each client prints.
        held.wait_until(i, |lines| {
            lines
                .last()
                .is_some_and(|l| l["type"] == "complete" || l["type"] == "error")
        })
        .await;
    }
    let lines = held.lines();
    for (kind, client_lines) in CLIENT_KINDS.iter().zip(&lines) {
        // The server is gone, so the last redial was refused.
        assert_failure_then_complete(client_lines, "UPSTREAM_UNAVAILABLE", kind);
        let message = client_lines[client_lines.len() - 2]["payload"]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.starts_with("gave up reconnecting to upstream \"up\" after 5"),
            "{message}"
        );
        assert!(
            message.contains("last error: could not connect to upstream \"up\""),
            "{message}"
        );
    }
    held.stop().await;
}

#[tokio::test]
async fn unreachable_upstream_fails_the_operation_and_the_gateway_keeps_serving() {
    let server = NodeServer::start(Upstream::Yoga).await;
    // Port 9 (discard) on loopback: nothing listens there.
    let gateway = TestGateway::start(&format!(
        "[upstreams.down]\nurl = \"http://127.0.0.1:9/graphql\"\nconnect_timeout_ms = 2000\n\
         [upstreams.down.reconnect]\ngive_up_after_ms = 300\n\
         [upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\n\
         [[routes]]\npath = \"/down\"\nupstream = \"down\"\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        server.port
    ))
    .await;
    let down_url = format!("http://{}/down", gateway.addr);
    let query = "subscription { ticks(count: 2) { n user } }";
    let results = run_clients(vec![
        client("graphql-ws", &down_url, query, "frank"),
        client("graphql-sse", &down_url, query, "frank"),
        client("graphql-ws", &gateway.url(), query, "frank"),
    ])
    .await;
    assert_failure_then_complete(&results[0], "UPSTREAM_UNAVAILABLE", "graphql-ws on /down");
    assert_failure_then_complete(&results[1], "UPSTREAM_UNAVAILABLE", "graphql-sse on /down");
    assert_eq!(results[2], expected_tick_lines("frank", 2));
}

/// A listener that accepts TCP connections, counts them and drops each at once, as a
/// crashing server would: every WebSocket handshake or HTTP request to it fails in a
/// retryable way.
struct DroppingListener {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl DroppingListener {
    async fn start() -> DroppingListener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        DroppingListener {
            port,
            accepted,
            task,
        }
    }
}

impl Drop for DroppingListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// 200 subscribes (one client, one security context) to an upstream that drops every
/// connection, with a 1 s give-up window: every one gets `UPSTREAM_UNAVAILABLE` then
/// `complete`, after a handful of dials made one at a time (backoff bounds 100, 200,
/// 400, … ms, each delay at least half its bound), not one dial per subscriber.
async fn burst_to_a_dead_upstream(protocol: &str) {
    const BURST: usize = 200;
    let dead = DroppingListener::start().await;
    let gateway = TestGateway::for_upstream(
        dead.port,
        protocol,
        "[upstreams.up.reconnect]\ninitial_ms = 100\nmax_ms = 5000\ngive_up_after_ms = 1000",
    )
    .await;
    let mut client = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    client.init(json!({})).await;
    for id in 0..BURST {
        client
            .send(json!({ "type": "subscribe", "id": id.to_string(), "payload": { "query": "subscription { a }" } }))
            .await;
    }
    let mut failed = 0;
    let mut completed = 0;
    while completed < BURST {
        let message = client.recv_json().await;
        match message["type"].as_str() {
            Some("next") => {
                assert_eq!(
                    message["payload"]["errors"][0]["extensions"]["code"], "UPSTREAM_UNAVAILABLE",
                    "{protocol}: {message}"
                );
                failed += 1;
            }
            Some("complete") => completed += 1,
            _ => panic!("{protocol}: unexpected {message}"),
        }
    }
    assert_eq!(failed, BURST, "{protocol}");
    let dialled = dead.accepted.load(Ordering::SeqCst);
    assert!(
        (2..=6).contains(&dialled),
        "{protocol}: {dialled} dials for {BURST} subscribes"
    );
}

#[tokio::test]
async fn a_burst_of_subscribes_to_a_dead_upstream_dials_one_at_a_time_with_backoff() {
    burst_to_a_dead_upstream("graphql-transport-ws").await;
}

/// The same over GraphQL over SSE, where each operation is its own request: the
/// operations of the upstream take turns while it is not known to answer.
#[tokio::test]
async fn a_burst_of_sse_operations_to_a_dead_upstream_is_one_request_at_a_time() {
    burst_to_a_dead_upstream("sse").await;
}
