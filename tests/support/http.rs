//! Helpers for the HTTP transports' tests: streamed bodies read up to a condition, query
//! strings, and the HTTP subscription clients of `fixtures/http_clients.mjs`.

use std::process::Stdio;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::process::Command;

use crate::{ensure_node_modules, fixtures_dir, NodeServer, TestGateway, Upstream, EVENT_TIMEOUT};

/// Reads a streamed body until `done` holds for the text so far.
pub async fn read_until(
    chunks: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    done: impl Fn(&str) -> bool,
) -> String {
    let mut text = String::new();
    while !done(&text) {
        let chunk = tokio::time::timeout(EVENT_TIMEOUT, chunks.next())
            .await
            .unwrap_or_else(|_| panic!("the stream sends within the timeout; so far: {text:?}"))
            .unwrap_or_else(|| panic!("the stream is still open; so far: {text:?}"))
            .expect("the stream reads cleanly");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    text
}

/// Percent-encodes a query-string value.
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs one client of `http_clients.mjs` through its steps; returns its `next`/`complete`
/// lines in order. Fails the test if the library reported any error.
pub async fn run_http_client(spec: Value) -> Vec<Value> {
    ensure_node_modules();
    let output = tokio::time::timeout(
        EVENT_TIMEOUT,
        Command::new("node")
            .arg("http_clients.mjs")
            .arg(spec.to_string())
            .current_dir(fixtures_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("http_clients.mjs finishes within the timeout")
    .expect("run http_clients.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.ends_with("{\"type\":\"done\"}\n"),
        "http_clients.mjs failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON line"))
        .filter(|line| line["type"] != "done")
        .collect()
}

/// The lines `http_clients.mjs` prints for steps with these results: each step's `next`
/// payloads, then its `complete`.
pub fn expected_step_lines(steps: Vec<Vec<Value>>) -> Vec<Value> {
    let mut lines = Vec::new();
    for (index, payloads) in steps.into_iter().enumerate() {
        for payload in payloads {
            lines.push(serde_json::json!({ "step": index, "type": "next", "payload": payload }));
        }
        lines.push(serde_json::json!({ "step": index, "type": "complete" }));
    }
    lines
}

/// A Yoga fixture server and a gateway in front of it on `/graphql`.
pub async fn yoga_behind_gateway() -> (NodeServer, TestGateway) {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = TestGateway::for_upstream(server.port, "graphql-transport-ws", "").await;
    (server, gateway)
}

/// Reads `stream` to its end, discarding what arrives: `Ok` for an orderly close (EOF),
/// the error's kind for a reset. A gateway that cuts a stuck client resets it.
pub async fn how_the_socket_ends(
    stream: &mut tokio::net::TcpStream,
) -> Result<(), std::io::ErrorKind> {
    use tokio::io::AsyncReadExt;
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::time::timeout(crate::EVENT_TIMEOUT, stream.read(&mut sink))
            .await
            .expect("the socket ends");
        match read {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(error) => return Err(error.kind()),
        }
    }
}

/// A gateway in front of `upstream_port` (graphql-transport-ws) that cuts a client whose
/// write has waited 300 ms, with subscriber queues far above what arrives meanwhile: a
/// stuck client is cut by the write timeout, not by the slow-consumer policy.
pub async fn gateway_cutting_stuck_writes(upstream_port: u16) -> crate::TestGateway {
    crate::TestGateway::start(&format!(
        "[server]\nclient_write_timeout_ms = 300\n\
         [upstreams.up]\nurl = \"http://127.0.0.1:{upstream_port}/graphql\"\nprotocol = \"graphql-transport-ws\"\n\
         subscriber_queue = 100000\nsubscriber_queue_bytes = 268435456\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n"
    ))
    .await
}
