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
fn a_hook_script_that_does_not_compile_refuses_to_start() {
    // The script sits next to the config, named relative to it as users write it.
    let script = std::env::temp_dir().join(format!("subplex-cli-test-{}.rhai", std::process::id()));
    std::fs::write(
        &script,
        "fn on_connection_init(ctx, payload) {\n    payload.x = ;\n}\n",
    )
    .unwrap();
    let script_name = script.file_name().unwrap().to_str().unwrap().to_owned();
    let (stderr, name) = refused_config(&format!(
        "[upstreams.chat]\nurl = \"http://127.0.0.1:4001/graphql\"\nhooks = {script_name:?}\n\n[[routes]]\npath = \"/graphql\"\nupstream = \"chat\"\n",
    ));
    let _ = std::fs::remove_file(&script);
    assert!(
        stderr.contains(&format!("{name}: invalid configuration:")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "upstreams.chat.hooks: {}: line 2: ",
            script.display()
        )),
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

/// An address already taken, on the main or the admin listener: exit 1, naming the key.
#[test]
fn a_taken_address_names_its_key_and_exits_1() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = held.local_addr().unwrap();
    for (config, key) in [
        (format!("[server]\nlisten = \"{address}\"\n"), "server.listen"),
        (
            format!("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = true\nlisten = \"{address}\"\n"),
            "admin.listen",
        ),
    ] {
        let file = config_file(&format!(
            "{config}[upstreams.up]\nurl = \"http://127.0.0.1:9/graphql\"\n[[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n"
        ));
        let output = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&file.0)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!(
                "subplex: cannot start the gateway: {key} {address}: "
            )),
            "{stderr}"
        );
    }
}

/// Runs `subplex check` on a file of the repository; returns its stdout.
fn check_passes(repo_path: &str) -> String {
    let config = format!("{}/../../{repo_path}", env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new(BIN)
        .args(["check", "--config", &config])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn check_accepts_the_example_config() {
    assert!(check_passes("gateway.toml").contains("ok (1 upstreams, 1 routes)"));
}

#[test]
fn check_accepts_the_hooks_example() {
    assert!(check_passes("examples/hasura-hooks.toml").contains("ok (1 upstreams, 1 routes)"));
}

/// The address in the first stdout line of `child`, right after `marker`, and the rest of
/// its stdout, which must stay open: the child dies writing to a closed pipe.
async fn banner_address(
    child: &mut tokio::process::Child,
    marker: &str,
) -> (
    String,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(TIMEOUT, stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = banner
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("unexpected banner: {banner}"))
        .to_owned();
    (addr, stdout)
}

/// The whole answer to a GET of `path` on `addr`, over a connection that then closes.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    answer
}

/// `subplex demo` with its parts on free ports (the admin listener too), stdout piped
/// for its banner.
fn demo_command() -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--upstream-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A graphql-transport-ws WebSocket to the gateway at `addr`, with this `Authorization`.
async fn connect_ws(
    addr: &str,
    authorization: Option<&str>,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    if let Some(authorization) = authorization {
        request
            .headers_mut()
            .insert("authorization", authorization.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// An SSE `GET` of the (URL-encoded) `query`, read until its first `next` event; the
/// response, still open, and the text read so far.
async fn sse_until_first_event(addr: &str, query: &str) -> (reqwest::Response, String) {
    let mut sse = reqwest::Client::new()
        .get(format!("http://{addr}/graphql?query={query}"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("event: next") {
        let chunk = tokio::time::timeout(TIMEOUT, sse.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("the stream is open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    (sse, text)
}

/// Sends SIGTERM to `child`.
fn sigterm(child: &tokio::process::Child) {
    signal(child, "-TERM");
}

/// Sends a signal to `child` with `kill`, e.g. `"-HUP"`.
fn signal(child: &tokio::process::Child, which: &str) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args([which, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The next message on `socket`, as text.
async fn next_text(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> String {
    let message = tokio::time::timeout(TIMEOUT, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    message.into_text().unwrap().to_string()
}

/// The demo serves ticks over WebSocket and its status page on the admin listener it
/// turns on, `subplex healthcheck` finds it healthy (and nothing else), and with debug
/// logging on, neither the Authorization header nor the init payload's secret reaches the
/// logs, which carry no colour codes since stderr is a pipe.
#[tokio::test]
async fn demo_serves_ticks_and_logs_no_secrets() {
    let mut child = demo_command()
        .env("SUBPLEX_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "subplex demo: gateway on http://ADDR/graphql, ..."
    let (addr, mut stdout) = banner_address(&mut child, "gateway on http://").await;
    // "Status page: http://ADMIN/status ...": the demo turns the admin listener on.
    let admin = loop {
        let line = tokio::time::timeout(TIMEOUT, stdout.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the banner names the status page");
        if let Some(rest) = line.strip_prefix("Status page: http://") {
            break rest.split('/').next().unwrap().to_owned();
        }
    };

    let mut socket = connect_ws(&addr, Some("Bearer header-secret-1234")).await;
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
        frames.push(next_text(&mut socket).await);
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

    let status = http_get(&admin, "/status.json").await;
    assert!(status.starts_with("HTTP/1.1 200 OK\r\n"), "{status}");
    assert!(status.contains(r#""name":"demo""#), "{status}");
    assert!(
        status.contains(r#""events_in":3,"events_out":3"#),
        "{status}"
    );

    // The container HEALTHCHECK: 0 against the gateway, 1 where nothing answers.
    let healthy = Command::new(BIN)
        .args(["healthcheck", "--address", &addr])
        .output()
        .await
        .unwrap();
    assert!(healthy.status.success(), "{healthy:?}");
    assert_eq!(
        String::from_utf8_lossy(&healthy.stdout),
        format!("{addr}: healthy\n")
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let unhealthy = Command::new(BIN)
        .args(["healthcheck", "--address", &nobody])
        .output()
        .await
        .unwrap();
    assert_eq!(unhealthy.status.code(), Some(1), "{unhealthy:?}");

    // SIGTERM: the gateway drains and exits 0.
    sigterm(&child);
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
    // stderr is a pipe here, not a terminal: no colour escape sequences reach it.
    assert!(
        !logs.contains("\x1b["),
        "ANSI escapes in piped logs:\n{logs}"
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

/// `subplex probe` against the demo upstream: the protocol, the steps, the config value,
/// exit 0; the header value and the init payload appear nowhere, even at debug level.
#[tokio::test]
async fn probe_names_the_protocol_and_its_evidence() {
    let mut upstream = Command::new(BIN)
        .args([
            "demo",
            "--upstream-only",
            "--upstream-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // "subplex demo upstream (graphql-transport-ws) on ws://ADDR/graphql"
    let (addr, _stdout) = banner_address(&mut upstream, "on ws://").await;

    let output = tokio::time::timeout(
        TIMEOUT,
        Command::new(BIN)
            .args([
                "probe",
                &format!("http://{addr}/graphql"),
                "--header",
                "Authorization: Bearer header-secret-1234",
                "--init-payload",
                r#"{"token":"payload-secret-5678"}"#,
            ])
            .env("SUBPLEX_LOG", "debug")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        format!(
            "http://{addr}/graphql speaks graphql-transport-ws: WebSocket, graphql-transport-ws (the graphql-ws library)\n\
             \n\
             How this was decided:\n  \
             1. WebSocket upgrade offering graphql-transport-ws, graphql-ws: accepted, server selected \"graphql-transport-ws\"\n  \
             2. graphql-transport-ws handshake: sent connection_init, and ping after the ack; received connection_ack, pong: confirmed graphql-transport-ws\n\
             \n\
             In gateway.toml: protocol = \"graphql-transport-ws\" (or \"auto\", the default, to probe at start-up)\n\
             Sent: headers authorization (values not shown); the given init payload (not shown).\n"
        )
    );
    for secret in ["header-secret-1234", "payload-secret-5678"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}\n{stderr}"
        );
    }
}

/// Nothing listening: exit 1 with the reason and the steps tried. Bad arguments: exit 64,
/// naming the argument but not its value.
#[tokio::test]
async fn probe_explains_failures_and_bad_arguments() {
    // Bind and drop: a port on which nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = std::process::Command::new(BIN)
        .args(["probe", &format!("http://127.0.0.1:{port}/graphql")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "http://127.0.0.1:{port}/graphql: no protocol found: the upstream is unreachable: Connection refused"
        )),
        "{stderr}"
    );
    for step in [
        "What was tried:\n  1. WebSocket upgrade offering graphql-transport-ws, graphql-ws: failed: Connection refused",
        "  2. no WebSocket dialect was confirmed: trying GraphQL over SSE\n",
        "  3. GraphQL over SSE: POST { __typename } with Accept: text/event-stream: failed: Connection refused",
        "Is the server running, and is the URL right?",
    ] {
        assert!(stderr.contains(step), "missing {step:?} in:\n{stderr}");
    }

    let output = std::process::Command::new(BIN)
        .args([
            "probe",
            "http://127.0.0.1:1/graphql",
            "--header",
            "Bearer hunter2",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr,
        "subplex probe: --header number 1 is not 'name: value'\n"
    );
}

/// SIGTERM with live clients: the WebSocket client gets Close 1001, the SSE stream ends its
/// operation with an error result and `complete`, and the process exits 0 well within
/// `shutdown_grace_ms` (10 s by default).
#[tokio::test]
async fn sigterm_completes_live_clients_and_exits_0() {
    let mut child = demo_command().stderr(Stdio::null()).spawn().unwrap();
    let (addr, _stdout) = banner_address(&mut child, "gateway on http://").await;

    let mut socket = connect_ws(&addr, None).await;
    for frame in [
        r#"{"type":"connection_init"}"#,
        r#"{"type":"subscribe","id":"1","payload":{"query":"subscription { tick(count: 100000, intervalMs: 20) }"}}"#,
    ] {
        socket.send(Message::text(frame)).await.unwrap();
    }
    let mut frames = Vec::new();
    while frames.len() < 2 {
        frames.push(next_text(&mut socket).await);
    }
    assert_eq!(frames[0], r#"{"type":"connection_ack"}"#);

    let (mut sse, mut text) =
        sse_until_first_event(&addr, "subscription%7Btick(count:100000,intervalMs:20)%7D").await;

    let started = std::time::Instant::now();
    sigterm(&child);

    let close = loop {
        match tokio::time::timeout(TIMEOUT, socket.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("the socket ended without a Close: {other:?}"),
        }
    };
    assert_eq!(close, Some(1001));
    // Reading on sends the answering Close (tungstenite queues it); then the gateway hangs up.
    assert!(tokio::time::timeout(TIMEOUT, socket.next())
        .await
        .unwrap()
        .is_none_or(|end| end.is_err()));
    while let Some(chunk) = tokio::time::timeout(TIMEOUT, sse.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(
        text.ends_with(concat!(
            "event: next\ndata: {\"errors\":[{\"extensions\":{\"code\":\"SHUTTING_DOWN\"},\"message\":\"the gateway is shutting down\"}]}\n\n",
            "event: complete\ndata:\n\n"
        )),
        "{text:?}"
    );
    let exit = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    assert!(
        took < Duration::from_secs(10),
        "exit took {took:?}, beyond the default shutdown_grace_ms"
    );
}

/// A throwaway CA and a certificate it signed for 127.0.0.1: (CA DER, cert PEM, cert DER,
/// key PEM).
fn tls_certificate(name: &str) -> (Vec<u8>, String, Vec<u8>, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("subplex test CA {name}"));
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (
        ca.der().to_vec(),
        cert.pem(),
        cert.der().to_vec(),
        key.serialize_pem(),
    )
}

/// The leaf certificate (DER) the TLS server at `addr` presents, trusting `ca_der`.
async fn served_certificate(addr: &str, ca_der: &[u8]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der.to_vec().into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let tls = tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(ip.into(), tcp),
    )
    .await
    .unwrap()
    .expect("the handshake succeeds with the CA's certificate");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// SIGHUP makes the listener read its certificate files again: a new connection gets the
/// new certificate. A broken file on a later SIGHUP is logged and the last good one stays.
#[tokio::test]
async fn sighup_reloads_the_listener_certificate() {
    let (ca_a, cert_a, der_a, key_a) = tls_certificate("a");
    let cert_file = config_file(&cert_a);
    let key_file = config_file(&key_a);
    let config = config_file(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n[upstreams.up]\nurl = \"http://127.0.0.1:9/graphql\"\nprotocol = \"graphql-transport-ws\"\n[[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        cert_file.0.display().to_string(),
        key_file.0.display().to_string(),
    ));
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config.0)
        .env("SUBPLEX_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // "subplex listening on ADDR"
    let (addr, _stdout) = banner_address(&mut child, "listening on ").await;
    let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
    assert_eq!(served_certificate(&addr, &ca_a).await, der_a);

    let (ca_b, cert_b, der_b, key_b) = tls_certificate("b");
    std::fs::write(&cert_file.0, cert_b).unwrap();
    std::fs::write(&key_file.0, key_b).unwrap();
    signal(&child, "-HUP");
    wait_for_log(&mut logs, "listener tls certificate reloaded").await;
    assert_eq!(served_certificate(&addr, &ca_b).await, der_b);

    std::fs::write(&key_file.0, "not a key\n").unwrap();
    signal(&child, "-HUP");
    let line = wait_for_log(&mut logs, "tls certificate not reloaded").await;
    assert!(line.contains("server.tls.key_file"), "{line}");
    assert_eq!(served_certificate(&addr, &ca_b).await, der_b);
}

/// Reads log lines until one contains `text`; returns it.
async fn wait_for_log(
    logs: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    text: &str,
) -> String {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let line = logs
                .next_line()
                .await
                .unwrap()
                .expect("the gateway still logs");
            if line.contains(text) {
                return line;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no log line with {text:?}"))
}

/// A missing certificate, a file without a certificate, a key that is no key and a key of
/// another certificate: each refuses to start with file, key and reason.
#[test]
fn bad_tls_files_refuse_to_start() {
    let (_, cert_a, _, key_a) = tls_certificate("a");
    let (_, _, _, key_b) = tls_certificate("b");
    let cert = config_file(&cert_a);
    let key = config_file(&key_a);
    let other_key = config_file(&key_b);
    let garbage = config_file("not PEM at all\n");
    let config = |cert: &str, key: &str| {
        format!(
            "[server.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n[upstreams.up]\nurl = \"http://127.0.0.1:9/graphql\"\n[[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n"
        )
    };
    let path = |file: &tempfile_path::TempPath| file.0.display().to_string();
    let cases = [
        (
            config("/no/such/cert.pem", &path(&key)),
            "server.tls.cert_file: cannot read \"/no/such/cert.pem\"".to_owned(),
        ),
        (
            config(&path(&garbage), &path(&key)),
            format!(
                "server.tls.cert_file: \"{}\" holds no PEM certificate",
                path(&garbage)
            ),
        ),
        (
            config(&path(&cert), &path(&garbage)),
            format!(
                "server.tls.key_file: \"{}\" holds no usable PEM private key",
                path(&garbage)
            ),
        ),
        (
            config(&path(&cert), &path(&other_key)),
            format!(
                "server.tls.key_file: \"{}\" does not go with the certificate of \"{}\"",
                path(&other_key),
                path(&cert)
            ),
        ),
    ];
    for (text, expected) in cases {
        let (stderr, file) = refused_config(&text);
        assert!(stderr.contains(&file), "{stderr}");
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    }
}

/// A graphql-transport-ws upstream that acknowledges, answers each `subscribe` with one
/// `next` and keeps it open, and reports every message the gateway sends it (the Close
/// frame as `close <code>`), until the gateway's socket ends.
async fn recording_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // The error type is tungstenite's, not ours.
        #[allow(clippy::result_large_err)]
        let select = |_: &Request, mut response: Response| {
            response.headers_mut().insert(
                "sec-websocket-protocol",
                "graphql-transport-ws".parse().unwrap(),
            );
            Ok(response)
        };
        let mut socket = tokio_tungstenite::accept_hdr_async(stream, select)
            .await
            .unwrap();
        while let Some(Ok(message)) = socket.next().await {
            let text = match message {
                Message::Text(text) => text.to_string(),
                Message::Close(frame) => {
                    format!("close {}", frame.map_or(1005, |f| u16::from(f.code)))
                }
                _ => continue,
            };
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let reply = match frame["type"].as_str() {
                Some("connection_init") => Some(r#"{"type":"connection_ack"}"#.to_owned()),
                Some("subscribe") => Some(format!(
                    r#"{{"type":"next","id":{},"payload":{{"data":{{"tick":1}}}}}}"#,
                    frame["id"]
                )),
                _ => None,
            };
            let _ = tx.send(text);
            if let Some(reply) = reply {
                let _ = socket.send(Message::text(reply)).await;
            }
        }
    });
    (addr, rx)
}

/// The process does not exit before its upstream connections said goodbye: on SIGTERM
/// the upstream gets `complete` for the live operation, then a Close 1001, and only then
/// does the gateway exit 0.
#[tokio::test]
async fn sigterm_completes_the_upstream_subscriptions_before_exiting() {
    let (upstream, mut received) = recording_upstream().await;
    let config = config_file(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.up]\nurl = \"http://{upstream}/graphql\"\nprotocol = \"graphql-transport-ws\"\n[[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n"
    ));
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (addr, _stdout) = banner_address(&mut child, "listening on ").await;
    let (_sse, _) = sse_until_first_event(&addr, "subscription%7Btick%7D").await;

    sigterm(&child);
    let exit = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    let mut messages = Vec::new();
    while let Some(message) = tokio::time::timeout(TIMEOUT, received.recv())
        .await
        .unwrap()
    {
        messages.push(serde_json::from_str(&message).unwrap_or(serde_json::Value::String(message)));
    }
    assert_eq!(
        messages,
        [
            serde_json::json!({ "type": "connection_init", "payload": {} }),
            serde_json::json!({ "type": "subscribe", "id": "1", "payload": { "query": "subscription{tick}" } }),
            serde_json::json!({ "type": "complete", "id": "1" }),
            serde_json::json!("close 1001"),
        ]
    );
}
