//! OpenTelemetry traces (subplex built with `otlp`): one span per client operation, with
//! its client, its upstream operation and the reason it ended, read from the SDK's
//! in-memory exporter through the same layer `telemetry::init` installs.

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::Value as OtelValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use subplex_tests::ws::RawClient;
use subplex_tests::*;
use tracing_subscriber::layer::SubscriberExt;

fn attribute(span: &SpanData, key: &str) -> Option<OtelValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn text(span: &SpanData, key: &str) -> String {
    attribute(span, key)
        .map(|value| value.as_str().into_owned())
        .unwrap_or_default()
}

/// A completed operation and one the client stopped: two operation spans, each with a
/// child `upstream subscribe` span, the client's transport and id, the upstream and the
/// protocol it was reached with, the security context's short hash, the events the client
/// got, and `complete` or `cancelled`.
#[tokio::test]
async fn each_client_operation_is_one_span_with_its_upstream_and_end_reason() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber =
        tracing_subscriber::registry().with(subplex::telemetry::operation_spans(&provider));
    // The test's runtime runs every gateway task on this thread.
    let _default = tracing::subscriber::set_default(subscriber);

    let (gateway, _demo) = gateway_with_demo("").await;
    let mut client = RawClient::connect(gateway.addr, "graphql-transport-ws", &[]).await;
    client.init(json!({})).await;
    client
        .send(json!({ "type": "subscribe", "id": "a", "payload": {
            "query": "subscription Ticks { tick(count: 2, intervalMs: 10) }",
            "operationName": "Ticks" } }))
        .await;
    for _ in 0..2 {
        assert_eq!(client.recv_json().await["type"], "next");
    }
    assert_eq!(
        client.recv_json().await,
        json!({ "type": "complete", "id": "a" })
    );
    client
        .send(json!({ "type": "subscribe", "id": "b", "payload": {
            "query": "subscription { tick(count: 100000, intervalMs: 10) }" } }))
        .await;
    assert_eq!(client.recv_json().await["id"], "b");
    client.send(json!({ "type": "complete", "id": "b" })).await;

    // A span is exported when the gateway drops the operation: poll, bounded.
    let spans = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let spans = exporter.get_finished_spans().unwrap();
            if spans
                .iter()
                .filter(|s| s.name != "upstream subscribe")
                .count()
                == 2
            {
                break spans;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("two operation spans");
    let operation = |id: &str| {
        spans
            .iter()
            .find(|s| text(s, "subplex.client_operation_id") == id)
            .unwrap_or_else(|| panic!("no span for {id}: {spans:#?}"))
    };
    let (a, b) = (operation("a"), operation("b"));
    assert_eq!(a.name, "Ticks");
    assert_eq!(b.name, "graphql operation");
    for span in [a, b] {
        assert_eq!(text(span, "subplex.transport"), "graphql-transport-ws");
        assert_eq!(text(span, "subplex.upstream"), "demo");
        assert_eq!(
            text(span, "subplex.upstream_protocol"),
            "graphql-transport-ws"
        );
        let context = text(span, "subplex.security_context");
        assert!(
            context.len() == 8 && context.chars().all(|c| c.is_ascii_hexdigit()),
            "{context}"
        );
        assert_eq!(span.parent_span_id, SpanId::INVALID, "a root span");
        assert_ne!(span.span_context.trace_id(), TraceId::INVALID);
        // Its upstream operation: a child span for starting it.
        let children: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.parent_span_id == span.span_context.span_id())
            .collect();
        assert_eq!(children.len(), 1, "{spans:#?}");
        assert_eq!(children[0].name, "upstream subscribe");
        assert_eq!(text(children[0], "subplex.upstream"), "demo");
    }
    assert_eq!(text(a, "subplex.end_reason"), "complete");
    assert_eq!(attribute(a, "subplex.events"), Some(OtelValue::I64(3)));
    assert_eq!(text(b, "subplex.end_reason"), "cancelled");
    let OtelValue::I64(events) = attribute(b, "subplex.events").unwrap() else {
        panic!("events is a number");
    };
    assert!(events >= 1, "{events}");
    let _ = provider.shutdown();
}
