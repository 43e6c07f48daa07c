//! A TCP proxy that cuts its first connection mid-stream, as a lost network would: the
//! client sees its stream break and reconnects through the proxy, which then forwards
//! every later connection untouched.
//!
//! The test says when to cut ([`CuttingProxy::cut`]), once the client has shown that it
//! handled everything forwarded. Cutting as soon as the bytes are written races the
//! client: Chromium drops response bytes it has received but not yet handed to the page
//! when the connection then fails (Blink's `ResourceLoader::HandleError` aborts the body
//! without draining it), so its `EventSource` may never see the last event forwarded.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Listens on 127.0.0.1 and forwards to `target`; stops when dropped.
#[derive(Debug)]
pub struct CuttingProxy {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    cut: Arc<Notify>,
}

impl CuttingProxy {
    /// Forwards the first connection until the server's bytes make `pattern` appear
    /// `occurrences` times in what it sent, up to the end of that event; then forwards
    /// nothing more, and cuts the connection (both directions, at once) on [`Self::cut`].
    pub async fn start(target: SocketAddr, pattern: &'static str, occurrences: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(Notify::new());
        let cut_first = cut.clone();
        let task = tokio::spawn(async move {
            let mut first = true;
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let cut_after = first.then(|| Cut {
                    pattern,
                    occurrences,
                    signal: cut_first.clone(),
                });
                first = false;
                tokio::spawn(forward(client, server, cut_after));
            }
        });
        CuttingProxy { addr, task, cut }
    }

    /// Cuts the first connection once it has forwarded the event it stops after (at once
    /// if it has already): call it when the client has that event.
    pub fn cut(&self) {
        self.cut.notify_one();
    }
}

/// Where the first connection stops forwarding, and the signal that then cuts it.
struct Cut {
    pattern: &'static str,
    occurrences: usize,
    signal: Arc<Notify>,
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, mut server: TcpStream, cut_after: Option<Cut>) {
    let Some(Cut {
        pattern,
        occurrences,
        signal,
    }) = cut_after
    else {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return;
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let requests = tokio::io::copy(&mut client_read, &mut server_write);
    let responses = async {
        // Everything read so far; `sent` bytes of it went to the client.
        let mut seen: Vec<u8> = Vec::new();
        let mut sent = 0;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            seen.extend_from_slice(&buf[..n]);
            // The cut falls right after the event holding the last occurrence (its blank
            // line), even when one read brought more events: on a loaded machine the
            // gateway may write many at once, and the client must still miss the rest.
            let end = cut_point(&seen, pattern, occurrences);
            let upto = end.unwrap_or(seen.len());
            if client_write.write_all(&seen[sent..upto]).await.is_err() {
                return;
            }
            sent = upto;
            if end.is_some() {
                // Nothing more reaches the client until the test cuts.
                signal.notified().await;
                return;
            }
        }
    };
    // Whichever ends first ends the connection: dropping both sockets is the cut.
    tokio::select! {
        _ = requests => {}
        _ = responses => {}
    }
}

/// Where the event holding the `occurrences`-th `pattern` ends (after its blank line), if
/// `seen` holds all of it.
fn cut_point(seen: &[u8], pattern: &str, occurrences: usize) -> Option<usize> {
    let find = |from: usize, needle: &[u8]| {
        seen[from..]
            .windows(needle.len())
            .position(|window| window == needle)
            .map(|at| from + at)
    };
    let mut start = 0;
    for _ in 0..occurrences {
        start = find(start, pattern.as_bytes())? + pattern.len();
    }
    Some(find(start, b"\n\n")? + 2)
}
