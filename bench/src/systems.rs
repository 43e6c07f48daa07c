//! The child processes of a run: the emitter and one system under test (subplex or the
//! baseline forwarder), each a separate OS process so its CPU time and memory can be read
//! from `/proc/PID`.
//!
//! Every helper exits when the harness's end of its stdin closes, which happens when its
//! handle drops — also when the harness fails half-way or is killed outright — so no
//! process outlives a run. subplex, which does not watch its stdin, runs under
//! `subplex-bench supervise`, which does (see [`crate::supervise`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time;

use crate::emitter::{EmitterStats, TickMode};

/// The read buffer of [`SystemKind::BaselineTuned`]'s sockets: the size subplex gives its
/// client sockets.
pub const TUNED_READ_BUFFER_BYTES: usize = 4 * 1024;

/// The path every system serves GraphQL on (over HTTP, and over WebSocket unless
/// [`System::with_ws_path`] says otherwise).
const GRAPHQL_PATH: &str = "/graphql";
/// How long a child may take to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a peer gateway may take to answer its readiness probe (Node starts slowly).
const PEER_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the emitter may take to answer a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The systems under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SystemKind {
    /// The subplex release binary.
    Subplex,
    /// `subplex-bench forwarder`: one upstream connection per client, frames copied, with
    /// tokio-tungstenite's default settings (128 KiB read buffers).
    Baseline,
    /// The same forwarder with 4 KiB read buffers, like subplex's client sockets.
    /// tungstenite zero-fills the free part of its read buffer on every read attempt
    /// (which also keeps it resident), so this separates that library effect from the
    /// architecture.
    BaselineTuned,
    /// No proxy: clients connect straight to the emitter. The floor the harness itself
    /// sets (fan-out only).
    Direct,
    /// `subplex-bench floor`: one upstream subscription, each event re-framed and written
    /// per client. The least a fan-out gateway can do.
    Floor,
    /// Hive Router 0.2.5 (Rust, crates.io), subscriptions and dedupe on, in front of a
    /// one-subgraph supergraph (`bench/peers/hive-router/`).
    HiveRouter,
    /// Hive Gateway (Node, npm `@graphql-hive/gateway`) in proxy mode
    /// (`bench/peers/hive-gateway/`).
    HiveGateway,
    /// Grafbase's gateway (`grafbase dev` of the Grafbase CLI, a Rust binary from npm) with
    /// the emitter as its only subgraph (`bench/peers/grafbase/`).
    Grafbase,
}

impl fmt::Display for SystemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SystemKind::Subplex => "subplex",
            SystemKind::Baseline => "baseline",
            SystemKind::BaselineTuned => "baseline-tuned",
            SystemKind::Direct => "direct",
            SystemKind::Floor => "floor",
            SystemKind::HiveRouter => "hive-router",
            SystemKind::HiveGateway => "hive-gateway",
            SystemKind::Grafbase => "grafbase",
        })
    }
}

/// The emitter child, driven over its stdin/stdout.
#[derive(Debug)]
pub struct Emitter {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Emitter {
    pub async fn spawn(
        bench_exe: &Path,
        rate: u64,
        mode: TickMode,
        payload_bytes: usize,
    ) -> anyhow::Result<Emitter> {
        let mode = match mode {
            TickMode::Broadcast => "broadcast",
            TickMode::Spread => "spread",
        };
        let mut command = Command::new(bench_exe);
        command
            .arg("emitter")
            .args(["--rate", &rate.to_string()])
            .args(["--mode", mode])
            .args(["--payload-bytes", &payload_bytes.to_string()]);
        let (child, pid, stdin, mut stdout) = spawn_piped(command, "emitter")?;
        let addr = read_ready(&mut stdout, "emitter").await?;
        Ok(Emitter {
            child,
            pid,
            addr,
            stdin,
            stdout,
        })
    }

    /// `ws://` URL of the emitter's GraphQL endpoint (any path works).
    pub fn http_url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/graphql", self.addr)
    }

    /// Sends every subscription one priming event (`n` = 0).
    pub async fn prime(&mut self) -> anyhow::Result<()> {
        let reply = self.command("prime").await?;
        if reply != "OK" {
            bail!("emitter refused prime: {reply}");
        }
        Ok(())
    }

    /// Starts the ticker: every subscription gets `events` events from now.
    pub async fn start(&mut self, events: u64) -> anyhow::Result<()> {
        let reply = self.command(&format!("start {events}")).await?;
        if reply != "OK" {
            bail!("emitter refused start: {reply}");
        }
        Ok(())
    }

    pub async fn stats(&mut self) -> anyhow::Result<EmitterStats> {
        let reply = self.command("stats").await?;
        let json = reply
            .strip_prefix("STATS ")
            .with_context(|| format!("unexpected emitter reply {reply:?}"))?;
        Ok(serde_json::from_str(json)?)
    }

    async fn command(&mut self, line: &str) -> anyhow::Result<String> {
        let exchange = async {
            self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
            self.stdin.flush().await?;
            self.stdout
                .next_line()
                .await?
                .context("emitter exited (stdout closed)")
        };
        time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .with_context(|| format!("emitter did not answer {line:?}"))?
    }

    /// Stops the emitter and waits for it.
    pub async fn stop(self) {
        drop(self.stdin);
        stop_child(self.child).await;
    }
}

/// A system under test, listening for clients.
#[derive(Debug)]
pub struct System {
    /// `None` for [`SystemKind::Direct`]: there is no process between clients and emitter.
    child: Option<Child>,
    pub pid: Option<u32>,
    pub addr: SocketAddr,
    /// Kept open: the forwarder exits when it closes.
    _stdin: Option<ChildStdin>,
    /// subplex's log (stderr), for the warnings it logged under load.
    pub log: Option<PathBuf>,
    /// The path WebSocket clients connect to: `/graphql` but for systems that serve
    /// WebSockets on a path of their own.
    ws_path: &'static str,
}

impl System {
    /// `ws://` URL WebSocket clients connect to.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, self.ws_path)
    }

    /// The same system with WebSocket clients sent to `path` instead of `/graphql`.
    pub fn with_ws_path(self, path: &'static str) -> System {
        System {
            ws_path: path,
            ..self
        }
    }

    /// `http://` URL SSE clients post to.
    pub fn http_url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }

    /// subplex: writes its config into `dir`, starts `subplex_bin --config …` under
    /// `bench_exe supervise`, and reads the address it bound from its stdout.
    pub async fn subplex(
        bench_exe: &Path,
        subplex_bin: &Path,
        dir: &Path,
        run_name: &str,
        emitter: &Emitter,
        max_connections: usize,
        subscriber_queue: Option<usize>,
    ) -> anyhow::Result<System> {
        let config_path = dir.join(format!("{run_name}.toml"));
        // Defaults everywhere except the listener (an ephemeral port), the connection cap
        // (raised when a scenario opens more clients than the default 10,000) and, when
        // asked, the slow-consumer queue.
        let queue = subscriber_queue
            .map(|queue| format!("subscriber_queue = {queue}\n"))
            .unwrap_or_default();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = {max_connections}\n\n\
             [upstreams.emitter]\nurl = \"{}\"\nprotocol = \"graphql-transport-ws\"\n{queue}\n\
             [[routes]]\npath = \"/graphql\"\nupstream = \"emitter\"\n",
            emitter.http_url()
        );
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log_path = dir.join(format!("{run_name}.log"));
        let (mut command, log) = supervised(bench_exe, &log_path)?;
        command
            .arg(subplex_bin)
            .arg("--config")
            .arg(&config_path)
            // Logs to a file: a pipe nobody reads would block the gateway once full.
            .stderr(Stdio::from(log))
            // Colour codes in a file only get in the way of reading it.
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", subplex_bin.display()))?;
        let stdin = child.stdin.take().context("supervisor stdin")?;
        let stdout = child.stdout.take().context("supervisor stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // Two lines, in either order: the supervisor's `PID <pid>` and subplex's
        // `subplex listening on <address>`.
        let (mut pid, mut addr) = (None, None);
        while pid.is_none() || addr.is_none() {
            let line = time::timeout(STARTUP_TIMEOUT, lines.next_line())
                .await
                .context("subplex did not start listening within 15 s")??;
            let Some(line) = line else {
                bail!(
                    "subplex exited before listening; its log:\n{}",
                    log_tail(&log_path)
                );
            };
            if let Some(value) = line.strip_prefix("PID ") {
                pid = Some(value.trim().parse::<u32>().context("supervisor PID line")?);
            } else if let Some(value) = line.strip_prefix("subplex listening on ") {
                addr = Some(value.trim().parse().context("subplex address")?);
            } else {
                bail!("unexpected line from subplex: {line:?}");
            }
        }
        // Keep draining stdout so the gateway never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(System {
            child: Some(child),
            pid,
            addr: addr.context("no address")?,
            _stdin: Some(stdin),
            log: Some(log_path),
            ws_path: GRAPHQL_PATH,
        })
    }

    /// The floor (`subplex-bench floor`) in front of the emitter.
    pub async fn floor(bench_exe: &Path, emitter: &Emitter) -> anyhow::Result<System> {
        let mut command = Command::new(bench_exe);
        command.arg("floor").args(["--upstream", &emitter.ws_url()]);
        System::helper(command, "floor").await
    }

    /// A helper subcommand of this executable that prints `READY <address>`.
    async fn helper(command: Command, what: &str) -> anyhow::Result<System> {
        let (child, pid, stdin, mut stdout) = spawn_piped(command, what)?;
        let addr = read_ready(&mut stdout, what).await?;
        Ok(System {
            child: Some(child),
            pid: Some(pid),
            addr,
            _stdin: Some(stdin),
            log: None,
            ws_path: GRAPHQL_PATH,
        })
    }

    /// A program that knows nothing of the harness (a peer gateway), run under
    /// `bench_exe supervise` with its stdout and stderr in `log_path`, listening on
    /// `addr`: ready once `GET http://addr{ready_path}` answers 200.
    pub async fn external(
        bench_exe: &Path,
        program: std::process::Command,
        addr: SocketAddr,
        ready_path: &str,
        log_path: PathBuf,
    ) -> anyhow::Result<System> {
        let what = program.get_program().to_string_lossy().into_owned();
        let (mut command, log) = supervised(bench_exe, &log_path)?;
        command
            .arg(program.get_program())
            .args(program.get_args())
            .stderr(Stdio::from(log.try_clone()?))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(dir) = program.get_current_dir() {
            command.current_dir(dir);
        }
        for (key, value) in program.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stdin = child.stdin.take().context("supervisor stdin")?;
        let stdout = child.stdout.take().context("supervisor stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = time::timeout(STARTUP_TIMEOUT, lines.next_line())
            .await
            .with_context(|| format!("the supervisor of {what} printed nothing"))??
            .with_context(|| format!("the supervisor of {what} exited"))?;
        let pid: u32 = line
            .strip_prefix("PID ")
            .and_then(|pid| pid.trim().parse().ok())
            .with_context(|| format!("unexpected line from the supervisor: {line:?}"))?;
        // The program's stdout, like its stderr, goes to the log; a pipe nobody reads would
        // block it once full.
        let mut log = log;
        tokio::spawn(async move {
            use std::io::Write as _;
            while let Ok(Some(line)) = lines.next_line().await {
                // A few lines at most: peers log at error level.
                let _ = writeln!(log, "{line}");
            }
        });
        let system = System {
            child: Some(child),
            pid: Some(pid),
            addr,
            _stdin: Some(stdin),
            log: Some(log_path),
            ws_path: GRAPHQL_PATH,
        };
        let url = format!("http://{addr}{ready_path}");
        let deadline = time::Instant::now() + PEER_STARTUP_TIMEOUT;
        let http = reqwest::Client::new();
        loop {
            if let Ok(response) = http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(system);
                }
            }
            if time::Instant::now() >= deadline
                || !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let tail = system.log.as_deref().map(log_tail).unwrap_or_default();
                system.stop().await;
                bail!(
                    "{what} was not ready at {url} within {} s; its log:\n{tail}",
                    PEER_STARTUP_TIMEOUT.as_secs()
                );
            }
            time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The baseline forwarder in front of the emitter.
    pub async fn baseline(
        bench_exe: &Path,
        emitter: &Emitter,
        read_buffer_bytes: Option<usize>,
    ) -> anyhow::Result<System> {
        let mut command = Command::new(bench_exe);
        command
            .arg("forwarder")
            .args(["--upstream", &emitter.ws_url()]);
        if let Some(bytes) = read_buffer_bytes {
            command.args(["--read-buffer-bytes", &bytes.to_string()]);
        }
        System::helper(command, "forwarder").await
    }

    /// No system at all: clients talk to the emitter.
    pub fn direct(emitter: &Emitter) -> System {
        System {
            child: None,
            pid: None,
            addr: emitter.addr,
            _stdin: None,
            log: None,
            ws_path: GRAPHQL_PATH,
        }
    }

    /// Stops the system and waits for it.
    pub async fn stop(self) {
        let System { child, _stdin, .. } = self;
        // Both helpers end when their stdin closes (the supervisor killing subplex first).
        drop(_stdin);
        if let Some(child) = child {
            stop_child(child).await;
        }
    }
}

/// The start of a `bench_exe supervise -- …` command, and the log file it creates for the
/// program. Programs that do not watch the harness (subplex, the peers) run under
/// `supervise`, which kills them when our end of its stdin closes: they would outlive a
/// harness that was killed.
fn supervised(bench_exe: &Path, log_path: &Path) -> anyhow::Result<(Command, std::fs::File)> {
    let log = std::fs::File::create(log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(bench_exe);
    command.arg("supervise").arg("--");
    Ok((command, log))
}

/// Waits briefly for a helper that was told to stop (stdin closed), then kills it.
async fn stop_child(mut child: Child) {
    if time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

type Piped = (Child, u32, ChildStdin, Lines<BufReader<ChildStdout>>);

fn spawn_piped(mut command: Command, what: &str) -> anyhow::Result<Piped> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting the {what}"))?;
    let pid = child
        .id()
        .with_context(|| format!("the {what} exited at once"))?;
    let stdin = child.stdin.take().context("child stdin")?;
    let stdout = child.stdout.take().context("child stdout")?;
    Ok((child, pid, stdin, BufReader::new(stdout).lines()))
}

async fn read_ready(
    stdout: &mut Lines<BufReader<ChildStdout>>,
    what: &str,
) -> anyhow::Result<SocketAddr> {
    let line = time::timeout(STARTUP_TIMEOUT, stdout.next_line())
        .await
        .with_context(|| format!("the {what} printed nothing within 15 s"))??
        .with_context(|| format!("the {what} exited before it was ready"))?;
    line.strip_prefix("READY ")
        .and_then(|addr| addr.trim().parse().ok())
        .with_context(|| format!("unexpected first line from the {what}: {line:?}"))
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// WARN and ERROR lines subplex logged: the count and up to five distinct messages
/// (messages differing only in numbers, such as operation ids, count as one).
pub fn log_warnings(path: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut count = 0;
    let mut distinct: Vec<String> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for line in text.lines().map(strip_ansi) {
        // Plain format: "<time>  WARN <spans>: <target>: <message> <fields>"; the part
        // after the level is distinctive enough without the timestamp.
        let Some((_, rest)) = line
            .split_once(" WARN ")
            .or_else(|| line.split_once(" ERROR "))
        else {
            continue;
        };
        count += 1;
        let mut key = String::with_capacity(rest.len());
        for c in rest.chars() {
            // Each run of digits becomes one '#'.
            if !c.is_ascii_digit() {
                key.push(c);
            } else if !key.ends_with('#') {
                key.push('#');
            }
        }
        if distinct.len() < 5 && !keys.contains(&key) {
            keys.push(key);
            distinct.push(rest.trim().to_owned());
        }
    }
    (count, distinct)
}

/// Removes terminal colour codes (tracing colours its output by default, even into files).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the end of the CSI sequence.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_differing_only_in_numbers_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("subplex.log");
        std::fs::write(
            &log,
            "t  INFO client initialised\n\
             t  WARN x: subscriber too slow; cutting it off op=4 queued=1\n\
             t  WARN x: subscriber too slow; cutting it off op=172 queued=1\n\
             t ERROR y: upstream connection failed\n",
        )
        .unwrap();
        let (count, samples) = log_warnings(&log);
        assert_eq!(count, 3);
        assert_eq!(
            samples,
            [
                "x: subscriber too slow; cutting it off op=4 queued=1",
                "y: upstream connection failed"
            ]
        );
    }

    #[test]
    fn strips_colour_codes() {
        assert_eq!(strip_ansi("\u{1b}[33mWARN\u{1b}[0m x"), "WARN x");
    }
}
