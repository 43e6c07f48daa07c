//! The `subplex` binary as a user runs it: config errors, the demo, and what reaches the logs.

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_subplex");
const TIMEOUT: Duration = Duration::from_secs(30);

fn config_file(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with_contents(text)
}

/// A uniquely named file under the system temp dir, removed on drop.
mod tempfile_path {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct TempPath(pub PathBuf);

    impl TempPath {
        pub fn with_contents(text: &str) -> TempPath {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "subplex-cli-test-{}-{}.toml",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).unwrap();
            TempPath(path)
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Runs the gateway with this config text, expecting it to refuse with exit code 64;
/// returns its stderr and the config file's name.
fn refused_config(text: &str) -> (String, String) {
    let file = config_file(text);
    let output = std::process::Command::new(BIN)
        .args(["--config"])
        .arg(&file.0)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (stderr, file.0.display().to_string())
}

#[test]
fn config_errors_name_file_key_and_reason_and_exit_64() {
    let (stderr, name) = refused_config(
        "[upstreams.chat]\nurl = \"http://127.0.0.1:4001/graphql\"\nprotocol = \"graphql-sse\"\n\n[[routes]]\npath = \"/graphql\"\nupstream = \"nope\"\n",
    );
    assert!(
        stderr.contains(&format!("{name}: invalid configuration:")),
        "{stderr}"
    );
    assert!(
        stderr.contains("upstreams.chat.protocol: \"graphql-sse\" is not a protocol"),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[0].upstream: no upstream named \"nope\""),
        "{stderr}"
    );
}

#[test]
fn a_forwarded_cookie_from_any_origin_refuses_to_start() {
    let (stderr, name) = refused_config(
        "[upstreams.app]\nurl = \"http://127.0.0.1:4001/graphql\"\nforward_headers = [\"cookie\"]\n\n[[routes]]\npath = \"/graphql\"\nupstream = \"app\"\n",
    );
    assert!(
        stderr.contains(&format!(
            "{name}: invalid configuration:\n  server.allowed_origins: allows any origin"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("upstreams.app.forward_headers uses the \"cookie\" header"),
        "{stderr}"
    );
    assert!(stderr.contains("allowed_origins = [\""), "{stderr}");
}

#[test]
fn unknown_key_and_missing_file_exit_64() {
    let file = config_file("[server]\nlisten = \"127.0.0.1:0\"\nlisten_port = 3\n");
    let output = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&file.0)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field `listen_port`"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");

    let output = std::process::Command::new(BIN)
        .args(["--config", "does-not-exist.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does-not-exist.toml: cannot read the configuration"),
        "{stderr}"
    );
}

#[test]
fn check_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../gateway.toml");
    let output = std::process::Command::new(BIN)
        .args(["check", "--config", example])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (1 upstreams, 1 routes)"));
}

/// The demo serves ticks over WebSocket, and with debug logging on, neither the
/// Authorization header nor the init payload's secret reaches the logs.
#[tokio::test]
async fn demo_serves_ticks_and_logs_no_secrets() {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--upstream-listen",
            "127.0.0.1:0",
        ])
        .env("SUBPLEX_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(TIMEOUT, stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // "subplex demo: gateway on http://ADDR/graphql, ..."
    let addr = banner
        .split("gateway on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("unexpected banner: {banner}"))
        .to_owned();

    let mut request = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    request.headers_mut().insert(
        "authorization",
        "Bearer header-secret-1234".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(Message::text(
            r#"{"type":"connection_init","payload":{"token":"payload-secret-5678"}}"#,
        ))
        .await
        .unwrap();
    socket
        .send(Message::text(
            r#"{"type":"subscribe","id":"1","payload":{"query":"subscription($n: Int!) { tick(count: $n, intervalMs: 5) }","variables":{"n":2,"password":"variable-secret-9"}}}"#,
        ))
        .await
        .unwrap();
    let mut frames = Vec::new();
    while frames.last().map(String::as_str) != Some(r#"{"type":"complete","id":"1"}"#) {
        let message = tokio::time::timeout(TIMEOUT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        frames.push(message.into_text().unwrap().to_string());
    }
    assert_eq!(
        frames,
        [
            r#"{"type":"connection_ack"}"#,
            r#"{"type":"next","id":"1","payload":{"data":{"tick":1}}}"#,
            r#"{"type":"next","id":"1","payload":{"data":{"tick":2}}}"#,
            r#"{"type":"complete","id":"1"}"#,
        ]
    );
    drop(socket);

    // SIGTERM: the gateway drains and exits 0.
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    assert!(
        logs.contains("operation started"),
        "debug logs were captured:\n{logs}"
    );
    for secret in [
        "header-secret-1234",
        "payload-secret-5678",
        "variable-secret-9",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
}
