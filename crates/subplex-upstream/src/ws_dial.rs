//! Opening a WebSocket to an upstream, tolerant of how servers negotiate subprotocols.
//!
//! tungstenite's client fails the handshake when a server selects no subprotocol, or one
//! that was not offered (RFC 6455 §4.1 says a client must). Real GraphQL servers do both:
//! a proxy strips `Sec-WebSocket-Protocol`, a server echoes whatever it likes and speaks
//! the other dialect. For a gateway the selected subprotocol is a hint, never proof (the
//! probe confirms the dialect by behaviour), so this module does the HTTP/1.1 upgrade
//! itself, records what the server selected, and hands the upgraded stream to tungstenite.
//! Everything else (`Sec-WebSocket-Accept`, the 101 status) is checked as the RFC says.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use subplex_protocol::Subprotocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// An upstream WebSocket.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest response head accepted for the upgrade; real ones are a few hundred bytes.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// What to dial. Not `Debug`: the headers are credentials.
pub(crate) struct DialRequest<'a> {
    pub url: &'a url::Url,
    /// Offered in this order in one `Sec-WebSocket-Protocol` header.
    pub offered: &'a [Subprotocol],
    pub headers: &'a [(HeaderName, HeaderValue)],
    pub tls: Option<&'a Arc<rustls::ClientConfig>>,
    pub max_message_bytes: usize,
    /// For the TCP connect, TLS and the upgrade response together.
    pub timeout: Duration,
}

/// An open WebSocket and what the server said about the subprotocol.
pub(crate) struct Dialed {
    pub socket: Socket,
    /// The `Sec-WebSocket-Protocol` the server selected, verbatim; `None` when it selected none.
    pub selected: Option<String>,
}

/// Why no WebSocket was opened. Texts name no header values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DialError {
    /// Nothing answered (refused, reset, unreachable), or the connection broke off.
    #[error("{0}")]
    Connect(String),
    /// No upgrade response within the timeout.
    #[error("{0}")]
    TimedOut(String),
    /// The TLS handshake failed (untrusted certificate, name mismatch), or `wss://` has no
    /// TLS configuration: waiting does not fix either.
    #[error("{0}")]
    Tls(String),
    /// The server answered the upgrade with an HTTP status other than 101.
    #[error("HTTP {status} during the WebSocket upgrade")]
    Refused { status: u16 },
    /// A 101 that is not a valid WebSocket upgrade, or not HTTP at all.
    #[error("invalid WebSocket upgrade response: {0}")]
    Invalid(String),
}

/// Opens a WebSocket to `request.url`, accepting whatever subprotocol the server selects.
pub(crate) async fn dial(request: DialRequest<'_>) -> Result<Dialed, DialError> {
    let timeout = request.timeout;
    tokio::time::timeout(timeout, dial_unbounded(request))
        .await
        .unwrap_or_else(|_| {
            Err(DialError::TimedOut(format!(
                "no WebSocket handshake within {} ms",
                timeout.as_millis()
            )))
        })
}

async fn dial_unbounded(request: DialRequest<'_>) -> Result<Dialed, DialError> {
    let url = request.url;
    let host = match url.host() {
        Some(url::Host::Domain(domain)) => domain.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(DialError::Connect("the URL has no host".into())),
    };
    let secure = url.scheme() == "wss";
    let port = url
        .port_or_known_default()
        .unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|err| DialError::Connect(err.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = if secure {
        let Some(tls) = request.tls else {
            return Err(DialError::Tls("wss:// needs a TLS configuration".into()));
        };
        let server_name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|err| DialError::Tls(format!("invalid TLS server name: {err}")))?;
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let tls_stream = connector
            .connect(server_name, tcp)
            .await
            .map_err(|err| DialError::Tls(err.to_string()))?;
        MaybeTlsStream::Rustls(tls_stream)
    } else {
        MaybeTlsStream::Plain(tcp)
    };

    let key = generate_key();
    let head = request_head(&request, &key);
    stream
        .write_all(&head)
        .await
        .map_err(|err| DialError::Connect(err.to_string()))?;

    let mut buffer = Vec::with_capacity(1024);
    let head_len = loop {
        if let Some(end) = find_head_end(&buffer) {
            break end;
        }
        if buffer.len() > MAX_RESPONSE_HEAD {
            return Err(DialError::Invalid(format!(
                "response head over {MAX_RESPONSE_HEAD} bytes"
            )));
        }
        let read = stream
            .read_buf(&mut buffer)
            .await
            .map_err(|err| DialError::Connect(err.to_string()))?;
        if read == 0 {
            return Err(DialError::Connect(
                "the server closed the connection during the WebSocket upgrade".into(),
            ));
        }
    };

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    response
        .parse(&buffer[..head_len])
        .map_err(|err| DialError::Invalid(err.to_string()))?;
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(DialError::Refused { status });
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    if header("sec-websocket-accept").as_deref() != Some(derive_accept_key(key.as_bytes()).as_str())
    {
        return Err(DialError::Invalid(
            "Sec-WebSocket-Accept does not match the key".into(),
        ));
    }
    if !header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return Err(DialError::Invalid(
            "no \"Upgrade: websocket\" header".into(),
        ));
    }
    let selected = header("sec-websocket-protocol").filter(|s| !s.is_empty());

    let config = WebSocketConfig::default()
        .read_buffer_size(UPSTREAM_READ_BUFFER)
        .max_message_size(Some(request.max_message_bytes))
        .max_frame_size(Some(request.max_message_bytes));
    // Bytes after the head are the server's first frames (a server may send its first
    // message right after the 101).
    let leftover = buffer.split_off(head_len);
    let socket =
        WebSocketStream::from_partially_read(stream, leftover, Role::Client, Some(config)).await;
    Ok(Dialed { socket, selected })
}

/// Read buffer of an upstream WebSocket. tungstenite zero-fills the free part of its read
/// buffer before every read attempt, so its default 128 KiB costs a 128 KiB memset per
/// poll and stays resident per security context. With deduplication an upstream socket
/// carries one frame per distinct operation and event; 16 KiB holds a burst of ~100
/// small events per read, and larger frames are still read whole, in several reads.
const UPSTREAM_READ_BUFFER: usize = 16 * 1024;

/// The upgrade request: request line, `Host`, the WebSocket headers, the offered
/// subprotocols and the forwarded headers.
fn request_head(request: &DialRequest<'_>, key: &str) -> Vec<u8> {
    let url = request.url;
    let mut target = url.path().to_owned();
    if let Some(query) = url.query() {
        target.push('?');
        target.push_str(query);
    }
    let host = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => String::new(),
    };
    let offered: Vec<&str> = request.offered.iter().map(|p| p.wire_name()).collect();
    let mut head = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    )
    .into_bytes();
    if !offered.is_empty() {
        head.extend_from_slice(
            format!("Sec-WebSocket-Protocol: {}\r\n", offered.join(", ")).as_bytes(),
        );
    }
    for (name, value) in request.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_offers_in_order_and_forwards_headers() {
        let url = url::Url::parse("ws://127.0.0.1:4001/graphql?x=1").unwrap();
        let headers = [(
            HeaderName::from_static("authorization"),
            HeaderValue::from_static("Bearer a"),
        )];
        let head = request_head(
            &DialRequest {
                url: &url,
                offered: &[Subprotocol::GraphqlTransportWs, Subprotocol::GraphqlWs],
                headers: &headers,
                tls: None,
                max_message_bytes: 1024,
                timeout: Duration::from_secs(1),
            },
            "dGhlIHNhbXBsZSBub25jZQ==",
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /graphql?x=1 HTTP/1.1\r\nHost: 127.0.0.1:4001\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: graphql-transport-ws, graphql-ws\r\nauthorization: Bearer a\r\n\r\n"
        );
        assert_eq!(find_head_end(b"HTTP/1.1 101 x\r\n\r\nrest"), Some(18));
        assert_eq!(find_head_end(b"HTTP/1.1 101 x\r\n"), None);
    }
}
