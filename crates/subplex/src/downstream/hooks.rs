//! The gateway side of hook scripts (`subplex-hooks`): turns a [`ClientContext`] into
//! what a hook sees and its answer into what a downstream session does.
//!
//! Without a script, or with one that does not define the hook, nothing here parses or
//! copies anything: the client's own payload goes upstream as it came.

use http::StatusCode;
use subplex_hooks::{ClientInfo, HookError};
use subplex_protocol::RawJson;
use subplex_upstream::ConnectParams;
use tracing::{debug, warn};

use super::operation::ClientContext;
use crate::responses::{json_error, ResponseBody};
use crate::state::Upstream;

/// Why a client gets no upstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InitRefusal {
    /// The script `throw`s this message: the client is refused (WebSocket 4403).
    Rejected(String),
    /// The script failed (a limit, an error in it): logged with the script and line; the
    /// client gets a generic error, never the script's details.
    Failed,
}

/// The connection parameters this client's operations reach the upstream with: the
/// security context is computed over the hook's payload, not the client's, so clients
/// whose hook-derived payloads differ never share an upstream connection.
pub(crate) fn connect_params(
    upstream: &Upstream,
    client: &ClientContext,
) -> Result<ConnectParams, InitRefusal> {
    let init_payload = connection_init_payload(upstream, client)?;
    Ok(upstream.connect_params(&client.headers, init_payload))
}

/// The answer to an HTTP client (SSE, multipart) the connection hook refused: 403 with
/// the script's message, or 500 when the script failed.
pub(crate) fn refusal_response(refusal: InitRefusal) -> http::Response<ResponseBody> {
    match refusal {
        InitRefusal::Rejected(message) => json_error(StatusCode::FORBIDDEN, &message, "FORBIDDEN"),
        InitRefusal::Failed => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the connection hook failed",
            "INTERNAL_SERVER_ERROR",
        ),
    }
}

/// The `connection_init` payload this client reaches the upstream with: what the
/// upstream's `on_connection_init` returns, or the client's own payload without one.
fn connection_init_payload(
    upstream: &Upstream,
    client: &ClientContext,
) -> Result<RawJson, InitRefusal> {
    let Some(script) = upstream
        .config
        .hooks
        .as_ref()
        .filter(|script| script.has_connection_init())
    else {
        return Ok(client.init_payload.clone());
    };
    // The client's payload was validated as JSON when it arrived.
    let init_payload: serde_json::Value =
        serde_json::from_str(client.init_payload.as_str()).map_err(|_| InitRefusal::Failed)?;
    let headers: Vec<(&str, &str)> = client
        .headers
        .iter()
        // A header that is not text cannot be a script string; the script does not see it.
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let remote_addr = client.peer.to_string();
    let info = ClientInfo {
        headers: &headers,
        init_payload: &init_payload,
        path: &client.path,
        upstream: &upstream.config.settings.name,
        transport: client.transport,
        remote_addr: &remote_addr,
    };
    match script.on_connection_init(&info, &init_payload) {
        Ok(payload) => Ok(RawJson::from_value(&payload)),
        Err(HookError::Rejected(message)) => {
            // The message is the script's own text for the client; it may quote a header.
            debug!(
                script = script.file(),
                "client rejected by on_connection_init"
            );
            Err(InitRefusal::Rejected(message))
        }
        Err(err @ HookError::Failed { .. }) => {
            upstream.metrics.hook_failed();
            warn!(error = %err, "on_connection_init failed; the client is refused");
            Err(InitRefusal::Failed)
        }
    }
}
