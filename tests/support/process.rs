//! The `subplex` binary as a child process, for tests of what only a process has: signals
//! (SIGHUP reload, SIGTERM), its command line and its log. The caller passes the binary's
//! path (`env!("CARGO_BIN_EXE_subplex")` in the `subplex` crate's own tests).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::EVENT_TIMEOUT;

/// A running gateway process, killed on drop.
#[derive(Debug)]
pub struct GatewayProcess {
    /// Where it listens, from its `subplex listening on ADDR` line.
    pub addr: std::net::SocketAddr,
    child: Child,
    /// Log messages: each a line and its continuation lines.
    stderr: mpsc::UnboundedReceiver<Vec<String>>,
    /// Every log line read so far, for failure messages.
    log: Vec<String>,
}

impl GatewayProcess {
    /// Runs `bin --config config` (plus `args`) and waits for its listening line.
    pub async fn start(bin: &str, config: &Path, args: &[&str]) -> GatewayProcess {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the subplex binary");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = message_channel(child.stderr.take().unwrap());
        let banner = tokio::time::timeout(EVENT_TIMEOUT, stdout.next_line())
            .await
            .expect("subplex prints its address in time")
            .expect("read subplex stdout")
            .expect("subplex exited before listening");
        let addr = banner
            .strip_prefix("subplex listening on ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from subplex: {banner}"));
        // Keep reading stdout, so that a write to it never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        GatewayProcess {
            addr,
            child,
            stderr,
            log: Vec::new(),
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("subplex is running")
    }

    /// Sends a signal by name (`HUP`, `TERM`) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Reads log lines until one contains `text`; returns it and the lines after it that
    /// belong to the same message (indented continuation lines, as a multi-line error
    /// prints). Fails the test after [`EVENT_TIMEOUT`] or if the process exits.
    pub async fn wait_log(&mut self, text: &str) -> Vec<String> {
        let found = tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(message) = self.stderr.recv().await {
                self.log.extend(message.iter().cloned());
                if let Some(at) = message.iter().position(|line| line.contains(text)) {
                    return Some(message[at..].to_vec());
                }
            }
            None
        })
        .await;
        let Ok(Some(message)) = found else {
            panic!(
                "log line with {text:?} not seen; log:\n{}",
                self.log.join("\n")
            );
        };
        message
    }

    /// Every log line read so far.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// SIGTERM, then waits for the exit status.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        tokio::time::timeout(EVENT_TIMEOUT, self.child.wait())
            .await
            .expect("subplex exits in time after SIGTERM")
            .expect("wait for subplex")
    }
}

/// The lines a process writes to `output`, as messages: each line with the indented
/// continuation lines that follow it (a multi-line error), sent together so that a reader
/// never sees part of one. The gateway writes each message with one write, so when its
/// first line has been read, its continuation lines are already in the reader's buffer.
fn message_channel(
    output: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<Vec<String>> {
    let mut reader = BufReader::new(output);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut line = String::new();
        loop {
            let mut message = Vec::new();
            loop {
                line.clear();
                match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => message.push(line.trim_end_matches(['\n', '\r']).to_owned()),
                }
                if !reader.buffer().starts_with(b"  ") {
                    break;
                }
            }
            if tx.send(message).is_err() {
                return;
            }
        }
    });
    rx
}

/// A file under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// A new file named `subplex-test-<pid>-<n>-<name>` holding `text`.
    pub fn with_contents(name: &str, text: &str) -> TempFile {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "subplex-test-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("write a temp file");
        TempFile(path)
    }

    /// Replaces the contents.
    pub fn write(&self, text: &str) {
        std::fs::write(&self.0, text).expect("write a temp file");
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
