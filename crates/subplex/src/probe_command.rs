//! `subplex probe <url>`: which protocol a GraphQL server speaks, and why subplex thinks so.
//!
//! For people debugging an upstream: the output names the protocol, the `protocol`
//! value for `gateway.toml`, and every step of the probe in order. Header values and the
//! init payload are sent but never printed.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use subplex_protocol::{RawJson, Subprotocol};
use subplex_upstream::probe::{probe, ProbeFailure};
use subplex_upstream::{SseMethod, UpstreamSettings};

use crate::cli::ProbeArgs;

/// Why `subplex probe` could not run, or found nothing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeCommandError {
    /// The arguments are wrong (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The probe ran and nothing works (exit 1); the text has the reason and the steps.
    #[error("{0}")]
    NothingWorks(String),
}

/// Runs the probe and returns what to print on success.
pub async fn run(args: &ProbeArgs) -> Result<String, ProbeCommandError> {
    let usage = ProbeCommandError::Usage;
    let url = url::Url::parse(&args.url).map_err(|err| {
        usage(format!(
            "\"{}\" is not a URL: {err}",
            shown_url_text(&args.url)
        ))
    })?;
    let (http_url, derived_ws_url) = match url.scheme() {
        "http" | "https" => (url.clone(), counterpart(&url)),
        "ws" | "wss" => (counterpart(&url), url.clone()),
        other => {
            return Err(usage(format!(
                "the URL scheme \"{other}\" is not http, https, ws or wss"
            )))
        }
    };
    let ws_url = match &args.ws_url {
        Some(text) => url::Url::parse(text)
            .ok()
            .filter(|u| matches!(u.scheme(), "ws" | "wss"))
            .ok_or_else(|| usage("--ws-url must be a ws:// or wss:// URL".into()))?,
        None => derived_ws_url,
    };
    let headers = parse_headers(&args.headers).map_err(usage)?;
    let init_payload = match &args.init_payload {
        None => RawJson::empty_object(),
        Some(text) => RawJson::parse(text)
            .ok()
            .filter(RawJson::is_object)
            // The text is not echoed: it is meant to hold credentials.
            .ok_or_else(|| usage("--init-payload must be a JSON object".into()))?,
    };
    let sse_method = match args.sse_method.to_ascii_uppercase().as_str() {
        "POST" => SseMethod::Post,
        "GET" => SseMethod::Get,
        _ => return Err(usage("--sse-method must be POST or GET".into())),
    };
    if args.timeout_ms == 0 {
        return Err(usage("--timeout-ms must be greater than 0".into()));
    }
    let tls = crate::config::tls::upstream_tls(args.tls_ca_file.as_deref())
        .map_err(|reason| usage(format!("--tls-ca-file: {reason}")))?;

    let mut settings =
        UpstreamSettings::new("probe", ws_url.clone(), Subprotocol::GraphqlTransportWs);
    settings.http_url = http_url.clone();
    settings.sse_method = sse_method;
    settings.connect_timeout = Duration::from_millis(args.timeout_ms);
    settings.ack_timeout = Duration::from_millis(args.timeout_ms);
    settings.tls = Some(tls.websocket);

    let sent = sent_line(&headers, args.init_payload.is_some());
    match probe(&settings, &headers, &init_payload).await {
        Ok(report) => {
            let mut out = format!(
                "{} speaks {}: {}\n\nHow this was decided:",
                shown_url(&http_url),
                report.protocol,
                report.protocol.description()
            );
            for (i, step) in report.evidence.iter().enumerate() {
                out.push_str(&format!("\n  {}. {step}", i + 1));
            }
            out.push_str(&format!(
                "\n\nIn gateway.toml: protocol = \"{}\" (or \"auto\", the default, to probe at start-up)\n{sent}",
                report.protocol.config_name()
            ));
            Ok(out)
        }
        Err(error) => {
            let hint = match error.failure {
                ProbeFailure::Unreachable => "Is the server running, and is the URL right?",
                ProbeFailure::Rejected(_) => {
                    "Pass the credentials the server expects with --header or --init-payload."
                }
                ProbeFailure::NoProtocol => {
                    "Check the path: the URL must be the GraphQL endpoint itself."
                }
            };
            let mut out = format!(
                "{}: no protocol found: {}\n\nWhat was tried:",
                shown_url(&http_url),
                error.summary()
            );
            for (i, step) in error.evidence.iter().enumerate() {
                out.push_str(&format!("\n  {}. {step}", i + 1));
            }
            out.push_str(&format!("\n\n{hint}\n{sent}"));
            Err(ProbeCommandError::NothingWorks(out))
        }
    }
}

/// `name: value` pairs; names lower-cased. Errors name the argument's position, never
/// its value.
fn parse_headers(raw: &[String]) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    raw.iter()
        .enumerate()
        .map(|(i, text)| {
            let position = i + 1;
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| format!("--header number {position} is not 'name: value'"))?;
            let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("--header number {position} has an invalid name"))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("--header \"{name}\" has an invalid value"))?;
            Ok((name, value))
        })
        .collect()
}

/// What was sent, without values.
fn sent_line(headers: &[(HeaderName, HeaderValue)], init_payload: bool) -> String {
    let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
    let headers = if names.is_empty() {
        "no headers".to_owned()
    } else {
        format!("headers {} (values not shown)", names.join(", "))
    };
    let payload = if init_payload {
        "the given init payload (not shown)"
    } else {
        "the init payload {}"
    };
    format!("Sent: {headers}; {payload}.")
}

/// The same endpoint in the other family: http↔ws, https↔wss.
fn counterpart(url: &url::Url) -> url::Url {
    let mut out = url.clone();
    let scheme = match url.scheme() {
        "http" => "ws",
        "https" => "wss",
        "ws" => "http",
        _ => "https",
    };
    // Between http(s) and ws(s) a scheme change is always allowed.
    let _ = out.set_scheme(scheme);
    out
}

/// A URL as printed: a password in it is hidden.
fn shown_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// An unparsable URL as printed: everything before an `@` is hidden.
fn shown_url_text(text: &str) -> String {
    match text.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_errors_never_show_values() {
        let parsed =
            parse_headers(&["Authorization: Bearer s3cret".into(), "x-a:b".into()]).unwrap();
        assert_eq!(parsed[0].0, "authorization");
        assert_eq!(parsed[0].1, "Bearer s3cret");
        assert_eq!(parsed[1].1, "b");
        let err = parse_headers(&["Bearer s3cret".into()]).unwrap_err();
        assert_eq!(err, "--header number 1 is not 'name: value'");
        let err = parse_headers(&["authorization: a\u{7f}s3cret".into()]).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        assert_eq!(
            sent_line(&parsed, true),
            "Sent: headers authorization, x-a (values not shown); the given init payload (not shown)."
        );
    }

    #[test]
    fn urls_are_derived_both_ways_and_passwords_hidden() {
        let http = url::Url::parse("https://u:pw@example.com/graphql").unwrap();
        assert_eq!(counterpart(&http).scheme(), "wss");
        let ws = url::Url::parse("ws://127.0.0.1:1/graphql").unwrap();
        assert_eq!(counterpart(&ws).as_str(), "http://127.0.0.1:1/graphql");
        assert_eq!(shown_url(&http), "https://u:***@example.com/graphql");
        assert_eq!(shown_url_text("http://u:pw@[::1"), "***@[::1");
    }
}
