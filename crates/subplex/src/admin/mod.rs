//! The admin listener (`[admin]`): a second, read-only listener for operators, off by
//! default. It serves the status page (`/status`, one static page compiled into the
//! binary, which polls `/status.json`) and `/metrics`, and nothing that changes anything.
//!
//! It is a separate listener so the main one can be exposed to clients while this one
//! stays on a private address; it has no client limits or write deadline of its own,
//! since only operators reach it.

mod status;

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::responses::{full, method_not_allowed, text, ResponseBody};
use crate::routes::metrics_response;
use crate::state::GatewayState;

/// The status page, served as is.
const STATUS_PAGE: &str = include_str!("status.html");

/// Serves the admin listener until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<GatewayState>,
    stop: CancellationToken,
) {
    info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listening");
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            accepted = crate::server::accept(&listener) => accepted,
        };
        let state = state.clone();
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&req, &state)) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                result = connection => if let Err(err) = result {
                    debug!(%peer, error = %err, "admin connection ended with an error");
                },
            }
        });
    }
}

fn handle<B>(req: &Request<B>, state: &GatewayState) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return method_not_allowed("the admin listener is read-only", "GET, HEAD");
    }
    match req.uri().path() {
        "/status" => with_type(STATUS_PAGE, "text/html; charset=utf-8"),
        "/status.json" => with_type(status::snapshot(state).to_string(), "application/json"),
        crate::routes::METRICS_PATH => metrics_response(state),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; see /status or /metrics\n",
        ),
    }
}

fn with_type(body: impl Into<bytes::Bytes>, content_type: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    // Live values: a cached copy would show the past.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    // The page loads nothing from elsewhere and is never framed.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}
