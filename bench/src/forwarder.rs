//! The baseline: the naive WebSocket proxy a user would write in an afternoon, run as
//! `subplex-bench forwarder` in a process of its own.
//!
//! For each client connection it opens its own upstream connection (same subprotocol, same
//! `Authorization` header) and copies frames both ways unchanged, one `send` (write and
//! flush) per frame — the same write discipline as subplex's sessions, so the comparison
//! is about architecture (one upstream connection per client vs one per security context,
//! protocol awareness), not about write batching. It understands nothing of GraphQL: no
//! init deadline, no slow-consumer policy, no keep-alive of its own.
//!
//! Like the emitter it prints `READY <address>` and exits when stdin closes or after
//! `--max-seconds`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// Command line of `subplex-bench forwarder`.
#[derive(Debug, Clone, clap::Args)]
pub struct ForwarderArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// WebSocket URL of the upstream, e.g. ws://127.0.0.1:4001/graphql.
    #[arg(long)]
    pub upstream: String,
    /// Read buffer of each WebSocket, in bytes [default: tokio-tungstenite's, 128 KiB,
    /// as a naive proxy would have it].
    #[arg(long)]
    pub read_buffer_bytes: Option<usize>,
    /// Exit after this long even if the parent never closes stdin.
    #[arg(long, default_value_t = 900)]
    pub max_seconds: u64,
}

use crate::helper::{self, SUBPROTOCOL};

/// Runs the forwarder until stdin closes or `max_seconds` pass.
pub async fn main(args: ForwarderArgs) -> anyhow::Result<()> {
    // Fail now, not on the first client, if the URL is unusable.
    args.upstream
        .as_str()
        .into_client_request()
        .with_context(|| format!("forwarder: bad --upstream {}", args.upstream))?;
    let listener = helper::listen(args.listen)
        .with_context(|| format!("forwarder: cannot listen on {}", args.listen))?;
    let upstream: Arc<str> = Arc::from(args.upstream);
    let config = args
        .read_buffer_bytes
        .map(|bytes| WebSocketConfig::default().read_buffer_size(bytes));
    let serve = |stream| {
        tokio::spawn(proxy(stream, upstream.clone(), config));
    };
    let alongside = std::future::pending();
    helper::serve_until_released("forwarder", listener, args.max_seconds, serve, alongside).await
}

/// One client: accept it, dial the upstream on its behalf, then pipe until either side ends.
async fn proxy(client: TcpStream, upstream: Arc<str>, config: Option<WebSocketConfig>) {
    let _ = client.set_nodelay(true);
    let mut authorization: Option<HeaderValue> = None;
    // The error type is tungstenite's, not ours.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        authorization = request.headers().get(header::AUTHORIZATION).cloned();
        if helper::offers_subprotocol(request) {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        Ok(response)
    };
    let Ok(client) =
        tokio_tungstenite::accept_hdr_async_with_config(client, callback, config).await
    else {
        return;
    };
    let Ok(mut request) = upstream.as_ref().into_client_request() else {
        return;
    };
    let headers = request.headers_mut();
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Some(authorization) = authorization {
        headers.insert(header::AUTHORIZATION, authorization);
    }
    let upstream = match tokio_tungstenite::connect_async_with_config(request, config, true).await {
        Ok((upstream, _)) => upstream,
        Err(err) => {
            eprintln!("forwarder: upstream connect failed: {err}");
            return;
        }
    };
    let (client_tx, client_rx) = client.split();
    let (upstream_tx, upstream_rx) = upstream.split();
    // Whichever direction ends first ends both: dropping the other half closes its socket.
    tokio::select! {
        () = pipe(client_rx, upstream_tx) => {}
        () = pipe(upstream_rx, client_tx) => {}
    }
}

/// Copies data and close frames from `from` to `to`, one write per frame. Pings and pongs
/// stay on their hop: tungstenite answers pings on each connection itself.
async fn pipe<R, W>(mut from: R, mut to: W)
where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    W: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    while let Some(Ok(message)) = from.next().await {
        let is_close = matches!(message, Message::Close(_));
        match message {
            Message::Text(_) | Message::Binary(_) | Message::Close(_) => {
                if to.send(message).await.is_err() {
                    return;
                }
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        if is_close {
            return;
        }
    }
}
