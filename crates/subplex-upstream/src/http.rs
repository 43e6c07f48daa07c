//! Plain HTTP toward an upstream: queries and mutations the gateway forwards as they came
//! (method, query string, body, chosen headers), and the response as the upstream sent it.
//!
//! One [`HttpClient`] per upstream, built at start-up; its connection pool and TLS
//! settings are shared by every request. Nothing here is retried: a mutation is not
//! idempotent, so a failure goes back to the client as it happened.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// How one upstream's HTTP client is built.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The upstream's name, for error texts.
    pub name: Arc<str>,
    /// The GraphQL endpoint.
    pub url: url::Url,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout, response body included.
    pub request_timeout: Duration,
    /// Largest response body read from the upstream; a larger one is refused, never
    /// buffered whole.
    pub max_response_bytes: usize,
    /// Trusted roots and protocol versions for `https://`.
    pub tls: Arc<rustls::ClientConfig>,
}

/// A request to forward. `Debug` shows header names only: values are credentials.
pub struct HttpRequest {
    pub method: Method,
    /// The query string, without `?`.
    pub query: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("headers", &crate::HeaderNames(&self.headers))
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The upstream's response, whole.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why no response came back. Texts name the upstream and the setting, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("upstream \"{upstream}\" is unavailable over HTTP: {}", .cause.describe())]
    Unavailable {
        upstream: Arc<str>,
        cause: HttpFailure,
    },
    #[error("upstream response timed out (request_timeout_ms)")]
    ResponseTimedOut,
    #[error("upstream response ended early")]
    ResponseCut,
    #[error("upstream response is larger than the {limit} byte limit (max_response_bytes)")]
    ResponseTooLarge { limit: usize },
}

impl HttpError {
    /// The stable `extensions.code` clients see.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::ResponseTooLarge { .. } => "UPSTREAM_RESPONSE_TOO_LARGE",
            _ => "UPSTREAM_UNAVAILABLE",
        }
    }
}

/// What went wrong before a response arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFailure {
    TimedOut,
    ConnectFailed,
    RequestFailed,
}

impl HttpFailure {
    fn describe(self) -> &'static str {
        match self {
            HttpFailure::TimedOut => "timed out (request_timeout_ms)",
            HttpFailure::ConnectFailed => "connection failed",
            HttpFailure::RequestFailed => "request failed",
        }
    }
}

/// The HTTP client of one upstream.
#[derive(Debug, Clone)]
pub struct HttpClient {
    settings: HttpSettings,
    client: reqwest::Client,
}

impl HttpClient {
    /// Builds the client; fails only if reqwest refuses the TLS settings.
    pub fn new(settings: HttpSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .use_preconfigured_tls((*settings.tls).clone())
            .build()
            .map_err(|err| {
                format!(
                    "upstream \"{}\": cannot build its HTTP client: {err}",
                    settings.name
                )
            })?;
        Ok(HttpClient { settings, client })
    }

    /// The underlying reqwest client, for other transports of the same upstream (one
    /// connection pool and TLS configuration per upstream).
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.client
    }

    /// Reads a response body of at most `max_response_bytes`, chunk by chunk, so that an
    /// oversized one is refused after the limit instead of buffered whole.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Bytes, HttpError> {
        let limit = self.settings.max_response_bytes;
        let too_large = HttpError::ResponseTooLarge { limit };
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(too_large);
        }
        let mut body = bytes::BytesMut::new();
        loop {
            let chunk = response.chunk().await.map_err(|err| {
                if err.is_timeout() {
                    HttpError::ResponseTimedOut
                } else {
                    HttpError::ResponseCut
                }
            })?;
            let Some(chunk) = chunk else {
                return Ok(body.freeze());
            };
            if body.len() + chunk.len() > limit {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
    }

    /// Sends `request` to the upstream's URL and reads the whole response.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let mut url = self.settings.url.clone();
        url.set_query(request.query.as_deref());
        let mut builder = self.client.request(request.method, url).body(request.body);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let response = builder.send().await.map_err(|err| {
            tracing::debug!(error = %err, "upstream HTTP request failed");
            HttpError::Unavailable {
                upstream: self.settings.name.clone(),
                cause: if err.is_timeout() {
                    HttpFailure::TimedOut
                } else if err.is_connect() {
                    HttpFailure::ConnectFailed
                } else {
                    HttpFailure::RequestFailed
                },
            }
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = self.read_body(response).await?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}
