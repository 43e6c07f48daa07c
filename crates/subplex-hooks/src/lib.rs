//! Hook scripts: Rhai scripts an upstream or a route names, compiled once at start-up
//! and run for each client in a sandboxed engine.
//!
//! Hook points (each optional; one the script does not define costs nothing, the gateway
//! asks [`HookScript::points`] before building any context):
//! - `on_connection_init(ctx, payload)`: the `connection_init` payload to send upstream;
//!   `throw` refuses the client.
//! - `on_subscribe(ctx, request)`: the request to send upstream; `throw` refuses this
//!   operation only.
//! - `on_next(ctx, payload)`: the payload to deliver to this client, or `()` to drop it.
//! - `on_complete(ctx)`: once per operation, however it ended.
//!
//! The crate is pure (no I/O besides reading the script file at load, no runtime): a hook
//! runs on the caller's thread, bounded by [`Limits`], so a runaway script is an error
//! after a bounded amount of work, never a hang.

mod context;
mod template;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rhai::module_resolvers::DummyModuleResolver;
use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, FuncArgs, Map, Position, Scope, AST};
use serde_json::Value;
use subplex_protocol::{GraphqlRequest, RawJson};

pub use context::{ClientInfo, HookContext, OperationInfo};
pub use template::{InitTemplate, TemplateError};

const ON_CONNECTION_INIT: &str = "on_connection_init";
const ON_SUBSCRIBE: &str = "on_subscribe";
const ON_NEXT: &str = "on_next";
const ON_COMPLETE: &str = "on_complete";

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
    /// The script `throw`s: it refuses the client or the operation, with this message
    /// for the client.
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

/// Which hook points a script defines (by name and number of parameters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookPoints {
    pub connection_init: bool,
    pub subscribe: bool,
    pub next: bool,
    pub complete: bool,
}

impl HookPoints {
    /// Whether any per-operation hook is defined: only then does an operation pay for a
    /// context.
    pub fn any_operation_hook(&self) -> bool {
        self.subscribe || self.next || self.complete
    }
}

/// How many times each hook point ran (calls that reached the script, whatever they
/// returned): for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookCalls {
    pub connection_init: u64,
    pub subscribe: u64,
    pub next: u64,
    pub complete: u64,
}

#[derive(Debug, Default)]
struct CallCounters {
    connection_init: AtomicU64,
    subscribe: AtomicU64,
    next: AtomicU64,
    complete: AtomicU64,
}

/// The last event `on_next` saw, and its parse once a second client needed it: the
/// clients that share an upstream event get clones of one `RawJson` (one allocation of
/// its text), so each of them after the second copies the parsed value instead of
/// parsing the text again. The parse is kept only from the second client on: an event
/// for one client alone is parsed once and never copied.
type ParsedEvent = Option<(RawJson, Option<Dynamic>)>;

/// One compiled script with its sandboxed engine; shared by every client of its upstream
/// or route.
pub struct HookScript {
    file: String,
    source: Box<str>,
    engine: Engine,
    ast: AST,
    points: HookPoints,
    calls: CallCounters,
    last_event: Mutex<ParsedEvent>,
}

impl fmt::Debug for HookScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookScript")
            .field("file", &self.file)
            .field("points", &self.points)
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
        let defines = |name: &str, params: usize| {
            ast.iter_functions()
                .any(|f| f.name == name && f.params.len() == params)
        };
        let points = HookPoints {
            connection_init: defines(ON_CONNECTION_INIT, 2),
            subscribe: defines(ON_SUBSCRIBE, 2),
            next: defines(ON_NEXT, 2),
            complete: defines(ON_COMPLETE, 1),
        };
        Ok(HookScript {
            file,
            source: source.into(),
            engine,
            ast,
            points,
            calls: CallCounters::default(),
            last_event: Mutex::new(None),
        })
    }

    /// The text the script was compiled from: what a config reload compares, so a
    /// changed file is noticed by what actually runs, not by reading the file again.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The script as named in the config (for logs).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The hook points the script defines.
    pub fn points(&self) -> HookPoints {
        self.points
    }

    /// Whether the script defines `on_connection_init(ctx, payload)`.
    pub fn has_connection_init(&self) -> bool {
        self.points.connection_init
    }

    /// How many times each hook point ran so far.
    pub fn calls(&self) -> HookCalls {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        HookCalls {
            connection_init: read(&self.calls.connection_init),
            subscribe: read(&self.calls.subscribe),
            next: read(&self.calls.next),
            complete: read(&self.calls.complete),
        }
    }

    /// The `ctx` of a client's hooks (without operation fields).
    pub fn client_context(&self, client: &ClientInfo<'_>) -> Result<HookContext, HookError> {
        HookContext::for_client(client).map_err(|err| self.failed(Position::NONE, err.to_string()))
    }

    /// The `ctx` of one operation's hooks: its client's, with the operation's fields.
    pub fn operation_context(
        &self,
        client: &HookContext,
        operation: &OperationInfo<'_>,
    ) -> Result<HookContext, HookError> {
        client
            .with_operation(operation)
            .map_err(|err| self.failed(Position::NONE, err.to_string()))
    }

    /// Runs `on_connection_init(ctx, payload)`: the payload to send upstream (a JSON
    /// object), or why there is none. Without the hook, the payload is returned as is.
    pub fn on_connection_init(
        &self,
        client: &ClientInfo<'_>,
        payload: &Value,
    ) -> Result<Value, HookError> {
        if !self.points.connection_init {
            return Ok(payload.clone());
        }
        let ctx = self.client_context(client)?;
        let payload = self.to_script(payload)?;
        self.calls.connection_init.fetch_add(1, Ordering::Relaxed);
        let returned = self.call(ON_CONNECTION_INIT, (ctx, payload))?;
        if !returned.is_map() {
            return Err(self.wrong_return(
                ON_CONNECTION_INIT,
                "an object map (the payload)",
                &returned,
            ));
        }
        rhai::serde::from_dynamic::<Value>(&returned)
            .map_err(|err| self.failed(Position::NONE, err.to_string()))
    }

    /// Runs `on_subscribe(ctx, request)`: the request to send upstream. The script sees
    /// `#{query, operationName, variables, extensions}` (absent ones `()`) and returns
    /// such a map. Without the hook, the request is returned as is.
    pub fn on_subscribe(
        &self,
        ctx: &HookContext,
        request: &GraphqlRequest,
    ) -> Result<GraphqlRequest, HookError> {
        if !self.points.subscribe {
            return Ok(request.clone());
        }
        let mut map = Map::new();
        map.insert("query".into(), request.query.clone().into());
        map.insert(
            "operationName".into(),
            request
                .operation_name
                .clone()
                .map_or(Dynamic::UNIT, Dynamic::from),
        );
        map.insert("variables".into(), self.parse_optional(&request.variables)?);
        map.insert(
            "extensions".into(),
            self.parse_optional(&request.extensions)?,
        );
        self.calls.subscribe.fetch_add(1, Ordering::Relaxed);
        let returned = self.call(ON_SUBSCRIBE, (ctx.clone(), Dynamic::from_map(map)))?;
        self.request_from_script(returned)
    }

    /// Runs `on_next(ctx, payload)`: the payload to deliver to this client, or `None` to
    /// drop the event for this client. Without the hook, the payload is returned as is.
    pub fn on_next(
        &self,
        ctx: &HookContext,
        payload: &RawJson,
    ) -> Result<Option<RawJson>, HookError> {
        if !self.points.next {
            return Ok(Some(payload.clone()));
        }
        let parsed = self.parsed_event(payload)?;
        self.calls.next.fetch_add(1, Ordering::Relaxed);
        let returned = self.call(ON_NEXT, (ctx.clone(), parsed))?;
        if returned.is_unit() {
            return Ok(None);
        }
        if !returned.is_map() {
            return Err(self.wrong_return(
                ON_NEXT,
                "an object map (the payload) or () to drop the event",
                &returned,
            ));
        }
        RawJson::serialize(&returned)
            .map(Some)
            .map_err(|err| self.failed(Position::NONE, err.to_string()))
    }

    /// Runs `on_complete(ctx)`, if defined; its return value is ignored.
    pub fn on_complete(&self, ctx: &HookContext) -> Result<(), HookError> {
        if !self.points.complete {
            return Ok(());
        }
        self.calls.complete.fetch_add(1, Ordering::Relaxed);
        self.call(ON_COMPLETE, (ctx.clone(),)).map(drop)
    }

    /// The event as a script value: parsed at most twice per upstream event, copied for each
    /// further client that shares it.
    fn parsed_event(&self, payload: &RawJson) -> Result<Dynamic, HookError> {
        // A poisoned lock only means a panic elsewhere mid-update; the cache is a hint.
        let mut last = self.last_event.lock().unwrap_or_else(|p| p.into_inner());
        let seen_before = match last.as_ref() {
            Some((text, Some(parsed))) if text.is_same(payload) => return Ok(parsed.clone()),
            Some((text, None)) => text.is_same(payload),
            _ => false,
        };
        let parsed: Dynamic = serde_json::from_str(payload.as_str())
            .map_err(|err| self.failed(Position::NONE, err.to_string()))?;
        *last = Some((payload.clone(), seen_before.then(|| parsed.clone())));
        Ok(parsed)
    }

    fn parse_optional(&self, raw: &Option<RawJson>) -> Result<Dynamic, HookError> {
        match raw {
            Some(raw) => serde_json::from_str(raw.as_str())
                .map_err(|err| self.failed(Position::NONE, err.to_string())),
            None => Ok(Dynamic::UNIT),
        }
    }

    /// The request an `on_subscribe` returned, checked field by field.
    fn request_from_script(&self, returned: Dynamic) -> Result<GraphqlRequest, HookError> {
        let Some(mut map) = returned.clone().try_cast::<Map>() else {
            return Err(self.wrong_return(ON_SUBSCRIBE, "an object map (the request)", &returned));
        };
        let wrong = |field: &str, expected: &str| {
            self.failed(
                Position::NONE,
                format!("{ON_SUBSCRIBE} must return a request whose `{field}` is {expected}"),
            )
        };
        let query = map
            .remove("query")
            .and_then(|q| q.into_immutable_string().ok())
            .ok_or_else(|| wrong("query", "a string"))?;
        let operation_name = match map.remove("operationName") {
            None => None,
            Some(name) if name.is_unit() => None,
            Some(name) => Some(
                name.into_immutable_string()
                    .map_err(|_| wrong("operationName", "a string or ()"))?
                    .to_string(),
            ),
        };
        let mut object = |field: &str| -> Result<Option<RawJson>, HookError> {
            match map.remove(field) {
                None => Ok(None),
                Some(value) if value.is_unit() => Ok(None),
                Some(value) if value.is_map() => RawJson::serialize(&value)
                    .map(Some)
                    .map_err(|err| self.failed(Position::NONE, err.to_string())),
                Some(_) => Err(wrong(field, "an object map or ()")),
            }
        };
        let variables = object("variables")?;
        let extensions = object("extensions")?;
        Ok(GraphqlRequest {
            query: query.to_string(),
            operation_name,
            variables,
            extensions,
        })
    }

    /// Calls one hook function. `eval_ast(false)`: the top level of the script is not run
    /// per call; a hook's arguments are copies (and `ctx` has no setters), so the script
    /// cannot change what the gateway holds.
    fn call(&self, name: &str, args: impl FuncArgs) -> Result<Dynamic, HookError> {
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        self.engine
            .call_fn_with_options(options, &mut Scope::new(), &self.ast, name, args)
            .map_err(|err| self.runtime_error(*err))
    }

    fn to_script(&self, value: &Value) -> Result<Dynamic, HookError> {
        rhai::serde::to_dynamic(value).map_err(|err| self.failed(Position::NONE, err.to_string()))
    }

    fn wrong_return(&self, hook: &str, expected: &str, returned: &Dynamic) -> HookError {
        self.failed(
            Position::NONE,
            format!(
                "{hook} must return {expected}, not {}",
                returned.type_name()
            ),
        )
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
                self.failed(position, loggable(&other))
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

/// What a run-time error may say in a log: Rhai's own text for errors that name only the
/// script's text (a property, a function signature, types) or a limit; a fixed sentence
/// for the others, whose text can quote a value (`parse_int` of a header quotes the
/// header, an arithmetic error its operands, a missing index the key).
fn loggable(err: &EvalAltResult) -> String {
    use EvalAltResult::*;
    match err {
        ErrorVariableNotFound(..)
        | ErrorPropertyNotFound(..)
        | ErrorFunctionNotFound(..)
        | ErrorModuleNotFound(..)
        | ErrorUnboundThis(..)
        | ErrorMismatchDataType(..)
        | ErrorMismatchOutputType(..)
        | ErrorIndexingType(..)
        | ErrorFor(..)
        | ErrorAssignmentToConstant(..)
        | ErrorNonPureMethodCallOnConstant(..)
        | ErrorTooManyOperations(..)
        | ErrorTooManyVariables(..)
        | ErrorTooManyModules(..)
        | ErrorStackOverflow(..)
        | ErrorDataTooLarge(..) => err.to_string(),
        _ => "a run-time error (its text is not shown: it may quote a header or payload value)"
            .to_owned(),
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
    HookContext::register(&mut engine);
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

    fn operation_ctx(hooks: &HookScript, variables: &Value) -> HookContext {
        let init = json!({ "token": "t" });
        let headers = [("authorization", "Bearer alice")];
        let client_ctx = hooks.client_context(&client(&headers, &init)).unwrap();
        hooks
            .operation_context(
                &client_ctx,
                &OperationInfo {
                    operation_name: Some("Ticks"),
                    variables: Some(variables),
                },
            )
            .unwrap()
    }

    fn raw(value: Value) -> RawJson {
        RawJson::from_value(&value)
    }

    fn request(query: &str, variables: Option<Value>) -> GraphqlRequest {
        GraphqlRequest {
            query: query.into(),
            operation_name: Some("Ticks".into()),
            variables: variables.map(raw),
            extensions: None,
        }
    }

    #[test]
    fn points_are_found_by_name_and_arity() {
        let hooks =
            script("fn on_subscribe(ctx, r) { r } fn on_next(ctx) { 1 } fn on_complete(ctx) { }");
        assert_eq!(
            hooks.points(),
            HookPoints {
                connection_init: false,
                subscribe: true,
                next: false,
                complete: true,
            }
        );
        assert!(hooks.points().any_operation_hook());
        assert!(!script("fn helper(x) { x }").points().any_operation_hook());
    }

    #[test]
    fn on_subscribe_rewrites_variables_and_sees_the_operation_in_ctx() {
        let hooks = script(
            r#"fn on_subscribe(ctx, request) {
                if request.variables.count > 2 { request.variables.count = 2; }
                request.extensions = #{ who: ctx.headers.authorization, op: ctx.operation_name,
                                        room: ctx.variables.room, init: ctx.init_payload.token };
                request
            }"#,
        );
        let variables = json!({ "count": 5, "room": "red" });
        let ctx = operation_ctx(&hooks, &variables);
        let out = hooks
            .on_subscribe(&ctx, &request("subscription Ticks { t }", Some(variables)))
            .unwrap();
        assert_eq!(out.query, "subscription Ticks { t }");
        assert_eq!(out.operation_name.as_deref(), Some("Ticks"));
        assert_eq!(
            serde_json::from_str::<Value>(out.variables.unwrap().as_str()).unwrap(),
            json!({ "count": 2, "room": "red" })
        );
        assert_eq!(
            serde_json::from_str::<Value>(out.extensions.unwrap().as_str()).unwrap(),
            json!({ "who": "Bearer alice", "op": "Ticks", "room": "red", "init": "t" })
        );
        assert_eq!(hooks.calls().subscribe, 1);
    }

    #[test]
    fn on_subscribe_throw_rejects_and_a_bad_return_fails() {
        let hooks = script(r#"fn on_subscribe(ctx, request) { throw "not in this room"; }"#);
        let ctx = operation_ctx(&hooks, &json!({}));
        assert_eq!(
            hooks.on_subscribe(&ctx, &request("{ a }", None)),
            Err(HookError::Rejected("not in this room".into()))
        );
        let hooks = script(r#"fn on_subscribe(ctx, request) { request.query = 1; request }"#);
        let ctx = operation_ctx(&hooks, &json!({}));
        let err = hooks
            .on_subscribe(&ctx, &request("{ a }", None))
            .unwrap_err();
        assert!(
            matches!(&err, HookError::Failed { reason, .. } if reason.contains("`query` is a string")),
            "{err:?}"
        );
    }

    #[test]
    fn ctx_is_read_only_and_has_no_operation_fields_at_connection_init() {
        let hooks = script(
            r#"fn on_connection_init(ctx, payload) {
                #{ op: ctx.operation_name, vars: ctx.variables, has: "variables" in ctx,
                   path: ctx["path"], kind: type_of(ctx) }
            }
            fn on_next(ctx, payload) { ctx.path = "changed"; payload }"#,
        );
        let init = json!({});
        let out = hooks
            .on_connection_init(&client(&[], &init), &init)
            .unwrap();
        assert_eq!(
            out,
            json!({ "op": null, "vars": null, "has": false, "path": "/graphql", "kind": "Context" })
        );
        let ctx = operation_ctx(&hooks, &json!({}));
        let err = hooks
            .on_next(&ctx, &raw(json!({ "data": {} })))
            .unwrap_err();
        assert!(matches!(err, HookError::Failed { .. }), "{err:?}");
    }

    const ROOM_FILTER: &str = r#"
        fn on_next(ctx, payload) {
            if payload.data.message.room != ctx.variables.room { return; }
            payload.data.message.remove("secret");
            payload
        }
    "#;

    #[test]
    fn on_next_drops_by_a_field_and_removes_another() {
        let hooks = script(ROOM_FILTER);
        let ctx = operation_ctx(&hooks, &json!({ "room": "red" }));
        let red =
            raw(json!({ "data": { "message": { "room": "red", "text": "hi", "secret": 1 } } }));
        let blue =
            raw(json!({ "data": { "message": { "room": "blue", "text": "yo", "secret": 2 } } }));
        let delivered = hooks.on_next(&ctx, &red).unwrap().unwrap();
        assert_eq!(
            delivered.as_str(),
            r#"{"data":{"message":{"room":"red","text":"hi"}}}"#
        );
        assert_eq!(hooks.on_next(&ctx, &blue).unwrap(), None);
        assert_eq!(hooks.calls().next, 2);
    }

    #[test]
    fn clients_sharing_an_event_each_get_their_own_copy() {
        let hooks = script(
            r#"fn on_next(ctx, payload) { payload.data.seen = ctx.variables.room; payload }"#,
        );
        let event = raw(json!({ "data": {} }));
        let red = operation_ctx(&hooks, &json!({ "room": "red" }));
        let blue = operation_ctx(&hooks, &json!({ "room": "blue" }));
        // From the third client on, clients read the cached parse, never an earlier
        // client's mutation of it.
        for _ in 0..2 {
            let first = hooks.on_next(&red, &event).unwrap().unwrap();
            let second = hooks.on_next(&blue, &event.clone()).unwrap().unwrap();
            assert_eq!(first.as_str(), r#"{"data":{"seen":"red"}}"#);
            assert_eq!(second.as_str(), r#"{"data":{"seen":"blue"}}"#);
        }
    }

    #[test]
    fn on_next_returning_a_non_map_fails_and_a_throw_rejects() {
        let ctx_hooks = script("fn on_next(ctx, payload) { 42 }");
        let ctx = operation_ctx(&ctx_hooks, &json!({}));
        let err = ctx_hooks.on_next(&ctx, &raw(json!({}))).unwrap_err();
        assert!(
            matches!(&err, HookError::Failed { reason, .. } if reason.contains("or () to drop")),
            "{err:?}"
        );
        let hooks = script(r#"fn on_next(ctx, payload) { throw "stop"; }"#);
        assert_eq!(
            hooks.on_next(&ctx, &raw(json!({}))),
            Err(HookError::Rejected("stop".into()))
        );
    }

    #[test]
    fn on_complete_runs_and_an_error_in_it_names_the_line() {
        let hooks = script("fn on_complete(ctx) {\n    let x = ctx.variables.a + \"s\" * 2;\n}\n");
        let ctx = operation_ctx(&hooks, &json!({}));
        let err = hooks.on_complete(&ctx).unwrap_err();
        let HookError::Failed { line, file, .. } = &err else {
            panic!("expected a failure, got {err:?}");
        };
        assert_eq!((file.as_str(), *line), ("hooks/test.rhai", Some(2)));
        assert_eq!(hooks.calls().complete, 1);
        // Undefined hook points cost nothing and count nothing.
        assert_eq!(
            hooks
                .on_next(&ctx, &raw(json!({ "a": 1 })))
                .unwrap()
                .unwrap()
                .as_str(),
            r#"{"a":1}"#
        );
        assert_eq!(hooks.calls().next, 0);
    }

    #[test]
    fn a_failure_never_quotes_a_header_value() {
        let hooks = script(
            "fn on_connection_init(ctx, payload) {\n    parse_int(ctx.headers.authorization)\n}\n",
        );
        let init = json!({});
        let headers = [("authorization", "Bearer s3cr3t")];
        let err = hooks
            .on_connection_init(&client(&headers, &init), &init)
            .unwrap_err();
        assert!(
            matches!(err, HookError::Failed { line: Some(2), .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        // Errors about the script's own text keep Rhai's message.
        let hooks = script("fn on_connection_init(ctx, payload) { no_such_function(1) }");
        let err = hooks
            .on_connection_init(&client(&headers, &init), &init)
            .unwrap_err();
        assert!(err.to_string().contains("Function not found"), "{err}");
    }

    #[test]
    fn debug_of_ctx_shows_no_header_or_payload_values() {
        let hooks = script("fn on_complete(ctx) { }");
        let ctx = operation_ctx(&hooks, &json!({ "secret": "s3cr3t" }));
        let debug = format!("{ctx:?}");
        assert!(
            !debug.contains("alice") && !debug.contains("s3cr3t"),
            "{debug}"
        );
    }
}
