//! The load generator: N graphql-transport-ws clients in this process, one task each.
//!
//! Every client connects with the same `Authorization` header and the same init payload
//! (so subplex puts them all in one security context, on one upstream connection),
//! subscribes once to the tick stream, and then reads until told to stop. For each event
//! it records the latency (its receive time minus the emitter's send timestamp) and
//! checks the sequence number: `n` must be exactly one more than the previous one, so
//! loss, duplication and reordering are all visible.
//!
//! Latencies go into a few shared HDR histograms, in small per-client batches so that
//! clients rarely contend on the locks; merging per-client histograms instead would cost
//! hundreds of KiB per client.

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

/// The credentials every client presents: identical, so they share a security context.
const AUTHORIZATION: &str = "Bearer subplex-bench";
const INIT_PAYLOAD: &str = r#"{"authorization":"Bearer subplex-bench"}"#;

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

/// The `extensions.code` subplex puts on the error result of a subscription it cut off.
const SLOW_CONSUMER_CODE: &str = "SLOW_CONSUMER";

/// State the clients share with the harness while they run.
#[derive(Debug)]
struct Shared {
    /// Clients that sent their `subscribe`.
    subscribed: AtomicUsize,
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
    /// Starts `clients` clients against `url`, at most `concurrency` handshakes at a time
    /// (a burst of thousands of SYNs would overflow the listen backlog and measure
    /// retransmission timers instead of the gateway).
    pub fn start(url: &str, clients: usize, concurrency: usize) -> anyhow::Result<Load> {
        let histograms = (0..HISTOGRAM_SHARDS)
            .map(|_| Histogram::new_with_bounds(LATENCY_MIN_NS, LATENCY_MAX_NS, 3).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .context("latency histogram")?;
        let shared = Arc::new(Shared {
            subscribed: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            events: AtomicU64::new(0),
            last_event_ns: AtomicU64::new(0),
            histograms,
        });
        let stop = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let url: Arc<str> = Arc::from(url);
        let mut tasks = JoinSet::new();
        for index in 0..clients {
            tasks.spawn(client(
                index,
                url.clone(),
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
    url: Arc<str>,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) -> ClientReport {
    let mut report = ClientReport::default();
    let opened = {
        // Closed only if the semaphore is dropped, which it is not while clients run.
        let _permit = permits.acquire_owned().await;
        let handshake = time::timeout(HANDSHAKE_TIMEOUT, open(&url));
        let timed_out = || anyhow::anyhow!("not subscribed within {:?}", HANDSHAKE_TIMEOUT);
        tokio::select! {
            () = stop.cancelled() => Err(anyhow::anyhow!("stopped before subscribing")),
            opened = handshake => opened.unwrap_or_else(|_| Err(timed_out())),
        }
    };
    let mut socket = match opened {
        Ok(socket) => socket,
        Err(err) => {
            report.connect_error = Some(format!("client {index}: {err:#}"));
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return report;
        }
    };
    shared.subscribed.fetch_add(1, Ordering::Relaxed);

    let shard = &shared.histograms[index % HISTOGRAM_SHARDS];
    let mut batch = Vec::with_capacity(LATENCY_BATCH);
    loop {
        let message = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            message = socket.next() => message,
        };
        let received_ns = tick::now_ns();
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            // tungstenite answers WebSocket pings itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                report.errors += 1;
                continue;
            }
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                report.disconnected = true;
                break;
            }
        };
        match ServerMessage::decode(text.as_str(), MAX_MESSAGE_BYTES) {
            Ok(ServerMessage::Next { payload, .. }) => match Tick::decode(payload.as_str()) {
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
                None if payload.as_str().contains(SLOW_CONSUMER_CODE) => {
                    report.cut_off_slow_consumer = true;
                }
                None => report.errors += 1,
            },
            Ok(ServerMessage::Error { .. }) => report.errors += 1,
            Ok(ServerMessage::Complete { .. }) => report.completed = true,
            Ok(ServerMessage::Ping { .. }) => {
                let pong = ClientMessage::Pong { payload: None }.encode();
                if socket.send(Message::text(pong)).await.is_err() {
                    report.disconnected = true;
                    break;
                }
            }
            Ok(ServerMessage::Pong { .. } | ServerMessage::ConnectionAck { .. }) => {}
            Err(_) => report.errors += 1,
        }
    }
    record(shard, &mut batch);
    if !report.disconnected {
        // Bounded: a gateway that stopped reading must not hold up the harness.
        let _ = time::timeout(Duration::from_secs(2), socket.close(None)).await;
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

/// Connects, initialises and subscribes.
async fn open(url: &str) -> anyhow::Result<Socket> {
    let mut request = url.into_client_request()?;
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    headers.insert("authorization", HeaderValue::from_static(AUTHORIZATION));
    let (mut socket, response) = tokio_tungstenite::connect_async_with_config(
        request,
        Some(crate::harness_socket_config()),
        true,
    )
    .await?;
    let protocol = response.headers().get("sec-websocket-protocol");
    if protocol.map(HeaderValue::as_bytes) != Some(b"graphql-transport-ws") {
        bail!("server did not accept graphql-transport-ws (got {protocol:?})");
    }
    let init = ClientMessage::ConnectionInit {
        payload: Some(RawJson::parse(INIT_PAYLOAD)?),
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
    let subscribe = ClientMessage::Subscribe {
        id: "1".into(),
        payload: GraphqlRequest::new(tick::QUERY),
    };
    socket.send(Message::text(subscribe.encode())).await?;
    Ok(socket)
}
