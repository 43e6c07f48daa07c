//! The listener: accepts client connections (over TLS with `[server.tls]`), serves HTTP/1
//! and HTTP/2 with upgrades, caps concurrent connections, and drains on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use http_body_util::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

mod http1_streams;

use crate::config::Config;
use crate::reload::Reloader;
use crate::routes;
use crate::state::{DownstreamStats, GatewayState};
use crate::tls_reloader::TlsReloader;
use crate::write_deadline::WriteDeadline;
use http1_streams::Served;

/// One client connection's place under `server.max_connections`; released when the last
/// clone (the HTTP connection task, an upgraded session) is dropped.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionPermit(#[allow(dead_code)] Arc<tokio::sync::OwnedSemaphorePermit>);

/// A bound gateway, ready to [`run`](Gateway::run).
#[derive(Debug)]
pub struct Gateway {
    listener: TcpListener,
    /// The admin listener, when `admin.enabled`.
    admin: Option<TcpListener>,
    state: Arc<GatewayState>,
    /// Cancelled last, after clients drained, so operations can stop cleanly upstream.
    upstream_shutdown: CancellationToken,
    /// `[server.tls]`; `None` serves plain TCP.
    tls_reloader: Option<Arc<TlsReloader>>,
}

impl Gateway {
    /// Binds the listener of `config.server.listen`, and the admin listener when enabled;
    /// the error names the key whose address could not be bound.
    pub async fn bind(config: Config) -> std::io::Result<Gateway> {
        let listen = config.server.listen;
        let listener = bind_listener(listen, config.server.listen_backlog).map_err(|err| {
            std::io::Error::new(err.kind(), format!("server.listen {listen}: {err}"))
        })?;
        let admin = match config.admin_listen {
            Some(address) => Some(TcpListener::bind(address).await.map_err(|err| {
                std::io::Error::new(err.kind(), format!("admin.listen {address}: {err}"))
            })?),
            None => None,
        };
        let upstream_shutdown = CancellationToken::new();
        let state = Arc::new(GatewayState::new(&config, &upstream_shutdown)?);
        let tls_reloader = config
            .server
            .tls
            .clone()
            .map(|tls| Arc::new(TlsReloader::new(tls)));
        Ok(Gateway {
            listener,
            admin,
            state,
            upstream_shutdown,
            tls_reloader,
        })
    }

    /// Reloads the configuration from `config_path` while the gateway runs (see
    /// [`reload`](crate::reload)); usable after `run` starts.
    pub fn reloader(&self, config_path: impl Into<std::path::PathBuf>) -> Reloader {
        Reloader::new(
            self.state.clone(),
            config_path.into(),
            self.tls_reloader.clone(),
        )
    }

    /// The listener's certificate, to [`reload`](TlsReloader::reload) on SIGHUP; `None`
    /// without `[server.tls]`.
    pub fn tls_reloader(&self) -> Option<Arc<TlsReloader>> {
        self.tls_reloader.clone()
    }

    /// Counts of what happened to clients; they stay readable after `run` starts.
    pub fn stats(&self) -> Arc<DownstreamStats> {
        self.state.stats.clone()
    }

    /// The admin listener's address, when `admin.enabled`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|admin| admin.local_addr().ok())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, closes WebSocket
    /// clients with 1001, ends SSE streams, waits up to `shutdown_grace_ms` for them, and
    /// closes the upstream connections.
    pub async fn run(self, shutdown: CancellationToken) {
        let Gateway {
            listener,
            admin,
            state,
            upstream_shutdown,
            tls_reloader,
        } = self;
        info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
        if let Some(admin) = admin {
            // Serves through the drain, so operators can watch it, and stops with the
            // upstream connections at the very end.
            tokio::spawn(crate::admin::serve(
                admin,
                state.clone(),
                upstream_shutdown.clone(),
            ));
        }
        // `protocol = "auto"` upstreams are probed now, so the log tells at start what each
        // one speaks; clients are served meanwhile (their subscribes wait on the probe).
        for upstream in state.routes().upstreams() {
            let upstream = upstream.clone();
            tokio::spawn(async move { upstream.pool.probe_at_start().await });
        }
        let connections = state.connection_slots.clone();
        let graceful = GracefulShutdown::new();
        // HTTP/1 connections served without hyper-util's detection, which its
        // `GracefulShutdown` cannot watch: drained by `drained_http1` and waited for here.
        let http1_connections = TaskTracker::new();
        let detecting = Arc::new(DetectingServer {
            builder: detecting_builder(&state),
            tls: tls_reloader.clone(),
        });

        loop {
            // Biased: once shutdown is requested no new connection is accepted.
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                permit = connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                accepted = accept(&listener) => accepted,
            };
            let _ = stream.set_nodelay(true);
            // The handshake runs in the connection's task: a slow client must not hold up
            // the accept loop.
            http1_connections.spawn(serve_client(Client {
                stream,
                peer,
                permit: ConnectionPermit(Arc::new(permit)),
                state: state.clone(),
                detecting: detecting.clone(),
                watcher: graceful.watcher(),
            }));
        }

        // Readiness turns 503 here, before the drain: `is_ready` reads this token.
        state.downstream_shutdown.cancel();
        info!("shutting down: draining clients; new connections get 503 and /readyz says so");
        state.sessions.close();
        let grace = state.server.shutdown_grace;
        // One budget for the whole shutdown: clients first, then the upstream goodbyes.
        let deadline = tokio::time::Instant::now() + grace;
        let drain = tokio::time::timeout_at(deadline, async {
            http1_connections.close();
            tokio::join!(
                graceful.shutdown(),
                state.sessions.wait(),
                http1_connections.wait()
            );
        });
        // The listener stays open during the drain so that load balancers polling
        // `/readyz` see 503 instead of a refused connection, which many treat as a
        // transient error rather than as "take this instance out".
        let drained = tokio::select! {
            drained = drain => drained,
            never = answer_while_draining(&listener, &state, tls_reloader.as_ref()) => match never {},
        };
        drop(listener);
        if drained.is_err() {
            warn!(
                grace_ms = grace.as_millis() as u64,
                "clients did not finish within the grace period"
            );
        }
        // Clients are gone, so their operations were stopped; the connection tasks now
        // send `complete`/`stop` for whatever is left, `connection_terminate` and a Close.
        // Waited for: once `run` returns the process may exit, and a task cut short would
        // leave the upstream to find out by the socket dropping.
        upstream_shutdown.cancel();
        let routes = state.routes();
        let upstreams_closed = tokio::time::timeout_at(deadline, async {
            for upstream in routes.upstreams() {
                upstream.pool.closed().await;
            }
        })
        .await;
        if upstreams_closed.is_err() {
            warn!(
                grace_ms = grace.as_millis() as u64,
                "upstream connections did not close within the grace period"
            );
        }
        info!("shutdown complete");
    }
}

/// One accepted client connection and what its task needs. An SSE or multipart stream
/// keeps its connection's task (and so this) for its whole life: what only other
/// connections need is behind one shared pointer.
struct Client {
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    /// Shared with the requests: an upgraded WebSocket outlives the HTTP connection task
    /// and must keep counting against `max_connections` until it ends.
    permit: ConnectionPermit,
    state: Arc<GatewayState>,
    detecting: Arc<DetectingServer>,
    /// Lets the drain see connections of the detecting server.
    watcher: hyper_util::server::graceful::Watcher,
}

/// What serves connections that are not plain-TCP HTTP/1: TLS, HTTP/2.
struct DetectingServer {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<Arc<TlsReloader>>,
}

/// Serves one client connection until it ends.
async fn serve_client(client: Client) {
    let Client {
        stream,
        peer,
        permit,
        state,
        detecting,
        watcher,
    } = client;
    let mut io = WriteDeadline::new(
        stream,
        state.server.client_write_timeout,
        state.stats.clone(),
    );
    // Plain TCP is served by the front (`http1_streams`) first: it answers HTTP/1 event
    // streams itself and hands any other request to hyper's HTTP/1 server directly, and a
    // connection that opens with the HTTP/2 preface to the detecting server. hyper-util's
    // detection would read the first bytes itself and hand them back through a buffer,
    // after which hyper's read buffer grows to 16 KiB. Unboxed, so that a WebSocket
    // upgrade can reach the TCP stream again (write-through, `downstream::ws::upgrade`).
    let ended = match detecting.tls {
        Some(_) => detected(io, &state, peer, &permit, &detecting, watcher).await,
        None => match http1_streams::serve(&mut io, &state, peer, &permit).await {
            Ok(Served::Closed) => Ok(()),
            Ok(Served::ToHyper) => hyper_http1(io, &state, peer, &permit).await,
            Ok(Served::MaybeHttp2) => {
                detected(io, &state, peer, &permit, &detecting, watcher).await
            }
            Err(err) => Err(err.into()),
        },
    };
    if let Err(err) = ended {
        debug!(%peer, error = %err, "client connection ended with an error");
    }
}

type ConnectionEnded = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A connection task waits on one of these boxed: inline, hyper's connection state (and
/// the TLS handshake's) would be room in every connection's task, streams included.
type BoxedConnection<'a> = Pin<Box<dyn Future<Output = ConnectionEnded> + Send + 'a>>;

/// The request service for hyper: every request goes to `routes::handle`, carrying the
/// connection's permit.
fn service(
    state: &Arc<GatewayState>,
    peer: SocketAddr,
    permit: &ConnectionPermit,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::responses::ResponseBody>,
    Error = Infallible,
    Future = futures_util::future::BoxFuture<
        'static,
        Result<hyper::Response<crate::responses::ResponseBody>, Infallible>,
    >,
> + Clone {
    let (state, permit) = (state.clone(), permit.clone());
    service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let state = state.clone();
        req.extensions_mut().insert(permit.clone());
        let req = req.map(Either::Left);
        // Boxed: hyper keeps room for its service's future in every HTTP/1 connection
        // for the connection's whole life. Inline, that room is the largest request path
        // (3.4 KiB in a test build); boxed, the request's future is freed once the
        // response head is out.
        async move { Ok::<_, Infallible>(routes::handle(req, state, peer).await) }.boxed()
    })
}

/// hyper-util's detecting server, with the request timeout on its HTTP/1 side (HTTP/2
/// streams each carry their own request).
fn detecting_builder(state: &GatewayState) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.server.client_request_timeout);
    builder
}

/// A plain-TCP HTTP/1 connection served by hyper from its next request on. hyper's
/// header timeout also closes it once it idles between requests for that long.
fn hyper_http1<'a>(
    io: WriteDeadline<tokio::net::TcpStream>,
    state: &'a Arc<GatewayState>,
    peer: SocketAddr,
    permit: &ConnectionPermit,
) -> BoxedConnection<'a> {
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.server.client_request_timeout)
        .serve_connection(TokioIo::new(io), service(state, peer, permit))
        .with_upgrades();
    Box::pin(async move {
        drained_http1(connection, &state.downstream_shutdown)
            .await
            .map_err(Into::into)
    })
}

/// A connection over TLS, or one that may be HTTP/2, served by hyper-util's detecting
/// server.
fn detected<'a>(
    io: WriteDeadline<tokio::net::TcpStream>,
    state: &Arc<GatewayState>,
    peer: SocketAddr,
    permit: &ConnectionPermit,
    detecting: &'a DetectingServer,
    watcher: hyper_util::server::graceful::Watcher,
) -> BoxedConnection<'a> {
    let service = service(state, peer, permit);
    Box::pin(async move {
        match client_io(io, detecting.tls.as_deref(), peer).await {
            None => Ok(()),
            Some(io) => {
                let connection = detecting
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned();
                watcher.watch(connection).await
            }
        }
    })
}

/// The client listener on `address`, with an accept queue of `backlog` connections.
/// `TcpListener::bind` asks for 128 (the standard library's choice): a reconnect storm of a
/// few hundred clients at once overflows that, and every connection the kernel drops is
/// retried by its client a whole second later (measured: 5,000 clients with 256
/// handshakes in flight attached in 1.3 s instead of 0.5 s).
fn bind_listener(address: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted gateway can rebind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(backlog)
}

/// The next connection on `listener`. A failed accept (usually EMFILE) is logged and
/// retried after a short pause instead of spinning on the error.
pub(crate) async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(err) => {
                warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves an HTTP/1 connection until it ends; once the gateway drains, it finishes the
/// request in flight and closes, as `GracefulShutdown` makes the detecting server do.
async fn drained_http1<I, S, B>(
    connection: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    drain: &CancellationToken,
) -> hyper::Result<()>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => return ended,
        _ = drain.cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

/// What a client connection is read and written through: the TCP stream, or TLS over it.
trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

/// The client's stream, after the TLS handshake when `[server.tls]` is set; `None` if the
/// handshake failed (logged at debug: a port scan or a plain-HTTP client is no error of
/// ours). Boxed so one serving path handles both.
async fn client_io<IO>(
    io: IO,
    tls: Option<&TlsReloader>,
    peer: SocketAddr,
) -> Option<Box<dyn ClientIo>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match tls {
        None => Some(Box::new(io)),
        // Boxed: the handshake's state would otherwise be room in every connection task
        // for the connection's whole life (an SSE stream's, for one), plain TCP included.
        Some(tls) => match Box::pin(tls.accept(io)).await {
            Ok(stream) => Some(Box::new(stream)),
            Err(err) => {
                debug!(%peer, error = %err, "tls handshake failed");
                None
            }
        },
    }
}

/// Accepts connections during the drain and serves each one request: the probes answer,
/// everything else gets 503 (see `routes::dispatch`). Each connection still takes a place
/// under `server.max_connections`; without one it is closed at once. Runs until dropped,
/// which also ends the connections it serves.
async fn answer_while_draining(
    listener: &TcpListener,
    state: &Arc<GatewayState>,
    tls: Option<&Arc<TlsReloader>>,
) -> std::convert::Infallible {
    let mut builder = detecting_builder(state);
    builder.http1().keep_alive(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = accept(listener).await;
        let Ok(permit) = state.connection_slots.clone().try_acquire_owned() else {
            continue;
        };
        let state = state.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let state = state.clone();
            let req = req.map(Either::Left);
            async move { Ok::<_, Infallible>(routes::handle(req, state, peer).await) }
        });
        let (builder, tls) = (builder.clone(), tls.cloned());
        connections.spawn(async move {
            if let Some(io) = client_io(stream, tls.as_deref(), peer).await {
                let _ = builder
                    .serve_connection(TokioIo::new(io), service)
                    .into_owned()
                    .await;
            }
            drop(permit);
        });
        // Reap finished ones so the set does not grow over a long drain.
        while connections.try_join_next().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SSE or multipart stream keeps its connection's task for its whole life, so the
    /// task's future is memory per subscriber. With hyper serving streams it held hyper's
    /// connection state (a 1,792-byte task cell per idle SSE client in massif); the
    /// front's is 720 bytes in this test's build. A new large await in `serve_client` or
    /// `http1_streams::serve` shows up here.
    #[tokio::test]
    async fn a_client_connections_task_stays_small() {
        let text = "[upstreams.up]\nurl = \"http://127.0.0.1:9/graphql\"\n\
                    [[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n";
        let config = Config::parse(text, "server-test.toml").expect("valid config");
        let state =
            Arc::new(GatewayState::new(&config, &CancellationToken::new()).expect("gateway state"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_client, (stream, peer)) = tokio::join!(
            async { tokio::net::TcpStream::connect(address).await.unwrap() },
            async { listener.accept().await.unwrap() }
        );
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .acquire_owned()
            .await
            .unwrap();
        let graceful = GracefulShutdown::new();
        let task = serve_client(Client {
            stream,
            peer,
            permit: ConnectionPermit(Arc::new(permit)),
            state: state.clone(),
            detecting: Arc::new(DetectingServer {
                builder: auto::Builder::new(TokioExecutor::new()),
                tls: None,
            }),
            watcher: graceful.watcher(),
        });
        let size = std::mem::size_of_val(&task);
        assert!(size <= 900, "{size} bytes");
    }
}
