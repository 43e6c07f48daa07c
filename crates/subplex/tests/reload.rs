//! Config reload under live load: the built binary reloads on SIGHUP while 500
//! subscriptions run over three client transports against real Node upstreams.

use std::ops::Range;

use serde_json::{json, Value};
use subplex_tests::process::{GatewayProcess, TempFile};
use subplex_tests::{client, expected_tick_lines, run_clients, HeldClients, NodeServer, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_subplex");

/// Slow enough that 520 streams stay light on two cores, fast enough that a few
/// intervals after the reload prove the streams went on.
const FOREVER: &str = "subscription { forever(intervalMs: 200) { n user } }";

/// The clients, by index range: what route they use and what must happen to them.
struct Group {
    clients: Range<usize>,
    /// The error code that ends them at the reload, or `None`: they must not notice it.
    ended_with: Option<&'static str>,
}

/// Entries of `count` operations multiplexed on one library client of `kind`.
fn shared(kind: &str, url: &str, user: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|_| {
            let mut spec = client(kind, url, FOREVER, user);
            spec["shared"] = json!(format!("{kind}-{user}"));
            spec
        })
        .collect()
}

fn config(stable: u16, other: u16, version: &str) -> String {
    // Each client its own upstream subscription, so the upstreams' counts show every one
    // of them carried over (deduplicated, 500 identical ones would be a handful).
    config_text(stable, other, version).replace(
        "protocol = \"graphql-transport-ws\"\n",
        "protocol = \"graphql-transport-ws\"\ndedup = false\n",
    )
}

fn config_text(stable: u16, other: u16, version: &str) -> String {
    let head = format!(
        "[upstreams.stable]\nurl = \"http://127.0.0.1:{stable}/graphql\"\nprotocol = \"graphql-transport-ws\"\n\n\
         [[routes]]\npath = \"/graphql\"\nupstream = \"stable\"\n\n\
         [[routes]]\npath = \"/changing\"\nupstream = \"changing\"\n\n"
    );
    let changing =
        format!("[upstreams.changing]\nurl = \"http://127.0.0.1:{other}/graphql\"\nprotocol = \"graphql-transport-ws\"\n");
    match version {
        "before" => format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n{head}[[routes]]\npath = \"/removed\"\nupstream = \"stable\"\n\n{changing}"
        ),
        // `changing` forwards one more header; `fresh` and its route are new; `/removed`
        // is gone; a [server] key changed, which needs a restart.
        "after" | "broken" => {
            let fresh_url = if version == "broken" {
                "ftp://127.0.0.1/graphql".to_owned()
            } else {
                format!("http://127.0.0.1:{other}/graphql")
            };
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 5000\n\n{head}\
                 [[routes]]\npath = \"/fresh\"\nupstream = \"fresh\"\n\n\
                 {changing}forward_headers = [\"authorization\", \"x-tenant\"]\n\n\
                 [upstreams.fresh]\nurl = \"{fresh_url}\"\nprotocol = \"graphql-transport-ws\"\n"
            )
        }
        _ => unreachable!(),
    }
}

/// The `forever` results `1..=count` for `user`.
fn forever(user: &str, count: usize) -> Vec<Value> {
    (1..=count)
        .map(|n| json!({ "data": { "forever": { "n": n, "user": user } } }))
        .collect()
}

fn nexts(lines: &[Value]) -> usize {
    lines.iter().filter(|l| l["type"] == "next").count()
}

async fn status_of(url: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .send()
        .await
        .expect("GET the gateway")
        .status()
        .as_u16()
}

/// 500 subscriptions on an unchanged upstream (graphql-transport-ws, legacy graphql-ws and
/// GraphQL over SSE, 150 operations multiplexed per WebSocket) lose no event across a
/// refused reload and a good one; the upstream's clients whose settings changed, and those
/// of a removed route, get the documented error, then `complete`; a new route serves at
/// once, and the changed upstream is dialled anew under its new settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_500_live_subscriptions_drops_none_whose_upstream_is_unchanged() {
    let stable = NodeServer::start(Upstream::Yoga).await;
    let other = NodeServer::start(Upstream::Yoga).await;
    let file = TempFile::with_contents("gateway.toml", &config(stable.port, other.port, "before"));
    let mut gateway = GatewayProcess::start(BIN, &file.0, &[]).await;

    let graphql = gateway.url("/graphql");
    let changing = gateway.url("/changing");
    let removed = gateway.url("/removed");
    let mut specs = Vec::new();
    specs.extend(shared("graphql-ws", &graphql, "alice", 150));
    specs.extend(shared("graphql-ws", &graphql, "bob", 150));
    specs.extend(shared("subscriptions-transport-ws", &graphql, "carol", 100));
    specs.extend(shared("graphql-sse", &graphql, "dave", 100));
    specs.extend(shared("graphql-ws", &changing, "erin", 5));
    specs.extend(shared("subscriptions-transport-ws", &changing, "erin", 5));
    specs.extend(shared("graphql-sse", &changing, "erin", 5));
    specs.extend(shared("graphql-ws", &removed, "frank", 5));
    let users: Vec<String> = specs
        .iter()
        .map(|spec| {
            spec["shared"]
                .as_str()
                .unwrap()
                .rsplit('-')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    let groups = [
        Group {
            clients: 0..500,
            ended_with: None,
        },
        Group {
            clients: 500..515,
            ended_with: Some("UPSTREAM_CONFIG_CHANGED"),
        },
        Group {
            clients: 515..520,
            ended_with: Some("ROUTE_REMOVED"),
        },
    ];
    let mut held = HeldClients::subscribe(specs).await;
    // One upstream connection per security context: on `stable` alice's, bob's, carol's and
    // frank's init payloads and dave's header; on `other` erin's payload (the same bytes
    // from both WebSocket libraries) and erin's header.
    let before = stable
        .wait_for("505 subscriptions", |c| c.subscriptions_active == 505)
        .await;
    assert_eq!(before.connections_total, 5, "{before:?}");
    let other_before = other
        .wait_for("15 subscriptions", |c| c.subscriptions_active == 15)
        .await;
    assert_eq!(other_before.connections_total, 2, "{other_before:?}");

    // A file that fails validation is refused with file, key and reason, and changes
    // nothing: no new route, and every stream goes on.
    file.write(&config(stable.port, other.port, "broken"));
    gateway.signal("HUP");
    let refusal = gateway
        .wait_log("configuration reload refused")
        .await
        .join("\n");
    assert!(refusal.contains(&file.0.display().to_string()), "{refusal}");
    assert!(
        refusal.contains("upstreams.fresh.url: scheme \"ftp\" is not http or https"),
        "{refusal}"
    );
    assert_eq!(status_of(&gateway.url("/fresh")).await, 404);
    let seen: Vec<usize> = held.lines().iter().map(|lines| nexts(lines)).collect();
    for (index, had) in seen.into_iter().enumerate().skip(500) {
        held.wait_until(index, |lines| nexts(lines) >= had + 2)
            .await;
    }
    assert_eq!(stable.counters(), before);

    // The good file.
    file.write(&config(stable.port, other.port, "after"));
    gateway.signal("HUP");
    let restart = gateway.wait_log("need a restart").await.join("\n");
    assert!(restart.contains("keys=server.max_connections"), "{restart}");
    let reloaded = gateway.wait_log("configuration reloaded").await.join("\n");
    for field in [
        "upstreams_kept=stable",
        "upstreams_retired=changing",
        "routes_ended=/removed",
    ] {
        assert!(reloaded.contains(field), "{field}: {reloaded}");
    }
    let at_reload: Vec<usize> = held.lines().iter().map(|lines| nexts(lines)).collect();

    // New routes serve at once; the changed upstream is dialled anew for its next client.
    let fresh = run_clients(vec![
        client(
            "graphql-ws",
            &gateway.url("/fresh"),
            "subscription { ticks(count: 3) { n user } }",
            "gina",
        ),
        client(
            "graphql-sse",
            &changing,
            "subscription { ticks(count: 2) { n user } }",
            "gina",
        ),
    ])
    .await;
    assert_eq!(
        fresh,
        [
            expected_tick_lines("gina", 3),
            expected_tick_lines("gina", 2)
        ]
    );
    assert_eq!(status_of(&removed).await, 404);

    // Ended clients get the documented error, then complete.
    for group in &groups {
        if group.ended_with.is_some() {
            for index in group.clients.clone() {
                held.wait_until(index, |lines| {
                    lines.last().is_some_and(|l| l["type"] == "complete")
                })
                .await;
            }
        }
    }
    // The others go on: three more events each after the reload.
    for index in groups[0].clients.clone() {
        held.wait_until(index, |lines| nexts(lines) >= at_reload[index] + 3)
            .await;
    }
    // No new connection to `stable`, and only frank's operations ended there.
    let after = stable
        .wait_for("500 subscriptions", |c| c.subscriptions_active == 500)
        .await;
    assert_eq!(
        after.connections_total, before.connections_total,
        "{after:?}"
    );
    // Erin's two connections closed with the retired pool; gina's two (one per upstream,
    // `fresh` and the new `changing`) were dialled under the new settings and stay open
    // until idle.
    let other_after = other
        .wait_for("erin's connections closed", |c| {
            c.subscriptions_active == 0 && c.connections_open == 2
        })
        .await;
    assert_eq!(other_after.connections_total, 4, "{other_after:?}");

    let lines = held.stop().await;
    for group in &groups {
        for index in group.clients.clone() {
            let user = &users[index];
            let mine = &lines[index];
            let payloads: Vec<Value> = mine
                .iter()
                .filter(|l| l["type"] == "next")
                .map(|l| l["payload"].clone())
                .collect();
            match group.ended_with {
                None => {
                    // Every event, in order, none twice, nothing else.
                    assert!(
                        mine.iter().all(|l| l["type"] == "next"),
                        "client {index}: {mine:?}"
                    );
                    assert_eq!(payloads, forever(user, payloads.len()), "client {index}");
                    assert!(payloads.len() >= at_reload[index] + 3, "client {index}");
                }
                Some(code) => {
                    let (result, ticks) = payloads.split_last().expect("an error result");
                    assert_eq!(ticks, forever(user, ticks.len()), "client {index}");
                    assert!(ticks.len() >= 3, "client {index}: {mine:?}");
                    assert_eq!(
                        result["errors"][0]["extensions"]["code"], code,
                        "client {index}: {result}"
                    );
                    assert_eq!(mine.last().unwrap()["type"], "complete", "client {index}");
                    assert_eq!(mine.len(), payloads.len() + 1, "client {index}: {mine:?}");
                }
            }
        }
    }
    let messages: Vec<&str> = lines[500..520]
        .iter()
        .map(|mine| {
            mine[mine.len() - 2]["payload"]["errors"][0]["message"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert!(messages[..15].iter().all(|m| *m
        == "the configuration of upstream \"changing\" changed (config reload); subscribe again"));
    assert!(
        messages[15..]
            .iter()
            .all(|m| *m
                == "route /removed was removed or now serves another upstream (config reload)")
    );

    let exit = gateway.stop().await;
    assert!(exit.success(), "exit status {exit}");
}

/// `subplex reload --pid-file` signals the gateway started with that pid file, which
/// reloads; the pid file goes when the gateway exits. Without `--pid-file`: exit 64.
#[tokio::test]
async fn reload_command_signals_the_gateway_named_by_its_pid_file() {
    let route = |path: &str| format!("[[routes]]\npath = \"{path}\"\nupstream = \"up\"\n");
    let upstream = "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.up]\nurl = \"http://127.0.0.1:9/graphql\"\nprotocol = \"graphql-transport-ws\"\n";
    let file = TempFile::with_contents("gateway.toml", &format!("{upstream}{}", route("/one")));
    let pid_file = TempFile::with_contents("subplex.pid", "");
    let pid_path = pid_file.0.display().to_string();
    let mut gateway = GatewayProcess::start(BIN, &file.0, &["--pid-file", &pid_path]).await;
    assert_eq!(
        std::fs::read_to_string(&pid_file.0).unwrap(),
        format!("{}\n", gateway.pid())
    );
    assert_eq!(status_of(&gateway.url("/two")).await, 404);

    file.write(&format!("{upstream}{}{}", route("/one"), route("/two")));
    let output = std::process::Command::new(BIN)
        .args(["reload", "--pid-file", &pid_path])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "sent SIGHUP to subplex (pid {}); its log tells whether the configuration was reloaded\n",
            gateway.pid()
        )
    );
    let reloaded = gateway.wait_log("configuration reloaded").await.join("\n");
    assert!(reloaded.contains("upstreams_kept=up"), "{reloaded}");
    // `/two` is routed now: the upstream is down, so the gateway answers for it (not 404).
    assert_ne!(status_of(&gateway.url("/two")).await, 404);

    let output = std::process::Command::new(BIN)
        .arg("reload")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("reload needs --pid-file FILE"),
        "{output:?}"
    );

    let exit = gateway.stop().await;
    assert!(exit.success(), "exit status {exit}");
    assert!(!pid_file.0.exists(), "the pid file is removed at exit");
}
