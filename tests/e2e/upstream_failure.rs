//! An upstream that dies or is not there: clients get a GraphQL error and completion.

use serde_json::Value;
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

#[tokio::test]
async fn killed_upstream_errors_and_completes_every_client() {
    let mut server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, "graphql-transport-ws", "").await;
    let query = "subscription { forever(intervalMs: 50) { n user } }";
    let clients = CLIENT_KINDS
        .iter()
        .map(|k| client(k, &gateway.url(), query, "erin"))
        .collect();
    let mut held = HeldClients::subscribe(clients).await;

    server.kill().await;
    for i in 0..CLIENT_KINDS.len() {
        // Wait for the complete line: it is the last line each client prints.
        loop {
            let lines = held.lines();
            if lines[i]
                .last()
                .is_some_and(|l| l["type"] == "complete" || l["type"] == "error")
            {
                break;
            }
            let seen = lines[i].len();
            held.wait_events(i, seen + 1).await;
        }
    }
    let lines = held.lines();
    for (kind, client_lines) in CLIENT_KINDS.iter().zip(&lines) {
        assert_failure_then_complete(client_lines, "UPSTREAM_CLOSED", kind);
        let message = client_lines[client_lines.len() - 2]["payload"]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("upstream \"up\""), "{message}");
    }
    held.stop().await;
}

#[tokio::test]
async fn unreachable_upstream_fails_the_operation_and_the_gateway_keeps_serving() {
    let server = NodeServer::start(Upstream::Yoga).await;
    // Port 9 (discard) on loopback: nothing listens there.
    let gateway = TestGateway::start(&format!(
        "[upstreams.down]\nurl = \"http://127.0.0.1:9/graphql\"\nconnect_timeout_ms = 2000\n\
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

#[tokio::test]
async fn a_restarted_upstream_serves_new_subscriptions() {
    let mut server = NodeServer::start(Upstream::Yoga).await;
    let port = server.port;
    let gateway = TestGateway::for_upstream(port, "graphql-transport-ws", "").await;
    let query = "subscription { forever(intervalMs: 50) { n user } }";
    let mut held =
        HeldClients::subscribe(vec![client("graphql-ws", &gateway.url(), query, "max")]).await;

    server.kill().await;
    // The client learns of the failure...
    loop {
        let lines = held.lines();
        if lines[0].last().is_some_and(|l| l["type"] == "complete") {
            break;
        }
        let seen = lines[0].len();
        held.wait_events(0, seen + 1).await;
    }
    held.stop().await;

    // ...and once the upstream is back on the same port, new subscriptions work again.
    let restarted = NodeServer::start_on(Upstream::Yoga, port).await;
    let results = run_clients(vec![client(
        "graphql-ws",
        &gateway.url(),
        "subscription { ticks(count: 2) { n user } }",
        "max",
    )])
    .await;
    assert_eq!(results[0], expected_tick_lines("max", 2));
    assert_eq!(restarted.counters().connections_total, 1);
}
