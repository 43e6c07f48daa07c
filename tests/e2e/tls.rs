//! TLS on the gateway's listener (`[server.tls]`) with a certificate made by the test:
//! a WebSocket client (`wss://`) and an SSE client (`https://`) trusting only the test CA.
//! Reloading on SIGHUP and bad files at start-up: `crates/subplex/tests/cli.rs`.

use serde_json::json;
use subplex_tests::fake_upstream::{test_certificates, TestCertificates};
use subplex_tests::http::{read_until, urlencode};
use subplex_tests::ws::RawClient;
use subplex_tests::*;

/// The certificate and key as files, removed on drop.
struct CertificateFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl CertificateFiles {
    fn write(certificates: &TestCertificates) -> CertificateFiles {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("subplex-tls-{}-{n}", std::process::id()));
        let files = CertificateFiles {
            cert: base.with_extension("cert.pem"),
            key: base.with_extension("key.pem"),
        };
        std::fs::write(&files.cert, &certificates.server_cert_pem).unwrap();
        std::fs::write(&files.key, &certificates.server_key_pem).unwrap();
        files
    }

    fn server_keys(&self) -> String {
        format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }
}

impl Drop for CertificateFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cert);
        let _ = std::fs::remove_file(&self.key);
    }
}

#[tokio::test]
async fn websocket_and_sse_clients_subscribe_over_tls() {
    let certificates = test_certificates();
    let files = CertificateFiles::write(&certificates);
    let (gateway, _demo) = gateway_with_demo(&files.server_keys()).await;
    let query = "subscription { tick(count: 2, intervalMs: 5) }";

    let mut ws = RawClient::connect_tls(
        gateway.addr,
        "graphql-transport-ws",
        certificates.client_config(),
    )
    .await;
    ws.init(json!({})).await;
    ws.send(json!({ "type": "subscribe", "id": "1", "payload": { "query": query } }))
        .await;
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.push(ws.recv_json().await);
    }
    assert_eq!(
        frames,
        [
            json!({ "type": "next", "id": "1", "payload": { "data": { "tick": 1 } } }),
            json!({ "type": "next", "id": "1", "payload": { "data": { "tick": 2 } } }),
            json!({ "type": "complete", "id": "1" }),
        ]
    );

    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certificates.ca_pem.as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let url = format!(
        "https://{}/graphql?query={}",
        gateway.addr,
        urlencode(query)
    );
    let response = https
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut chunks = response.bytes_stream();
    let text = read_until(&mut chunks, |text| {
        text.ends_with("event: complete\ndata:\n\n")
    })
    .await;
    assert_eq!(
        text,
        ":\n\nevent: next\ndata: {\"data\":{\"tick\":1}}\n\nevent: next\ndata: {\"data\":{\"tick\":2}}\n\nevent: complete\ndata:\n\n"
    );

    // A client that does not trust the test CA is refused by its own TLS check.
    let untrusting = reqwest::Client::builder().build().unwrap();
    assert!(untrusting.get(&url).send().await.is_err());
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(reqwest::get(format!("http://{}/healthz", gateway.addr))
        .await
        .is_err());
}
