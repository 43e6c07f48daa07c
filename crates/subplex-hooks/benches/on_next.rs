//! What a typical `on_next` filter costs per event per client: drop the event when a
//! field differs from the client's subscription variable, else remove a field; on a
//! 300-byte payload.
//!
//! `cargo bench -p subplex-hooks --bench on_next`
//!
//! - `deliver/own_event`: each call gets another event (two alternate), so every call
//!   parses: the cost for an event only one client receives.
//! - `deliver/shared_event`: the same event for call after call, as when several clients
//!   share one upstream event: parsed for the first two, copied for the others.
//! - `drop/shared_event`: the event is of another room and dropped.
//!
//! Each is measured twice: `on_next` in wall time, `on_next_cpu` in the thread's CPU
//! time. On a machine shared with other work, wall time counts the time the benchmark
//! waited for a core; CPU time does not.

use std::time::Duration;

use cpu_time::ThreadTime;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use subplex_hooks::{ClientInfo, HookScript, Limits, OperationInfo};
use subplex_protocol::RawJson;

const FILTER: &str = r#"
fn on_next(ctx, payload) {
    if payload.data.messageAdded.room != ctx.variables.room {
        return;
    }
    payload.data.messageAdded.remove("secret");
    payload
}
"#;

/// A chat message event of exactly 300 bytes; `n` makes distinct texts of equal size.
fn event(n: u32, room: &str) -> RawJson {
    let mut value = json!({ "data": { "messageAdded": {
        "id": format!("m-{n:06}"),
        "room": room,
        "author": { "id": "u-42", "name": "Alice Example" },
        "text": "Hello everyone, the build is green again; merging now.",
        "sentAt": "2026-12-02T08:30:00Z",
        "secret": "internal-routing-token-abc123",
    } } });
    let size = value.to_string().len();
    let padding = "x".repeat(300usize.saturating_sub(size + r#","pad":"""#.len()));
    value["data"]["messageAdded"]["pad"] = padding.into();
    let raw = RawJson::from_value(&value);
    assert_eq!(raw.as_str().len(), 300, "{}", raw.as_str());
    raw
}

fn on_next<M: Measurement>(c: &mut Criterion<M>, group_name: &str) {
    let script = HookScript::compile("filter.rhai", FILTER, Limits::default()).unwrap();
    let init = json!({});
    let headers = [("authorization", "Bearer alice"), ("cookie", "session=abc")];
    let client = script
        .client_context(&ClientInfo {
            headers: &headers,
            init_payload: &init,
            path: "/graphql",
            upstream: "chat",
            transport: "graphql-transport-ws",
            remote_addr: "127.0.0.1:50000",
        })
        .unwrap();
    let variables = json!({ "room": "red" });
    let ctx = script
        .operation_context(
            &client,
            &OperationInfo {
                operation_name: Some("Messages"),
                variables: Some(&variables),
            },
        )
        .unwrap();

    let own = [event(1, "red"), event(2, "red")];
    let shared = event(3, "red");
    let other_room = event(4, "blue");
    assert!(script.on_next(&ctx, &shared).unwrap().is_some());
    assert!(script.on_next(&ctx, &other_room).unwrap().is_none());

    let mut group = c.benchmark_group(group_name);
    let mut i = 0;
    group.bench_function("deliver/own_event", |b| {
        b.iter(|| {
            i += 1;
            black_box(script.on_next(&ctx, &own[i % 2]).unwrap())
        })
    });
    group.bench_function("deliver/shared_event", |b| {
        b.iter(|| black_box(script.on_next(&ctx, &shared).unwrap()))
    });
    group.bench_function("drop/shared_event", |b| {
        b.iter(|| black_box(script.on_next(&ctx, &other_room).unwrap()))
    });
    group.finish();
}

fn wall(c: &mut Criterion) {
    on_next(c, "on_next");
}

fn cpu(c: &mut Criterion<ThreadCpuTime>) {
    on_next(c, "on_next_cpu");
}

/// The benchmark thread's CPU time, as a criterion measurement.
struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = ThreadTime;
    type Value = Duration;

    fn start(&self) -> ThreadTime {
        ThreadTime::now()
    }
    fn end(&self, started: ThreadTime) -> Duration {
        started.elapsed()
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &Microseconds
    }
}

/// Shows every CPU time in microseconds, the unit of the target (5 µs per event).
struct Microseconds;

impl ValueFormatter for Microseconds {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v /= 1000.0);
        "µs (cpu)"
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        _t: &Throughput,
        _values: &mut [f64],
    ) -> &'static str {
        "per second"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn settings<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    c.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = wall_time;
    config = settings(Criterion::default());
    targets = wall
}
criterion_group! {
    name = cpu_time;
    config = settings(Criterion::default().with_measurement(ThreadCpuTime));
    targets = cpu
}
criterion_main!(wall_time, cpu_time);
