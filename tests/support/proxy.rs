//! A TCP proxy that cuts its first connection mid-stream, as a lost network would: the
//! client sees its stream break and reconnects through the proxy, which then forwards
//! every later connection untouched.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Listens on 127.0.0.1 and forwards to `target`; stops when dropped.
#[derive(Debug)]
pub struct CuttingProxy {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl CuttingProxy {
    /// Cuts the first connection (both directions, at once) right after forwarding the
    /// server's bytes that make `pattern` appear `occurrences` times in what it sent.
    pub async fn start(target: SocketAddr, pattern: &'static str, occurrences: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut first = true;
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let cut_after = first.then_some((pattern, occurrences));
                first = false;
                tokio::spawn(forward(client, server, cut_after));
            }
        });
        CuttingProxy { addr, task }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, mut server: TcpStream, cut_after: Option<(&str, usize)>) {
    let Some((pattern, occurrences)) = cut_after else {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return;
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let requests = tokio::io::copy(&mut client_read, &mut server_write);
    let responses = async {
        let mut seen = String::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.matches(pattern).count() >= occurrences {
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
