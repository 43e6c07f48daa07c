//! Config reload: `SIGHUP` (which `subplex reload --pid-file` sends) re-reads the config
//! file and the files it names (hook scripts, CA certificates), and swaps the route table
//! without dropping live subscriptions.
//!
//! - A file that fails to read, parse or validate is refused: the error (file, key and
//!   reason) is logged and the running configuration stays.
//! - An upstream whose settings fingerprint is unchanged is carried over with its pool,
//!   connections and operations (`GatewayState::swap_routes`); its clients notice nothing.
//! - An upstream whose settings changed, or that is gone, is retired: each of its
//!   operations gets a result with `UPSTREAM_CONFIG_CHANGED`, then `complete`, and its
//!   connections close. The next subscription dials under the new settings.
//! - A route that is gone, or now leads to another upstream, ends its operations with
//!   `ROUTE_REMOVED`, then `complete`. New routes and upstreams serve the next request.
//! - `[server]` settings cannot change while serving (the listener, the connection cap and
//!   every session's limits were set up with them): a changed one is logged as needing a
//!   restart and keeps its old value.
//!
//! Every `SIGHUP` listener of the gateway belongs here, so one signal reloads everything.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError, ServerConfig};
use crate::state::GatewayState;
use crate::tls_reloader::TlsReloader;

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read, parsed or validated; names file, key and reason.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A new upstream's HTTP client could not be built.
    #[error("cannot set up the new upstreams: {0}")]
    Upstreams(#[source] std::io::Error),
}

/// Reloads the configuration of a running gateway from its file (see the module doc).
#[derive(Debug, Clone)]
pub struct Reloader {
    state: Arc<GatewayState>,
    config_path: PathBuf,
    /// The listener's certificate under `[server.tls]`: read again on every reload, even
    /// one whose config file is refused (a renewed certificate does not wait for a fix).
    tls: Option<Arc<TlsReloader>>,
    /// One reload at a time: two swaps interleaved could each keep an upstream the other
    /// retires.
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    pub(crate) fn new(
        state: Arc<GatewayState>,
        config_path: PathBuf,
        tls: Option<Arc<TlsReloader>>,
    ) -> Reloader {
        Reloader {
            state,
            config_path,
            tls,
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Re-reads the file and applies it, logging the outcome either way.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let _one_at_a_time = self.running.lock().await;
        let path = self.config_path.clone();
        // Reading files and compiling hook scripts blocks; keep it off the runtime threads.
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()));
        let result = loaded
            .map_err(ReloadError::from)
            .and_then(|config| self.apply(&config));
        if let Err(error) = &result {
            error!("configuration reload refused; the running configuration stays: {error}");
        }
        if let Some(tls) = &self.tls {
            if let Err(error) = tls.reload() {
                warn!(%error, "tls certificate not reloaded; the previous one keeps serving");
            }
        }
        result
    }

    fn apply(&self, config: &Config) -> Result<(), ReloadError> {
        let changes = self
            .state
            .swap_routes(config)
            .map_err(ReloadError::Upstreams)?;
        let restart = server_keys_changed(&self.state.server, &config.server);
        if !restart.is_empty() {
            warn!(
                keys = %restart.join(", "),
                "configuration reload: these [server] settings need a restart; they keep their old values"
            );
        }
        info!(
            file = %self.config_path.display(),
            upstreams_kept = %changes.upstreams_kept.join(", "),
            upstreams_started = %changes.upstreams_started.join(", "),
            upstreams_retired = %changes.upstreams_retired.join(", "),
            routes_ended = %changes.routes_ended.join(", "),
            "configuration reloaded"
        );
        Ok(())
    }
}

/// Reloads on every `SIGHUP` until `shutdown`.
pub async fn reload_on_sighup(reloader: Reloader, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGHUP; config reload is off");
                return;
            }
        };
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    info!(file = %reloader.config_path.display(), "SIGHUP: reloading the configuration");
                    // Refusals are logged by `reload`.
                    let _ = reloader.reload().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reloader, shutdown);
    }
}

/// The process id file of a running gateway (`--pid-file`), removed when dropped.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes this process's id to `path`.
    pub fn create(path: PathBuf) -> std::io::Result<PidFile> {
        std::fs::write(&path, format!("{}\n", std::process::id()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Why `subplex reload` could not signal the gateway.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("{file}: cannot read the process id: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: \"{text}\" is not a process id")]
    NotAPid { file: String, text: String },
    #[error("cannot signal process {pid} (from {file}): {reason}")]
    Kill {
        file: String,
        pid: i32,
        reason: String,
    },
    #[error("signals are Unix only: reload is not available on this system")]
    Unsupported,
}

/// Without Unix signals there is nothing to send.
#[cfg(not(unix))]
pub fn signal_reload(_pid_file: &std::path::Path) -> Result<i32, SignalError> {
    Err(SignalError::Unsupported)
}

/// Sends `SIGHUP` to the gateway whose id `pid_file` holds; returns that id.
#[cfg(unix)]
pub fn signal_reload(pid_file: &std::path::Path) -> Result<i32, SignalError> {
    use rustix::process::{kill_process, Pid, Signal};
    let file = pid_file.display().to_string();
    let text = std::fs::read_to_string(pid_file).map_err(|err| SignalError::Read {
        file: file.clone(),
        reason: err.to_string(),
    })?;
    let text = text.trim();
    let pid = text
        .parse::<i32>()
        .ok()
        .and_then(Pid::from_raw)
        .filter(|pid| pid.as_raw_nonzero().get() > 0)
        .ok_or_else(|| SignalError::NotAPid {
            file: file.clone(),
            text: text.to_owned(),
        })?;
    kill_process(pid, Signal::HUP).map_err(|err| SignalError::Kill {
        file,
        pid: pid.as_raw_nonzero().get(),
        reason: err.to_string(),
    })?;
    Ok(pid.as_raw_nonzero().get())
}

/// The `[server]` keys whose values differ: none of them can change while serving.
fn server_keys_changed(old: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    // Destructured so that a new `[server]` key cannot be forgotten here.
    let ServerConfig {
        listen: _,
        max_message_bytes: _,
        connection_init_timeout: _,
        keepalive_interval: _,
        shutdown_grace: _,
        max_connections: _,
        listen_backlog: _,
        client_write_timeout: _,
        client_request_timeout: _,
        operation_limits: _,
        cors: _,
        allowed_origins: _,
        sse_single_connection: _,
        multipart_heartbeat_interval: _,
        tls: _,
        sse_resume: _,
    } = old;
    let tls_files = |tls: &Option<crate::config::tls::ListenerTls>| {
        tls.as_ref()
            .map(|tls| (tls.cert_file.clone(), tls.key_file.clone()))
    };
    let keys = [
        ("server.listen", old.listen != new.listen),
        (
            "server.max_message_bytes",
            old.max_message_bytes != new.max_message_bytes,
        ),
        (
            "server.connection_init_timeout_ms",
            old.connection_init_timeout != new.connection_init_timeout,
        ),
        (
            "server.keepalive_interval_ms",
            old.keepalive_interval != new.keepalive_interval,
        ),
        (
            "server.shutdown_grace_ms",
            old.shutdown_grace != new.shutdown_grace,
        ),
        (
            "server.max_connections",
            old.max_connections != new.max_connections,
        ),
        (
            "server.listen_backlog",
            old.listen_backlog != new.listen_backlog,
        ),
        (
            "server.client_write_timeout_ms",
            old.client_write_timeout != new.client_write_timeout,
        ),
        (
            "server.client_request_timeout_ms",
            old.client_request_timeout != new.client_request_timeout,
        ),
        (
            "server.max_operations_per_connection",
            old.operation_limits.max_operations != new.operation_limits.max_operations,
        ),
        (
            "server.max_operation_id_bytes",
            old.operation_limits.max_id_bytes != new.operation_limits.max_id_bytes,
        ),
        ("server.cors", old.cors != new.cors),
        (
            "server.allowed_origins",
            old.allowed_origins != new.allowed_origins,
        ),
        (
            "server.sse_single_connection",
            old.sse_single_connection != new.sse_single_connection,
        ),
        (
            "server.multipart.heartbeat_interval_ms",
            old.multipart_heartbeat_interval != new.multipart_heartbeat_interval,
        ),
        // The certificate behind unchanged paths is read again on every reload.
        ("server.tls", tls_files(&old.tls) != tls_files(&new.tls)),
        ("server.sse", old.sse_resume != new.sse_resume),
    ];
    keys.into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[upstreams.up]\nurl = \"http://127.0.0.1:9/graphql\"\n[[routes]]\npath = \"/graphql\"\nupstream = \"up\"\n";

    fn server(keys: &str) -> ServerConfig {
        Config::parse(&format!("[server]\n{keys}\n{BASE}"), "gateway.toml")
            .unwrap()
            .server
    }

    #[test]
    fn server_keys_that_changed_are_named() {
        let old = server("");
        assert!(server_keys_changed(&old, &server("")).is_empty());
        // A default written out is no change.
        assert!(server_keys_changed(&old, &server("max_connections = 10000")).is_empty());
        assert_eq!(
            server_keys_changed(
                &old,
                &server("listen = \"127.0.0.1:4100\"\nmax_connections = 5\n[server.multipart]\nheartbeat_interval_ms = 1000")
            ),
            [
                "server.listen",
                "server.max_connections",
                "server.multipart.heartbeat_interval_ms"
            ]
        );
    }
}
