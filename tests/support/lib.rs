//! Test harness for subplex's end-to-end tests.
//!
//! - [`TestGateway`]: the whole gateway in-process on an ephemeral port; cancelled on drop.
//! - [`NodeServer`]: a Node GraphQL server from `fixtures/` (Yoga, Apollo, legacy
//!   subscriptions-transport-ws) as a child process, killed on drop. It reports lifecycle
//!   events on stdout; [`NodeServer::wait_for`] awaits a condition on its counters
//!   without polling.
//! - [`run_clients`] / [`HeldClients`]: the real client libraries (graphql-ws,
//!   subscriptions-transport-ws, graphql-sse, eventsource) driven by `fixtures/client.mjs`.
//! - [`ws`]: a raw WebSocket client for protocol edge cases.
//! - [`browser::Browser`]: headless Chromium running a test page, driven by
//!   `fixtures/browser.mjs`.
//! - [`process::GatewayProcess`]: the `subplex` binary as a child process, for signals
//!   (SIGHUP reload, SIGTERM) and its log.
//! - [`http`]: streamed-body helpers and the HTTP subscription clients (graphql-sse
//!   single-connection mode, Apollo Client's `HttpLink`) of `fixtures/http_clients.mjs`.
//!
//! The Node fixtures are installed with `npm ci` on first use if `node_modules` is missing.

pub mod browser;
pub mod fake_upstream;
pub mod http;
pub mod process;
pub mod proxy;
pub mod ws;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use subplex::{Config, Gateway};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Guard on every await of an external event: long enough for a loaded CI machine,
/// short enough that a hang fails the test instead of the run.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The fixtures folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Runs `npm ci` in the fixtures folder once per test run, if it was not done before.
pub(crate) fn ensure_node_modules() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let dir = fixtures_dir();
        if dir.join("node_modules/.package-lock.json").exists() {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm must be installed to run the end-to-end tests");
        assert!(status.success(), "npm ci failed in {}", dir.display());
    });
}

/// Logs for failing tests: `SUBPLEX_LOG=debug cargo test` shows the gateway's logs.
pub fn init_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        if let Ok(filter) = std::env::var("SUBPLEX_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// The gateway running in-process.
#[derive(Debug)]
pub struct TestGateway {
    pub addr: std::net::SocketAddr,
    /// The admin listener's address, when the config enables it (always on port 0).
    pub admin_addr: Option<std::net::SocketAddr>,
    /// The gateway's counts of what happened to clients.
    pub stats: std::sync::Arc<subplex::DownstreamStats>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// Starts a gateway from config text; `server.listen` is forced to an ephemeral port.
    pub async fn start(config_toml: &str) -> TestGateway {
        Self::start_config(Config::parse(config_toml, "test.toml").expect("test config is valid"))
            .await
    }

    /// Starts a gateway from a parsed config (whose hook scripts a test can keep to read
    /// their call counts); `server.listen` is forced to an ephemeral port.
    pub async fn start_config(mut config: Config) -> TestGateway {
        init_tracing();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        if config.admin_listen.is_some() {
            config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        }
        let gateway = Gateway::bind(config).await.expect("bind gateway");
        let addr = gateway.local_addr();
        let admin_addr = gateway.admin_addr();
        let stats = gateway.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway.run(shutdown.clone()));
        TestGateway {
            addr,
            admin_addr,
            stats,
            shutdown,
            task: Some(task),
        }
    }

    /// A gateway with one upstream on route `/graphql`, plus extra `[upstreams.up]` keys.
    pub async fn for_upstream(upstream_port: u16, protocol: &str, extra: &str) -> TestGateway {
        Self::start(&format!(
            "[upstreams.up]\nurl = \"http://127.0.0.1:{upstream_port}/graphql\"\nprotocol = \"{protocol}\"\n{extra}\n\n[[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n"
        ))
        .await
    }

    /// `http://addr/graphql`.
    pub fn url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }

    /// Requests shutdown and waits for the gateway to finish draining.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(EVENT_TIMEOUT, task)
                .await
                .expect("gateway drains within the timeout")
                .expect("gateway task");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Forwards each line a child process writes to `output` into a channel, until the
/// output or the receiver ends.
pub(crate) fn line_channel(
    output: impl AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let mut lines = BufReader::new(output).lines();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects each line a child process writes to `output`, for failure messages.
pub(crate) fn collect_lines(
    output: impl AsyncRead + Unpin + Send + 'static,
) -> Arc<Mutex<Vec<String>>> {
    let collected = Arc::new(Mutex::new(Vec::new()));
    let sink = collected.clone();
    let mut lines = BufReader::new(output).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    collected
}

/// Counters a Node server reports with every lifecycle event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub connections_open: u64,
    pub connections_total: u64,
    pub subscriptions_active: u64,
}

/// Which Node server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// graphql-yoga + graphql-ws `useServer` (graphql-transport-ws).
    Yoga,
    /// @apollo/server + graphql-ws `useServer` (graphql-transport-ws).
    Apollo,
    /// subscriptions-transport-ws (legacy graphql-ws, Hasura's protocol).
    Legacy,
    /// The same, sending `ka` before `connection_ack` as Hasura does.
    LegacyKaBeforeAck,
    /// graphql-yoga alone: GraphQL over SSE and plain HTTP, no WebSocket server.
    YogaSseOnly,
    /// graphql-sse's own server handler: GraphQL over SSE only.
    GraphqlSse,
    /// Yoga + graphql-ws selecting no subprotocol, speaking graphql-transport-ws.
    LiarSelectsNone,
    /// Yoga + graphql-ws selecting `graphql-ws` when offered, speaking graphql-transport-ws.
    LiarSelectsGraphqlWs,
    /// Yoga + graphql-ws refusing anonymous callers: 4403 over WebSocket, 401 over HTTP.
    YogaRequiringAuth,
}

impl Upstream {
    pub const ALL: [Upstream; 4] = [
        Upstream::Yoga,
        Upstream::Apollo,
        Upstream::Legacy,
        Upstream::LegacyKaBeforeAck,
    ];

    /// The gateway's `protocol` value for this server.
    pub fn protocol(self) -> &'static str {
        match self {
            Upstream::Yoga
            | Upstream::Apollo
            | Upstream::YogaRequiringAuth
            | Upstream::LiarSelectsNone
            | Upstream::LiarSelectsGraphqlWs => "graphql-transport-ws",
            Upstream::Legacy | Upstream::LegacyKaBeforeAck => "graphql-ws",
            Upstream::YogaSseOnly | Upstream::GraphqlSse => "sse",
        }
    }

    fn command(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Upstream::Yoga => ("yoga.mjs", &[]),
            Upstream::Apollo => ("apollo.mjs", &[]),
            Upstream::Legacy => ("legacy.mjs", &[]),
            Upstream::LegacyKaBeforeAck => ("legacy.mjs", &["--ka-before-ack"]),
            Upstream::YogaSseOnly => ("yoga.mjs", &["--sse-only"]),
            Upstream::GraphqlSse => ("graphql-sse.mjs", &[]),
            Upstream::LiarSelectsNone => ("yoga.mjs", &["--select", "none"]),
            Upstream::LiarSelectsGraphqlWs => ("yoga.mjs", &["--select", "graphql-ws"]),
            Upstream::YogaRequiringAuth => ("yoga.mjs", &["--require-auth"]),
        }
    }
}

/// A Node GraphQL server child process.
#[derive(Debug)]
pub struct NodeServer {
    pub kind: Upstream,
    pub port: u16,
    child: Child,
    /// Kept open: the server exits when its stdin closes.
    _stdin: ChildStdin,
    counters: watch::Receiver<Counters>,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl NodeServer {
    /// Starts the server on an ephemeral port and waits for its readiness line.
    pub async fn start(kind: Upstream) -> NodeServer {
        Self::start_on(kind, 0).await
    }

    /// Starts the server on `port` (0: any) and waits for its readiness line.
    pub async fn start_on(kind: Upstream, port: u16) -> NodeServer {
        ensure_node_modules();
        let (script, args) = kind.command();
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .args(["--port", &port.to_string()])
            .current_dir(fixtures_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed to run the end-to-end tests");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr_lines = collect_lines(child.stderr.take().unwrap());

        let ready = tokio::time::timeout(EVENT_TIMEOUT, stdout.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{script} printed no READY line; stderr: {:?}",
                    stderr_lines.lock().unwrap()
                )
            })
            .expect("read fixture stdout")
            .unwrap_or_else(|| {
                panic!(
                    "{script} exited before READY; stderr: {:?}",
                    stderr_lines.lock().unwrap()
                )
            });
        let port = ready
            .strip_prefix("READY ")
            .and_then(|json| serde_json::from_str::<Value>(json).ok())
            .and_then(|v| v["port"].as_u64())
            .unwrap_or_else(|| panic!("unexpected first line from {script}: {ready}"))
            as u16;

        let (counters_tx, counters) = watch::channel(Counters::default());
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let counters = Counters {
                    connections_open: event["connectionsOpen"].as_u64().unwrap_or(0),
                    connections_total: event["connectionsTotal"].as_u64().unwrap_or(0),
                    subscriptions_active: event["subscriptionsActive"].as_u64().unwrap_or(0),
                };
                log.lock().unwrap().push(event);
                counters_tx.send_replace(counters);
            }
        });
        NodeServer {
            kind,
            port,
            child,
            _stdin: stdin,
            counters,
            events,
            stderr: stderr_lines,
        }
    }

    /// The counters after the latest event.
    pub fn counters(&self) -> Counters {
        self.counters.borrow().clone()
    }

    /// Every lifecycle event so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Events named `name` so far.
    pub fn events_named(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    /// Waits until the counters satisfy `condition`; fails the test after [`EVENT_TIMEOUT`].
    pub async fn wait_for(&self, what: &str, condition: impl Fn(&Counters) -> bool) -> Counters {
        let mut counters = self.counters.clone();
        let waited = tokio::time::timeout(EVENT_TIMEOUT, counters.wait_for(|c| condition(c)))
            .await
            .map(|result| result.map(|c| c.clone()));
        match waited {
            Ok(Ok(c)) => c,
            _ => panic!(
                "{:?} server: timed out waiting for {what}; counters {:?}\nevents: {:#?}\nstderr: {:?}",
                self.kind,
                self.counters(),
                self.events(),
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// Waits until the server has reported `count` events named `name` in all; fails the
    /// test after [`EVENT_TIMEOUT`]. Unlike the counters, event counts only grow, so a
    /// wait for the n-th end cannot be met by an earlier one.
    pub async fn wait_for_events(&self, name: &str, count: usize) {
        let mut changes = self.counters.clone();
        let waited = tokio::time::timeout(EVENT_TIMEOUT, async {
            loop {
                // Marked seen before the check: an event logged after it wakes `changed`.
                changes.borrow_and_update();
                if self.events_named(name).len() >= count || changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let seen = self.events_named(name).len();
        assert!(
            waited.is_ok() && seen >= count,
            "{:?} server: timed out waiting for {count} {name} events, saw {seen}; stderr: {:?}",
            self.kind,
            self.stderr.lock().unwrap()
        );
    }

    /// Kills the server process at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// One client for `client.mjs`.
pub fn client(kind: &str, url: &str, query: &str, user: &str) -> Value {
    let auth = format!("Bearer {user}");
    match kind {
        // Browser-style WebSocket clients authenticate in the init payload...
        "graphql-ws" | "subscriptions-transport-ws" => json!({
            "client": kind, "url": url, "query": query,
            "connectionParams": { "authorization": auth },
        }),
        // ...SSE clients with a header.
        _ => {
            json!({ "client": kind, "url": url, "query": query, "headers": { "authorization": auth } })
        }
    }
}

/// Every client kind the driver knows.
pub const CLIENT_KINDS: [&str; 4] = [
    "graphql-ws",
    "subscriptions-transport-ws",
    "graphql-sse",
    "eventsource",
];

fn client_command(spec: &Value) -> Command {
    ensure_node_modules();
    let mut command = Command::new("node");
    command
        .arg("client.mjs")
        .arg(spec.to_string())
        .current_dir(fixtures_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs clients to completion; returns each client's lines (`next`/`error`/`complete`)
/// without the `client` tag, in order.
pub async fn run_clients(clients: Vec<Value>) -> Vec<Vec<Value>> {
    let count = clients.len();
    let spec = json!({ "clients": clients });
    let output = tokio::time::timeout(EVENT_TIMEOUT, client_command(&spec).output())
        .await
        .expect("clients finish within the timeout")
        .expect("run client.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client.mjs failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    split_by_client(stdout.lines(), count)
}

/// Splits the driver's output by client. Fails the test on any `library_error`: an error a
/// client library reported outside an operation (a socket error, an unclean close), which
/// users of that library would see.
fn split_by_client<'a>(lines: impl Iterator<Item = &'a str>, count: usize) -> Vec<Vec<Value>> {
    let mut per_client = vec![Vec::new(); count];
    for line in lines {
        let mut value: Value = serde_json::from_str(line)
            .unwrap_or_else(|_| panic!("not JSON from client.mjs: {line}"));
        assert_ne!(
            value["type"], "library_error",
            "a client library reported an error: {line}"
        );
        if let Some(i) = value.get("client").and_then(Value::as_u64) {
            value.as_object_mut().unwrap().remove("client");
            per_client[i as usize].push(value);
        }
    }
    per_client
}

/// Clients that stay subscribed until told to stop.
#[derive(Debug)]
pub struct HeldClients {
    count: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    /// `seen`, parsed once per line and split by client.
    per_client: Vec<Vec<Value>>,
}

impl HeldClients {
    /// Starts the clients and waits until each has received its first event.
    pub async fn subscribe(clients: Vec<Value>) -> HeldClients {
        let count = clients.len();
        let spec = json!({ "holdOpen": true, "clients": clients });
        let mut child = client_command(&spec).spawn().expect("run client.mjs");
        let stdin = child.stdin.take();
        let lines = line_channel(child.stdout.take().unwrap());
        let mut held = HeldClients {
            count,
            child,
            stdin,
            lines,
            seen: Vec::new(),
            per_client: vec![Vec::new(); count],
        };
        held.wait_line(|l| l.contains("\"all_subscribed\"")).await;
        held
    }

    async fn wait_line(&mut self, matches: impl Fn(&str) -> bool) {
        let result = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(line) = self.lines.recv().await {
                let found = matches(&line);
                assert!(!line.contains("\"fatal\""), "client.mjs failed: {line}");
                let parsed = split_by_client(std::iter::once(line.as_str()), self.count);
                for (mine, new) in self.per_client.iter_mut().zip(parsed) {
                    mine.extend(new);
                }
                self.seen.push(line);
                if found {
                    return true;
                }
            }
            false
        })
        .await;
        if !matches!(result, Ok(true)) {
            let mut stderr = String::new();
            if let Some(mut err) = self.child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), err.read_to_string(&mut stderr))
                        .await;
            }
            panic!(
                "client.mjs: expected line not seen; lines: {:#?}\nstderr: {stderr}",
                self.seen
            );
        }
    }

    /// Each client's lines so far.
    pub fn lines(&self) -> Vec<Vec<Value>> {
        self.per_client.clone()
    }

    /// Waits until client `index` has received `n` events in total.
    pub async fn wait_events(&mut self, index: usize, n: usize) {
        let tag = format!("{{\"client\":{index},");
        let mut seen = self.seen.iter().filter(|l| l.starts_with(&tag)).count();
        while seen < n {
            self.wait_line(|l| l.starts_with(&tag)).await;
            seen += 1;
        }
    }

    /// Waits until client `index`'s lines satisfy `condition` (checked again after each of
    /// its lines); fails the test after [`EVENT_TIMEOUT`] like every wait on a client.
    pub async fn wait_until(&mut self, index: usize, condition: impl Fn(&[Value]) -> bool) {
        let tag = format!("{{\"client\":{index},");
        while !condition(&self.per_client[index]) {
            self.wait_line(|l| l.starts_with(&tag)).await;
        }
    }

    /// Unsubscribes every client the library's way and waits for the driver to exit.
    pub async fn stop(mut self) -> Vec<Vec<Value>> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n").await;
        }
        self.wait_line(|l| l.contains("\"done\"")).await;
        let _ = tokio::time::timeout(EVENT_TIMEOUT, self.child.wait()).await;
        self.lines()
    }
}

/// The `next` payloads of one client's lines, and whether it ended with `complete`.
pub fn nexts(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| l["type"] == "next")
        .map(|l| l["payload"].clone())
        .collect()
}

/// The expected `ticks { n user }` results for n = 1..=count.
pub fn expected_ticks(user: &str, count: u64) -> Vec<Value> {
    (1..=count)
        .map(|n| json!({ "data": { "ticks": { "n": n, "user": user } } }))
        .collect()
}

/// `{"type":"next", payload}` lines for the ticks, then `{"type":"complete"}`.
pub fn expected_tick_lines(user: &str, count: u64) -> Vec<Value> {
    let mut lines: Vec<Value> = expected_ticks(user, count)
        .into_iter()
        .map(|payload| json!({ "type": "next", "payload": payload }))
        .collect();
    lines.push(json!({ "type": "complete" }));
    lines
}

/// The embedded demo upstream (graphql-transport-ws; `hello`, `tick(count, intervalMs)`),
/// in-process: the fastest upstream for tests of the gateway's own protocol handling.
#[derive(Debug)]
pub struct DemoServer {
    pub port: u16,
    shutdown: CancellationToken,
}

impl DemoServer {
    pub async fn start() -> DemoServer {
        let demo = subplex_demo::DemoUpstream::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind demo upstream");
        let port = demo.local_addr().port();
        let shutdown = CancellationToken::new();
        tokio::spawn(demo.run(shutdown.clone()));
        DemoServer { port, shutdown }
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A gateway in front of a fresh demo upstream, with extra `[server]` keys.
pub async fn gateway_with_demo(server_keys: &str) -> (TestGateway, DemoServer) {
    let demo = DemoServer::start().await;
    let gateway = TestGateway::start(&format!(
        "[server]\n{server_keys}\n[upstreams.demo]\nurl = \"http://127.0.0.1:{}/graphql\"\n[[routes]]\npath = \"/graphql\"\nupstream = \"demo\"\n",
        demo.port
    ))
    .await;
    (gateway, demo)
}

/// The metric lines of `/metrics` (no comments), sorted, after checking its content type.
pub async fn metric_lines(gateway: std::net::SocketAddr) -> Vec<String> {
    let response = tokio::time::timeout(
        EVENT_TIMEOUT,
        reqwest::get(format!("http://{gateway}/metrics")),
    )
    .await
    .expect("the gateway answers in time")
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}
