//! Queries and mutations from every client transport, each through its own client
//! library: WebSocket (both dialects), SSE (distinct connections and single connection),
//! `EventSource`, and Apollo Client's `HttpLink` (plain HTTP for queries and mutations,
//! next to its multipart subscriptions).

use serde_json::{json, Value};
use subplex_tests::http::{expected_step_lines, run_http_client, yoga_behind_gateway};
use subplex_tests::*;

const QUERY: &str = "{ whoami }";
const MUTATION: &str = "mutation { echo(message: \"hi\") }";

fn whoami() -> Value {
    json!({ "data": { "whoami": "alice" } })
}

fn echo() -> Value {
    json!({ "data": { "echo": "hi" } })
}

#[tokio::test]
async fn queries_and_mutations_work_over_every_transport() {
    let (_server, gateway) = yoga_behind_gateway().await;
    let url = gateway.url();

    let mut clients = Vec::new();
    let mut expected = Vec::new();
    for kind in CLIENT_KINDS {
        clients.push(client(kind, &url, QUERY, "alice"));
        expected.push((kind, whoami()));
        // EventSource can only GET, and a mutation over GET is refused (405) by design.
        if kind != "eventsource" {
            clients.push(client(kind, &url, MUTATION, "alice"));
            expected.push((kind, echo()));
        }
    }
    let lines = run_clients(clients).await;
    for ((kind, result), lines) in expected.into_iter().zip(lines) {
        assert_eq!(
            lines,
            vec![
                json!({ "type": "next", "payload": result }),
                json!({ "type": "complete" }),
            ],
            "{kind}"
        );
    }

    for (client, steps) in [
        (
            "graphql-sse-single",
            json!([{ "query": QUERY }, { "query": MUTATION }]),
        ),
        (
            "apollo-http-link",
            json!([
                { "query": QUERY, "kind": "query" },
                { "query": MUTATION, "kind": "mutation" },
            ]),
        ),
    ] {
        let lines = run_http_client(json!({
            "client": client,
            "url": url,
            "headers": { "authorization": "Bearer alice" },
            "steps": steps,
        }))
        .await;
        assert_eq!(
            lines,
            expected_step_lines(vec![vec![whoami()], vec![echo()]]),
            "{client}"
        );
    }
}
