//! The gateway side of hook scripts (`subplex-hooks`) and `init_payload` templates: turns
//! a [`ClientContext`] into what a hook sees and a hook's answer into what a downstream
//! session does.
//!
//! Without a script (or with one that does not define the hook) and without a template,
//! nothing here parses or copies anything: the client's own payload goes upstream as it
//! came, and an operation's events are the upstream's, untouched and unboxed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use http::StatusCode;
use subplex_hooks::{ClientInfo, HookContext, HookError, HookScript, OperationInfo};
use subplex_protocol::{graphql_errors, Event, GraphqlRequest, RawJson};
use subplex_upstream::{ConnectParams, UpstreamError};
use tracing::{debug, warn};

use super::operation::ClientContext;
use crate::metrics::UpstreamMetrics;
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

/// A client's hook script, with the `ctx` its operation hooks start from (built once per
/// client, only when the script defines an operation hook).
#[derive(Debug, Clone)]
pub(crate) struct ClientHooks {
    pub script: Arc<HookScript>,
    /// `None` when building it failed; the client's operations are then refused.
    context: Option<HookContext>,
}

/// The hooks of a client of route `path`, if the route has a script.
pub(crate) fn client_hooks(upstream: &Upstream, client: &ClientContext) -> Option<ClientHooks> {
    let script = upstream.hooks_for(&client.path)?.clone();
    let context = if script.points().any_operation_hook() {
        let init_payload = client_init_payload(client).unwrap_or_default();
        with_client_info(upstream, client, &init_payload, |info| {
            script
                .client_context(info)
                .map_err(|err| {
                    upstream.metrics.hook_failed();
                    warn!(error = %err, "hook context could not be built");
                })
                .ok()
        })
    } else {
        None
    };
    Some(ClientHooks { script, context })
}

/// The connection parameters this client's operations reach the upstream with: the
/// security context is computed over the final payload (template and hook applied), not
/// the client's, so clients whose derived payloads differ never share an upstream
/// connection.
pub(crate) fn connect_params(
    upstream: &Upstream,
    client: &ClientContext,
) -> Result<ConnectParams, InitRefusal> {
    let init_payload = connection_init_payload(upstream, client)?;
    Ok(upstream.connect_params(&client.headers, init_payload))
}

/// The answer to an HTTP client (SSE, multipart, plain HTTP) the connection hook refused:
/// 403 with the script's message, or 500 when the script failed.
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

/// The `connection_init` payload this client reaches the upstream with: the client's own,
/// with the upstream's `init_payload` template applied, then passed through the route's
/// `on_connection_init`.
fn connection_init_payload(
    upstream: &Upstream,
    client: &ClientContext,
) -> Result<RawJson, InitRefusal> {
    let template = upstream.config.init_template.as_ref();
    let script = client
        .hooks
        .as_ref()
        .map(|hooks| &hooks.script)
        .filter(|script| script.has_connection_init());
    if template.is_none() && script.is_none() {
        return Ok(client.init_payload.clone());
    }
    let mut payload = client_init_payload(client).ok_or(InitRefusal::Failed)?;
    with_client_info(upstream, client, &payload.clone(), |info| {
        if let Some(template) = template {
            payload = template.apply(info.headers, &payload);
        }
        let Some(script) = script else {
            return Ok(RawJson::from_value(&payload));
        };
        match script.on_connection_init(info, &payload) {
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
    })
}

/// The client's own init payload as a value; it was validated as JSON when it arrived.
fn client_init_payload(client: &ClientContext) -> Option<serde_json::Value> {
    serde_json::from_str(client.init_payload.as_str()).ok()
}

/// Runs `f` with the client as hooks and templates see it.
fn with_client_info<R>(
    upstream: &Upstream,
    client: &ClientContext,
    init_payload: &serde_json::Value,
    f: impl FnOnce(&ClientInfo<'_>) -> R,
) -> R {
    let headers: Vec<(&str, &str)> = client
        .headers
        .iter()
        // A header that is not text cannot be a script string; the script does not see it.
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let remote_addr = client.peer.to_string();
    f(&ClientInfo {
        headers: &headers,
        init_payload,
        path: &client.path,
        upstream: &upstream.config.settings.name,
        transport: client.transport,
        remote_addr: &remote_addr,
    })
}

/// One operation's hooks: its script and `ctx`. Exists only when the client's script
/// defines `on_subscribe`, `on_next` or `on_complete`.
pub(crate) struct OperationHooks {
    script: Arc<HookScript>,
    /// `None` when the context could not be built: the operation is refused.
    context: Option<HookContext>,
    /// Counts `subplex_hook_errors_total`.
    metrics: Arc<UpstreamMetrics>,
}

impl OperationHooks {
    /// The hooks of `request` from `client`, if its script has operation hooks.
    pub(crate) fn for_operation(
        upstream: &Upstream,
        client: &ClientContext,
        request: &GraphqlRequest,
    ) -> Option<OperationHooks> {
        if !client.has_operation_hooks() {
            return None;
        }
        let hooks = client.hooks.as_ref()?;
        let context = hooks.context.as_ref().and_then(|client_ctx| {
            let variables: Option<serde_json::Value> = request
                .variables
                .as_ref()
                .and_then(|raw| serde_json::from_str(raw.as_str()).ok());
            let operation = OperationInfo {
                operation_name: request.operation_name.as_deref(),
                variables: variables.as_ref(),
            };
            hooks
                .script
                .operation_context(client_ctx, &operation)
                .map_err(|err| {
                    upstream.metrics.hook_failed();
                    warn!(error = %err, "hook context could not be built");
                })
                .ok()
        });
        Some(OperationHooks {
            script: hooks.script.clone(),
            context,
            metrics: upstream.metrics.clone(),
        })
    }

    /// The operation's outcomes through the hooks: `on_subscribe` first (a refusal is the
    /// operation's one event, and nothing reaches the upstream), then `on_next` on each
    /// result, `on_complete` once at the end, whichever way it ends.
    pub(crate) fn outcomes<S>(
        self,
        request: GraphqlRequest,
        start: impl FnOnce(GraphqlRequest) -> S,
    ) -> HookedOutcomes<S>
    where
        S: Stream<Item = Result<Event, UpstreamError>>,
    {
        let (inner, refusal) = match self.subscribe(request) {
            Ok(request) => (Some(Box::pin(start(request))), None),
            Err(refusal) => (None, Some(refusal)),
        };
        HookedOutcomes {
            hooks: self,
            inner,
            refusal,
            completed: false,
        }
    }

    fn subscribe(&self, request: GraphqlRequest) -> Result<GraphqlRequest, Event> {
        let Some(ctx) = &self.context else {
            return Err(hook_failed_event());
        };
        if !self.script.points().subscribe {
            return Ok(request);
        }
        self.script
            .on_subscribe(ctx, &request)
            .map_err(|err| self.refusal_event("on_subscribe", err))
    }

    /// `Ok(None)`: dropped for this client. `Err`: the event that ends the operation.
    fn next(&self, payload: RawJson) -> Result<Option<RawJson>, Event> {
        let Some(ctx) = self.context.as_ref().filter(|_| self.script.points().next) else {
            return Ok(Some(payload));
        };
        self.script
            .on_next(ctx, &payload)
            .map_err(|err| self.refusal_event("on_next", err))
    }

    fn complete(&self) {
        let Some(ctx) = self
            .context
            .as_ref()
            .filter(|_| self.script.points().complete)
        else {
            return;
        };
        if let Err(err) = self.script.on_complete(ctx) {
            self.metrics.hook_failed();
            warn!(error = %err, "on_complete failed");
        }
    }

    /// What the client gets when a hook refuses or fails its operation: a GraphQL error
    /// with the script's message (`FORBIDDEN`), or a generic one when the script failed
    /// (logged with the script and line, never values).
    fn refusal_event(&self, hook: &'static str, err: HookError) -> Event {
        match err {
            HookError::Rejected(message) => {
                debug!(
                    script = self.script.file(),
                    hook, "operation rejected by the hook"
                );
                Event::Error(graphql_errors(&message, "FORBIDDEN"))
            }
            err @ HookError::Failed { .. } => {
                self.metrics.hook_failed();
                warn!(error = %err, hook, "hook failed; the operation ends");
                hook_failed_event()
            }
        }
    }
}

fn hook_failed_event() -> Event {
    Event::Error(graphql_errors(
        "the operation's hook failed",
        "INTERNAL_SERVER_ERROR",
    ))
}

/// An operation's outcomes with its hooks applied.
pub(crate) struct HookedOutcomes<S> {
    hooks: OperationHooks,
    /// The upstream's outcomes; `None` once the operation has ended here (or never
    /// started): dropping it stops the operation upstream.
    inner: Option<Pin<Box<S>>>,
    /// `on_subscribe`'s refusal, not yet delivered.
    refusal: Option<Event>,
    completed: bool,
}

impl<S> HookedOutcomes<S> {
    /// Runs `on_complete` the first time only.
    fn complete(&mut self) {
        if !self.completed {
            self.completed = true;
            self.hooks.complete();
        }
    }

    /// Ends the operation with `event`: `on_complete`, then the upstream side is dropped.
    fn end_with(&mut self, event: Event) -> Poll<Option<Result<Event, UpstreamError>>> {
        self.complete();
        self.inner = None;
        Poll::Ready(Some(Ok(event)))
    }
}

impl<S> Stream for HookedOutcomes<S>
where
    S: Stream<Item = Result<Event, UpstreamError>>,
{
    type Item = Result<Event, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(refusal) = this.refusal.take() {
            return this.end_with(refusal);
        }
        loop {
            let Some(inner) = this.inner.as_mut() else {
                this.complete();
                return Poll::Ready(None);
            };
            let outcome = match inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(outcome) => outcome,
            };
            match outcome {
                Some(Ok(Event::Next(payload))) => match this.hooks.next(payload) {
                    Ok(Some(payload)) => return Poll::Ready(Some(Ok(Event::Next(payload)))),
                    // Dropped for this client: wait for the next one.
                    Ok(None) => continue,
                    Err(event) => return this.end_with(event),
                },
                Some(ending) => {
                    // A terminal event or a failure: the upstream is done with it.
                    this.complete();
                    return Poll::Ready(Some(ending));
                }
                None => {
                    this.inner = None;
                }
            }
        }
    }
}

/// An operation dropped before its end (the client stopped it or left) still gets its
/// `on_complete`, before the upstream subscription is dropped (fields drop after this).
impl<S> Drop for HookedOutcomes<S> {
    fn drop(&mut self) {
        self.complete();
    }
}
