//! Probing an upstream's protocol by behaviour (`protocol = "auto"`, `subplex probe`), and
//! the GraphQL over SSE upstream client, against real servers: Yoga, Apollo Server,
//! subscriptions-transport-ws (with and without `ka` before the ack), Yoga without a
//! WebSocket server, graphql-sse's own handler, and two servers that lie in subprotocol
//! negotiation.

use ::http::{HeaderName, HeaderValue};
use futures_util::future::join_all;
use serde_json::{json, Value};
use subplex_protocol::probe::Verdict;
use subplex_protocol::{Event, GraphqlRequest, RawJson, Subprotocol};
use subplex_tests::*;
use subplex_upstream::probe::{probe, DetectedProtocol, Evidence, ProbeFailure, SseOutcome};
use subplex_upstream::sse::{SseClient, SseOperation};
use subplex_upstream::{SseMethod, UpstreamError, UpstreamSettings};

const TRANSPORT_WS: Subprotocol = Subprotocol::GraphqlTransportWs;
const LEGACY: Subprotocol = Subprotocol::GraphqlWs;

fn settings(port: u16, path: &str) -> UpstreamSettings {
    let ws_url = url::Url::parse(&format!("ws://127.0.0.1:{port}{path}")).unwrap();
    UpstreamSettings::new("up", ws_url, TRANSPORT_WS)
}

fn authorization(user: &str) -> Vec<(HeaderName, HeaderValue)> {
    vec![(
        HeaderName::from_static("authorization"),
        HeaderValue::from_str(&format!("Bearer {user}")).unwrap(),
    )]
}

fn upgrade(offered: &[Subprotocol], selected: Option<&str>) -> Evidence {
    Evidence::Upgrade {
        offered: offered.to_vec(),
        selected: selected.map(str::to_owned),
    }
}

fn handshake(dialect: Subprotocol, received: &[&str], verdict: Verdict) -> Evidence {
    Evidence::Handshake {
        dialect,
        received: received.iter().map(|r| r.to_string()).collect(),
        verdict,
    }
}

fn retry_with(dialect: Subprotocol) -> Evidence {
    Evidence::Fallback {
        next: format!("{dialect} on a new connection, offering only {dialect}"),
        because: "the first handshake was not confirmed".into(),
    }
}

fn sse_fallback() -> Evidence {
    Evidence::Fallback {
        next: "GraphQL over SSE".into(),
        because: "no WebSocket dialect was confirmed".into(),
    }
}

/// A subscriptions-transport-ws server: ws 7 echoes the first offer, the server closes
/// 1002 for it, and the legacy handshake on a second connection receives `received`.
fn legacy_evidence(received: &[&str]) -> Vec<Evidence> {
    vec![
        upgrade(&[TRANSPORT_WS, LEGACY], Some("graphql-transport-ws")),
        handshake(
            TRANSPORT_WS,
            &["close 1002"],
            Verdict::WrongDialect {
                code: 1002,
                reason: String::new(),
            },
        ),
        retry_with(LEGACY),
        upgrade(&[LEGACY], Some("graphql-ws")),
        handshake(LEGACY, received, Verdict::Speaks(LEGACY)),
    ]
}

/// What each server is found to speak, and the steps that show it. Every probe connection
/// is closed afterwards: the server's count of WebSocket connections equals the upgrades.
#[tokio::test]
async fn probe_finds_each_server_protocol_by_behaviour() {
    let both = [TRANSPORT_WS, LEGACY];
    let confirmed_transport_ws = handshake(
        TRANSPORT_WS,
        &["connection_ack", "pong"],
        Verdict::Speaks(TRANSPORT_WS),
    );
    let cases: Vec<(Upstream, DetectedProtocol, Vec<Evidence>)> = vec![
        (
            Upstream::Yoga,
            DetectedProtocol::WebSocket(TRANSPORT_WS),
            vec![
                upgrade(&both, Some("graphql-transport-ws")),
                confirmed_transport_ws.clone(),
            ],
        ),
        (
            Upstream::Apollo,
            DetectedProtocol::WebSocket(TRANSPORT_WS),
            vec![
                upgrade(&both, Some("graphql-transport-ws")),
                confirmed_transport_ws.clone(),
            ],
        ),
        (
            // ws 7 echoes the first offer; subscriptions-transport-ws then closes 1002.
            Upstream::Legacy,
            DetectedProtocol::WebSocket(LEGACY),
            legacy_evidence(&["connection_ack", "ka"]),
        ),
        (
            Upstream::LegacyKaBeforeAck,
            DetectedProtocol::WebSocket(LEGACY),
            legacy_evidence(&["ka", "connection_ack", "ka"]),
        ),
        (
            Upstream::LiarSelectsNone,
            DetectedProtocol::WebSocket(TRANSPORT_WS),
            vec![upgrade(&both, None), confirmed_transport_ws.clone()],
        ),
        (
            // It selects graphql-ws, answers the ping with pong: the other dialect, so the
            // probe confirms graphql-transport-ws on a second connection.
            Upstream::LiarSelectsGraphqlWs,
            DetectedProtocol::WebSocket(TRANSPORT_WS),
            vec![
                upgrade(&both, Some("graphql-ws")),
                handshake(
                    LEGACY,
                    &["connection_ack", "pong"],
                    Verdict::Speaks(TRANSPORT_WS),
                ),
                retry_with(TRANSPORT_WS),
                upgrade(&[TRANSPORT_WS], Some("graphql-transport-ws")),
                confirmed_transport_ws.clone(),
            ],
        ),
        (
            // Yoga answers the upgrade request as a plain GET.
            Upstream::YogaSseOnly,
            DetectedProtocol::Sse,
            vec![
                Evidence::UpgradeFailed {
                    offered: both.to_vec(),
                    status: Some(200),
                    reason: "HTTP 200 during the WebSocket upgrade".into(),
                },
                sse_fallback(),
                Evidence::Sse {
                    method: SseMethod::Post,
                    outcome: SseOutcome::EventStream {
                        events: vec!["next".into(), "complete".into()],
                    },
                },
            ],
        ),
        (
            Upstream::GraphqlSse,
            DetectedProtocol::Sse,
            vec![
                Evidence::UpgradeFailed {
                    offered: both.to_vec(),
                    status: Some(404),
                    reason: "HTTP 404 during the WebSocket upgrade".into(),
                },
                sse_fallback(),
                Evidence::Sse {
                    method: SseMethod::Post,
                    outcome: SseOutcome::EventStream {
                        events: vec!["next".into(), "complete".into()],
                    },
                },
            ],
        ),
    ];

    let servers = join_all(cases.iter().map(|(kind, ..)| NodeServer::start(*kind))).await;
    let init_payload = RawJson::parse(r#"{"authorization":"Bearer prober"}"#).unwrap();
    let headers = authorization("prober");
    let reports = join_all(servers.iter().map(|server| {
        let settings = settings(server.port, "/graphql");
        let (headers, init_payload) = (&headers, &init_payload);
        async move { probe(&settings, headers, init_payload).await }
    }))
    .await;

    for ((kind, protocol, evidence), (report, server)) in
        cases.iter().zip(reports.into_iter().zip(&servers))
    {
        let report = report.unwrap_or_else(|err| panic!("{kind:?}: {}", err.detailed()));
        assert_eq!(&report.protocol, protocol, "{kind:?}: {report}");
        assert_eq!(&report.evidence, evidence, "{kind:?}: {report}");
        let upgrades = evidence
            .iter()
            .filter(|e| matches!(e, Evidence::Upgrade { .. }))
            .count() as u64;
        server
            .wait_for("every probe connection closed", |c| {
                c.connections_open == 0 && c.connections_total == upgrades
            })
            .await;
    }
}

/// With `protocol = "auto"` (the default) the gateway probes each upstream at start-up,
/// before any client, and then serves it in the dialect found, liars included. The
/// server's connection count is the probe's connections plus the upstream connections.
/// An SSE-only upstream is served over GraphQL over SSE.
#[tokio::test]
async fn auto_probes_at_start_and_serves_the_dialect_found() {
    // (server, WebSocket connections the probe makes)
    let cases = [
        (Upstream::Yoga, 1),
        (Upstream::LegacyKaBeforeAck, 2),
        (Upstream::LiarSelectsNone, 1),
        (Upstream::LiarSelectsGraphqlWs, 2),
    ];
    let servers = join_all(cases.iter().map(|(kind, _)| NodeServer::start(*kind))).await;
    let sse_only = NodeServer::start(Upstream::GraphqlSse).await;
    let mut config = String::new();
    for (i, server) in servers.iter().chain([&sse_only]).enumerate() {
        config.push_str(&format!(
            "[upstreams.u{i}]\nurl = \"http://127.0.0.1:{}/graphql\"\n[[routes]]\npath = \"/u{i}\"\nupstream = \"u{i}\"\n",
            server.port
        ));
    }
    let gateway = TestGateway::start(&config).await;
    let url = |i: usize| format!("http://{}/u{i}", gateway.addr);
    // No client yet: the start-up probe alone opens (and closes) the probe's connections.
    for ((kind, probe_connections), server) in cases.iter().zip(&servers) {
        let counters = server
            .wait_for("the start-up probe", |c| {
                c.connections_total == *probe_connections && c.connections_open == 0
            })
            .await;
        assert_eq!(counters.subscriptions_active, 0, "{kind:?}");
    }

    let query = "subscription { ticks(count: 2) { n user } }";
    let mut clients = Vec::new();
    for i in 0..cases.len() {
        // Two clients per upstream, each library once: both share the probed connection.
        clients.push(client("graphql-ws", &url(i), query, "ann"));
        clients.push(client("graphql-sse", &url(i), query, "ann"));
    }
    let results = run_clients(clients).await;
    for (i, (kind, _)) in cases.iter().enumerate() {
        for lines in &results[2 * i..2 * i + 2] {
            assert_eq!(lines, &expected_tick_lines("ann", 2), "{kind:?}");
        }
    }
    // The graphql-ws and graphql-sse clients of an upstream differ in init payload (the
    // SSE one is {}), so each has its own upstream connection.
    for ((kind, probe_connections), server) in cases.iter().zip(&servers) {
        let counters = server
            .wait_for("the upstream connections", |c| {
                c.connections_total == probe_connections + 2
            })
            .await;
        assert_eq!(
            counters.connections_total,
            probe_connections + 2,
            "{kind:?}"
        );
    }

    // The SSE-only upstream is probed as such and serves every client kind, one HTTP
    // request per operation. Only forwarded headers reach an SSE upstream (it has no
    // connection_init), so the WebSocket clients authenticate with a header here.
    let with_header = |kind: &str| {
        json!({ "client": kind, "url": url(cases.len()), "query": query,
                "headers": { "authorization": "Bearer ann" } })
    };
    let results = run_clients(vec![
        with_header("graphql-ws"),
        with_header("subscriptions-transport-ws"),
        with_header("graphql-sse"),
        with_header("eventsource"),
    ])
    .await;
    for lines in &results {
        assert_eq!(lines, &expected_tick_lines("ann", 2));
    }
    sse_only
        .wait_for("the SSE operations to end upstream", |c| {
            c.subscriptions_active == 0
        })
        .await;
}

/// An upstream that refuses anonymous callers: the probe reports the refusal at once (no
/// other dialect, no SSE), succeeds with the credentials, and with `auto` a refused first
/// probe is not cached: the next client, with credentials, probes again and is served.
#[tokio::test]
async fn probe_uses_the_callers_credentials_and_reports_a_refusal() {
    let server = NodeServer::start(Upstream::YogaRequiringAuth).await;
    let settings = settings(server.port, "/graphql");
    let error = probe(&settings, &[], &RawJson::empty_object())
        .await
        .unwrap_err();
    let refusal = "closed with 4403 Forbidden".to_owned();
    assert_eq!(error.failure, ProbeFailure::Rejected(refusal.clone()));
    assert_eq!(
        error.evidence,
        [
            upgrade(&[TRANSPORT_WS, LEGACY], Some("graphql-transport-ws")),
            handshake(
                TRANSPORT_WS,
                &["close 4403"],
                Verdict::Rejected { reason: refusal }
            ),
        ]
    );
    assert_eq!(
        error.to_upstream_error(&"up".into()).code(),
        "UPSTREAM_REJECTED"
    );

    let init_payload = RawJson::parse(r#"{"authorization":"Bearer bo"}"#).unwrap();
    let report = probe(&settings, &[], &init_payload).await.unwrap();
    assert_eq!(report.protocol, DetectedProtocol::WebSocket(TRANSPORT_WS));
    server
        .wait_for("both probe connections closed", |c| {
            c.connections_open == 0 && c.connections_total == 2
        })
        .await;

    let gateway = TestGateway::for_upstream(server.port, "auto", "").await;
    let query = "subscription { ticks(count: 2) { n user } }";
    let anonymous = json!({ "client": "graphql-ws", "url": gateway.url(), "query": query });
    let results = run_clients(vec![anonymous]).await;
    let lines = &results[0];
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(
        lines[0]["payload"]["errors"][0]["message"],
        "upstream \"up\" refused the connection: closed with 4403 Forbidden"
    );
    assert_eq!(
        lines[0]["payload"]["errors"][0]["extensions"]["code"],
        "UPSTREAM_REJECTED"
    );
    assert_eq!(lines[1], json!({ "type": "complete" }));
    let results = run_clients(vec![client("graphql-ws", &gateway.url(), query, "bo")]).await;
    assert_eq!(results[0], expected_tick_lines("bo", 2));
    // Two probes before; then the gateway's anonymous probe at start-up (refused, not
    // cached), the anonymous client's refused probe, bo's probe and bo's connection.
    server
        .wait_for("the gateway's connections", |c| c.connections_total == 6)
        .await;
}

/// The timeout branches, with a scripted server: a legacy server that acknowledges and then
/// says nothing (no `ka`, no answer to the ping) is legacy once `ack_timeout_ms` passes; a
/// server that never acknowledges in either dialect, and is no SSE server either, is
/// reported as speaking nothing, with every step.
#[tokio::test]
async fn probe_timeouts_decide_silent_servers() {
    use subplex_tests::fake_upstream::FakeUpstream;
    let short = |port| {
        let mut settings = settings(port, "/graphql");
        settings.ack_timeout = std::time::Duration::from_millis(300);
        settings
    };

    let mut silent_legacy = FakeUpstream::start("graphql-ws").await;
    let settings = short(silent_legacy.addr.port());
    let probing =
        tokio::spawn(async move { probe(&settings, &[], &RawJson::empty_object()).await });
    let mut connection = silent_legacy.accept().await;
    connection.handshake().await;
    assert_eq!(connection.recv_json().await, json!({ "type": "ping" }));
    let report = probing.await.unwrap().unwrap();
    assert_eq!(report.protocol, DetectedProtocol::WebSocket(LEGACY));
    assert_eq!(
        report.evidence,
        [
            upgrade(&[TRANSPORT_WS, LEGACY], Some("graphql-ws")),
            handshake(LEGACY, &["connection_ack"], Verdict::Speaks(LEGACY)),
        ]
    );

    // It selects graphql-transport-ws whatever is offered, and never answers.
    let mut mute = FakeUpstream::start("graphql-transport-ws").await;
    let settings = short(mute.addr.port());
    let probing =
        tokio::spawn(async move { probe(&settings, &[], &RawJson::empty_object()).await });
    let mut first = mute.accept().await;
    assert_eq!(first.recv_json().await["type"], "connection_init");
    let mut second = mute.accept().await;
    assert_eq!(second.recv_json().await["type"], "connection_init");
    let error = probing.await.unwrap().unwrap_err();
    assert_eq!(error.failure, ProbeFailure::NoProtocol);
    assert_eq!(error.evidence.len(), 7, "{}", error.detailed());
    assert_eq!(
        error.evidence[..6],
        [
            upgrade(&[TRANSPORT_WS, LEGACY], Some("graphql-transport-ws")),
            handshake(TRANSPORT_WS, &[], Verdict::NoAck),
            retry_with(LEGACY),
            upgrade(&[LEGACY], Some("graphql-transport-ws")),
            handshake(LEGACY, &[], Verdict::NoAck),
            sse_fallback(),
        ]
    );
    // The fake takes the SSE request for a broken WebSocket upgrade and hangs up.
    assert!(
        matches!(
            &error.evidence[6],
            Evidence::Sse {
                method: SseMethod::Post,
                outcome: SseOutcome::Failed(_)
            }
        ),
        "{}",
        error.detailed()
    );
}

/// Reads an operation to its end: the events as JSON (`next` payloads as they came), and
/// the error that ended it, if any.
async fn drain(mut operation: SseOperation) -> (Vec<Value>, Option<UpstreamError>) {
    let mut events = Vec::new();
    let read = tokio::time::timeout(EVENT_TIMEOUT, async {
        while let Some(item) = operation.recv().await {
            match item {
                Ok(Event::Next(result)) => events.push(
                    json!({ "next": serde_json::from_str::<Value>(result.as_str()).unwrap() }),
                ),
                Ok(Event::Error(errors)) => events.push(json!({ "error": errors.as_str() })),
                Ok(Event::Complete) => events.push(json!("complete")),
                Err(error) => return Some(error),
            }
        }
        None
    })
    .await;
    (events, read.expect("the operation ends within the timeout"))
}

/// `next` results exactly as the server sent them (an `errors` result included), then
/// `complete`, over POST and GET, from Yoga and from graphql-sse's own handler.
#[tokio::test]
async fn sse_client_yields_the_operation_events_exactly() {
    for kind in [Upstream::YogaSseOnly, Upstream::GraphqlSse] {
        let server = NodeServer::start(kind).await;
        for method in [SseMethod::Post, SseMethod::Get] {
            let mut settings = settings(server.port, "/graphql");
            settings.sse_method = method;
            let client = SseClient::new(settings.into()).unwrap();
            let mut request =
                GraphqlRequest::new("subscription Ticks($c: Int!) { ticks(count: $c) { n user } }");
            request.variables = Some(RawJson::parse(r#"{"c":3}"#).unwrap());
            request.operation_name = Some("Ticks".into());
            let operation = client
                .subscribe(&authorization("sue"), &request)
                .await
                .unwrap();
            let (events, error) = drain(operation).await;
            assert!(error.is_none(), "{kind:?} {method:?}: {error:?}");
            let mut expected: Vec<Value> = expected_ticks("sue", 3)
                .into_iter()
                .map(|result| json!({ "next": result }))
                .collect();
            expected.push(json!("complete"));
            assert_eq!(events, expected, "{kind:?} {method:?}");

            let failing = GraphqlRequest::new("subscription { failing { n } }");
            let operation = client.subscribe(&[], &failing).await.unwrap();
            let (events, error) = drain(operation).await;
            assert!(error.is_none(), "{kind:?} {method:?}: {error:?}");
            assert_eq!(
                events,
                [
                    json!({ "next": { "errors": [{
                        "message": "failing on purpose",
                        "locations": [{ "line": 1, "column": 16 }],
                        "path": ["failing"],
                    }] } }),
                    json!("complete"),
                ],
                "{kind:?} {method:?}"
            );
        }
        server
            .wait_for("no live subscription", |c| c.subscriptions_active == 0)
            .await;
    }
}

/// Dropping an operation ends its HTTP request, and the server ends the subscription.
#[tokio::test]
async fn dropping_an_sse_operation_ends_the_upstream_subscription() {
    for kind in [Upstream::YogaSseOnly, Upstream::GraphqlSse] {
        let server = NodeServer::start(kind).await;
        let client = SseClient::new(settings(server.port, "/graphql").into()).unwrap();
        let request = GraphqlRequest::new("subscription { forever(intervalMs: 20) { n user } }");
        let mut operation = client
            .subscribe(&authorization("tom"), &request)
            .await
            .unwrap();
        let first = tokio::time::timeout(EVENT_TIMEOUT, operation.recv())
            .await
            .unwrap();
        assert!(
            matches!(first, Some(Ok(Event::Next(_)))),
            "{kind:?}: {first:?}"
        );
        server
            .wait_for("one live subscription", |c| c.subscriptions_active == 1)
            .await;
        drop(operation);
        server
            .wait_for("the subscription ended", |c| c.subscriptions_active == 0)
            .await;
    }
}

/// A 4xx and a 200 that is not an event stream are permanent, a stream cut before
/// `complete` and a refused connection are retryable, an event over `max_message_bytes`
/// is a protocol error.
#[tokio::test]
async fn sse_client_classifies_failures() {
    let mut server = NodeServer::start(Upstream::GraphqlSse).await;
    let request = GraphqlRequest::new("subscription { forever(intervalMs: 20) { n user } }");

    let client = SseClient::new(settings(server.port, "/nope").into()).unwrap();
    let error = client.subscribe(&[], &request).await.unwrap_err();
    assert_eq!(
        error,
        UpstreamError::HttpStatus {
            upstream: "up".into(),
            status: 404
        }
    );
    assert!(!error.is_retryable());
    assert_eq!(error.code(), "UPSTREAM_PROTOCOL_ERROR");

    // The fixture's counters: a 200 that is not an event stream.
    let client = SseClient::new(settings(server.port, "/stats").into()).unwrap();
    let error = client.subscribe(&[], &request).await.unwrap_err();
    assert_eq!(
        error,
        UpstreamError::NotEventStream {
            upstream: "up".into(),
            content_type: "application/json".into()
        }
    );
    assert!(!error.is_retryable());

    let mut small = settings(server.port, "/graphql");
    small.max_message_bytes = 16;
    let client = SseClient::new(small.into()).unwrap();
    let (events, error) = drain(client.subscribe(&[], &request).await.unwrap()).await;
    assert!(events.is_empty(), "{events:?}");
    let error = error.unwrap();
    assert_eq!(
        error,
        UpstreamError::Protocol {
            upstream: "up".into(),
            reason: "an event is over the 16 byte limit".into()
        }
    );
    assert!(!error.is_retryable());
    server
        .wait_for("the refused stream ended upstream", |c| {
            c.subscriptions_active == 0
        })
        .await;

    let port = server.port;
    let client = SseClient::new(settings(port, "/graphql").into()).unwrap();
    let mut operation = client.subscribe(&[], &request).await.unwrap();
    let first = tokio::time::timeout(EVENT_TIMEOUT, operation.recv())
        .await
        .unwrap();
    assert!(matches!(first, Some(Ok(Event::Next(_)))), "{first:?}");
    server.kill().await;
    let (_, error) = drain(operation).await;
    let error = error.expect("a cut stream is an error");
    assert!(
        matches!(error, UpstreamError::StreamCut { .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(error.code(), "UPSTREAM_CLOSED");

    let error = client.subscribe(&[], &request).await.unwrap_err();
    assert!(
        matches!(&error, UpstreamError::Connect { reason, .. } if reason.contains("Connection refused")),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

/// The probed protocol is cached, and probed again when the server behind the URL stops
/// speaking it: Yoga (graphql-transport-ws) is replaced on the same port by a legacy
/// `graphql-ws` server, and that by graphql-sse's SSE-only handler. Each time the next
/// subscriptions are served in the new protocol without an error.
#[tokio::test]
async fn a_probe_is_redone_when_the_server_behind_the_url_changes_protocol() {
    let mut yoga = NodeServer::start(Upstream::Yoga).await;
    let port = yoga.port;
    // `dedup = false`: two clients of one context run the same finite subscription at
    // once, and each must see all of it.
    let gateway = TestGateway::for_upstream(port, "auto", "dedup = false").await;
    let query = "subscription { ticks(count: 2) { n user } }";
    // Header credentials: they reach every protocol, SSE included.
    let client = |kind: &str| {
        json!({ "client": kind, "url": gateway.url(), "query": query,
                "headers": { "authorization": "Bearer ann" } })
    };
    let results = run_clients(vec![client("graphql-ws")]).await;
    assert_eq!(results[0], expected_tick_lines("ann", 2));
    // The probe's connection and the serving one.
    assert_eq!(yoga.counters().connections_total, 2);

    yoga.kill().await;
    let mut legacy = NodeServer::start_on(Upstream::Legacy, port).await;
    let results = run_clients(vec![
        client("graphql-ws"),
        client("subscriptions-transport-ws"),
    ])
    .await;
    // Only a graphql-ws speaker gets ticks from subscriptions-transport-ws's server.
    assert_eq!(results[0], expected_tick_lines("ann", 2));
    assert_eq!(results[1], expected_tick_lines("ann", 2));
    legacy
        .wait_for("the operations to end upstream", |c| {
            c.subscriptions_active == 0
        })
        .await;

    legacy.kill().await;
    let sse_only = NodeServer::start_on(Upstream::GraphqlSse, port).await;
    let results = run_clients(vec![client("graphql-ws"), client("graphql-sse")]).await;
    assert_eq!(results[0], expected_tick_lines("ann", 2));
    assert_eq!(results[1], expected_tick_lines("ann", 2));
    sse_only
        .wait_for("the operations to end upstream", |c| {
            c.subscriptions_active == 0
        })
        .await;
}
