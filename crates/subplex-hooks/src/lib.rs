//! Hook scripts: Rhai scripts an upstream names, compiled once at start-up and run for
//! each client in a sandboxed engine.
//!
//! The hook point built so far is `on_connection_init(ctx, payload)`: it returns the
//! `connection_init` payload to send upstream, or rejects the client by `throw`ing a
//! message. A script that does not define it costs nothing: the gateway asks
//! [`HookScript::has_connection_init`] before building any context.
//!
//! The crate is pure (no I/O besides reading the script file at load, no runtime): a hook
//! runs on the caller's thread, bounded by [`Limits`], so a runaway script is an error
//! after a bounded amount of work, never a hang.

use std::fmt;
use std::path::Path;

use rhai::module_resolvers::DummyModuleResolver;
use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Position, Scope, AST};
use serde_json::Value;

/// The name of the connection hook in a script.
const ON_CONNECTION_INIT: &str = "on_connection_init";

/// What a script may use at most, per call. Exceeding any of them is a [`HookError::Failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rhai operations (roughly: expressions evaluated) per hook call.
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_depth: usize,
    /// Nesting of expressions, in the script's text and in its functions.
    pub max_expr_depth: usize,
    /// Bytes of any one string.
    pub max_string_size: usize,
    /// Elements of any one array.
    pub max_array_size: usize,
    /// Entries of any one object map.
    pub max_map_size: usize,
}

impl Default for Limits {
    /// Generous for header and payload rewriting (a few hundred operations), small enough
    /// that a runaway loop stops within a few milliseconds (about 4 ms in a release build).
    fn default() -> Self {
        Limits {
            max_operations: 100_000,
            max_call_depth: 32,
            max_expr_depth: 64,
            max_string_size: 64 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
        }
    }
}

/// Why a script could not be loaded. Both variants name the file; a compile error also
/// names the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {file}: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: line {line}: {reason}")]
    Compile {
        file: String,
        line: usize,
        reason: String,
    },
}

/// Why a hook call did not produce a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The script `throw`s: it refuses the client, with this message for the client.
    #[error("rejected by the hook: {0}")]
    Rejected(String),
    /// The script failed (a limit, a type error, a wrong return value). The message names
    /// the script, and the line where Rhai knows it (not for limits on operations), and
    /// may be logged; it never holds header or payload values.
    #[error("{file}: {}{reason}", at_line(*.line))]
    Failed {
        file: String,
        line: Option<usize>,
        reason: String,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|line| format!("line {line}: "))
        .unwrap_or_default()
}

/// Who a client is, as hooks see it: the `ctx` argument of every hook point. Built by the
/// gateway only when the script defines the hook it calls.
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

/// One compiled script with its sandboxed engine; shared by every client of its upstream.
pub struct HookScript {
    file: String,
    engine: Engine,
    ast: AST,
    has_connection_init: bool,
}

impl fmt::Debug for HookScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookScript")
            .field("file", &self.file)
            .field("has_connection_init", &self.has_connection_init)
            .finish_non_exhaustive()
    }
}

impl HookScript {
    /// Reads and compiles the script at `path`.
    pub fn load(path: &Path, limits: Limits) -> Result<HookScript, LoadError> {
        let file = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|err| LoadError::Read {
            file: file.clone(),
            reason: err.to_string(),
        })?;
        HookScript::compile(file, &source, limits)
    }

    /// Compiles `source`; `file` names it in errors.
    pub fn compile(
        file: impl Into<String>,
        source: &str,
        limits: Limits,
    ) -> Result<HookScript, LoadError> {
        let file = file.into();
        let engine = sandboxed_engine(limits);
        let ast = engine.compile(source).map_err(|err| LoadError::Compile {
            file: file.clone(),
            line: err.position().line().unwrap_or(0),
            reason: err.err_type().to_string(),
        })?;
        let has_connection_init = ast
            .iter_functions()
            .any(|f| f.name == ON_CONNECTION_INIT && f.params.len() == 2);
        Ok(HookScript {
            file,
            engine,
            ast,
            has_connection_init,
        })
    }

    /// The script as named in the config (for logs).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Whether the script defines `on_connection_init(ctx, payload)`.
    pub fn has_connection_init(&self) -> bool {
        self.has_connection_init
    }

    /// Runs `on_connection_init(ctx, payload)`: the payload to send upstream (a JSON
    /// object), or why there is none. Without the hook, the payload is returned as is.
    pub fn on_connection_init(
        &self,
        client: &ClientInfo<'_>,
        payload: &Value,
    ) -> Result<Value, HookError> {
        if !self.has_connection_init {
            return Ok(payload.clone());
        }
        let ctx = self.context(client)?;
        let payload = self.to_script(payload)?;
        // `eval_ast(false)`: the top level of the script is not run per call; a hook's
        // arguments are copies, so the script cannot change what the gateway holds.
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let returned: Dynamic = self
            .engine
            .call_fn_with_options(
                options,
                &mut Scope::new(),
                &self.ast,
                ON_CONNECTION_INIT,
                (ctx, payload),
            )
            .map_err(|err| self.runtime_error(*err))?;
        if !returned.is_map() {
            return Err(self.failed(
                Position::NONE,
                format!(
                    "{ON_CONNECTION_INIT} must return an object map (the payload), not {}",
                    returned.type_name()
                ),
            ));
        }
        rhai::serde::from_dynamic::<Value>(&returned)
            .map_err(|err| self.failed(Position::NONE, err.to_string()))
    }

    fn context(&self, client: &ClientInfo<'_>) -> Result<Dynamic, HookError> {
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
        let mut ctx = Map::new();
        ctx.insert("headers".into(), headers.into());
        ctx.insert("init_payload".into(), self.to_script(client.init_payload)?);
        ctx.insert("path".into(), client.path.into());
        ctx.insert("upstream".into(), client.upstream.into());
        ctx.insert("transport".into(), client.transport.into());
        ctx.insert("remote_addr".into(), client.remote_addr.into());
        Ok(ctx.into())
    }

    fn to_script(&self, value: &Value) -> Result<Dynamic, HookError> {
        rhai::serde::to_dynamic(value).map_err(|err| self.failed(Position::NONE, err.to_string()))
    }

    fn runtime_error(&self, err: EvalAltResult) -> HookError {
        match err {
            // A `throw` inside a function reaches us wrapped in the call's error.
            EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => self.runtime_error(*inner),
            EvalAltResult::ErrorRuntime(value, _) => HookError::Rejected(match value {
                value if value.is_string() => value.into_string().unwrap_or_default(),
                value if value.is_unit() => "rejected".to_owned(),
                value => value.to_string(),
            }),
            other => {
                let position = other.position();
                self.failed(position, other.to_string())
            }
        }
    }

    fn failed(&self, position: Position, reason: String) -> HookError {
        HookError::Failed {
            file: self.file.clone(),
            line: position.line(),
            reason,
        }
    }
}

/// An engine with every limit set and nothing that reaches outside: Rhai itself has no
/// file, network or process functions; `import` (the one way to read files) finds
/// nothing, `eval` is off so the limits also hold against generated code, and
/// `print`/`debug` go nowhere (their arguments could be secrets).
fn sandboxed_engine(limits: Limits) -> Engine {
    let mut engine = Engine::new();
    engine.set_module_resolver(DummyModuleResolver::new());
    engine.disable_symbol("eval");
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_depth);
    engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client<'a>(headers: &'a [(&'a str, &'a str)], init: &'a Value) -> ClientInfo<'a> {
        ClientInfo {
            headers,
            init_payload: init,
            path: "/graphql",
            upstream: "hasura",
            transport: "graphql-transport-ws",
            remote_addr: "127.0.0.1:50000",
        }
    }

    fn script(source: &str) -> HookScript {
        HookScript::compile("hooks/test.rhai", source, Limits::default()).expect("compiles")
    }

    const HASURA_AUTH: &str = r#"
        fn on_connection_init(ctx, payload) {
            if "authorization" in ctx.headers {
                if payload.headers == () { payload.headers = #{}; }
                payload.headers.Authorization = ctx.headers.authorization;
            }
            payload
        }
    "#;

    #[test]
    fn rewrite_moves_the_authorization_header_into_payload_headers() {
        let hooks = script(HASURA_AUTH);
        assert!(hooks.has_connection_init());
        let init = json!({ "lang": "en" });
        let headers = [("authorization", "Bearer alice"), ("x-other", "1")];
        let out = hooks
            .on_connection_init(&client(&headers, &init), &init)
            .expect("rewritten");
        assert_eq!(
            out,
            json!({ "lang": "en", "headers": { "Authorization": "Bearer alice" } })
        );
        // Without the header the payload goes through unchanged.
        let out = hooks
            .on_connection_init(&client(&[], &init), &init)
            .expect("unchanged");
        assert_eq!(out, init);
    }

    #[test]
    fn ctx_carries_the_client_details_and_repeated_headers_join() {
        let hooks = script(
            r#"fn on_connection_init(ctx, payload) {
                #{ seen: [ctx.path, ctx.upstream, ctx.transport, ctx.remote_addr,
                          ctx.headers.cookie, ctx.init_payload.lang] }
            }"#,
        );
        let init = json!({ "lang": "en" });
        let headers = [("cookie", "a=1"), ("cookie", "b=2")];
        let out = hooks
            .on_connection_init(&client(&headers, &init), &json!({}))
            .expect("runs");
        assert_eq!(
            out,
            json!({ "seen": ["/graphql", "hasura", "graphql-transport-ws", "127.0.0.1:50000", "a=1; b=2", "en"] })
        );
    }

    #[test]
    fn throw_rejects_with_its_message() {
        let hooks = script(
            r#"fn on_connection_init(ctx, payload) {
                if !("authorization" in ctx.headers) { throw "anonymous subscribers are not allowed"; }
                payload
            }"#,
        );
        let init = json!({});
        let err = hooks
            .on_connection_init(&client(&[], &init), &init)
            .unwrap_err();
        assert_eq!(
            err,
            HookError::Rejected("anonymous subscribers are not allowed".into())
        );
    }

    #[test]
    fn a_runaway_loop_is_stopped_by_the_operation_limit() {
        let hooks =
            script("fn on_connection_init(ctx, payload) {\n    loop { payload.n = 1; }\n}\n");
        let init = json!({});
        let started = std::time::Instant::now();
        let err = hooks
            .on_connection_init(&client(&[], &init), &init)
            .unwrap_err();
        let HookError::Failed { file, line, reason } = err else {
            panic!("expected a failure, got {err:?}");
        };
        assert_eq!(file, "hooks/test.rhai");
        // Rhai does not tell where the limit was hit.
        assert_eq!(line, None);
        assert!(reason.contains("Too many operations"), "{reason}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_string_past_the_size_limit_fails() {
        let limits = Limits {
            max_string_size: 100,
            ..Limits::default()
        };
        let hooks = HookScript::compile(
            "big.rhai",
            r#"fn on_connection_init(ctx, payload) { let s = "x"; loop { s += s; } }"#,
            limits,
        )
        .expect("compiles");
        let init = json!({});
        let err = hooks
            .on_connection_init(&client(&[], &init), &init)
            .unwrap_err();
        assert!(
            matches!(&err, HookError::Failed { reason, .. } if reason.contains("Length of string")),
            "{err:?}"
        );
    }

    #[test]
    fn a_syntax_error_names_the_file_and_line() {
        let err = HookScript::compile(
            "hooks/broken.rhai",
            "fn on_connection_init(ctx, payload) {\n    let x = ;\n}\n",
            Limits::default(),
        )
        .unwrap_err();
        let LoadError::Compile { file, line, .. } = &err else {
            panic!("expected a compile error, got {err:?}");
        };
        assert_eq!((file.as_str(), *line), ("hooks/broken.rhai", 2));
        assert!(
            err.to_string().starts_with("hooks/broken.rhai: line 2: "),
            "{err}"
        );
    }

    #[test]
    fn files_cannot_be_imported_and_eval_is_off() {
        let init = json!({});
        let hooks =
            script(r#"fn on_connection_init(ctx, payload) { import "secrets" as s; payload }"#);
        let err = hooks
            .on_connection_init(&client(&[], &init), &init)
            .unwrap_err();
        assert!(matches!(err, HookError::Failed { .. }), "{err:?}");
        assert!(HookScript::compile("e.rhai", r#"eval("1")"#, Limits::default()).is_err());
    }

    #[test]
    fn a_script_without_the_hook_passes_the_payload_through() {
        let hooks = script("fn helper(x) { x }");
        assert!(!hooks.has_connection_init());
        let init = json!({ "a": 1 });
        assert_eq!(
            hooks.on_connection_init(&client(&[], &init), &init),
            Ok(init.clone())
        );
    }

    #[test]
    fn returning_something_other_than_a_map_fails() {
        let hooks = script("fn on_connection_init(ctx, payload) { 42 }");
        let init = json!({});
        let err = hooks
            .on_connection_init(&client(&[], &init), &init)
            .unwrap_err();
        assert!(
            matches!(&err, HookError::Failed { reason, .. } if reason.contains("object map")),
            "{err:?}"
        );
    }
}
