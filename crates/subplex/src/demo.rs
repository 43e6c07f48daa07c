//! The embedded demo upstream: a tiny GraphQL server speaking `graphql-transport-ws` over
//! WebSocket and GraphQL over HTTP POST at `/graphql`, so subplex can be tried and tested
//! end to end without a real GraphQL backend. Its whole schema is
//!
//! ```graphql
//! type Query { hello: String! }
//! type Subscription { tick(count: Int!, intervalMs: Int!): Int! }
//! ```
//!
//! It is not a GraphQL engine: a purpose-built scanner recognises one root field per
//! document (with an optional alias and Int arguments given as literals or `$variables`)
//! and answers anything else (fragments, directives, selections, several operations) with
//! a GraphQL error naming what it supports. Nor is it a production server: no TLS, no
//! authentication, no connection limits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use subplex_protocol::transport_ws::server::{Accepted, ServerRules};
use subplex_protocol::transport_ws::{ClientMessage, ServerMessage};
use subplex_protocol::{close, GraphqlRequest, RawJson};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::{sync::mpsc, task::AbortHandle};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

const PATH: &str = "/graphql";
const SUBPROTOCOL: &str = "graphql-transport-ws";
const INIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds HTTP bodies and WebSocket messages alike: demo documents are tiny.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
const OUTBOUND_QUEUE: usize = 64;
/// How long a closing side waits for its peer (close handshake, HTTP graceful shutdown).
const LINGER: Duration = Duration::from_secs(1);
const SUPPORTED: &str = "the demo upstream supports only `query { hello }` and \
    `subscription { tick(count: Int!, intervalMs: Int!) }`";

/// The demo upstream, bound and ready to [`run`](DemoUpstream::run).
#[derive(Debug)]
pub struct DemoUpstream {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl DemoUpstream {
    /// Binds to `addr` (use 127.0.0.1:0 for tests).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<DemoUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(DemoUpstream {
            listener,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled; every connection task watches the token.
    /// Returns once every connection has closed.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                // Cancellation first, so a stream of new connections cannot delay shutdown.
                biased;
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    tracker.spawn(serve_http(stream, shutdown.clone(), tracker.clone()));
                }
                Err(err) => {
                    // A connection reset before accept, or fd exhaustion: neither should end
                    // the server, but retrying at once would spin.
                    tracing::warn!(%err, "demo upstream: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(self.listener);
        tracker.close();
        tracker.wait().await;
    }
}

async fn serve_http(stream: TcpStream, shutdown: CancellationToken, tracker: TaskTracker) {
    let token = shutdown.clone();
    let service = service_fn(move |req| {
        let (shutdown, tracker) = (token.clone(), tracker.clone());
        async move { Ok::<_, Infallible>(route(req, shutdown, tracker).await) }
    });
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        // Cancellation first: a client pipelining requests keeps `conn` busy indefinitely.
        biased;
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(LINGER, conn).await;
        }
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(%err, "demo upstream: HTTP connection failed");
            }
        }
    }
}

async fn route(
    req: Request<Incoming>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, PATH) => post(req).await,
        (&Method::GET, PATH) => upgrade(req, shutdown, tracker),
        (_, PATH) => respond(StatusCode::METHOD_NOT_ALLOWED, errors("use GET or POST")),
        _ => respond(
            StatusCode::NOT_FOUND,
            errors("the demo upstream serves /graphql"),
        ),
    }
}

fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    let values = headers.get_all(name).into_iter();
    values
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(',').map(str::trim))
}

fn upgrade(
    mut req: Request<Incoming>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let has = |name, token: &str| tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token));
    let websocket = has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
        && has(header::SEC_WEBSOCKET_VERSION, "13");
    // Subprotocol names are case-sensitive (RFC 6455 §4.1), unlike the tokens above.
    let offered = tokens(headers, header::SEC_WEBSOCKET_PROTOCOL).any(|t| t == SUBPROTOCOL);
    let accept = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|key| HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok());
    let (true, true, Some(accept)) = (websocket, offered, accept) else {
        let message = "expected a WebSocket upgrade offering graphql-transport-ws, or a POST";
        return respond(StatusCode::BAD_REQUEST, errors(message));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                session(ws, shutdown).await;
            }
            Err(err) => tracing::debug!(%err, "demo upstream: upgrade failed"),
        }
    });
    let mut res = Response::new(Full::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    res
}

async fn post(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<LengthLimitError>() => {
            return respond(StatusCode::PAYLOAD_TOO_LARGE, errors("body over 64 KiB"))
        }
        Err(err) => return respond(StatusCode::BAD_REQUEST, errors(&err.to_string())),
    };
    let request = std::str::from_utf8(&body)
        .map_err(|err| err.to_string())
        .and_then(|text| GraphqlRequest::decode(text).map_err(|err| err.to_string()));
    let result = match request.as_ref().map(plan) {
        Err(message) => return respond(StatusCode::BAD_REQUEST, errors(message)),
        Ok(Ok(Operation::Hello { key })) => hello(&key),
        Ok(Ok(Operation::Tick { .. })) => errors("subscriptions need WebSocket or SSE"),
        Ok(Err(message)) => errors(&message),
    };
    respond(StatusCode::OK, result)
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    let json = HeaderValue::from_static("application/json");
    res.headers_mut().insert(header::CONTENT_TYPE, json);
    res
}

fn errors(message: &str) -> Value {
    json!({ "errors": [{ "message": message }] })
}

fn hello(key: &str) -> Value {
    json!({ "data": { key: "world" } })
}

fn next(id: &str, result: &Value) -> ServerMessage {
    let (id, payload) = (id.to_owned(), RawJson::from_value(result));
    ServerMessage::Next { id, payload }
}

/// A frame from a running operation: its id and generation, so that frames still queued
/// from an operation the client completed cannot leak into a later one reusing the id.
type OpEvent = (String, u64, ServerMessage);

/// Running operations by id. Dropping it aborts them, so no tick outlives its socket.
#[derive(Default)]
struct Running {
    ops: HashMap<String, (u64, AbortHandle)>,
    generation: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.ops.values().for_each(|(_, task)| task.abort());
    }
}

/// Frames to send, or the close code and reason that end the session.
type Step = Result<Vec<ServerMessage>, (u16, String)>;

async fn session<S>(mut ws: WebSocketStream<S>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The gateway multiplexes every client of a security context onto one connection: no
    // per-connection operation limit here.
    let mut rules = ServerRules::with_limits(subplex_protocol::OperationLimits {
        max_operations: usize::MAX,
        ..Default::default()
    });
    let mut running = Running::default();
    let (tx, mut rx) = mpsc::channel::<OpEvent>(OUTBOUND_QUEUE);
    let init_deadline = tokio::time::sleep(INIT_TIMEOUT);
    tokio::pin!(init_deadline);
    let closing = |close: close::Close| Err((close.code, close.reason.to_owned()));
    let (code, reason) = loop {
        let step: Step = tokio::select! {
            // Cancellation first: a chatty client or a fast tick keeps the other branches
            // always ready, and shutdown must not wait for them to go quiet.
            biased;
            () = shutdown.cancelled() => closing(close::GOING_AWAY),
            () = &mut init_deadline, if rules.awaiting_init() => closing(close::INIT_TIMEOUT),
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => on_text(&text, &mut rules, &mut running, &tx),
                Some(Ok(Message::Binary(_))) => closing(close::BAD_REQUEST),
                // tungstenite answers pings and close frames itself; after a close the
                // next read ends the stream.
                Some(Ok(_)) => Ok(Vec::new()),
                Some(Err(_)) | None => return,
            },
            Some((id, generation, message)) = rx.recv() => {
                let current = running.ops.get(&id).is_some_and(|(g, _)| *g == generation);
                Ok(Vec::from_iter(current.then_some(message)))
            }
        };
        let messages = match step {
            Ok(messages) => messages,
            Err(close) => break close,
        };
        for message in messages {
            let sent = tokio::select! {
                // A client that stops reading must not hold up shutdown.
                biased;
                () = shutdown.cancelled() => break,
                sent = ws.send(Message::text(message.encode())) => sent,
            };
            if sent.is_err() {
                return;
            }
            if let ServerMessage::Complete { id } | ServerMessage::Error { id, .. } = &message {
                running.ops.remove(id);
                rules.finished(id);
            }
        }
        if shutdown.is_cancelled() {
            break (close::GOING_AWAY.code, close::GOING_AWAY.reason.to_owned());
        }
    };
    close_with(&mut ws, code, reason).await;
}

fn on_text(
    text: &str,
    rules: &mut ServerRules,
    running: &mut Running,
    tx: &mpsc::Sender<OpEvent>,
) -> Step {
    let message = ClientMessage::decode(text, MAX_REQUEST_BYTES)
        .map_err(|err| (close::BAD_REQUEST.code, err.to_string()))?;
    let (id, request) = match rules.receive(message).map_err(|v| v.close())? {
        Accepted::Init { .. } => {
            rules.acknowledged();
            return Ok(vec![ServerMessage::ConnectionAck { payload: None }]);
        }
        Accepted::Ping => return Ok(vec![ServerMessage::Pong { payload: None }]),
        Accepted::Pong | Accepted::Ignored => return Ok(Vec::new()),
        Accepted::Complete { id } => {
            if let Some((_, task)) = running.ops.remove(&id) {
                task.abort();
            }
            return Ok(Vec::new());
        }
        Accepted::Subscribe { id, request } => (id, request),
        Accepted::Refused { id, message } => {
            let payload = RawJson::from_value(&json!([{ "message": message }]));
            return Ok(vec![ServerMessage::Error { id, payload }]);
        }
    };
    Ok(match plan(&request) {
        Err(message) => {
            let payload = RawJson::from_value(&json!([{ "message": message }]));
            vec![ServerMessage::Error { id, payload }]
        }
        Ok(Operation::Hello { key }) => {
            vec![next(&id, &hello(&key)), ServerMessage::Complete { id }]
        }
        Ok(Operation::Tick { key, count, every }) => {
            running.generation += 1;
            let generation = running.generation;
            let task = tick((id.clone(), generation), key, count, every, tx.clone());
            let handle = tokio::spawn(task).abort_handle();
            running.ops.insert(id, (generation, handle));
            Vec::new()
        }
    })
}

async fn tick(
    (id, generation): (String, u64),
    key: String,
    count: u32,
    every: Duration,
    tx: mpsc::Sender<OpEvent>,
) {
    // `interval` alone would fire at once; the first value is due one period in.
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    for n in 1..=count {
        interval.tick().await;
        let message = next(&id, &json!({ "data": { key.as_str(): n } }));
        if tx.send((id.clone(), generation, message)).await.is_err() {
            return;
        }
    }
    let complete = ServerMessage::Complete { id: id.clone() };
    let _ = tx.send((id, generation, complete)).await;
}

async fn close_with<S>(ws: &mut WebSocketStream<S>, code: u16, mut reason: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    close::truncate_reason(&mut reason);
    let (code, reason) = (CloseCode::from(code), reason.into());
    // Wait (briefly) for the client's close reply: dropping the socket straight away can
    // reset the connection before the client has read the close frame.
    let _ = tokio::time::timeout(LINGER, async {
        if ws.close(Some(CloseFrame { code, reason })).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// What a document asks for; `key` is the response key (the alias, else the field name).
#[derive(Debug, PartialEq, Eq)]
enum Operation {
    Hello {
        key: String,
    },
    Tick {
        key: String,
        count: u32,
        every: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Name(&'a str),
    /// A numeric literal, well-formed or not: only Ints are ever accepted (see [`is_int`]),
    /// so anything else just ends up in an error message.
    Number(&'a str),
    String,
    /// One of `! $ & ( ) : = @ [ ] { | }`, or `.` standing for `...`.
    Punct(char),
}

/// Splits a document into tokens, dropping whatever GraphQL ignores (whitespace, commas,
/// comments, a BOM) and reducing string literals to a marker: no argument here takes one,
/// but their contents must not be mistaken for syntax.
fn scan(source: &str) -> Result<Vec<Token<'_>>, String> {
    let bytes = source.as_bytes();
    let run = |mut i: usize, part: fn(&u8) -> bool| {
        while bytes.get(i).is_some_and(part) {
            i += 1;
        }
        i
    };
    let (mut tokens, mut i) = (Vec::new(), 0);
    while let Some(&c) = bytes.get(i) {
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
            b'#' => i = run(i, |&b| b != b'\n' && b != b'\r'),
            b'"' => {
                i = skip_string(source, i).ok_or("unterminated string")?;
                tokens.push(Token::String);
            }
            b'.' if source[i..].starts_with("...") => {
                i += 3;
                tokens.push(Token::Punct('.'));
            }
            _ if b"!$&():=@[]{|}".contains(&c) => {
                i += 1;
                tokens.push(Token::Punct(char::from(c)));
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                i = run(i, |&b| b == b'_' || b.is_ascii_alphanumeric());
                tokens.push(Token::Name(&source[start..i]));
            }
            b'-' | b'0'..=b'9' => {
                i = run(i + 1, |&b| {
                    b"_.+-".contains(&b) || b.is_ascii_alphanumeric()
                });
                tokens.push(Token::Number(&source[start..i]));
            }
            _ if source[i..].starts_with('\u{feff}') => i += '\u{feff}'.len_utf8(),
            _ => {
                let c = source[i..].chars().next().unwrap_or_default();
                return Err(format!("unexpected character `{c}`"));
            }
        }
    }
    Ok(tokens)
}

/// The index just past the string literal, plain or block, opening at `start`.
fn skip_string(source: &str, start: usize) -> Option<usize> {
    let rest = &source[start..];
    if let Some(body) = rest.strip_prefix(r#"""""#) {
        // `\"""` is a block string's only escape; blanking it keeps every offset.
        let end = body.replace(r#"\""""#, "    ").find(r#"""""#)?;
        return Some(start + 3 + end + 3);
    }
    let mut escaped = false;
    for (offset, b) in rest.bytes().enumerate().skip(1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(start + offset + 1),
            b'\n' | b'\r' => return None,
            _ => {}
        }
    }
    None
}

fn found(rest: &[Token<'_>]) -> String {
    match rest.first() {
        None => "the end of the document".into(),
        Some(Token::Name(text) | Token::Number(text)) => format!("`{text}`"),
        Some(Token::String) => "a string".into(),
        Some(Token::Punct('.')) => "`...` (fragments are not supported)".into(),
        Some(Token::Punct(c)) => format!("`{c}`"),
    }
}

fn is_int(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[derive(Debug, PartialEq, Eq)]
enum Arg<'a> {
    Int(&'a str),
    Variable(&'a str),
}

#[derive(Debug, PartialEq, Eq)]
struct Document<'a> {
    subscription: bool,
    name: Option<&'a str>,
    alias: Option<&'a str>,
    field: &'a str,
    args: Vec<(&'a str, Arg<'a>)>,
}

/// Parses the one shape the demo resolves: an operation (or the `{ ... }` shorthand) whose
/// selection is a single scalar field.
fn parse(source: &str) -> Result<Document<'_>, String> {
    use Token::{Name, Number, Punct};
    let tokens = scan(source)?;
    let (subscription, name, mut rest) = match tokens.as_slice() {
        [Punct('{'), rest @ ..] => (false, None, rest),
        [Name(keyword @ ("query" | "subscription")), rest @ ..] => {
            let (name, mut rest) = match rest {
                [Name(name), rest @ ..] => (Some(*name), rest),
                _ => (None, rest),
            };
            // Variable definitions: their types and defaults do not matter here.
            if let [Punct('('), tail @ ..] = rest {
                let close = tail.iter().position(|t| *t == Punct(')'));
                rest = &tail[close.ok_or("unclosed variable definitions")? + 1..];
            }
            match rest {
                [Punct('{'), rest @ ..] => (*keyword == "subscription", name, rest),
                _ => return Err(format!("expected `{{`, found {}", found(rest))),
            }
        }
        [Name("mutation"), ..] => return Err("there are no mutations".into()),
        _ => return Err(format!("expected an operation, found {}", found(&tokens))),
    };
    let (alias, field);
    (alias, field, rest) = match rest {
        [Name(alias), Punct(':'), Name(field), tail @ ..] => (Some(*alias), *field, tail),
        [Name(_), Punct(':'), tail @ ..] => {
            return Err(format!(
                "expected a field after the alias, found {}",
                found(tail)
            ))
        }
        [Name(field), tail @ ..] => (None, *field, tail),
        _ => return Err(format!("expected a field, found {}", found(rest))),
    };
    let mut args = Vec::new();
    if let [Punct('('), tail @ ..] = rest {
        rest = tail;
        loop {
            let (arg, value, tail) = match rest {
                [Punct(')'), tail @ ..] => {
                    rest = tail;
                    break;
                }
                [Name(arg), Punct(':'), Number(n), tail @ ..] if is_int(n) => {
                    (arg, Arg::Int(n), tail)
                }
                [Name(arg), Punct(':'), Punct('$'), Name(var), tail @ ..] => {
                    (arg, Arg::Variable(var), tail)
                }
                [Name(arg), Punct(':'), value @ ..] => {
                    return Err(format!("`{arg}` must be an Int, found {}", found(value)))
                }
                _ => return Err(format!("expected an argument, found {}", found(rest))),
            };
            args.push((*arg, value));
            rest = tail;
        }
    }
    match rest {
        [Punct('}')] => Ok(Document {
            subscription,
            name,
            alias,
            field,
            args,
        }),
        [Punct('}'), extra @ ..] => Err(format!("expected one operation, found {}", found(extra))),
        [Punct('{'), ..] => Err(format!("`{field}` is a scalar and has no selection")),
        [Punct('@'), ..] => Err("directives are not supported".into()),
        [] => Err("expected `}`, found the end of the document".into()),
        _ => Err(format!("expected one root field, found {}", found(rest))),
    }
}

/// Checks `request` against the schema: what to run, or the GraphQL error message.
fn plan(request: &GraphqlRequest) -> Result<Operation, String> {
    let doc = parse(&request.query).map_err(|err| format!("Syntax error: {err}; {SUPPORTED}"))?;
    if let Some(wanted) = &request.operation_name {
        if doc.name != Some(wanted.as_str()) {
            return Err(format!("Unknown operation named \"{wanted}\"."));
        }
    }
    let key = doc.alias.unwrap_or(doc.field).to_owned();
    let (root, field) = match doc.subscription {
        false => ("Query", "hello"),
        true => ("Subscription", "tick"),
    };
    if doc.field != field {
        let asked = doc.field;
        return Err(format!(
            "Cannot query field \"{asked}\" on type \"{root}\"; {SUPPORTED}"
        ));
    }
    let (mut count, mut every) = (None, None);
    for (name, value) in &doc.args {
        let slot = match (field, *name) {
            ("tick", "count") => &mut count,
            ("tick", "intervalMs") => &mut every,
            _ => {
                return Err(format!(
                    "Unknown argument \"{name}\" on field \"{root}.{field}\"."
                ))
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("There can be only one argument named \"{name}\"."));
        }
    }
    if field == "hello" {
        return Ok(Operation::Hello { key });
    }
    let variables: Map<String, Value> = request
        .variables
        .as_ref()
        .and_then(|raw| serde_json::from_str(raw.as_str()).ok())
        .unwrap_or_default();
    let count = int_arg("count", count, 1..=100_000, &variables)?;
    let every = int_arg("intervalMs", every, 1..=3_600_000, &variables)?;
    // Both ranges are positive and fit in u32.
    let (count, every) = (count.try_into().unwrap_or(1), every.try_into().unwrap_or(1));
    let every = Duration::from_millis(every);
    Ok(Operation::Tick { key, count, every })
}

fn int_arg(
    name: &str,
    arg: Option<&Arg<'_>>,
    range: RangeInclusive<i64>,
    variables: &Map<String, Value>,
) -> Result<i64, String> {
    let value = match arg {
        None => {
            let text = "of type \"Int!\" is required, but it was not provided.";
            return Err(format!("Field \"tick\" argument \"{name}\" {text}"));
        }
        // Literals too long for i64 are out of range, which the check below reports.
        Some(Arg::Int(text)) => text.parse::<i64>().ok(),
        Some(Arg::Variable(var)) => match variables.get(*var) {
            None | Some(Value::Null) => {
                let text = "of required type \"Int!\" was not provided.";
                return Err(format!("Variable \"${var}\" {text}"));
            }
            Some(value) => Some(value.as_i64().ok_or_else(|| {
                format!("Variable \"${var}\" got invalid value {value}; Int! expected.")
            })?),
        },
    };
    let (min, max) = (range.start(), range.end());
    match value {
        Some(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "tick argument \"{name}\" must be between {min} and {max}."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    fn show(source: &str) -> String {
        let tokens = scan(source).unwrap().into_iter().map(|token| match token {
            Token::Name(text) | Token::Number(text) => text.to_owned(),
            Token::String => "\"\"".into(),
            Token::Punct(c) => c.into(),
        });
        tokens.collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn scanner_skips_comments_strings_commas_and_bom() {
        let source = "\u{feff}{ # a } comment \"\n t : tick(a: \"}#\\\"\", ";
        let source = format!("{source}b: \"\"\"\n}}\\\"\"\" #\"\"\", c: -12, d: 1.5e3,,)}}");
        let tokens = "{ t : tick ( a : \"\" b : \"\" c : -12 d : 1.5e3 ) }";
        assert_eq!(show(&source), tokens);
        assert_eq!(show("...on$x:\"\"!"), ". on $ x : \"\" !");
        for bad in ["\"open", "\"\"\"open", "\"a\nb\"", "\"\\\"", "ü", "?", ".."] {
            assert!(scan(bad).is_err(), "{bad:?} should not scan");
        }
        assert!(is_int("-12") && is_int("0") && !is_int("-") && !is_int("1e3"));
    }

    fn plan_with(query: &str, variables: Option<&str>) -> Result<Operation, String> {
        let mut request = GraphqlRequest::new(query);
        request.variables = variables.map(|v| RawJson::parse(v).unwrap());
        plan(&request)
    }

    fn ticks(key: &str, count: u32, ms: u64) -> Result<Operation, String> {
        let (key, every) = (key.to_owned(), Duration::from_millis(ms));
        Ok(Operation::Tick { key, count, every })
    }

    #[test]
    fn plans_both_operations_with_aliases_literals_and_variables() {
        let hello = |key: &str| Ok(Operation::Hello { key: key.into() });
        assert_eq!(plan_with("{ hello }", None), hello("hello"));
        let query = "query Q { greeting: hello }";
        assert_eq!(plan_with(query, None), hello("greeting"));
        let query = "subscription { tick(count: 2, intervalMs: 5) }";
        assert_eq!(plan_with(query, None), ticks("tick", 2, 5));
        let query = "subscription { t: tick(intervalMs: 10 count: 3) }";
        assert_eq!(plan_with(query, None), ticks("t", 3, 10));
        let query =
            "# n\nsubscription S($n: Int! = 3, $ms: [Int]) { tick(count: $n, intervalMs: $ms) }";
        let variables = Some(r#"{"n":4,"ms":100}"#);
        assert_eq!(plan_with(query, variables), ticks("tick", 4, 100));
        let mut request = GraphqlRequest::new(query);
        request.variables = Some(RawJson::parse(r#"{"n":1,"ms":1}"#).unwrap());
        request.operation_name = Some("S".into());
        assert_eq!(plan(&request), ticks("tick", 1, 1));
        request.operation_name = Some("Other".into());
        let unknown = "Unknown operation named \"Other\".";
        assert_eq!(plan(&request), Err(unknown.into()));
    }

    /// `document => part of the error message`, one case a line.
    const REJECTED: &str = r#"
subscription { tick(count: 2) } => "intervalMs" of type "Int!" is required, but it was not
subscription { tick(count: 0, intervalMs: 5) } => "count" must be between 1 and 100000.
subscription { tick(count: 1, intervalMs: 3600001) } => must be between 1 and 3600000.
subscription { tick(count: 99999999999999999999, intervalMs: 1) } => must be between
subscription { tick(count: 1.5, intervalMs: 1) } => `count` must be an Int, found `1.5`
subscription { tick(count: "2", intervalMs: 1) } => must be an Int, found a string
subscription($n: Int!) { tick(count: $n, intervalMs: 1) } => "$n" of required type "Int!" was not
subscription { tick(count: 1, count: 2, intervalMs: 1) } => only one argument named "count"
subscription { tick(count: 1, intervalMs: 1, n: 2) } => "n" on field "Subscription.tick"
{ hello(name: 1) } => Unknown argument "name" on field "Query.hello".
{ goodbye } => Cannot query field "goodbye" on type "Query"; the demo upstream supports only
subscription { hello } => Cannot query field "hello" on type "Subscription"
query { tick(count: 1, intervalMs: 1) } => Cannot query field "tick" on type "Query"
 => Syntax error: expected an operation, found the end of the document; the demo upstream
{ hello world } => expected one root field, found `world`
{ hello { length } } => `hello` is a scalar and has no selection
{ hello } { hello } => expected one operation, found `{`
{ ...F } => found `...` (fragments are not supported)
fragment F on Query { hello } => expected an operation, found `fragment`
mutation { hello } => there are no mutations
query @live { hello } => expected `{`, found `@`
{ hello @skip(if: true) } => directives are not supported
query ($a: Int { hello } => unclosed variable definitions
{ hello( => expected an argument, found the end of the document
{ hello => expected `}`, found the end of the document
{ hello: } => expected a field after the alias, found `}`
{ "hello } => unterminated string
"#;

    #[test]
    fn rejects_bad_documents_with_graphql_messages() {
        for case in REJECTED.lines().filter(|line| !line.is_empty()) {
            let (query, expected) = case.split_once(" => ").unwrap();
            let message = plan_with(query, None).unwrap_err();
            assert!(message.contains(expected), "{query:?}: {message}");
        }
        let query = "subscription($n: Int!) { tick(count: $n, intervalMs: 1) }";
        let message = plan_with(query, Some(r#"{"n":"x"}"#)).unwrap_err();
        assert_eq!(
            message,
            "Variable \"$n\" got invalid value \"x\"; Int! expected."
        );
    }

    type Client = WebSocketStream<tokio::io::DuplexStream>;

    async fn session_pair() -> (Client, CancellationToken) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let shutdown = CancellationToken::new();
        let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        tokio::spawn(session(ws, shutdown.clone()));
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (client, shutdown)
    }

    async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, text: &str) {
        ws.send(Message::text(text)).await.unwrap();
    }

    async fn expect<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, text: &str) {
        match ws.next().await {
            Some(Ok(Message::Text(got))) => assert_eq!(got.as_str(), text),
            other => panic!("expected {text}, got {other:?}"),
        }
    }

    /// Skips `next` frames still buffered ahead of a close with `code`, answers the close
    /// and returns its reason.
    async fn expect_close<S>(ws: &mut WebSocketStream<S>, code: u16) -> String
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.starts_with(r#"{"type":"next""#) => {}
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(u16::from(frame.code), code, "{}", frame.reason);
                    while let Some(Ok(_)) = ws.next().await {}
                    return frame.reason.as_str().to_owned();
                }
                other => panic!("expected close {code}, got {other:?}"),
            }
        }
    }

    const INIT: &str = r#"{"type":"connection_init"}"#;
    const ACK: &str = r#"{"type":"connection_ack"}"#;

    fn subscribe(id: &str, query: &str) -> String {
        let (id, payload) = (id.to_owned(), GraphqlRequest::new(query));
        ClientMessage::Subscribe { id, payload }.encode()
    }

    fn next_frame(id: &str, data: &str) -> String {
        format!(r#"{{"type":"next","id":"{id}","payload":{{"data":{data}}}}}"#)
    }

    async fn acked_pair() -> (Client, CancellationToken) {
        let (mut ws, shutdown) = session_pair().await;
        send(&mut ws, INIT).await;
        expect(&mut ws, ACK).await;
        (ws, shutdown)
    }

    #[tokio::test(start_paused = true)]
    async fn init_timeout_closes_4408_and_early_subscribe_4401() {
        let (mut ws, _shutdown) = session_pair().await;
        let start = Instant::now();
        let reason = expect_close(&mut ws, 4408).await;
        assert_eq!(
            (reason.as_str(), start.elapsed()),
            (close::INIT_TIMEOUT.reason, INIT_TIMEOUT)
        );
        let (mut ws, _shutdown) = session_pair().await;
        send(&mut ws, &subscribe("1", "{ hello }")).await;
        expect_close(&mut ws, 4401).await;
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_on_schedule_and_stops_on_complete() {
        let (mut ws, _shutdown) = acked_pair().await;
        let start = Instant::now();
        let query = "subscription { n: tick(count: 3, intervalMs: 1000) }";
        send(&mut ws, &subscribe("a", query)).await;
        expect(&mut ws, &next_frame("a", r#"{"n":1}"#)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        expect(&mut ws, &next_frame("a", r#"{"n":2}"#)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        send(&mut ws, r#"{"type":"complete","id":"a"}"#).await;
        // The id is free again, and the old ticks must neither go on nor leak into it.
        send(&mut ws, &subscribe("a", "{ hello }")).await;
        expect(&mut ws, &next_frame("a", r#"{"hello":"world"}"#)).await;
        expect(&mut ws, r#"{"type":"complete","id":"a"}"#).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        send(&mut ws, r#"{"type":"ping"}"#).await;
        expect(&mut ws, r#"{"type":"pong"}"#).await;
    }

    #[tokio::test(start_paused = true)]
    async fn errors_free_their_id_and_violations_and_shutdown_close() {
        let (mut ws, _shutdown) = acked_pair().await;
        let message =
            format!("Cannot query field \\\"tock\\\" on type \\\"Subscription\\\"; {SUPPORTED}");
        let error = format!(r#"{{"type":"error","id":"e","payload":[{{"message":"{message}"}}]}}"#);
        for _ in 0..2 {
            send(&mut ws, &subscribe("e", "subscription { tock }")).await;
            expect(&mut ws, &error).await;
        }
        send(&mut ws, INIT).await;
        expect_close(&mut ws, 4429).await;

        let (mut ws, _shutdown) = acked_pair().await;
        send(&mut ws, "[]").await;
        assert_eq!(
            expect_close(&mut ws, 4400).await,
            "message is not valid JSON: a message must be a JSON object"
        );

        let (mut ws, shutdown) = acked_pair().await;
        let query = "subscription { tick(count: 100000, intervalMs: 1) }";
        send(&mut ws, &subscribe("1", query)).await;
        expect(&mut ws, &next_frame("1", r#"{"tick":1}"#)).await;
        shutdown.cancel();
        assert_eq!(expect_close(&mut ws, 1001).await, close::GOING_AWAY.reason);
    }

    #[tokio::test]
    async fn serves_websocket_and_http_end_to_end() {
        let demo = DemoUpstream::bind(([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        let addr = demo.local_addr();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(demo.run(shutdown.clone()));
        let connect = |protocol: &'static str| async move {
            let mut request = format!("ws://{addr}/graphql")
                .into_client_request()
                .unwrap();
            let value = HeaderValue::from_static(protocol);
            request
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
            tokio_tungstenite::connect_async(request).await
        };

        let (mut ws, response) = connect(SUBPROTOCOL).await.unwrap();
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_PROTOCOL],
            SUBPROTOCOL
        );
        send(&mut ws, INIT).await;
        expect(&mut ws, ACK).await;
        let query = "subscription { tick(count: 2, intervalMs: 5) }";
        send(&mut ws, &subscribe("1", query)).await;
        expect(
            &mut ws,
            r#"{"type":"next","id":"1","payload":{"data":{"tick":1}}}"#,
        )
        .await;
        expect(
            &mut ws,
            r#"{"type":"next","id":"1","payload":{"data":{"tick":2}}}"#,
        )
        .await;
        expect(&mut ws, r#"{"type":"complete","id":"1"}"#).await;
        let long = subscribe("1", "subscription { tick(count: 100, intervalMs: 60000) }");
        send(&mut ws, &long).await;
        send(&mut ws, &long).await;
        let reason = expect_close(&mut ws, 4409).await;
        assert_eq!(reason, "Subscriber for 1 already exists");

        let (mut ws, _) = connect(SUBPROTOCOL).await.unwrap();
        send(&mut ws, "garbage").await;
        let reason = expect_close(&mut ws, 4400).await;
        assert!(reason.starts_with("message is not valid JSON"), "{reason}");

        let Err(tokio_tungstenite::tungstenite::Error::Http(refused)) = connect("graphql-ws").await
        else {
            panic!("graphql-ws alone must be refused");
        };
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);

        let (http, url) = (reqwest::Client::new(), format!("http://{addr}/graphql"));
        let post = |body: &'static str| {
            let request = http.post(&url).body(body);
            async move {
                let response = request.send().await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            }
        };
        let hello = r#"{"data":{"hello":"world"}}"#.to_owned();
        assert_eq!(post(r#"{"query":"{ hello }"}"#).await, (200, hello));
        let sub = r#"{"query":"subscription { tick(count: 1, intervalMs: 1) }"}"#;
        let refused = r#"{"errors":[{"message":"subscriptions need WebSocket or SSE"}]}"#;
        assert_eq!(post(sub).await, (200, refused.to_owned()));
        assert_eq!(post(r#"{"variables":{}}"#).await.0, 400);

        // An open session is told the server is going away, and `run` then returns.
        let (mut ws, _) = connect(SUBPROTOCOL).await.unwrap();
        send(&mut ws, INIT).await;
        expect(&mut ws, ACK).await;
        shutdown.cancel();
        expect_close(&mut ws, 1001).await;
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
