//! What the harness's helper servers (emitter, forwarder, floor) share: announcing their
//! address, accepting connections, ending with the harness, and the subprotocol check of
//! a WebSocket handshake.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time;
use tokio_tungstenite::tungstenite::handshake::server::Request;
use tokio_tungstenite::tungstenite::http::header;

/// The subprotocol every bench WebSocket speaks.
pub const SUBPROTOCOL: &str = "graphql-transport-ws";

/// Whether a WebSocket handshake offers [`SUBPROTOCOL`].
pub fn offers_subprotocol(request: &Request) -> bool {
    request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim() == SUBPROTOCOL)
}

/// Prints `READY <address>` on stdout, the line the harness waits for.
/// A listener on `address` with subplex's default accept queue (`server.listen_backlog`,
/// 4096), not `TcpListener::bind`'s 128: in the connection storm a queue of 128
/// overflows, and each connection the kernel drops costs its client a one-second SYN
/// retry, which would measure the kernel knob rather than the system.
pub fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

pub async fn announce_ready(listener: &TcpListener) -> anyhow::Result<()> {
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("READY {}\n", listener.local_addr()?).as_bytes())
        .await?;
    stdout.flush().await?;
    Ok(())
}

/// Accepts connections forever, handing each to `serve`.
pub async fn accept_loop(what: &str, listener: &TcpListener, mut serve: impl FnMut(TcpStream)) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => serve(stream),
            Err(err) => {
                // Usually EMFILE; retrying at once would spin.
                eprintln!("{what}: accept failed: {err}");
                time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Announces `listener`, then serves it until stdin closes (the harness is done or gone),
/// `max_seconds` pass, or `alongside` ends (its error is returned).
pub async fn serve_until_released(
    what: &str,
    listener: TcpListener,
    max_seconds: u64,
    serve: impl FnMut(TcpStream),
    alongside: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    announce_ready(&listener).await?;
    let stdin_closed = async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = lines.next_line().await {}
    };
    tokio::select! {
        () = accept_loop(what, &listener, serve) => Ok(()),
        () = stdin_closed => Ok(()),
        result = alongside => result,
        () = time::sleep(Duration::from_secs(max_seconds)) => {
            eprintln!("{what}: --max-seconds reached; exiting");
            Ok(())
        }
    }
}
