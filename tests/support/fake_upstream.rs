//! A scripted WebSocket upstream for fault injection: the test plays the server frame by
//! frame, so it can misbehave in ways no real server does on demand (ping before ack,
//! silence, garbage, floods).

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::EVENT_TIMEOUT;

/// Any byte stream a fake connection can run on: TCP, or TLS over TCP.
pub trait Io:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

/// A listening fake upstream; each accepted WebSocket arrives through [`FakeUpstream::accept`].
#[derive(Debug)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    connections: mpsc::UnboundedReceiver<FakeConnection>,
    task: tokio::task::JoinHandle<()>,
}

/// One upstream connection, played by the test.
#[derive(Debug)]
pub struct FakeConnection {
    socket: WebSocketStream<Box<dyn Io>>,
    /// The headers of the upgrade request the gateway sent.
    pub headers: HeaderMap,
}

impl FakeUpstream {
    /// Listens on an ephemeral port and answers upgrades with `subprotocol`.
    pub async fn start(subprotocol: &'static str) -> FakeUpstream {
        Self::listen(subprotocol, None).await
    }

    /// The same over TLS with `tls` (see [`test_certificates`]).
    pub async fn start_tls(
        subprotocol: &'static str,
        tls: Arc<rustls::ServerConfig>,
    ) -> FakeUpstream {
        Self::listen(subprotocol, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn listen(
        subprotocol: &'static str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, connections) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let stream: Box<dyn Io> = match tls {
                        None => Box::new(stream),
                        // A failed TLS handshake is the gateway's to report, not ours.
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => return,
                        },
                    };
                    let mut headers = HeaderMap::new();
                    // The error type is tungstenite's, not ours.
                    #[allow(clippy::result_large_err)]
                    let callback = |request: &Request, mut response: Response| {
                        headers = request.headers().clone();
                        response.headers_mut().insert(
                            "sec-websocket-protocol",
                            HeaderValue::from_static(subprotocol),
                        );
                        Ok(response)
                    };
                    if let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    {
                        let _ = tx.send(FakeConnection { socket, headers });
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            connections,
            task,
        }
    }

    /// The next connection the gateway opens.
    pub async fn accept(&mut self) -> FakeConnection {
        tokio::time::timeout(EVENT_TIMEOUT, self.connections.recv())
            .await
            .expect("the gateway connects within the timeout")
            .expect("listener alive")
    }

    /// Whether a connection arrived that was not accepted yet.
    pub fn has_pending_connection(&mut self) -> bool {
        !self.connections.is_empty()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeConnection {
    /// The next text frame as JSON; WebSocket pings are answered by tungstenite.
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(EVENT_TIMEOUT, self.socket.next())
                .await
                .expect("the gateway sends within the timeout")
                .expect("connection open")
                .expect("frame");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("gateway sends JSON")
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame from the gateway: {other:?}"),
            }
        }
    }

    /// Expects the gateway to close the connection (close frame or EOF).
    pub async fn expect_closed(&mut self) {
        loop {
            match tokio::time::timeout(EVENT_TIMEOUT, self.socket.next())
                .await
                .expect("the gateway closes within the timeout")
            {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_owned()))
            .await
            .expect("send to gateway");
    }

    /// Sends without flushing each frame: for floods.
    pub async fn feed_text(&mut self, text: String) {
        self.socket
            .feed(Message::text(text))
            .await
            .expect("send to gateway");
    }

    /// Sends `count` `next` events for upstream id `id`, each padded to about
    /// `padding_bytes`, as fast as the socket takes them, numbered from 0 in
    /// `payload.data.n`: far more than socket buffers and queues hold.
    pub async fn flood(&mut self, id: &str, count: usize, padding_bytes: usize) {
        let padding = "x".repeat(padding_bytes);
        for n in 0..count {
            self.feed_text(format!(
                "{{\"type\":\"next\",\"id\":\"{id}\",\"payload\":{{\"data\":{{\"n\":{n},\"pad\":\"{padding}\"}}}}}}"
            ))
            .await;
        }
        self.flush().await;
    }

    pub async fn flush(&mut self) {
        self.socket.flush().await.expect("flush");
    }

    pub async fn close(mut self, code: u16, reason: &str) {
        let _ = self
            .socket
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.to_owned().into(),
            }))
            .await;
    }

    /// Receives `connection_init` and answers `connection_ack`; returns the init payload.
    pub async fn handshake(&mut self) -> Value {
        let init = self.recv_json().await;
        assert_eq!(init["type"], "connection_init");
        self.send(serde_json::json!({ "type": "connection_ack" }))
            .await;
        init["payload"].clone()
    }

    /// Stops reading: WebSocket pings go unanswered from now on, as with a hung server.
    pub fn hang(self) -> HungConnection {
        HungConnection {
            _socket: self.socket,
        }
    }
}

/// A connection that is kept open but never read again.
#[derive(Debug)]
pub struct HungConnection {
    _socket: WebSocketStream<Box<dyn Io>>,
}

/// A throwaway CA and a server certificate it signed for `127.0.0.1` and `localhost`.
#[derive(Debug)]
pub struct TestCertificates {
    /// The CA certificate, PEM: what the gateway's `tls_ca_file` points at.
    pub ca_pem: String,
    /// The same, DER.
    pub ca_der: Vec<u8>,
    /// The server's TLS configuration.
    pub server: Arc<rustls::ServerConfig>,
    /// The server's certificate (PEM) and its DER, to compare with what a server presents.
    pub server_cert_pem: String,
    pub server_cert_der: Vec<u8>,
    /// The server's private key, PEM (PKCS#8).
    pub server_key_pem: String,
}

impl TestCertificates {
    /// A client configuration that trusts only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone().into()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}

/// Makes fresh certificates (nothing is stored in the repository).
pub fn test_certificates() -> TestCertificates {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "subplex test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![server_cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
    )
    .unwrap();
    TestCertificates {
        ca_pem: ca.pem(),
        ca_der: ca.der().to_vec(),
        server: Arc::new(server),
        server_cert_pem: server_cert.pem(),
        server_cert_der: server_cert.der().to_vec(),
        server_key_pem: server_key.serialize_pem(),
    }
}
