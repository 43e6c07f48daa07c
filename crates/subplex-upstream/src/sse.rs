//! GraphQL over SSE toward an upstream, distinct-connections mode (graphql-sse's default,
//! and what Yoga serves): one HTTP request per operation.
//!
//! [`SseClient::subscribe`] sends the request (POST with a JSON body by default, or GET
//! with the request in the query string), with the forwarded headers and
//! `Accept: text/event-stream`, and waits for the response head. The [`SseOperation`] it
//! returns yields the operation's events: `next` with the execution result untouched (an
//! `errors` member included) and `complete`. Dropping the operation drops the response,
//! which ends the HTTP request, and the upstream stops the subscription.
//!
//! Every wait is bounded: the TCP (and TLS) connect by `connect_timeout`, the response
//! head by `connect_timeout + ack_timeout`, each read of the stream by
//! `keepalive_interval + keepalive_timeout` (Yoga and graphql-sse send a comment every
//! 12 s), and one event by `max_message_bytes`. Errors say whether a retry may help
//! ([`UpstreamError::is_retryable`]).
//!
//! The rules (what a status means, what an event means) live in
//! [`subplex_protocol::sse_client`]; this module does the I/O.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use http::{header, HeaderName, HeaderValue};
use subplex_protocol::sse_client::{self, EventSizeGuard, EventTooLarge, ResponseVerdict};
use subplex_protocol::{Event, GraphqlRequest};

use crate::error::ConnectCause;
use crate::{SseMethod, UpstreamError, UpstreamSettings};

/// Sends operations to one upstream over GraphQL over SSE. Cheap to clone; connections
/// are pooled by reqwest per host.
#[derive(Debug, Clone)]
pub struct SseClient {
    http: reqwest::Client,
    settings: Arc<UpstreamSettings>,
}

impl SseClient {
    /// A client for the upstream at `settings.http_url`, with its timeouts and TLS roots.
    pub fn new(settings: Arc<UpstreamSettings>) -> Result<Self, UpstreamError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.keepalive_interval + settings.keepalive_timeout);
        if let Some(tls) = &settings.tls {
            builder = builder.use_preconfigured_tls((**tls).clone());
        }
        let http = builder.build().map_err(|err| UpstreamError::Connect {
            upstream: settings.name.clone(),
            reason: format!(
                "cannot build the HTTP client: {}",
                describe_http_error(&err)
            ),
            cause: ConnectCause::Invalid,
        })?;
        Ok(SseClient { http, settings })
    }

    /// The upstream's settings.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// Starts `request` upstream with `headers` (already filtered by the gateway) and
    /// returns once the upstream answered with an event stream.
    pub async fn subscribe(
        &self,
        headers: &[(HeaderName, HeaderValue)],
        request: &GraphqlRequest,
    ) -> Result<SseOperation, UpstreamError> {
        let settings = &self.settings;
        let upstream = settings.name.clone();
        let mut url = settings.http_url.clone();
        let mut builder = match settings.sse_method {
            SseMethod::Post => self
                .http
                .post(url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(request.encode()),
            SseMethod::Get => {
                url.query_pairs_mut()
                    .extend_pairs(sse_client::query_parameters(request));
                self.http.get(url)
            }
        };
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        builder = builder.header(header::ACCEPT, sse_client::ACCEPT);

        let head_timeout = settings.connect_timeout + settings.ack_timeout;
        let response = match tokio::time::timeout(head_timeout, builder.send()).await {
            Err(_) => {
                return Err(UpstreamError::Connect {
                    upstream,
                    reason: format!("no response within {} ms", head_timeout.as_millis()),
                    cause: ConnectCause::Timeout,
                })
            }
            Ok(Err(err)) => {
                return Err(UpstreamError::Connect {
                    upstream,
                    reason: describe_http_error(&err),
                    cause: ConnectCause::Network,
                })
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok());
        match sse_client::classify_response(status, content_type) {
            ResponseVerdict::EventStream => {}
            _ if status != 200 => return Err(UpstreamError::HttpStatus { upstream, status }),
            _ => {
                return Err(UpstreamError::NotEventStream {
                    upstream,
                    content_type: content_type.unwrap_or("no content type").to_owned(),
                })
            }
        }
        Ok(SseOperation::new(response, upstream, settings))
    }
}

/// One operation's events from an SSE upstream. It ends after `complete` or after the
/// first error; dropping it ends the HTTP request.
pub struct SseOperation {
    events: BoxStream<'static, Result<Event, UpstreamError>>,
}

impl std::fmt::Debug for SseOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseOperation").finish_non_exhaustive()
    }
}

/// Why the byte stream under the event parser stopped.
#[derive(Debug, thiserror::Error)]
enum ChunkError {
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
    #[error(transparent)]
    TooLarge(#[from] EventTooLarge),
}

impl SseOperation {
    fn new(response: reqwest::Response, upstream: Arc<str>, settings: &UpstreamSettings) -> Self {
        let limit = settings.max_message_bytes;
        let silent_ms =
            (settings.keepalive_interval + settings.keepalive_timeout).as_millis() as u64;
        let mut guard = EventSizeGuard::new(limit);
        let bytes = response
            .bytes_stream()
            .map(move |chunk| -> Result<Bytes, ChunkError> {
                let chunk = chunk?;
                guard.feed(&chunk)?;
                Ok(chunk)
            });
        let parsed = bytes.eventsource();
        let events = futures_util::stream::unfold(Some(parsed), move |state| {
            let upstream = upstream.clone();
            async move {
                let mut parsed = state?;
                loop {
                    let error = match parsed.next().await {
                        Some(Ok(event)) => {
                            match sse_client::decode_event(&event.event, event.data, limit) {
                                Ok(None) => continue,
                                Ok(Some(event)) => {
                                    let rest = (!event.is_terminal()).then_some(parsed);
                                    return Some((Ok(event), rest));
                                }
                                Err(err) => UpstreamError::Protocol {
                                    upstream,
                                    reason: err.to_string(),
                                },
                            }
                        }
                        None => UpstreamError::StreamCut {
                            upstream,
                            reason: String::new(),
                        },
                        Some(Err(EventStreamError::Transport(ChunkError::TooLarge(err)))) => {
                            UpstreamError::Protocol {
                                upstream,
                                reason: err.to_string(),
                            }
                        }
                        Some(Err(EventStreamError::Transport(ChunkError::Transport(err))))
                            if err.is_timeout() =>
                        {
                            UpstreamError::Unresponsive {
                                upstream,
                                silent_ms,
                            }
                        }
                        Some(Err(EventStreamError::Transport(ChunkError::Transport(err)))) => {
                            UpstreamError::StreamCut {
                                upstream,
                                reason: describe_http_error(&err),
                            }
                        }
                        Some(Err(err)) => UpstreamError::Protocol {
                            upstream,
                            reason: err.to_string(),
                        },
                    };
                    return Some((Err(error), None));
                }
            }
        });
        SseOperation {
            events: events.boxed(),
        }
    }

    /// The next event, or the error that ended the operation; `None` after either.
    pub async fn recv(&mut self) -> Option<Result<Event, UpstreamError>> {
        self.events.next().await
    }
}

impl Stream for SseOperation {
    type Item = Result<Event, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_next_unpin(cx)
    }
}

/// The innermost cause of an HTTP client error, without the URL (which can carry
/// credentials, and with GET the operation's variables).
pub(crate) fn describe_http_error(err: &reqwest::Error) -> String {
    let mut cause = None;
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        cause = Some(inner);
        source = inner.source();
    }
    // With no inner cause, only the kind is safe to show: the error's own text has the URL.
    let cause = cause.map_or_else(|| "the HTTP request failed".to_owned(), |c| c.to_string());
    if err.is_timeout() {
        format!("timed out ({cause})")
    } else {
        cause
    }
}
