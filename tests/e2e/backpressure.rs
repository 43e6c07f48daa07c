//! Backpressure: clients that stop reading cost the gateway a bounded amount of memory, are
//! cut, and never slow the clients that do read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use subplex_tests::http::{gateway_cutting_stuck_writes, how_the_socket_ends};
use subplex_tests::ws::RawClient;
use subplex_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const STUCK_CLIENTS: usize = 1000;
const READERS: usize = 3;
/// 10 events of ~1 KiB per second, one shared (deduplicated) upstream operation. A
/// reader may fall 128 events (12.8 s) behind before it is cut as a slow consumer, which
/// no CPU contention on a shared test machine reaches.
const QUERY: &str = "subscription { forever(intervalMs: 100) { n padding(bytes: 1024) } }";
/// Events every reader must receive, in order, once every stuck client is connected.
const READER_EVENTS: u64 = 100;

/// A client that upgrades, sends `connection_init` and `subscribe`, and then never reads:
/// a raw TCP socket with a 4 KiB receive buffer, so the gateway's writes stall at once,
/// and nothing of it in this process's memory but the socket.
async fn stuck_client(gateway: &TestGateway) -> TcpStream {
    stuck_client_of(gateway, QUERY).await
}

/// [`stuck_client`] subscribed to `query`.
async fn stuck_client_of(gateway: &TestGateway, query: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gateway.addr).await.expect("connect");
    let upgrade = format!(
        "GET /graphql HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n",
        gateway.addr
    );
    stream.write_all(upgrade.as_bytes()).await.unwrap();
    // The 101 response, whole, so that the frames below follow an accepted upgrade.
    // Nothing follows it before our `connection_init`, so reading in chunks over-reads
    // nothing.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut chunk = [0u8; 512];
        let read = tokio::time::timeout(EVENT_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("the upgrade is answered within the timeout")
            .unwrap();
        assert!(read > 0, "connection closed during the upgrade");
        head.extend_from_slice(&chunk[..read]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // The ack needs no reading: the session handles `connection_init` before `subscribe`.
    for message in [
        json!({ "type": "connection_init", "payload": {} }),
        json!({ "type": "subscribe", "id": "1", "payload": { "query": query } }),
    ] {
        stream
            .write_all(&masked_text_frame(&message.to_string()))
            .await
            .unwrap();
    }
    stream
}

/// A client-to-server text frame (RFC 6455 §5.2): FIN, opcode 1, masked with the key
/// 0 (every client frame must be masked; any key is valid). Payloads under 64 KiB.
fn masked_text_frame(text: &str) -> Vec<u8> {
    let len = text.len();
    let mut frame = vec![0x81];
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// This process's resident memory in KiB: the in-process gateway's, plus the test's own
/// sockets and readers.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn open_files_soft_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_that_stop_reading_hold_bounded_memory_and_slow_no_reader() {
    // Two descriptors per stuck client (ours and the gateway's), plus the rest.
    assert!(
        open_files_soft_limit() >= 2 * STUCK_CLIENTS as u64 + 200,
        "this test needs an open-file limit of at least {} (ulimit -n)",
        2 * STUCK_CLIENTS + 200
    );
    let server = NodeServer::start(Upstream::Yoga).await;
    // A stuck client holds at most `subscriber_queue` (128) events of its subscription
    // (then the slow-consumer policy cuts it) and is cut altogether once a write has
    // waited 1 s. The init timeout is raised only because a thousand connections opened
    // at once on a loaded 2-core machine may take longer than 3 s to get to their init.
    let gateway = TestGateway::start(&format!(
        "[server]\nclient_write_timeout_ms = 1000\nconnection_init_timeout_ms = 30000\n\
         [upstreams.up]\nurl = \"http://127.0.0.1:{}/graphql\"\nprotocol = \"graphql-transport-ws\"\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n",
        server.port
    ))
    .await;
    // The readers read from the start, each in its own task, side by side: one left
    // unread would itself be cut. Each checks that it misses nothing and stops once every
    // stuck client is connected and it has read READER_EVENTS more.
    let all_stuck = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut reader = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
        reader.init(json!({})).await;
        reader
            .send(json!({ "type": "subscribe", "id": "r", "payload": { "query": QUERY } }))
            .await;
        let all_stuck = all_stuck.clone();
        readers.push(tokio::spawn(async move {
            let mut last = None;
            let mut after_all_stuck = 0;
            while after_all_stuck < READER_EVENTS {
                let message = reader.recv_json().await;
                let n = message["payload"]["data"]["forever"]["n"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("a tick: {message}"));
                if let Some(last) = last {
                    assert_eq!(n, last + 1, "a reader misses nothing");
                }
                last = Some(n);
                if all_stuck.load(Ordering::Relaxed) {
                    after_all_stuck += 1;
                }
            }
        }));
    }
    let rss_before = rss_kib();

    // Sample the resident memory meanwhile; the sampler is a measurement, not a
    // synchronisation: nothing waits on it.
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(50));
            loop {
                every.tick().await;
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
            }
        })
    };

    let stuck: Vec<TcpStream> = futures_util::stream::iter(0..STUCK_CLIENTS)
        .map(|_| stuck_client(&gateway))
        .buffer_unordered(50)
        .collect()
        .await;
    all_stuck.store(true, Ordering::Relaxed);
    for reader in readers {
        tokio::time::timeout(EVENT_TIMEOUT, reader)
            .await
            .expect("the readers read on within the timeout")
            .expect("a reader got every event");
    }
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed).max(rss_kib());
    let growth_kib = peak.saturating_sub(rss_before);
    eprintln!(
        "RSS {rss_before} KiB before the stuck clients, peak growth {growth_kib} KiB \
         ({} KiB per stuck client); {} stuck clients cut so far",
        growth_kib / STUCK_CLIENTS as u64,
        gateway.stats.stuck_clients_cut()
    );
    // Bounded, a stuck client holds its session, one frame in its socket's write buffer
    // and its queue: at most 128 events of ~1 KiB, and in practice what arrives in the
    // 1 s its write may wait before it is cut; what its socket buffers hold is kernel
    // memory, not the gateway's.
    assert!(
        growth_kib < 64 * 1024,
        "the gateway grew by {growth_kib} KiB with {STUCK_CLIENTS} stuck clients"
    );
    // One upstream subscription served all 1,003 clients.
    assert_eq!(server.events_named("subscription_start").len(), 1);
    drop(stuck);
}

/// A client cut for not reading is reset, not closed: what sits unsent in the gateway's
/// socket buffer is stale by then, and a graceful close would keep it, and the connection,
/// alive until the client had read all of it. Read after the cut, the socket ends in
/// `ECONNRESET`; closed gracefully it would end in EOF.
#[tokio::test]
async fn a_client_cut_for_not_reading_is_reset_not_closed() {
    let server = NodeServer::start(Upstream::Yoga).await;
    let gateway = gateway_cutting_stuck_writes(server.port).await;
    // 6.4 MB/s fills the socket buffers fast; the queue limits are far above what arrives
    // meanwhile, so the cut is the write timeout's, not the slow-consumer policy's.
    let mut stuck = stuck_client_of(
        &gateway,
        "subscription { forever(intervalMs: 10) { n padding(bytes: 65536) } }",
    )
    .await;
    // The cut ends the client's only operation, which stops it upstream.
    server.wait_for_events("subscription_end", 1).await;
    assert_eq!(gateway.stats.stuck_clients_cut(), 1);
    assert_eq!(
        how_the_socket_ends(&mut stuck).await,
        Err(std::io::ErrorKind::ConnectionReset)
    );
}
