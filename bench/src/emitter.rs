//! The emitter: a deliberately fast graphql-transport-ws upstream, run as
//! `subplex-bench emitter` in a process of its own.
//!
//! It accepts any number of WebSocket connections, acknowledges `connection_init`, and
//! serves every `subscription { tick … }` with [`tick`](crate::tick) events. Ticks come
//! from one ticker for the whole process, which hands each tick over a bounded queue to
//! the connections that have a subscription in the tick's slot:
//!
//! - `broadcast` mode: every subscription gets every tick (`rate` ticks per second), so
//!   all subscriptions receive an event at the same instant — the fan-out case;
//! - `spread` mode: the period is cut into 1 ms slots and each subscription owns one, so
//!   events arrive evenly spread over the period at the same per-subscription rate.
//!
//! A connection writes a tick's frames with `feed` and flushes once. The emitter still
//! works harder for a thousand connections with one subscription each (the baseline)
//! than for one connection carrying a thousand (subplex): that difference is a real
//! upstream saving, and the harness reports the emitter's CPU time so it shows.
//!
//! The parent drives it over stdin/stdout, one line each way:
//!
//! | stdin          | stdout                       |
//! |----------------|------------------------------|
//! | (on start)     | `READY <address>`            |
//! | `start <n>`    | `OK` — each subscription gets `n` events from now |
//! | `prime`        | `OK` — each subscription gets one priming event (`n` = 0) now |
//! | `stats`        | `STATS <EmitterStats JSON>`  |
//!
//! Priming proves that every client is attached end to end before the measured events
//! start: a gateway that shares one upstream subscription among its clients (as subplex
//! with deduplication, Hive Router and the floor do) shows the upstream only one
//! subscription, so counting upstream subscriptions cannot tell when all clients joined.
//!
//! It exits when stdin closes (the parent ended) or after `--max-seconds`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use subplex_protocol::transport_ws::server::{Accepted, ServerRules};
use subplex_protocol::transport_ws::{ClientMessage, ServerMessage};
use subplex_protocol::{close, graphql_errors};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::tick::{self, NextFrame};

/// How subscriptions share the ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TickMode {
    /// Every subscription gets every tick, all at once.
    Broadcast,
    /// The period is cut into 1 ms slots and subscriptions are spread over them.
    Spread,
}

/// Fastest ticker in `spread` mode: tokio's timers have millisecond resolution, so finer
/// slots would only fire in bursts anyway.
const SPREAD_TICKS_PER_SECOND: u64 = 1000;

/// Ticks a connection may fall behind before it skips some (counted in
/// [`EmitterStats::connection_ticks_skipped`]). Far more than a healthy run needs.
const TICK_QUEUE: usize = 4096;

/// The tick sequence value that means "send every subscription a priming event".
const PRIME: u64 = u64::MAX;

/// Largest client message accepted; bench clients send tiny ones.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Command line of `subplex-bench emitter`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmitterArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Events per second per subscription.
    #[arg(long, default_value_t = 10)]
    pub rate: u64,
    #[arg(long, value_enum, default_value = "broadcast")]
    pub mode: TickMode,
    /// Approximate size of each event's `payload` JSON, in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload_bytes: usize,
    /// Exit after this long even if the parent never closes stdin.
    #[arg(long, default_value_t = 900)]
    pub max_seconds: u64,
}

/// Counters the parent reads with `stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EmitterStats {
    pub connections_total: u64,
    pub connections_open: i64,
    pub subscriptions_total: u64,
    pub subscriptions_active: i64,
    pub events_sent: u64,
    /// Whether the ticker is still running.
    pub ticking: bool,
    /// Ticks a connection missed because it was more than TICK_QUEUE ticks behind
    /// (its peer was not reading fast enough). Those events were never sent.
    pub connection_ticks_skipped: u64,
}

#[derive(Default)]
struct Counters {
    connections_total: AtomicU64,
    connections_open: AtomicI64,
    subscriptions_total: AtomicU64,
    subscriptions_active: AtomicI64,
    events_sent: AtomicU64,
    ticking: AtomicBool,
    connection_ticks_skipped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> EmitterStats {
        EmitterStats {
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            subscriptions_total: self.subscriptions_total.load(Ordering::Relaxed),
            subscriptions_active: self.subscriptions_active.load(Ordering::Relaxed),
            events_sent: self.events_sent.load(Ordering::Relaxed),
            ticking: self.ticking.load(Ordering::Relaxed),
            connection_ticks_skipped: self.connection_ticks_skipped.load(Ordering::Relaxed),
        }
    }
}

/// What every connection task shares.
struct Shared {
    counters: Counters,
    slots: u64,
    payload_bytes: usize,
    /// Assigns spread-mode slots round-robin.
    next_subscription: AtomicU64,
    next_connection: AtomicU64,
    /// For each slot, the connections with at least one subscription in it and where to
    /// send them its ticks. The ticker wakes only those: in spread mode most connections
    /// have nothing to send on a given tick, and waking them all would cost the emitter
    /// more than the systems it measures.
    listeners: Mutex<Vec<HashMap<u64, mpsc::Sender<u64>>>>,
}

impl Shared {
    fn listeners(&self) -> MutexGuard<'_, Vec<HashMap<u64, mpsc::Sender<u64>>>> {
        // Nothing panics while holding the lock; recover rather than cascade if it did.
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs the emitter until stdin closes or `max_seconds` pass.
pub async fn main(args: EmitterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1");
    let listener = crate::helper::listen(args.listen)
        .with_context(|| format!("emitter: cannot listen on {}", args.listen))?;
    let slots = match args.mode {
        TickMode::Broadcast => 1,
        // One slot per millisecond of the period.
        TickMode::Spread => (SPREAD_TICKS_PER_SECOND / args.rate).max(1),
    };
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        slots,
        payload_bytes: args.payload_bytes,
        next_subscription: AtomicU64::new(0),
        next_connection: AtomicU64::new(0),
        listeners: Mutex::new((0..slots).map(|_| HashMap::new()).collect()),
    });
    crate::helper::announce_ready(&listener).await?;
    let control = control_loop(shared.clone(), args.rate);
    let accept = crate::helper::accept_loop("emitter", &listener, |stream| {
        tokio::spawn(serve(stream, shared.clone()));
    });
    tokio::select! {
        () = accept => Ok(()),
        result = control => result,
        () = time::sleep(Duration::from_secs(args.max_seconds)) => {
            eprintln!("emitter: --max-seconds reached; exiting");
            Ok(())
        }
    }
}

/// Reads commands from stdin until it closes.
async fn control_loop(shared: Arc<Shared>, rate: u64) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut ticker: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(line) = lines.next_line().await? {
        let reply = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["start", count] => {
                let count: u64 = count.parse().context("start <events per subscription>")?;
                if let Some(previous) = ticker.take() {
                    previous.abort();
                }
                shared.counters.ticking.store(true, Ordering::Relaxed);
                ticker = Some(tokio::spawn(run_ticker(shared.clone(), rate, count)));
                "OK".to_owned()
            }
            ["prime"] => {
                prime(&shared);
                "OK".to_owned()
            }
            ["stats"] => format!(
                "STATS {}",
                serde_json::to_string(&shared.counters.snapshot())?
            ),
            _ => format!("ERR unknown command {line:?}"),
        };
        stdout.write_all(reply.as_bytes()).await?;
        stdout.write_all(b"\n").await?;
        stdout.flush().await?;
    }
    Ok(())
}

/// Sends `count * slots` ticks, one slot period apart, the first one slot period from now
/// (so the last lands at `count / rate` seconds and rates computed over that time are
/// exact). Tick `seq` goes to the connections with subscriptions in slot `seq % slots`.
async fn run_ticker(shared: Arc<Shared>, rate: u64, count: u64) {
    let every = Duration::from_nanos(1_000_000_000 / (rate * shared.slots).max(1));
    let mut interval = time::interval_at(Instant::now() + every, every);
    // Burst: a ticker that was descheduled catches up, so the number of events stays
    // exact; connections that cannot keep up skip ticks and count them.
    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for seq in 0..count * shared.slots {
        interval.tick().await;
        let slot = (seq % shared.slots) as usize;
        let mut skipped = 0;
        for ticks in shared.listeners()[slot].values() {
            // Closed: the connection is ending and about to unregister.
            if let Err(mpsc::error::TrySendError::Full(_)) = ticks.try_send(seq) {
                skipped += 1;
            }
        }
        if skipped > 0 {
            let counter = &shared.counters.connection_ticks_skipped;
            counter.fetch_add(skipped, Ordering::Relaxed);
        }
    }
    shared.counters.ticking.store(false, Ordering::Relaxed);
}

/// Hands every connection with subscriptions a priming tick, in every slot.
fn prime(shared: &Shared) {
    let listeners = shared.listeners();
    let mut primed = std::collections::HashSet::new();
    for ticks in listeners.iter().flat_map(|slot| slot.iter()) {
        // A connection registered in several slots gets one priming tick; a full queue
        // means it is far behind anyway and the harness primes again.
        if primed.insert(*ticks.0) {
            let _ = ticks.1.try_send(PRIME);
        }
    }
}

/// One subscription on a connection.
struct Subscription {
    /// Events sent so far; the next event carries `sent + 1`.
    sent: u64,
    frame: NextFrame,
}

/// One connection's subscriptions, grouped by slot, and its registration with the
/// ticker: registered for a slot while it has a subscription in it.
struct Subscriptions<'a> {
    shared: &'a Shared,
    connection: u64,
    ticks: mpsc::Sender<u64>,
    by_slot: Vec<HashMap<String, Subscription>>,
}

impl<'a> Subscriptions<'a> {
    fn new(shared: &'a Shared, ticks: mpsc::Sender<u64>) -> Self {
        Subscriptions {
            shared,
            connection: shared.next_connection.fetch_add(1, Ordering::Relaxed),
            ticks,
            by_slot: (0..shared.slots).map(|_| HashMap::new()).collect(),
        }
    }

    /// Adds operation `id` (the protocol rules guarantee it is not running already).
    fn add(&mut self, id: String) {
        let shared = self.shared;
        let index = shared.next_subscription.fetch_add(1, Ordering::Relaxed);
        let slot = (index % shared.slots) as usize;
        let frame = NextFrame::new(&id, shared.payload_bytes);
        let group = &mut self.by_slot[slot];
        if group.is_empty() {
            shared.listeners()[slot].insert(self.connection, self.ticks.clone());
        }
        group.insert(id, Subscription { sent: 0, frame });
        shared
            .counters
            .subscriptions_total
            .fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .subscriptions_active
            .fetch_add(1, Ordering::Relaxed);
    }

    fn remove(&mut self, id: &str) {
        for (slot, group) in self.by_slot.iter_mut().enumerate() {
            if group.remove(id).is_some() {
                if group.is_empty() {
                    self.shared.listeners()[slot].remove(&self.connection);
                }
                let active = &self.shared.counters.subscriptions_active;
                active.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

impl Drop for Subscriptions<'_> {
    fn drop(&mut self) {
        let mut listeners = self.shared.listeners();
        let mut active = 0;
        for (slot, group) in self.by_slot.iter().enumerate() {
            if !group.is_empty() {
                listeners[slot].remove(&self.connection);
                active += group.len() as i64;
            }
        }
        let counter = &self.shared.counters.subscriptions_active;
        counter.fetch_sub(active, Ordering::Relaxed);
    }
}

/// Decrements the open-connection count however the task ends.
struct OpenConnection<'a>(&'a Counters);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // The error type is tungstenite's, not ours.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        if crate::helper::offers_subprotocol(request) {
            response.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("graphql-transport-ws"),
            );
        }
        Ok(response)
    };
    let config = Some(crate::harness_socket_config());
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, config).await
    else {
        return;
    };
    let counters = &shared.counters;
    counters.connections_total.fetch_add(1, Ordering::Relaxed);
    counters.connections_open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenConnection(counters);

    // A gateway multiplexes every subscriber of a security context onto one connection:
    // no per-connection operation limit here.
    let mut rules = ServerRules::with_limits(subplex_protocol::OperationLimits {
        max_operations: usize::MAX,
        ..Default::default()
    });
    let (tick_tx, mut ticks) = mpsc::channel(TICK_QUEUE);
    let mut subscriptions = Subscriptions::new(&shared, tick_tx);
    let close = loop {
        // Biased: client messages first, so a `complete` stops its events promptly.
        tokio::select! {
            biased;
            message = ws.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => break Some(bad_request()),
                    // tungstenite answers pings itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
                };
                match on_text(&text, &mut rules, &mut subscriptions) {
                    Ok(None) => {}
                    Ok(Some(reply)) => {
                        if ws.send(Message::text(reply.encode())).await.is_err() {
                            break None;
                        }
                    }
                    Err(close) => break Some(close),
                }
            }
            // Never `None`: `subscriptions` holds a sender.
            Some(seq) = ticks.recv() => {
                let sent = if seq == PRIME {
                    emit_priming(&mut ws, &subscriptions.by_slot).await
                } else {
                    let slot = (seq % shared.slots) as usize;
                    emit(&mut ws, &mut subscriptions.by_slot[slot], counters).await
                };
                if sent.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
    }
}

fn bad_request() -> (u16, String) {
    (close::BAD_REQUEST.code, close::BAD_REQUEST.reason.into())
}

/// Applies one client message: the reply to send, if any, or the close code and reason
/// that end the connection.
fn on_text(
    text: &str,
    rules: &mut ServerRules,
    subscriptions: &mut Subscriptions<'_>,
) -> Result<Option<ServerMessage>, (u16, String)> {
    let message = ClientMessage::decode(text, MAX_MESSAGE_BYTES).map_err(|_| bad_request())?;
    Ok(match rules.receive(message).map_err(|v| v.close())? {
        Accepted::Init { .. } => {
            rules.acknowledged();
            Some(ServerMessage::ConnectionAck { payload: None })
        }
        Accepted::Ping => Some(ServerMessage::Pong { payload: None }),
        Accepted::Pong | Accepted::Ignored => None,
        Accepted::Subscribe { id, request } if tick::is_tick_subscription(&request.query) => {
            subscriptions.add(id);
            None
        }
        Accepted::Subscribe { id, .. } => {
            rules.finished(&id);
            let message = "the emitter serves only `subscription { tick }`";
            let payload = graphql_errors(message, "BAD_REQUEST");
            Some(ServerMessage::Error { id, payload })
        }
        Accepted::Complete { id } => {
            subscriptions.remove(&id);
            None
        }
        // Unreachable with an unlimited operation count; answered like any refusal.
        Accepted::Refused { id, message } => Some(ServerMessage::Error {
            id,
            payload: graphql_errors(&message, "TOO_MANY_OPERATIONS"),
        }),
    })
}

/// Writes one priming event (`n` = 0, not counted) for every subscription, then flushes.
async fn emit_priming(
    ws: &mut WebSocketStream<TcpStream>,
    by_slot: &[HashMap<String, Subscription>],
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    for subscription in by_slot.iter().flat_map(HashMap::values) {
        let frame = subscription.frame.encode(tick::PRIMING_N, tick::now_ns());
        ws.feed(Message::text(frame)).await?;
    }
    ws.flush().await
}

/// Writes one event for every subscription of a slot, then flushes once.
async fn emit(
    ws: &mut WebSocketStream<TcpStream>,
    group: &mut HashMap<String, Subscription>,
    counters: &Counters,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut sent = 0;
    for subscription in group.values_mut() {
        subscription.sent += 1;
        let frame = subscription.frame.encode(subscription.sent, tick::now_ns());
        ws.feed(Message::text(frame)).await?;
        sent += 1;
    }
    if sent > 0 {
        ws.flush().await?;
        counters.events_sent.fetch_add(sent, Ordering::Relaxed);
    }
    Ok(())
}
