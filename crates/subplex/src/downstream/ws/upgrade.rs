//! The WebSocket upgrade: checks the handshake headers, negotiates the subprotocol, answers
//! 101, and starts the session on the upgraded connection.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use subplex_protocol::Subprotocol;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, Instrument};

use super::session::{ClientDetails, DownstreamSession};
use super::write_through::{ClientSocket, SessionIo};
use crate::metrics::ClientTransport;
use crate::responses::{full, json_error, RequestBody, ResponseBody};
use crate::server::ConnectionPermit;
use crate::state::{GatewayState, Upstream};
use crate::write_deadline::WriteDeadline;

/// Read buffer per client socket. tungstenite allocates its default (128 KiB) up front for
/// every connection and zero-fills the free part before each read, so all of it stays
/// resident. Client frames are small (subscribe, ping, complete); tungstenite grows the
/// buffer to a larger frame's length once it has read the frame's header, and reads it in
/// steps of this size. 4 KiB → 1 KiB measured 23.0 → 20.4 KiB per idle subscription, and
/// 1 KiB → 256 B 7.3 → 6.8 KiB (`subplex-bench --scenarios idle`).
const CLIENT_READ_BUFFER: usize = 256;

/// Answers a WebSocket upgrade request, then runs the session on the upgraded connection.
pub(crate) fn upgrade(
    mut req: Request<RequestBody>,
    upstream: Arc<Upstream>,
    state: Arc<GatewayState>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let headers = req.headers();
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = json_error(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version; use Sec-WebSocket-Version: 13",
            "BAD_WEBSOCKET_REQUEST",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrade without Sec-WebSocket-Key",
            "BAD_WEBSOCKET_REQUEST",
        );
    };
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let Some(subprotocol) = Subprotocol::negotiate(offered) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "WebSocket subprotocol missing or unsupported: offer \"graphql-transport-ws\" (graphql-ws library) \
             or \"graphql-ws\" (subscriptions-transport-ws) in Sec-WebSocket-Protocol",
            "UNSUPPORTED_SUBPROTOCOL",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let client = ClientDetails {
        path: req.uri().path().to_owned(),
        peer,
        headers: upstream.client_headers(req.uri().path(), headers),
    };
    let permit = req.extensions_mut().remove::<ConnectionPermit>();
    let on_upgrade = hyper::upgrade::on(&mut req);

    let max_message = state.server.max_message_bytes;
    let span = tracing::info_span!(
        "downstream",
        %peer,
        route = %req.uri().path(),
        protocol = %subprotocol,
    );
    let session_state = state.clone();
    state.sessions.spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    debug!(error = %err, "upgrade failed");
                    return;
                }
            };
            let config = WebSocketConfig::default()
                .read_buffer_size(CLIENT_READ_BUFFER)
                .max_message_size(Some(max_message))
                .max_frame_size(Some(max_message));
            let _connected = session_state
                .metrics
                .client_connected(ClientTransport::from(subprotocol));
            // A plain-TCP client's socket is taken back from hyper, so that the upstream
            // connection tasks can write its events themselves (`write_through`); over TLS
            // the session writes them.
            match upgraded.downcast::<TokioIo<WriteDeadline<TcpStream>>>() {
                Ok(parts) => {
                    let tcp = parts.io.into_inner().into_inner();
                    let settings = &upstream.config.settings;
                    let client_socket = Arc::new(ClientSocket::new(
                        tcp,
                        settings.subscriber_queue,
                        settings.subscriber_queue_bytes,
                    ));
                    let io = WriteDeadline::new(
                        SessionIo::new(client_socket.clone(), parts.read_buf),
                        session_state.server.client_write_timeout,
                        session_state.stats.clone(),
                    );
                    let socket =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    // Built here, not before the await above: a session held across it
                    // would have room in the task besides the copy `run` moves it into
                    // (massif: 768 bytes per client).
                    DownstreamSession::new(subprotocol, upstream, client, session_state)
                        .with_write_through(client_socket)
                        .run(socket)
                        .await;
                }
                Err(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    DownstreamSession::new(subprotocol, upstream, client, session_state)
                        .run(socket)
                        .await;
                }
            }
            drop(permit);
        }
        .instrument(span),
    );

    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).unwrap_or_else(|_| HeaderValue::from_static("")),
    );
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(subprotocol.wire_name()),
    );
    response
}
