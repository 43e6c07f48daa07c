//! The load generator: N clients in this process, one task each, over graphql-transport-ws
//! or GraphQL over SSE (distinct connections mode).
//!
//! By default every client connects with the same `Authorization` header and the same init
//! payload (so a gateway puts them all in one security context, on one upstream
//! connection) and the same request; a [`LoadSpec`] can spread them over several security
//! contexts or give each its own variables. Each client subscribes once to the tick stream
//! (a WebSocket client may hold several identical subscriptions in the idle scenario)
//! and then reads until told to stop. Priming events (`n` = 0) mark a client as attached
//! end to end and are not measured. For each event
//! it records the latency (its receive time minus the emitter's send timestamp) and
//! checks the sequence number: `n` must be exactly one more than the previous one, so
//! loss, duplication and reordering are all visible.
//!
//! Latencies go into a few shared HDR histograms, in small per-client batches so that
//! clients rarely contend on the locks; merging per-client histograms instead would cost
//! hundreds of KiB per client.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use subplex_protocol::transport_ws::{ClientMessage, ServerMessage};
use subplex_protocol::{GraphqlRequest, RawJson};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::tick::{self, Tick};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The credentials of security context `k`: clients with the same `k` present identical
/// ones, so they share a security context.
fn authorization(context: usize) -> String {
    format!("Bearer subplex-bench-{context}")
}

/// How clients talk to the system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// graphql-transport-ws.
    Ws,
    /// GraphQL over SSE, distinct connections mode: one POST per subscription.
    Sse,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Ws => "WebSocket",
            Transport::Sse => "SSE",
        })
    }
}

/// What the clients of one scenario run do.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// `ws://…` for [`Transport::Ws`], `http://…` for [`Transport::Sse`].
    pub url: String,
    pub clients: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    pub transport: Transport,
    /// Clients are spread round-robin over this many security contexts.
    pub contexts: usize,
    /// Each client subscribes with its own `key` variable ([`tick::KEYED_QUERY`]).
    pub distinct: bool,
    /// Subscriptions per WebSocket client, with ids `1`, `2`, …, all with the client's
    /// request (SSE: always one, a subscription is a request). A client counts as primed
    /// once each of them received a priming event.
    pub subscriptions_per_client: usize,
}

impl LoadSpec {
    /// Subscriptions each client holds.
    fn subscriptions(&self) -> usize {
        match self.transport {
            Transport::Ws => self.subscriptions_per_client.max(1),
            Transport::Sse => 1,
        }
    }

    fn authorization(&self, index: usize) -> String {
        authorization(index % self.contexts.max(1))
    }

    fn request(&self, index: usize) -> GraphqlRequest {
        if self.distinct {
            let mut request = GraphqlRequest::new(tick::KEYED_QUERY);
            request.operation_name = Some("KeyedTick".into());
            // A number always parses as JSON.
            request.variables = RawJson::parse(&format!(r#"{{"key":{index}}}"#)).ok();
            request
        } else {
            let mut request = GraphqlRequest::new(tick::QUERY);
            request.operation_name = Some("Tick".into());
            request
        }
    }
}

/// Connect, init and subscribe must finish within this per client.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest frame a client accepts.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Latencies a client collects before taking a histogram lock.
const LATENCY_BATCH: usize = 64;
const HISTOGRAM_SHARDS: usize = 8;
/// Recorded range: 1 µs to 60 s, 3 significant digits.
const LATENCY_MIN_NS: u64 = 1_000;
const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// The `extensions.code` subplex puts on the error result of an SSE subscription it cut
/// off; a WebSocket it closes with `close::SLOW_CONSUMER` (1013) instead.
const SLOW_CONSUMER_CODE: &str = "SLOW_CONSUMER";

/// State the clients share with the harness while they run.
#[derive(Debug)]
struct Shared {
    /// Clients that sent their `subscribe` (WebSocket) or got the response head (SSE).
    subscribed: AtomicUsize,
    /// When the last client subscribed, ns since the epoch.
    last_subscribed_ns: AtomicU64,
    /// Clients that received a priming event on each of their subscriptions.
    primed: AtomicUsize,
    /// Clients that gave up before subscribing.
    failed: AtomicUsize,
    /// Tick events received by all clients.
    events: AtomicU64,
    /// Receive time of the latest event, ns since the epoch.
    last_event_ns: AtomicU64,
    histograms: Vec<Mutex<Histogram<u64>>>,
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientReport {
    connect_error: Option<String>,
    events: u64,
    last_n: u64,
    /// Events missing from the sequence (sum of the gaps).
    missing: u64,
    /// Events whose `n` was not above the previous one.
    out_of_order: u64,
    /// Events stamped after they were received (clock trouble): recorded as 0.
    negative_latency: u64,
    cut_off_slow_consumer: bool,
    /// Error results and `error` messages other than the slow-consumer cut-off.
    errors: u64,
    completed: bool,
    /// The server closed or dropped the connection before the harness stopped the client.
    disconnected: bool,
    primed: bool,
    /// The subscriptions that received a priming event, by id.
    primed_ids: HashSet<Option<String>>,
}

/// The clients of one scenario run.
#[derive(Debug)]
pub struct Load {
    clients: usize,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: JoinSet<ClientReport>,
}

/// Everything the clients saw, added up.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    pub clients: usize,
    pub connect_failures: usize,
    /// The first connect failure's reason, if any.
    pub first_connect_error: Option<String>,
    pub events: u64,
    pub missing: u64,
    pub out_of_order: u64,
    pub negative_latency: u64,
    pub slow_consumer_cutoffs: usize,
    pub errors: u64,
    pub completed: usize,
    pub disconnected: usize,
    /// Lowest and highest per-client event counts.
    pub min_events_per_client: u64,
    pub max_events_per_client: u64,
    #[serde(skip)]
    pub latency: Option<Histogram<u64>>,
}

impl Load {
    /// Starts the clients of `spec`, at most `spec.concurrency` handshakes at a time (a
    /// burst of thousands of SYNs would overflow the listen backlog and measure
    /// retransmission timers instead of the gateway).
    pub fn start(spec: LoadSpec) -> anyhow::Result<Load> {
        let clients = spec.clients;
        let histograms = (0..HISTOGRAM_SHARDS)
            .map(|_| Histogram::new_with_bounds(LATENCY_MIN_NS, LATENCY_MAX_NS, 3).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .context("latency histogram")?;
        let shared = Arc::new(Shared {
            subscribed: AtomicUsize::new(0),
            last_subscribed_ns: AtomicU64::new(0),
            primed: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            events: AtomicU64::new(0),
            last_event_ns: AtomicU64::new(0),
            histograms,
        });
        let stop = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(spec.concurrency.max(1)));
        // One HTTP client for every SSE subscriber: HTTP/1.1 without pipelining, so each
        // concurrent request gets a connection of its own.
        let http = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(0)
            .build()
            .context("HTTP client")?;
        let spec = Arc::new(spec);
        let mut tasks = JoinSet::new();
        for index in 0..clients {
            tasks.spawn(client(
                index,
                spec.clone(),
                http.clone(),
                shared.clone(),
                permits.clone(),
                stop.clone(),
            ));
        }
        Ok(Load {
            clients,
            shared,
            stop,
            tasks,
        })
    }

    /// Waits until every client has subscribed (or failed), up to `timeout`.
    pub async fn wait_subscribed(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = time::Instant::now() + timeout;
        loop {
            let subscribed = self.shared.subscribed.load(Ordering::Relaxed);
            let failed = self.shared.failed.load(Ordering::Relaxed);
            if subscribed + failed >= self.clients {
                if failed > 0 {
                    bail!("{failed} of {} clients could not subscribe", self.clients);
                }
                return Ok(());
            }
            if time::Instant::now() >= deadline {
                bail!(
                    "only {subscribed} of {} clients subscribed within {} s",
                    self.clients,
                    timeout.as_secs()
                );
            }
            time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clients that received a priming event.
    pub fn primed(&self) -> usize {
        self.shared.primed.load(Ordering::Relaxed)
    }

    /// When the last client subscribed (ns since the epoch), 0 before the first.
    pub fn last_subscribed_ns(&self) -> u64 {
        self.shared.last_subscribed_ns.load(Ordering::Relaxed)
    }

    /// Tick events received so far by all clients.
    pub fn events(&self) -> u64 {
        self.shared.events.load(Ordering::Relaxed)
    }

    /// Receive time of the latest event (ns since the epoch), 0 before the first.
    pub fn last_event_ns(&self) -> u64 {
        self.shared.last_event_ns.load(Ordering::Relaxed)
    }

    /// Stops every client (each closes its socket, bounded) and adds up their reports.
    pub async fn finish(mut self) -> LoadSummary {
        self.stop.cancel();
        let mut reports = Vec::with_capacity(self.clients);
        while let Some(joined) = self.tasks.join_next().await {
            // A panicking client is a harness bug; count it as a failed connection.
            reports.push(joined.unwrap_or_else(|err| ClientReport {
                connect_error: Some(format!("client task failed: {err}")),
                ..ClientReport::default()
            }));
        }
        let mut latency: Option<Histogram<u64>> = None;
        for shard in &self.shared.histograms {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match &mut latency {
                None => latency = Some(shard.clone()),
                // Same bounds everywhere, so adding cannot fail.
                Some(total) => {
                    let _ = total.add(&*shard);
                }
            }
        }
        let connected = reports.iter().filter(|r| r.connect_error.is_none());
        LoadSummary {
            clients: self.clients,
            connect_failures: reports.iter().filter(|r| r.connect_error.is_some()).count(),
            first_connect_error: reports.iter().find_map(|r| r.connect_error.clone()),
            events: reports.iter().map(|r| r.events).sum(),
            missing: reports.iter().map(|r| r.missing).sum(),
            out_of_order: reports.iter().map(|r| r.out_of_order).sum(),
            negative_latency: reports.iter().map(|r| r.negative_latency).sum(),
            slow_consumer_cutoffs: reports.iter().filter(|r| r.cut_off_slow_consumer).count(),
            errors: reports.iter().map(|r| r.errors).sum(),
            completed: reports.iter().filter(|r| r.completed).count(),
            disconnected: reports.iter().filter(|r| r.disconnected).count(),
            min_events_per_client: connected.clone().map(|r| r.events).min().unwrap_or(0),
            max_events_per_client: connected.map(|r| r.events).max().unwrap_or(0),
            latency,
        }
    }
}

async fn client(
    index: usize,
    spec: Arc<LoadSpec>,
    http: reqwest::Client,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) -> ClientReport {
    let mut report = ClientReport::default();
    let opened = {
        // Closed only if the semaphore is dropped, which it is not while clients run.
        let _permit = permits.acquire_owned().await;
        let handshake = time::timeout(HANDSHAKE_TIMEOUT, Connection::open(&spec, &http, index));
        let timed_out = || anyhow::anyhow!("not subscribed within {:?}", HANDSHAKE_TIMEOUT);
        tokio::select! {
            () = stop.cancelled() => Err(anyhow::anyhow!("stopped before subscribing")),
            opened = handshake => opened.unwrap_or_else(|_| Err(timed_out())),
        }
    };
    let mut connection = match opened {
        Ok(connection) => connection,
        Err(err) => {
            report.connect_error = Some(format!("client {index}: {err:#}"));
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return report;
        }
    };
    shared.subscribed.fetch_add(1, Ordering::Relaxed);
    shared
        .last_subscribed_ns
        .fetch_max(tick::now_ns(), Ordering::Relaxed);

    let shard = &shared.histograms[index % HISTOGRAM_SHARDS];
    let mut batch = Vec::with_capacity(LATENCY_BATCH);
    // One wait for the stop, polled across events: a fresh `cancelled()` per event
    // registered and dropped a waiter each time, about 5% of this process's CPU at
    // 100,000 events/s.
    let mut stopped = std::pin::pin!(stop.cancelled());
    loop {
        let delivery = tokio::select! {
            biased;
            () = &mut stopped => break,
            delivery = connection.next() => delivery,
        };
        let received_ns = tick::now_ns();
        match delivery {
            Delivery::Result { id, payload } => match Tick::decode(&payload) {
                Some(tick) if tick.n == tick::PRIMING_N => {
                    report.primed_ids.insert(id);
                    let all = report.primed_ids.len() >= spec.subscriptions();
                    if all && !report.primed {
                        report.primed = true;
                        shared.primed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(tick) => {
                    report.on_tick(tick, received_ns, &mut batch);
                    shared.events.fetch_add(1, Ordering::Relaxed);
                    shared
                        .last_event_ns
                        .fetch_max(received_ns, Ordering::Relaxed);
                    if batch.len() == LATENCY_BATCH {
                        record(shard, &mut batch);
                    }
                }
                // An errors-only result: how subplex ends a subscription it cut off.
                None if payload.contains(SLOW_CONSUMER_CODE) => {
                    report.cut_off_slow_consumer = true;
                }
                None => report.errors += 1,
            },
            Delivery::Error => report.errors += 1,
            Delivery::Complete => report.completed = true,
            Delivery::Nothing => {}
            Delivery::CutOff => {
                report.cut_off_slow_consumer = true;
                report.disconnected = true;
                break;
            }
            Delivery::Closed => {
                report.disconnected = true;
                break;
            }
        }
    }
    record(shard, &mut batch);
    if !report.disconnected {
        connection.close().await;
    }
    report
}

impl ClientReport {
    fn on_tick(&mut self, tick: Tick, received_ns: u64, batch: &mut Vec<u64>) {
        self.events += 1;
        if tick.n <= self.last_n {
            self.out_of_order += 1;
        } else {
            self.missing += tick.n - self.last_n - 1;
            self.last_n = tick.n;
        }
        if tick.t > received_ns {
            self.negative_latency += 1;
        }
        batch.push(received_ns.saturating_sub(tick.t));
    }
}

fn record(shard: &Mutex<Histogram<u64>>, batch: &mut Vec<u64>) {
    if batch.is_empty() {
        return;
    }
    let mut histogram = shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for &latency in batch.iter() {
        histogram.saturating_record(latency.clamp(LATENCY_MIN_NS, LATENCY_MAX_NS));
    }
    batch.clear();
}

/// What a connection delivered.
enum Delivery {
    /// A `next` payload: a GraphQL result, as JSON text, and its operation id where the
    /// transport has one.
    Result {
        id: Option<String>,
        payload: String,
    },
    /// An `error` message, a binary frame, or something that does not parse.
    Error,
    Complete,
    /// Pings, acknowledgements, keep-alive comments.
    Nothing,
    /// The server closed the WebSocket as subplex closes a client it cut off as too slow.
    CutOff,
    /// The server closed or dropped the connection.
    Closed,
}

/// A subscribed client connection, over either transport.
enum Connection {
    Ws(Box<Socket>),
    Sse(SseStream),
}

/// A GraphQL over SSE response being read, with the bytes of an incomplete event.
struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl Connection {
    /// Connects, initialises and subscribes client `index`.
    async fn open(spec: &LoadSpec, http: &reqwest::Client, index: usize) -> anyhow::Result<Self> {
        let authorization = spec.authorization(index);
        let request = spec.request(index);
        Ok(match spec.transport {
            Transport::Ws => {
                let subscriptions = spec.subscriptions();
                let socket = open_ws(&spec.url, &authorization, request, subscriptions).await?;
                Connection::Ws(Box::new(socket))
            }
            Transport::Sse => {
                Connection::Sse(open_sse(http, &spec.url, &authorization, request).await?)
            }
        })
    }

    async fn next(&mut self) -> Delivery {
        match self {
            Connection::Ws(socket) => next_ws(socket).await,
            Connection::Sse(stream) => stream.next().await,
        }
    }

    /// Ends the connection; bounded, so a gateway that stopped reading cannot hold up the
    /// harness.
    async fn close(self) {
        if let Connection::Ws(mut socket) = self {
            let _ = time::timeout(Duration::from_secs(2), Socket::close(&mut socket, None)).await;
        }
        // An SSE stream ends when its response is dropped.
    }
}

async fn next_ws(socket: &mut Socket) -> Delivery {
    let text = match socket.next().await {
        Some(Ok(Message::Text(text))) => text,
        // tungstenite answers WebSocket pings itself.
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
            return Delivery::Nothing
        }
        Some(Ok(Message::Binary(_))) => return Delivery::Error,
        Some(Ok(Message::Close(Some(frame))))
            if u16::from(frame.code) == subplex_protocol::close::SLOW_CONSUMER.code =>
        {
            return Delivery::CutOff
        }
        Some(Ok(Message::Close(_)) | Err(_)) | None => return Delivery::Closed,
    };
    match ServerMessage::decode(text.as_str(), MAX_MESSAGE_BYTES) {
        Ok(ServerMessage::Next { id, payload }) => Delivery::Result {
            id: Some(id),
            payload: payload.as_str().to_owned(),
        },
        Ok(ServerMessage::Error { .. }) | Err(_) => Delivery::Error,
        Ok(ServerMessage::Complete { .. }) => Delivery::Complete,
        Ok(ServerMessage::Ping { .. }) => {
            let pong = ClientMessage::Pong { payload: None }.encode();
            match socket.send(Message::text(pong)).await {
                Ok(()) => Delivery::Nothing,
                Err(_) => Delivery::Closed,
            }
        }
        Ok(ServerMessage::Pong { .. } | ServerMessage::ConnectionAck { .. }) => Delivery::Nothing,
    }
}

impl SseStream {
    async fn next(&mut self) -> Delivery {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                return sse_delivery(&event);
            }
            match self.response.chunk().await {
                // Line ends may be CRLF; the event boundary is then "\r\n\r\n".
                Ok(Some(chunk)) => self
                    .buffer
                    .push_str(&String::from_utf8_lossy(&chunk).replace('\r', "")),
                Ok(None) | Err(_) => return Delivery::Closed,
            }
        }
    }
}

/// One SSE event block (lines up to the blank line) as a delivery.
fn sse_delivery(event: &str) -> Delivery {
    let mut kind = "message";
    let mut data = String::new();
    for line in event.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            kind = value.trim();
        } else if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    match kind {
        "next" | "message" if !data.is_empty() => Delivery::Result {
            id: None,
            payload: data,
        },
        "complete" => Delivery::Complete,
        "error" => Delivery::Error,
        // Comments (keep-alives) and empty events.
        _ => Delivery::Nothing,
    }
}

/// POSTs the subscription and reads the response head.
async fn open_sse(
    http: &reqwest::Client,
    url: &str,
    authorization: &str,
    request: GraphqlRequest,
) -> anyhow::Result<SseStream> {
    let body = serde_json::json!({
        "query": request.query,
        "operationName": request.operation_name,
        "variables": request
            .variables
            .map(|v| serde_json::from_str::<serde_json::Value>(v.as_str()))
            .transpose()?,
    });
    let response = http
        .post(url)
        .header("accept", subplex_protocol::sse_client::ACCEPT)
        .header("content-type", "application/json")
        .header("authorization", authorization)
        .body(body.to_string())
        .send()
        .await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !content_type
        .as_deref()
        .is_some_and(subplex_protocol::sse_client::is_event_stream)
        || status != 200
    {
        let text = response.text().await.unwrap_or_default();
        bail!("SSE subscribe answered {status} {content_type:?}: {text:.200}");
    }
    Ok(SseStream {
        response,
        buffer: String::new(),
    })
}

/// Connects, initialises and subscribes over graphql-transport-ws, `subscriptions` times
/// (ids `1`, `2`, …).
async fn open_ws(
    url: &str,
    authorization: &str,
    request: GraphqlRequest,
    subscriptions: usize,
) -> anyhow::Result<Socket> {
    let mut handshake = url.into_client_request()?;
    let headers = handshake.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    headers.insert("authorization", HeaderValue::from_str(authorization)?);
    let (mut socket, response) = tokio_tungstenite::connect_async_with_config(
        handshake,
        Some(crate::harness_socket_config()),
        true,
    )
    .await?;
    let protocol = response.headers().get("sec-websocket-protocol");
    if protocol.map(HeaderValue::as_bytes) != Some(b"graphql-transport-ws") {
        bail!("server did not accept graphql-transport-ws (got {protocol:?})");
    }
    let init_payload = serde_json::json!({ "authorization": authorization }).to_string();
    let init = ClientMessage::ConnectionInit {
        payload: Some(RawJson::parse(&init_payload)?),
    };
    socket.send(Message::text(init.encode())).await?;
    loop {
        let Some(message) = socket.next().await else {
            bail!("connection closed before connection_ack");
        };
        let text = match message? {
            Message::Text(text) => text,
            Message::Close(frame) => bail!("closed before connection_ack: {frame:?}"),
            _ => continue,
        };
        match ServerMessage::decode(text.as_str(), MAX_MESSAGE_BYTES)? {
            ServerMessage::ConnectionAck { .. } => break,
            ServerMessage::Ping { .. } => {
                let pong = ClientMessage::Pong { payload: None }.encode();
                socket.send(Message::text(pong)).await?;
            }
            other => bail!("expected connection_ack, got {other:?}"),
        }
    }
    for id in 1..=subscriptions {
        let subscribe = ClientMessage::Subscribe {
            id: id.to_string(),
            payload: request.clone(),
        };
        socket.feed(Message::text(subscribe.encode())).await?;
    }
    socket.flush().await?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(delivery: Delivery) -> Option<String> {
        match delivery {
            Delivery::Result { payload, .. } => Some(payload),
            _ => None,
        }
    }

    #[test]
    fn sse_next_events_carry_their_data() {
        let event = "event: next\ndata: {\"data\":{\"tick\":{\"n\":1,\"t\":2}}}\n\n";
        assert_eq!(
            result(sse_delivery(event)).as_deref(),
            Some(r#"{"data":{"tick":{"n":1,"t":2}}}"#)
        );
        // Several data lines join with a newline.
        assert_eq!(
            result(sse_delivery("event: next\ndata: {\"a\":\ndata: 1}\n\n")).as_deref(),
            Some("{\"a\":\n1}")
        );
    }

    #[test]
    fn sse_comments_complete_and_error() {
        assert!(matches!(sse_delivery(":\n\n"), Delivery::Nothing));
        assert!(matches!(
            sse_delivery("event: complete\ndata:\n\n"),
            Delivery::Complete
        ));
        assert!(matches!(
            sse_delivery("event: error\ndata: {}\n\n"),
            Delivery::Error
        ));
    }

    #[test]
    fn clients_spread_over_contexts_and_keys() {
        let spec = LoadSpec {
            url: "ws://127.0.0.1:1/graphql".into(),
            clients: 4,
            concurrency: 1,
            transport: Transport::Ws,
            contexts: 2,
            distinct: true,
            subscriptions_per_client: 1,
        };
        assert_eq!(spec.authorization(0), spec.authorization(2));
        assert_ne!(spec.authorization(0), spec.authorization(1));
        let request = spec.request(3);
        assert_eq!(request.query, tick::KEYED_QUERY);
        assert_eq!(request.variables.unwrap().as_str(), r#"{"key":3}"#);
    }
}
