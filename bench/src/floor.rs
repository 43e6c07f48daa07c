//! The floor: the least a fan-out gateway can do, run as `subplex-bench floor` in a
//! process of its own.
//!
//! It holds one upstream connection with one subscription, opened at start with the
//! harness's default credentials, and re-frames every upstream event for every client
//! subscription: the payload is taken from the upstream `next` once, and each client
//! gets its own `next` frame (its own id around the same payload), written and flushed
//! on its own. Clients speak graphql-transport-ws; the floor acknowledges any
//! `connection_init` and serves any `subscribe` with the one shared stream, whatever its
//! query, variables or credentials. So it can stand in only where every client wants the
//! same events: the fan-out, storm and idle scenarios. No keep-alive, no slow-consumer
//! policy beyond a bounded broadcast queue (a client that falls further behind misses
//! events, and the load generator's sequence check reports it).
//!
//! Like the forwarder it prints `READY <address>` and exits when stdin closes or after
//! `--max-seconds`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use subplex_protocol::transport_ws::server::{Accepted, ServerRules};
use subplex_protocol::transport_ws::{ClientMessage, ServerMessage};
use subplex_protocol::{GraphqlRequest, RawJson};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::helper::{self, SUBPROTOCOL};
use crate::tick;

/// Command line of `subplex-bench floor`.
#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// WebSocket URL of the upstream, e.g. ws://127.0.0.1:4001/graphql.
    #[arg(long)]
    pub upstream: String,
    /// `Authorization` header and init payload token for the one upstream connection.
    #[arg(long, default_value = "Bearer subplex-bench-0")]
    pub authorization: String,
    /// Exit after this long even if the parent never closes stdin.
    #[arg(long, default_value_t = 900)]
    pub max_seconds: u64,
}

/// Upstream events a client may fall behind before it misses some.
const BROADCAST_QUEUE: usize = 1024;
/// Largest message accepted from a client or the upstream.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The read buffer of each client socket: the size subplex gives its client sockets (see
/// [`crate::systems::TUNED_READ_BUFFER_BYTES`]).
fn client_socket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(crate::systems::TUNED_READ_BUFFER_BYTES)
}

/// Runs the floor until stdin closes or `max_seconds` pass.
pub async fn main(args: FloorArgs) -> anyhow::Result<()> {
    let listener = helper::listen(args.listen)
        .with_context(|| format!("floor: cannot listen on {}", args.listen))?;
    let (events, _) = broadcast::channel::<Arc<str>>(BROADCAST_QUEUE);
    let upstream = subscribe_upstream(&args.upstream, &args.authorization).await?;
    let read_upstream = relay_upstream(upstream, events.clone());
    let serve = |stream| {
        tokio::spawn(serve_client(stream, events.subscribe()));
    };
    helper::serve_until_released("floor", listener, args.max_seconds, serve, read_upstream).await
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to the upstream, initialises, and starts the one subscription (id `1`).
async fn subscribe_upstream(url: &str, authorization: &str) -> anyhow::Result<Upstream> {
    let mut request = url
        .into_client_request()
        .with_context(|| format!("floor: bad --upstream {url}"))?;
    let headers = request.headers_mut();
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    headers.insert(header::AUTHORIZATION, HeaderValue::from_str(authorization)?);
    let config = Some(client_socket_config());
    let (mut upstream, _) = tokio_tungstenite::connect_async_with_config(request, config, true)
        .await
        .with_context(|| format!("floor: connecting to {url}"))?;
    let init = serde_json::json!({ "authorization": authorization }).to_string();
    let init = ClientMessage::ConnectionInit {
        payload: Some(RawJson::parse(&init)?),
    };
    upstream.send(Message::text(init.encode())).await?;
    loop {
        match upstream.next().await {
            Some(Ok(Message::Text(text))) => {
                if let ServerMessage::ConnectionAck { .. } =
                    ServerMessage::decode(text.as_str(), MAX_MESSAGE_BYTES)?
                {
                    break;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
            None => bail!("floor: the upstream closed before connection_ack"),
        }
    }
    let subscribe = ClientMessage::Subscribe {
        id: "1".into(),
        payload: GraphqlRequest::new(tick::QUERY),
    };
    upstream.send(Message::text(subscribe.encode())).await?;
    Ok(upstream)
}

/// Hands every upstream event's payload to the clients until the upstream ends.
async fn relay_upstream(
    mut upstream: Upstream,
    events: broadcast::Sender<Arc<str>>,
) -> anyhow::Result<()> {
    while let Some(message) = upstream.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        match ServerMessage::decode(text.as_str(), MAX_MESSAGE_BYTES)? {
            // No receivers yet is fine: nobody to deliver to.
            ServerMessage::Next { payload, .. } => {
                let _ = events.send(Arc::from(payload.as_str()));
            }
            ServerMessage::Ping { .. } => {
                let pong = ClientMessage::Pong { payload: None }.encode();
                upstream.send(Message::text(pong)).await?;
            }
            other => bail!("floor: the upstream ended the subscription: {other:?}"),
        }
    }
    bail!("floor: the upstream closed the connection")
}

/// One client: the graphql-transport-ws handshake, then every upstream event re-framed
/// for each of its subscriptions.
async fn serve_client(stream: TcpStream, mut events: broadcast::Receiver<Arc<str>>) {
    let _ = stream.set_nodelay(true);
    // The error type is tungstenite's, not ours.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        if helper::offers_subprotocol(request) {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        Ok(response)
    };
    let config = Some(client_socket_config());
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, config).await
    else {
        return;
    };
    let mut rules = ServerRules::default();
    // JSON-encoded ids of this client's subscriptions.
    let mut ids: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            message = ws.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    _ => return,
                };
                let Ok(message) = ClientMessage::decode(text.as_str(), MAX_MESSAGE_BYTES) else {
                    return;
                };
                let reply = match rules.receive(message) {
                    Err(_) => return,
                    Ok(Accepted::Init { .. }) => {
                        rules.acknowledged();
                        Some(ServerMessage::ConnectionAck { payload: None })
                    }
                    Ok(Accepted::Ping) => Some(ServerMessage::Pong { payload: None }),
                    Ok(Accepted::Subscribe { id, .. }) => {
                        // A str always serialises.
                        ids.push(serde_json::to_string(&id).unwrap_or_default());
                        None
                    }
                    Ok(Accepted::Complete { id }) => {
                        let encoded = serde_json::to_string(&id).unwrap_or_default();
                        ids.retain(|known| *known != encoded);
                        rules.finished(&id);
                        None
                    }
                    Ok(Accepted::Refused { id, message }) => Some(ServerMessage::Error {
                        id,
                        payload: subplex_protocol::graphql_errors(&message, "TOO_MANY_OPERATIONS"),
                    }),
                    Ok(Accepted::Pong | Accepted::Ignored) => None,
                };
                if let Some(reply) = reply {
                    if ws.send(Message::text(reply.encode())).await.is_err() {
                        return;
                    }
                }
            }
            event = events.recv() => {
                let payload = match event {
                    Ok(payload) => payload,
                    // Missed events: the client's sequence check shows the gap.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                for id in &ids {
                    let frame = format!(r#"{{"type":"next","id":{id},"payload":{payload}}}"#);
                    if ws.send(Message::text(frame)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
