//! One benchmark run: every selected scenario against every selected system, each pair on
//! fresh processes (a fresh emitter, a fresh gateway or forwarder) so that no scenario
//! inherits another's memory, connections or warm caches.
//!
//! - **fan-out**: N subscribers, every subscription gets `rate` events/s for `duration`
//!   seconds. Measures delivered events/s, end-to-end latency, gateway CPU per million
//!   delivered events and gateway memory, and checks that every client got every event,
//!   in order.
//! - **idle**: N subscriptions that receive nothing. Measures the gateway's resident
//!   memory per subscription (RSS after − RSS before, over N).
//!
//! Both report how many upstream connections the emitter saw: the point of subplex is
//! one per security context instead of one per client.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::time;

use crate::emitter::{EmitterStats, TickMode};
use crate::loadgen::{Load, LoadSummary};
use crate::proc_stats::{self, Machine, Memory};
use crate::systems::{self, Emitter, System, SystemKind};
use crate::tick;

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Fanout,
    Idle,
}

/// Command line of a benchmark run (the default command).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The subplex binary [default: `subplex` next to this executable, i.e. the one
    /// `cargo build --release -p subplex` builds].
    #[arg(long)]
    pub subplex_bin: Option<PathBuf>,
    /// Systems to measure, in this order (`direct` runs only the fan-out scenario).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "subplex,baseline,baseline-tuned,direct"
    )]
    pub systems: Vec<SystemKind>,
    /// Scenarios to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fanout,idle")]
    pub scenarios: Vec<Scenario>,
    /// Fan-out: number of subscribers (one connection and one subscription each).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Fan-out: events per second per subscription.
    #[arg(long, default_value_t = 10)]
    pub rate: u64,
    /// Fan-out: seconds of events.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Fan-out: all subscriptions tick together (broadcast) or spread over the period.
    #[arg(long, value_enum, default_value = "broadcast")]
    pub mode: TickMode,
    /// Fan-out: approximate size of each event's payload JSON, in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload_bytes: usize,
    /// Idle: number of subscriptions (one connection each).
    #[arg(long, default_value_t = 5000)]
    pub idle_subscriptions: usize,
    /// Idle: how long to wait after the last subscription before reading memory, in ms.
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    /// subplex's `subscriber_queue` (events buffered per subscription before the
    /// slow-consumer policy cuts it off) [default: subplex's own, 128].
    #[arg(long)]
    pub subplex_subscriber_queue: Option<usize>,
    /// Client handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Print the results as JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Keep the temporary directory with subplex's configs and logs, and print its path.
    #[arg(long)]
    pub keep_temp: bool,
}

/// How long all clients of a scenario may take to subscribe.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the upstream may take to see every subscription after the clients sent them.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// After the last tick: how long delivery may go on before the harness stops waiting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Delivery counts as finished once nothing new arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(100);
/// Memory is read this long after start, so start-up allocations have settled.
const STARTUP_SETTLE: Duration = Duration::from_millis(500);
/// File descriptors a process needs besides its sockets.
const FD_MARGIN: u64 = 256;

/// Everything a run measured; serialised as-is for `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub subplex_bin: Option<String>,
    pub parameters: Parameters,
    pub fanout: Vec<FanoutResult>,
    pub idle: Vec<IdleResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Parameters {
    pub subscribers: usize,
    pub rate: u64,
    pub duration_s: u64,
    pub mode: TickMode,
    pub payload_bytes: usize,
    pub idle_subscriptions: usize,
    /// `None`: subplex's default (128).
    pub subplex_subscriber_queue: Option<usize>,
    pub open_file_limit: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub system: SystemKind,
    /// Connections the emitter accepted during the scenario.
    pub upstream_connections: u64,
    /// Subscriptions the emitter served: 1 for subplex (deduplicated), else subscribers.
    pub upstream_subscriptions: usize,
    /// Events the clients should receive: subscribers × rate × duration.
    pub events_expected: u64,
    pub events_sent: u64,
    pub events_delivered: u64,
    /// Delivered events over the time from the start command to the last delivery.
    pub delivered_per_s: f64,
    pub elapsed_s: f64,
    pub latency_us: Option<Percentiles>,
    /// The gateway figures are `None` for `direct`, which has no gateway.
    pub gateway_cpu_s: Option<f64>,
    /// Gateway CPU time over wall time, in % of one core.
    pub gateway_cpu_percent: Option<f64>,
    pub gateway_cpu_s_per_million_events: Option<f64>,
    /// Gateway memory at the end of the scenario, clients still connected.
    pub gateway_memory: Option<Memory>,
    pub emitter_cpu_s: f64,
    /// This process (the load generator), for context: it shares the machine.
    pub harness_cpu_s: f64,
    pub emitter: EmitterStats,
    pub clients: LoadSummary,
    pub gateway_warnings: usize,
    pub gateway_warning_samples: Vec<String>,
    /// Empty when every check passed.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub system: SystemKind,
    pub subscriptions: usize,
    /// Upstream connections open once every subscription was established.
    pub upstream_connections: i64,
    pub upstream_subscriptions: i64,
    pub memory_before: Memory,
    pub memory_after: Memory,
    pub rss_per_subscription_kib: f64,
    pub clients: LoadSummary,
    pub gateway_warnings: usize,
    pub gateway_warning_samples: Vec<String>,
    pub problems: Vec<String>,
}

/// What the scenarios need to start processes.
struct Harness {
    args: RunArgs,
    bench_exe: PathBuf,
    subplex_bin: Option<PathBuf>,
    temp: tempfile::TempDir,
}

/// Runs every selected scenario against every selected system.
pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let open_file_limit =
        proc_stats::raise_open_file_limit().context("raising the open-file limit")?;
    check_file_budget(&args, open_file_limit)?;
    anyhow::ensure!(
        args.rate > 0 && args.duration > 0,
        "--rate and --duration must be > 0"
    );
    anyhow::ensure!(
        args.subscribers > 0 && args.idle_subscriptions > 0,
        "--subscribers and --idle-subscriptions must be > 0"
    );

    let bench_exe = std::env::current_exe().context("locating this executable")?;
    let subplex_bin = if args.systems.contains(&SystemKind::Subplex) {
        Some(find_subplex(&args, &bench_exe)?)
    } else {
        None
    };
    let temp = tempfile::Builder::new()
        .prefix("subplex-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let machine = Machine::read();
    eprintln!(
        "machine: {} CPUs ({}), {} MiB, Linux {}; open-file limit {open_file_limit}",
        machine.cpus,
        machine.cpu_model,
        machine.memory_total_kib / 1024,
        machine.kernel
    );
    let parameters = Parameters {
        subscribers: args.subscribers,
        rate: args.rate,
        duration_s: args.duration,
        mode: args.mode,
        payload_bytes: args.payload_bytes,
        idle_subscriptions: args.idle_subscriptions,
        subplex_subscriber_queue: args.subplex_subscriber_queue,
        open_file_limit,
    };
    let harness = Harness {
        args: args.clone(),
        bench_exe,
        subplex_bin: subplex_bin.clone(),
        temp,
    };

    let mut report = Report {
        machine,
        subplex_bin: subplex_bin.map(|p| p.display().to_string()),
        parameters,
        fanout: Vec::new(),
        idle: Vec::new(),
    };
    for scenario in &args.scenarios {
        for &system in &args.systems {
            match scenario {
                // Without a gateway there is no gateway memory to measure.
                Scenario::Idle if system == SystemKind::Direct => {}
                Scenario::Fanout => report.fanout.push(fanout(&harness, system).await?),
                Scenario::Idle => report.idle.push(idle(&harness, system).await?),
            }
        }
    }
    if args.keep_temp {
        let kept = harness.temp.keep();
        eprintln!("configs and logs kept in {}", kept.display());
    }
    Ok(report)
}

/// Each scenario needs one socket per client in this process and in the emitter, and two
/// in the forwarder; refuse sizes that would run into EMFILE half-way.
fn check_file_budget(args: &RunArgs, limit: u64) -> anyhow::Result<()> {
    let mut largest = 0;
    for scenario in &args.scenarios {
        largest = largest.max(match scenario {
            Scenario::Fanout => args.subscribers,
            Scenario::Idle => args.idle_subscriptions,
        });
    }
    let needed = 2 * largest as u64 + FD_MARGIN;
    if needed > limit {
        bail!(
            "{largest} clients need about {needed} open files in the forwarder, but the limit is \
             {limit}: lower --subscribers/--idle-subscriptions or raise the hard limit (ulimit -Hn)"
        );
    }
    Ok(())
}

fn find_subplex(args: &RunArgs, bench_exe: &Path) -> anyhow::Result<PathBuf> {
    let path = match &args.subplex_bin {
        Some(path) => path.clone(),
        None => bench_exe
            .parent()
            .context("this executable has no directory")?
            .join(format!("subplex{}", std::env::consts::EXE_SUFFIX)),
    };
    if !path.is_file() {
        bail!(
            "no subplex binary at {}: build it first with `cargo build --release -p subplex`, \
             or pass --subplex-bin",
            path.display()
        );
    }
    // `cargo run -p subplex-bench` does not rebuild subplex: say which build is measured.
    let age = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok());
    match age {
        Some(age) => eprintln!(
            "subplex: {} (built {} min ago; rebuild with `cargo build --release -p subplex`)",
            path.display(),
            age.as_secs() / 60
        ),
        None => eprintln!("subplex: {}", path.display()),
    }
    Ok(path)
}

impl Harness {
    async fn start_system(
        &self,
        kind: SystemKind,
        emitter: &Emitter,
        scenario: &str,
        clients: usize,
    ) -> anyhow::Result<System> {
        match kind {
            SystemKind::Subplex => {
                let bin = self.subplex_bin.as_deref().context("no subplex binary")?;
                // subplex's default cap is 10,000 connections; never let it queue ours.
                let max_connections = (clients * 2).max(10_000);
                System::subplex(
                    &self.bench_exe,
                    bin,
                    self.temp.path(),
                    &format!("subplex-{scenario}"),
                    emitter,
                    max_connections,
                    self.args.subplex_subscriber_queue,
                )
                .await
            }
            SystemKind::Baseline => System::baseline(&self.bench_exe, emitter, None).await,
            SystemKind::BaselineTuned => {
                let buffer = Some(systems::TUNED_READ_BUFFER_BYTES);
                System::baseline(&self.bench_exe, emitter, buffer).await
            }
            SystemKind::Direct => Ok(System::direct(emitter)),
        }
    }
}

/// Waits until the emitter serves `expected` subscriptions.
async fn wait_upstream_subscriptions(
    emitter: &mut Emitter,
    expected: usize,
) -> anyhow::Result<EmitterStats> {
    let deadline = Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let stats = emitter.stats().await?;
        if stats.subscriptions_active >= expected as i64 {
            return Ok(stats);
        }
        if Instant::now() >= deadline {
            bail!(
                "the upstream saw only {} of {expected} subscriptions within {} s",
                stats.subscriptions_active,
                UPSTREAM_TIMEOUT.as_secs()
            );
        }
        time::sleep(POLL).await;
    }
}

fn warnings(system: &System) -> (usize, Vec<String>) {
    system
        .log
        .as_deref()
        .map(systems::log_warnings)
        .unwrap_or_default()
}

async fn fanout(harness: &Harness, kind: SystemKind) -> anyhow::Result<FanoutResult> {
    let args = &harness.args;
    let n = args.subscribers;
    eprintln!(
        "fan-out / {kind}: {n} subscribers × {} events/s × {} s ({:?}, ~{} B payloads)",
        args.rate, args.duration, args.mode, args.payload_bytes
    );
    let mut emitter =
        Emitter::spawn(&harness.bench_exe, args.rate, args.mode, args.payload_bytes).await?;
    let system = harness.start_system(kind, &emitter, "fanout", n).await?;
    let load = Load::start(&system.url(), n, args.connect_concurrency)?;
    load.wait_subscribed(SUBSCRIBE_TIMEOUT).await?;
    let upstream_subscriptions = kind.upstream_subscriptions(n);
    wait_upstream_subscriptions(&mut emitter, upstream_subscriptions).await?;
    // Each upstream event reaches this many clients.
    let fan_out = (n / upstream_subscriptions) as u64;

    let events_per_subscription = args.rate * args.duration;
    let gateway_cpu = optional_cpu_seconds(system.pid)?;
    let emitter_cpu = proc_stats::cpu_seconds(emitter.pid)?;
    let harness_cpu = proc_stats::cpu_seconds(std::process::id())?;
    let start_ns = tick::now_ns();
    let started = Instant::now();
    emitter.start(events_per_subscription).await?;

    // Wait for the ticker to finish and delivery to settle: everything sent arrived, or
    // nothing new arrived for DRAIN_QUIET (events the gateway dropped never will).
    let events_expected = n as u64 * events_per_subscription;
    let upstream_events_expected = upstream_subscriptions as u64 * events_per_subscription;
    let mut problems = Vec::new();
    let ticks_end = started + Duration::from_secs(args.duration);
    let mut last_progress = (load.events(), Instant::now());
    loop {
        time::sleep(POLL).await;
        let stats = emitter.stats().await?;
        let delivered = load.events();
        if delivered != last_progress.0 {
            last_progress = (delivered, Instant::now());
        }
        // `ticking` goes false when the last tick is queued, possibly before every
        // connection wrote it: "all sent and all delivered" or a quiet spell ends the wait.
        let all_delivered = stats.events_sent >= upstream_events_expected
            && delivered >= stats.events_sent * fan_out;
        if !stats.ticking && (all_delivered || last_progress.1.elapsed() >= DRAIN_QUIET) {
            break;
        }
        if Instant::now() >= ticks_end + DRAIN_TIMEOUT {
            problems.push(format!(
                "delivery still going {} s after the last tick; stopped waiting",
                DRAIN_TIMEOUT.as_secs()
            ));
            break;
        }
    }
    let window = started.elapsed().as_secs_f64();
    let gateway_cpu = optional_cpu_seconds(system.pid)?
        .zip(gateway_cpu)
        .map(|(after, before)| after - before);
    let emitter_cpu = proc_stats::cpu_seconds(emitter.pid)? - emitter_cpu;
    let harness_cpu = proc_stats::cpu_seconds(std::process::id())? - harness_cpu;
    let gateway_memory = system.pid.map(proc_stats::memory).transpose()?;
    let last_event_ns = load.last_event_ns();
    let stats = emitter.stats().await?;
    let clients = load.finish().await;
    let (gateway_warnings, gateway_warning_samples) = warnings(&system);
    system.stop().await;
    emitter.stop().await;

    let elapsed_s = last_event_ns.saturating_sub(start_ns) as f64 / 1e9;
    let delivered = clients.events;
    check_clients(&clients, &mut problems);
    if stats.events_sent < upstream_events_expected {
        // Two causes: subscriptions stopped upstream before the end (cut off, failed), or
        // a connection fell TICK_QUEUE ticks behind because its reader was too slow.
        let ended_early = stats.subscriptions_total as i64 - stats.subscriptions_active;
        problems.push(format!(
            "the upstream sent {} of {upstream_events_expected} expected events ({ended_early} \
             subscriptions ended early upstream; {} connection-ticks skipped because a \
             connection was not read fast enough)",
            stats.events_sent, stats.connection_ticks_skipped
        ));
    }
    if delivered < stats.events_sent * fan_out {
        problems.push(format!(
            "{} of {} events due to clients never reached one",
            stats.events_sent * fan_out - delivered,
            stats.events_sent * fan_out
        ));
    }
    let result = FanoutResult {
        system: kind,
        upstream_connections: stats.connections_total,
        upstream_subscriptions,
        events_expected,
        events_sent: stats.events_sent,
        events_delivered: delivered,
        delivered_per_s: if elapsed_s > 0.0 {
            delivered as f64 / elapsed_s
        } else {
            0.0
        },
        elapsed_s,
        latency_us: clients.latency.as_ref().and_then(percentiles),
        gateway_cpu_s: gateway_cpu,
        gateway_cpu_percent: gateway_cpu.map(|cpu| 100.0 * cpu / window),
        gateway_cpu_s_per_million_events: gateway_cpu
            .filter(|_| delivered > 0)
            .map(|cpu| cpu * 1e6 / delivered as f64),
        gateway_memory,
        emitter_cpu_s: emitter_cpu,
        harness_cpu_s: harness_cpu,
        emitter: stats,
        clients,
        gateway_warnings,
        gateway_warning_samples,
        problems,
    };
    eprintln!(
        "  {} events delivered in {:.2} s; {}",
        result.events_delivered,
        result.elapsed_s,
        if result.problems.is_empty() {
            "all checks passed".to_owned()
        } else {
            result.problems.join("; ")
        }
    );
    Ok(result)
}

async fn idle(harness: &Harness, kind: SystemKind) -> anyhow::Result<IdleResult> {
    let args = &harness.args;
    let n = args.idle_subscriptions;
    eprintln!("idle / {kind}: {n} idle subscriptions");
    // The ticker never starts: the rate is irrelevant.
    let mut emitter = Emitter::spawn(&harness.bench_exe, 1, TickMode::Broadcast, 0).await?;
    let system = harness.start_system(kind, &emitter, "idle", n).await?;
    let pid = system
        .pid
        .context("the idle scenario needs a gateway process")?;
    time::sleep(STARTUP_SETTLE).await;
    let memory_before = proc_stats::memory(pid)?;

    let load = Load::start(&system.url(), n, args.connect_concurrency)?;
    load.wait_subscribed(SUBSCRIBE_TIMEOUT).await?;
    wait_upstream_subscriptions(&mut emitter, kind.upstream_subscriptions(n)).await?;
    time::sleep(Duration::from_millis(args.settle_ms)).await;
    let memory_after = proc_stats::memory(pid)?;
    let stats = emitter.stats().await?;
    let clients = load.finish().await;
    let (gateway_warnings, gateway_warning_samples) = warnings(&system);
    system.stop().await;
    emitter.stop().await;

    let mut problems = Vec::new();
    check_clients(&clients, &mut problems);
    if clients.events > 0 {
        problems.push(format!(
            "{} events arrived on idle subscriptions",
            clients.events
        ));
    }
    let delta = memory_after.rss_kib as f64 - memory_before.rss_kib as f64;
    let result = IdleResult {
        system: kind,
        subscriptions: n,
        upstream_connections: stats.connections_open,
        upstream_subscriptions: stats.subscriptions_active,
        memory_before,
        memory_after,
        rss_per_subscription_kib: delta / n as f64,
        clients,
        gateway_warnings,
        gateway_warning_samples,
        problems,
    };
    eprintln!(
        "  RSS {} → {} KiB ({:.1} KiB per subscription), {} upstream connections",
        result.memory_before.rss_kib,
        result.memory_after.rss_kib,
        result.rss_per_subscription_kib,
        result.upstream_connections
    );
    Ok(result)
}

fn optional_cpu_seconds(pid: Option<u32>) -> anyhow::Result<Option<f64>> {
    Ok(pid.map(proc_stats::cpu_seconds).transpose()?)
}

/// The per-client checks shared by both scenarios.
fn check_clients(clients: &LoadSummary, problems: &mut Vec<String>) {
    if clients.connect_failures > 0 {
        problems.push(format!(
            "{} clients failed to subscribe (first: {})",
            clients.connect_failures,
            clients.first_connect_error.as_deref().unwrap_or("?")
        ));
    }
    if clients.missing > 0 {
        problems.push(format!(
            "{} events missing from client sequences",
            clients.missing
        ));
    }
    if clients.out_of_order > 0 {
        problems.push(format!(
            "{} events out of order or duplicated",
            clients.out_of_order
        ));
    }
    if clients.slow_consumer_cutoffs > 0 {
        problems.push(format!(
            "{} subscriptions cut off by the slow-consumer policy",
            clients.slow_consumer_cutoffs
        ));
    }
    if clients.errors > 0 {
        problems.push(format!("{} error results or messages", clients.errors));
    }
    if clients.completed > 0 {
        problems.push(format!(
            "{} subscriptions completed early",
            clients.completed
        ));
    }
    if clients.disconnected > 0 {
        problems.push(format!(
            "{} clients disconnected by the server",
            clients.disconnected
        ));
    }
    if clients.negative_latency > 0 {
        problems.push(format!(
            "{} events stamped after they were received (clock)",
            clients.negative_latency
        ));
    }
}

/// Latency percentiles in µs from a histogram in ns.
fn percentiles(histogram: &hdrhistogram::Histogram<u64>) -> Option<Percentiles> {
    if histogram.is_empty() {
        return None;
    }
    let us = |ns: u64| ns as f64 / 1e3;
    Some(Percentiles {
        p50: us(histogram.value_at_quantile(0.50)),
        p90: us(histogram.value_at_quantile(0.90)),
        p99: us(histogram.value_at_quantile(0.99)),
        p999: us(histogram.value_at_quantile(0.999)),
        max: us(histogram.max()),
        mean: histogram.mean() / 1e3,
    })
}
