//! The `ctx` argument of every hook point: a read-only object the script reads by field.
//!
//! It is a registered Rhai type, not a map, for two reasons. Read-only: it has getters
//! and no setters, so a script cannot change what later hooks of the same client see.
//! Cheap: `on_next` runs per event, and passing a map would copy every header into every
//! call; this type is two reference-counted pointers, and a field is copied only when the
//! script reads it.

use std::fmt;
use std::sync::Arc;

use rhai::{Dynamic, Engine, ImmutableString, Map};
use serde_json::Value;

/// Who a client is, as hooks see it. Built by the gateway only when a script defines the
/// hook it calls.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo<'a> {
    /// Request headers, lower-case names; repeated ones in order.
    pub headers: &'a [(&'a str, &'a str)],
    /// The client's own `connection_init` payload; `{}` for clients without one.
    pub init_payload: &'a Value,
    pub path: &'a str,
    /// The upstream's name in the config.
    pub upstream: &'a str,
    /// `"graphql-transport-ws"`, `"graphql-ws"`, `"sse"`, `"multipart"`, ...
    pub transport: &'a str,
    pub remote_addr: &'a str,
}

/// One operation as hooks see it, besides its client: the client's own operation name
/// and variables (before `on_subscribe` changed anything).
#[derive(Debug, Clone, Copy, Default)]
pub struct OperationInfo<'a> {
    pub operation_name: Option<&'a str>,
    /// The variables object; `None` when the client sent none.
    pub variables: Option<&'a Value>,
}

/// The `ctx` of a hook call. Cloning is two reference-count bumps.
#[derive(Clone)]
pub struct HookContext {
    client: Arc<ClientFields>,
    operation: Option<Arc<OperationFields>>,
}

/// Values and payloads are never printed: headers hold tokens and cookies.
impl fmt::Debug for HookContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookContext")
            .field("path", &self.client.path)
            .field("transport", &self.client.transport)
            .field("has_operation", &self.operation.is_some())
            .finish_non_exhaustive()
    }
}

struct ClientFields {
    headers: Map,
    init_payload: Dynamic,
    path: ImmutableString,
    upstream: ImmutableString,
    transport: ImmutableString,
    remote_addr: ImmutableString,
}

struct OperationFields {
    operation_name: Dynamic,
    variables: Dynamic,
}

/// The field names a script can read, in the order the docs list them.
pub(crate) const FIELDS: [&str; 8] = [
    "headers",
    "init_payload",
    "path",
    "upstream",
    "transport",
    "remote_addr",
    "operation_name",
    "variables",
];

impl HookContext {
    /// The context of a client, without operation fields (`on_connection_init`).
    pub(crate) fn for_client(client: &ClientInfo<'_>) -> Result<HookContext, rhai::EvalAltResult> {
        let mut headers = Map::new();
        for (name, value) in client.headers {
            // Repeated headers join as HTTP allows (`cookie` with `; `), so the script reads
            // one string per name.
            let separator = if *name == "cookie" { "; " } else { ", " };
            match headers.get_mut(*name) {
                Some(existing) => {
                    let joined = format!("{existing}{separator}{value}");
                    *existing = joined.into();
                }
                None => {
                    headers.insert((*name).into(), (*value).into());
                }
            }
        }
        Ok(HookContext {
            client: Arc::new(ClientFields {
                headers,
                init_payload: rhai::serde::to_dynamic(client.init_payload).map_err(|e| *e)?,
                path: client.path.into(),
                upstream: client.upstream.into(),
                transport: client.transport.into(),
                remote_addr: client.remote_addr.into(),
            }),
            operation: None,
        })
    }

    /// This client's context with one operation's fields.
    pub(crate) fn with_operation(
        &self,
        operation: &OperationInfo<'_>,
    ) -> Result<HookContext, rhai::EvalAltResult> {
        let variables = match operation.variables {
            Some(variables) => rhai::serde::to_dynamic(variables).map_err(|e| *e)?,
            None => Map::new().into(),
        };
        Ok(HookContext {
            client: self.client.clone(),
            operation: Some(Arc::new(OperationFields {
                operation_name: operation
                    .operation_name
                    .map_or(Dynamic::UNIT, |name| name.to_owned().into()),
                variables,
            })),
        })
    }

    /// A field by name; `()` for operation fields outside an operation and for unknown names.
    fn field(&self, name: &str) -> Dynamic {
        let client = &self.client;
        match name {
            "headers" => client.headers.clone().into(),
            "init_payload" => client.init_payload.clone(),
            "path" => client.path.clone().into(),
            "upstream" => client.upstream.clone().into(),
            "transport" => client.transport.clone().into(),
            "remote_addr" => client.remote_addr.clone().into(),
            "operation_name" => self
                .operation
                .as_ref()
                .map_or(Dynamic::UNIT, |op| op.operation_name.clone()),
            "variables" => self
                .operation
                .as_ref()
                .map_or(Dynamic::UNIT, |op| op.variables.clone()),
            _ => Dynamic::UNIT,
        }
    }

    /// Registers the type with its getters (`ctx.headers`), its indexer (`ctx["path"]`)
    /// and `in` (`"variables" in ctx`); no setters.
    pub(crate) fn register(engine: &mut Engine) {
        engine.register_type_with_name::<HookContext>("Context");
        for name in FIELDS {
            engine.register_get(name, move |ctx: &mut HookContext| ctx.field(name));
        }
        engine
            .register_indexer_get(|ctx: &mut HookContext, name: ImmutableString| ctx.field(&name));
        engine.register_fn(
            "contains",
            |ctx: &mut HookContext, name: ImmutableString| {
                FIELDS.contains(&name.as_str())
                    && (ctx.operation.is_some()
                        || !matches!(&*name, "operation_name" | "variables"))
            },
        );
    }
}
