//! The responses every handler builds: the body type, JSON errors in the GraphQL-over-HTTP
//! shape, 405 with `Allow`, a size-limited body reader, and the GET-mutation refusal.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

use crate::config::ServerConfig;

/// A client request's body: hyper's, or one read by the HTTP/1 front for event streams
/// (`server::http1_streams`), which reads the whole (size-limited) body before routing.
pub(crate) type RequestBody = Either<Incoming, Full<Bytes>>;

/// Every response body the gateway produces.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// A full body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed_unsync()
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A GraphQL-over-HTTP error response: `{"errors":[{"message", "extensions":{"code"}}]}`.
pub(crate) fn json_error(status: StatusCode, message: &str, code: &str) -> Response<ResponseBody> {
    let body = format!(
        "{{\"errors\":{}}}",
        subplex_protocol::graphql_errors(message, code).as_str()
    );
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// 405 with the methods that would work.
pub(crate) fn method_not_allowed(message: &str, allow: &'static str) -> Response<ResponseBody> {
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        message,
        "METHOD_NOT_ALLOWED",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

/// Reads a request body of at most `server.max_message_bytes` within
/// `server.client_request_timeout_ms`, or answers 413 or 408.
pub(crate) async fn read_body(
    body: RequestBody,
    server: &ServerConfig,
) -> Result<Bytes, Response<ResponseBody>> {
    let limit = server.max_message_bytes;
    let read = http_body_util::Limited::new(body, limit).collect();
    let Ok(read) = tokio::time::timeout(server.client_request_timeout, read).await else {
        return Err(json_error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive within server.client_request_timeout_ms",
            "REQUEST_TIMEOUT",
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is unreadable or over the {limit} byte limit (server.max_message_bytes)"),
            "PAYLOAD_TOO_LARGE",
        )),
    }
}

/// GET must be safe (GraphQL over HTTP, graphql-sse): a mutation sent with GET gets 405
/// naming POST, before anything reaches the upstream.
pub(crate) fn refuse_get_mutation(
    method: &Method,
    request: &subplex_protocol::GraphqlRequest,
) -> Option<Response<ResponseBody>> {
    let mutation =
        subplex_protocol::operation_type(&request.query, request.operation_name.as_deref())
            == Some(subplex_protocol::OperationType::Mutation);
    (method == Method::GET && mutation)
        .then(|| method_not_allowed("mutations cannot be sent with GET; use POST", "POST"))
}
