//! One benchmark run: every selected scenario against every selected system, each pair on
//! fresh processes (a fresh emitter, a fresh gateway) so that no measurement inherits
//! another's memory, connections or warm caches.
//!
//! - **fan-out**: N subscribers (one connection each) on one distinct subscription in one
//!   security context; every subscription gets `rate` events/s for `duration` seconds.
//! - **distinct**: the same, but every client's request has its own variables, so no
//!   gateway may share an upstream operation between clients.
//! - **contexts**: the same, with the clients spread over C security contexts (their own
//!   `Authorization` and init payload): subplex must hold exactly C upstream sockets.
//! - **storm**: N clients connect and subscribe as fast as the gateway lets them:
//!   connects+subscribes per second.
//! - **idle**: N subscribers (WebSocket or SSE) that receive nothing after priming:
//!   resident memory per subscriber.
//! - **saturation**: the fan-out measurement repeated at rising rates per subscription,
//!   each step on fresh processes, until a step fails (see [`crate::saturation`]).
//!
//! Before the measured events every client is primed (see [`crate::emitter`]): the harness
//! has the emitter send priming events until every client has received one, so it knows
//! each client is attached end to end however the gateway shares upstream operations.
//! Every measurement reports the upstream sockets and subscriptions the emitter saw.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::time;

use crate::emitter::{EmitterStats, TickMode};
use crate::loadgen::{Load, LoadSpec, LoadSummary, Transport};
use crate::peers;
use crate::proc_stats::{self, Machine, Memory};
use crate::saturation::{self, Saturation, Step};
use crate::systems::{self, Emitter, System, SystemKind};
use crate::tick;

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Fanout,
    Distinct,
    Contexts,
    Storm,
    Idle,
    Saturation,
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scenario::Fanout => "fan-out",
            Scenario::Distinct => "distinct subscriptions",
            Scenario::Contexts => "security contexts",
            Scenario::Storm => "connection storm",
            Scenario::Idle => "idle",
            Scenario::Saturation => "saturation",
        })
    }
}

/// Command line of a benchmark run (the default command).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The subplex binary [default: `subplex` next to this executable, i.e. the one
    /// `cargo build --release -p subplex` builds].
    #[arg(long)]
    pub subplex_bin: Option<PathBuf>,
    /// Systems to measure, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "subplex,floor,baseline-tuned,hive-router,hive-gateway,grafbase"
    )]
    pub systems: Vec<SystemKind>,
    /// Scenarios to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fanout,distinct,contexts,storm,idle"
    )]
    pub scenarios: Vec<Scenario>,
    /// Fan-out: numbers of subscribers, one measurement each (one connection and one
    /// subscription per subscriber).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub fanout_sizes: Vec<usize>,
    /// Fan-out: transports of the subscribers, each size measured on each (SSE: one
    /// distinct-connections stream per subscriber).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ws")]
    pub fanout_transports: Vec<Transport>,
    /// Distinct subscriptions: number of subscribers, each with its own variables.
    #[arg(long, default_value_t = 1000)]
    pub distinct_subscribers: usize,
    /// Security contexts: number of subscribers.
    #[arg(long, default_value_t = 1000)]
    pub contexts_subscribers: usize,
    /// Security contexts: number of contexts the subscribers are spread over.
    #[arg(long, default_value_t = 100)]
    pub contexts: usize,
    /// Connection storm: number of clients.
    #[arg(long, default_value_t = 5000)]
    pub storm_clients: usize,
    /// Connection storm: handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub storm_concurrency: usize,
    /// Idle: numbers of idle subscribers, one measurement each per transport.
    #[arg(long, value_delimiter = ',', default_value = "10000,18000")]
    pub idle_sizes: Vec<usize>,
    /// Idle: transports of the idle subscribers.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ws,sse")]
    pub idle_transports: Vec<Transport>,
    /// Idle: subscriptions per WebSocket client, all to the same stream (an SSE client
    /// always holds one). subplex refuses more than `max_operations_per_connection` (200
    /// by default) on one connection.
    #[arg(long, default_value_t = 1)]
    pub idle_subscriptions_per_client: usize,
    /// Saturation: clients (one subscription each, all on one stream).
    #[arg(long, default_value_t = 1000)]
    pub saturation_clients: usize,
    /// Saturation: events per second per subscription, one step each, tried in
    /// ascending order until a step fails.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,20,30,50,100,150,200,250,300,400,500,600,800"
    )]
    pub saturation_rates: Vec<u64>,
    /// Saturation: seconds of events per step.
    #[arg(long, default_value_t = 5)]
    pub saturation_duration: u64,
    /// Saturation: a rate fails when this many attempts in a row fail (one burst of
    /// other work on the machine can fail one).
    #[arg(long, default_value_t = 2)]
    pub saturation_attempts: usize,
    /// Events per second per subscription.
    #[arg(long, default_value_t = 10)]
    pub rate: u64,
    /// Seconds of events.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// All subscriptions tick together (broadcast) or spread over the period.
    #[arg(long, value_enum, default_value = "broadcast")]
    pub mode: TickMode,
    /// Approximate size of each event's payload JSON, in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload_bytes: usize,
    /// Idle: how long to wait after priming before reading memory, in ms.
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    /// subplex's `subscriber_queue` (events buffered per subscription before the
    /// slow-consumer policy cuts it off) [default: subplex's own].
    #[arg(long)]
    pub subplex_subscriber_queue: Option<usize>,
    /// Client handshakes in flight at once (all scenarios but the storm).
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Where peers are installed (created if missing; installing is skipped when present).
    #[arg(long, default_value_os_t = peers::default_cache_dir())]
    pub peers_dir: PathBuf,
    /// Do not install missing peers: report them as not available.
    #[arg(long)]
    pub no_install: bool,
    /// Write the results as Markdown into this file, between the markers
    /// `<!-- bench:results:start -->` and `<!-- bench:results:end -->` (e.g.
    /// docs/benchmarks.md).
    #[arg(long)]
    pub write_markdown: Option<PathBuf>,
    /// Write an SVG chart of gateway CPU per event and p99 latency against N (fan-out)
    /// for every system.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Print the results as JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Keep the temporary directory with the generated configs and logs, and print its path.
    #[arg(long)]
    pub keep_temp: bool,
}

/// How long all clients of a measurement may take to subscribe.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long priming may take until every client received a priming event.
const PRIME_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for priming events after each prime command.
const PRIME_ROUND: Duration = Duration::from_secs(1);
/// After the last tick: how long delivery may go on before the harness stops waiting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Delivery counts as finished once nothing new arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);
/// Memory is read this long after start, so start-up allocations have settled.
const STARTUP_SETTLE: Duration = Duration::from_millis(500);
/// File descriptors a process needs besides its sockets.
const FD_MARGIN: u64 = 256;

/// Everything a run measured; serialised as-is for `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
    /// The command line, for the report.
    pub command: String,
    pub subplex_bin: Option<String>,
    pub parameters: Parameters,
    pub measurements: Vec<Measurement>,
    pub wall_time_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Parameters {
    pub rate: u64,
    pub duration_s: u64,
    pub mode: TickMode,
    pub payload_bytes: usize,
    pub contexts: usize,
    pub storm_concurrency: usize,
    /// `None`: subplex's default.
    pub subplex_subscriber_queue: Option<usize>,
    pub open_file_limit: u64,
    /// Saturation: the rates per subscription to step through, ascending.
    pub saturation_rates: Vec<u64>,
    pub saturation_duration_s: u64,
    pub saturation_attempts: usize,
    /// Saturation: a step fails at or above this p99.
    pub saturation_p99_limit_ms: f64,
    /// Saturation: a step fails below this share of the offered events/s.
    pub saturation_pace_share: f64,
}

/// One scenario variant (scenario, N, transport) against one system.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub scenario: Scenario,
    /// Clients (one connection and one subscription each).
    pub n: usize,
    pub transport: Transport,
    pub system: SystemKind,
    pub outcome: Outcome,
}

impl Measurement {
    /// The scenario variant, e.g. "fan-out, 1,000 WebSocket subscribers".
    pub fn variant(&self) -> String {
        variant_name(self.scenario, self.n, self.transport)
    }

    pub fn figures(&self) -> Option<&Figures> {
        match &self.outcome {
            Outcome::Measured(figures) => Some(figures),
            _ => None,
        }
    }
}

pub fn variant_name(scenario: Scenario, n: usize, transport: Transport) -> String {
    format!("{scenario}, {} {transport} clients", thousands(n as u64))
}

/// `12345` as `12,345`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    Measured(Box<Figures>),
    /// Saturation: the rate steps measured, and their verdict.
    Saturation(Box<Saturation>),
    /// The system cannot do this scenario; why.
    NotApplicable(String),
    /// The measurement could not be completed; why.
    Failed(String),
}

/// What one measurement found. Event figures are `None` where no events were sent (storm,
/// idle); gateway figures are `None` for `direct`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// Upstream sockets the emitter had open once every client was attached.
    pub upstream_sockets: i64,
    /// Upstream subscriptions the emitter served once every client was attached.
    pub upstream_subscriptions: i64,
    pub events_expected: u64,
    pub events_delivered: u64,
    pub delivered_per_s: Option<f64>,
    pub latency_us: Option<Percentiles>,
    /// Gateway CPU time over the measured window (events, or the storm).
    pub gateway_cpu_s: Option<f64>,
    pub gateway_cpu_s_per_million_events: Option<f64>,
    /// Storm: connects+subscribes per second, and the time until every client received
    /// a priming event.
    pub connects_per_s: Option<f64>,
    pub attach_s: Option<f64>,
    /// Gateway memory with no clients (after start-up) and at the end, clients connected.
    pub memory_before: Option<Memory>,
    pub memory_after: Option<Memory>,
    /// (RSS at the end − RSS before) / N.
    pub rss_per_subscriber_kib: Option<f64>,
    /// Subscriptions each client held, when more than one (idle, WebSocket), and
    /// (RSS at the end − RSS before) / (N × that).
    pub subscriptions_per_client: Option<usize>,
    pub rss_per_subscription_kib: Option<f64>,
    pub emitter_cpu_s: f64,
    /// This process (the load generator), for context: it shares the machine.
    pub harness_cpu_s: f64,
    pub clients: Option<LoadSummary>,
    pub emitter: EmitterStats,
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

/// What the measurements need to start processes.
struct Harness {
    args: RunArgs,
    bench_exe: PathBuf,
    subplex_bin: Option<PathBuf>,
    temp: tempfile::TempDir,
    open_file_limit: u64,
    /// Peers that could not be installed, with the reason.
    unavailable: Vec<(SystemKind, String)>,
}

/// One scenario variant to measure.
#[derive(Debug, Clone, Copy)]
struct Variant {
    scenario: Scenario,
    n: usize,
    transport: Transport,
}

impl Variant {
    fn contexts(&self, args: &RunArgs) -> usize {
        match self.scenario {
            Scenario::Contexts => args.contexts.max(1),
            _ => 1,
        }
    }
}

fn variants(args: &RunArgs) -> Vec<Variant> {
    let ws = |scenario, n| Variant {
        scenario,
        n,
        transport: Transport::Ws,
    };
    let mut out = Vec::new();
    for &scenario in &args.scenarios {
        match scenario {
            Scenario::Fanout => {
                for &transport in &args.fanout_transports {
                    out.extend(args.fanout_sizes.iter().map(|&n| Variant {
                        scenario,
                        n,
                        transport,
                    }));
                }
            }
            Scenario::Distinct => out.push(ws(scenario, args.distinct_subscribers)),
            Scenario::Contexts => out.push(ws(scenario, args.contexts_subscribers)),
            Scenario::Storm => out.push(ws(scenario, args.storm_clients)),
            Scenario::Saturation => out.push(ws(scenario, args.saturation_clients)),
            Scenario::Idle => {
                for &transport in &args.idle_transports {
                    for &n in &args.idle_sizes {
                        out.push(Variant {
                            scenario,
                            n,
                            transport,
                        });
                    }
                }
            }
        }
    }
    out
}

/// Runs every selected scenario against every selected system.
pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let run_started = Instant::now();
    let date = utc_now();
    let open_file_limit =
        proc_stats::raise_open_file_limit().context("raising the open-file limit")?;
    anyhow::ensure!(
        args.rate > 0 && args.duration > 0,
        "--rate and --duration must be > 0"
    );
    anyhow::ensure!(
        !args.scenarios.contains(&Scenario::Saturation)
            || (args.saturation_duration > 0
                && !saturation::ascending(&args.saturation_rates).is_empty()),
        "saturation needs --saturation-duration > 0 and a rate > 0 in --saturation-rates"
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
    let mut unavailable = Vec::new();
    for &system in &args.systems {
        if !matches!(
            system,
            SystemKind::HiveRouter | SystemKind::HiveGateway | SystemKind::Grafbase
        ) {
            continue;
        }
        let installed = if args.no_install {
            peers::installed(system, &args.peers_dir)
        } else {
            std::fs::create_dir_all(&args.peers_dir)
                .with_context(|| format!("creating {}", args.peers_dir.display()))?;
            peers::install(system, &args.peers_dir)
        };
        if let Err(err) = installed {
            eprintln!("{system} is not available: {err:#}");
            unavailable.push((system, format!("{err:#}")));
        }
    }
    let parameters = Parameters {
        rate: args.rate,
        duration_s: args.duration,
        mode: args.mode,
        payload_bytes: args.payload_bytes,
        contexts: args.contexts,
        storm_concurrency: args.storm_concurrency,
        subplex_subscriber_queue: args.subplex_subscriber_queue,
        open_file_limit,
        saturation_rates: saturation::ascending(&args.saturation_rates),
        saturation_duration_s: args.saturation_duration,
        saturation_attempts: args.saturation_attempts.max(1),
        saturation_p99_limit_ms: saturation::P99_LIMIT_MS,
        saturation_pace_share: saturation::PACE_SHARE,
    };
    let harness = Harness {
        args: args.clone(),
        bench_exe,
        subplex_bin: subplex_bin.clone(),
        temp,
        open_file_limit,
        unavailable,
    };

    let mut measurements = Vec::new();
    for variant in variants(&args) {
        for &system in &args.systems {
            let outcome = match harness.not_applicable(system, variant) {
                Some(reason) => Outcome::NotApplicable(reason),
                None => {
                    eprintln!(
                        "{} / {system}",
                        variant_name(variant.scenario, variant.n, variant.transport)
                    );
                    if variant.scenario == Scenario::Saturation {
                        let steps = measure_saturation(&harness, system, variant, &parameters);
                        let steps = steps.await;
                        Outcome::Saturation(Box::new(steps))
                    } else {
                        let pace = Pace {
                            rate: args.rate,
                            duration_s: args.duration,
                        };
                        measure_outcome(&harness, system, variant, pace).await
                    }
                }
            };
            measurements.push(Measurement {
                scenario: variant.scenario,
                n: variant.n,
                transport: variant.transport,
                system,
                outcome,
            });
        }
    }
    if args.keep_temp {
        let kept = harness.temp.keep();
        eprintln!("configs and logs kept in {}", kept.display());
    }
    Ok(Report {
        machine,
        date,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        subplex_bin: subplex_bin.map(|p| p.display().to_string()),
        parameters,
        measurements,
        wall_time_s: run_started.elapsed().as_secs_f64(),
    })
}

/// [`measure`], with its result or error as an [`Outcome`] (and a summary on stderr).
async fn measure_outcome(
    harness: &Harness,
    system: SystemKind,
    variant: Variant,
    pace: Pace,
) -> Outcome {
    match measure(harness, system, variant, pace).await {
        Ok(figures) => {
            summarise(&figures);
            Outcome::Measured(Box::new(figures))
        }
        Err(err) => {
            eprintln!("  failed: {err:#}");
            Outcome::Failed(format!("{err:#}"))
        }
    }
}

/// Saturation: measures `system` at each of the rates (ascending) in turn, on fresh
/// processes each time, until a rate fails every attempt.
async fn measure_saturation(
    harness: &Harness,
    system: SystemKind,
    variant: Variant,
    parameters: &Parameters,
) -> Saturation {
    let rates = &parameters.saturation_rates;
    let attempts = parameters.saturation_attempts;
    let mut steps: Vec<Step> = Vec::new();
    while let Some(rate) = saturation::next_rate(rates, attempts, &steps) {
        eprintln!("  {rate} events/s per subscription");
        let pace = Pace {
            rate,
            duration_s: harness.args.saturation_duration,
        };
        let outcome = measure_outcome(harness, system, variant, pace).await;
        steps.push(Step {
            rate,
            offered_per_s: variant.n as f64 * rate as f64,
            outcome,
        });
    }
    let verdict = saturation::verdict(&steps);
    match (&verdict.saturation, &verdict.first_failure) {
        (Some(best), _) => eprintln!(
            "  saturation: {} events/s at {} events/s per subscription",
            best.delivered_per_s.map_or(0, |rate| rate.round() as u64),
            best.rate
        ),
        (None, Some(failed)) => {
            eprintln!(
                "  saturation: none, the first step ({} events/s per subscription) failed",
                failed.step.rate
            )
        }
        (None, None) => {}
    }
    Saturation { steps, verdict }
}

fn summarise(figures: &Figures) {
    let mut parts = Vec::new();
    if figures.events_expected > 0 {
        parts.push(format!(
            "{} of {} events delivered",
            figures.events_delivered, figures.events_expected
        ));
    }
    if let Some(cpu) = figures.gateway_cpu_s_per_million_events {
        parts.push(format!("{cpu:.1} CPU-s per 1M events"));
    }
    if let Some(rate) = figures.connects_per_s {
        parts.push(format!("{rate:.0} connects+subscribes/s"));
    }
    if let Some(kib) = figures.rss_per_subscriber_kib {
        parts.push(format!("{kib:.1} KiB per subscriber"));
    }
    if let (Some(per_client), Some(kib)) = (
        figures.subscriptions_per_client,
        figures.rss_per_subscription_kib,
    ) {
        parts.push(format!(
            "{per_client} subscriptions per client, {kib:.2} KiB per subscription"
        ));
    }
    parts.push(format!("{} upstream sockets", figures.upstream_sockets));
    parts.push(if figures.problems.is_empty() {
        "all checks passed".to_owned()
    } else {
        figures.problems.join("; ")
    });
    eprintln!("  {}", parts.join(", "));
}

/// The current time, UTC, as `YYYY-MM-DD HH:MM UTC`: the `date` command, so no crate is
/// needed for a timestamp.
fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
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
    /// Why `system` cannot do `variant`, if it cannot.
    fn not_applicable(&self, system: SystemKind, variant: Variant) -> Option<String> {
        if let Some((_, reason)) = self.unavailable.iter().find(|(kind, _)| *kind == system) {
            return Some(format!("not installed: {reason}"));
        }
        let n = variant.n as u64;
        let ws_only = match system {
            SystemKind::Floor => Some("the floor speaks graphql-transport-ws only"),
            SystemKind::Baseline | SystemKind::BaselineTuned => {
                Some("the forwarder copies WebSocket frames only")
            }
            SystemKind::Direct => Some("the emitter speaks graphql-transport-ws only"),
            _ => None,
        };
        match (system, variant.scenario) {
            (_, _) if variant.transport == Transport::Sse && ws_only.is_some() => {
                return ws_only.map(str::to_owned)
            }
            (SystemKind::Floor, Scenario::Distinct | Scenario::Contexts) => {
                return Some(
                    "one upstream subscription for everyone: it ignores variables and credentials"
                        .into(),
                )
            }
            (SystemKind::Direct, scenario)
                if !matches!(scenario, Scenario::Fanout | Scenario::Saturation) =>
            {
                return Some("no gateway to measure".into())
            }
            _ => {}
        }
        // Open files: the load generator holds N sockets, the gateway N client sockets
        // plus its upstream sockets (N for the per-client forwarders, and for Grafbase,
        // which opens one upstream WebSocket per subscription), and the emitter one per
        // upstream socket.
        let gateway = match system {
            SystemKind::Baseline | SystemKind::BaselineTuned | SystemKind::Grafbase => 2 * n,
            _ => n,
        };
        let needed = gateway.max(n) + FD_MARGIN;
        if needed > self.open_file_limit {
            return Some(format!(
                "needs about {} open files in one process (two sockets per client), over the \
                 limit of {}",
                thousands(needed),
                thousands(self.open_file_limit)
            ));
        }
        None
    }

    async fn start_system(
        &self,
        kind: SystemKind,
        emitter: &Emitter,
        run_name: &str,
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
                    run_name,
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
            SystemKind::Floor => System::floor(&self.bench_exe, emitter).await,
            SystemKind::HiveRouter | SystemKind::HiveGateway | SystemKind::Grafbase => {
                peers::start(
                    kind,
                    &self.args.peers_dir,
                    &self.bench_exe,
                    self.temp.path(),
                    run_name,
                    emitter,
                )
                .await
            }
        }
    }
}

fn warnings(system: &System) -> (usize, Vec<String>) {
    system
        .log
        .as_deref()
        .map(systems::log_warnings)
        .unwrap_or_default()
}

/// Sends priming events until every client received one. Returns how long it took, or
/// the problem.
async fn prime(emitter: &mut Emitter, load: &Load, clients: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        emitter.prime().await?;
        let round = Instant::now();
        while round.elapsed() < PRIME_ROUND {
            if load.primed() >= clients {
                return Ok(started.elapsed());
            }
            time::sleep(POLL).await;
        }
        if started.elapsed() >= PRIME_TIMEOUT {
            bail!(
                "only {} of {clients} clients received a priming event within {} s",
                load.primed(),
                PRIME_TIMEOUT.as_secs()
            );
        }
    }
}

/// Subscriptions each client of `variant` holds (see `--idle-subscriptions-per-client`).
fn subscriptions_per_client(args: &RunArgs, variant: Variant) -> usize {
    match (variant.scenario, variant.transport) {
        (Scenario::Idle, Transport::Ws) => args.idle_subscriptions_per_client.max(1),
        _ => 1,
    }
}

/// The events of a measurement: per subscription, `rate` per second for `duration_s`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    rate: u64,
    duration_s: u64,
}

/// Measures `kind` in `variant` on fresh processes; events (in the scenarios that have
/// them) come at `pace`.
async fn measure(
    harness: &Harness,
    kind: SystemKind,
    variant: Variant,
    pace: Pace,
) -> anyhow::Result<Figures> {
    let args = &harness.args;
    let n = variant.n;
    let contexts = variant.contexts(args);
    let with_events = matches!(
        variant.scenario,
        Scenario::Fanout | Scenario::Distinct | Scenario::Contexts | Scenario::Saturation
    );
    let (rate, payload) = if with_events {
        (pace.rate, args.payload_bytes)
    } else {
        (1, 0)
    };
    let mut emitter = Emitter::spawn(&harness.bench_exe, rate, args.mode, payload).await?;
    // Saturation runs one measurement per rate: keep each one's configs and logs.
    let run_name = format!(
        "{kind}-{:?}-{n}-{:?}-{rate}",
        variant.scenario, variant.transport
    )
    .to_lowercase();
    let system = harness.start_system(kind, &emitter, &run_name, n).await?;
    let gateway_pid = system.pid;
    if gateway_pid.is_some() {
        time::sleep(STARTUP_SETTLE).await;
    }
    let memory_before = gateway_pid.map(proc_stats::memory).transpose()?;
    let url = match variant.transport {
        Transport::Ws => system.url(),
        Transport::Sse => system.http_url(),
    };
    let concurrency = match variant.scenario {
        Scenario::Storm => args.storm_concurrency,
        _ => args.connect_concurrency,
    };
    let spec = LoadSpec {
        url,
        clients: n,
        concurrency,
        transport: variant.transport,
        contexts,
        distinct: variant.scenario == Scenario::Distinct,
        subscriptions_per_client: subscriptions_per_client(args, variant),
    };
    let mut figures = Figures {
        memory_before,
        ..Figures::default()
    };

    let storm_cpu = optional_cpu_seconds(gateway_pid)?;
    let storm_start_ns = tick::now_ns();
    let storm_started = Instant::now();
    let load = Load::start(spec)?;
    load.wait_subscribed(SUBSCRIBE_TIMEOUT).await?;
    if variant.scenario == Scenario::Storm {
        let subscribed_s = load.last_subscribed_ns().saturating_sub(storm_start_ns) as f64 / 1e9;
        figures.connects_per_s = (subscribed_s > 0.0).then(|| n as f64 / subscribed_s);
    }
    match prime(&mut emitter, &load, n).await {
        Ok(_) => {}
        Err(err) => figures.problems.push(format!("{err:#}")),
    }
    if variant.scenario == Scenario::Storm {
        figures.attach_s = Some(storm_started.elapsed().as_secs_f64());
        figures.gateway_cpu_s = optional_cpu_seconds(gateway_pid)?
            .zip(storm_cpu)
            .map(|(after, before)| after - before);
    }
    let attached = emitter.stats().await?;
    figures.upstream_sockets = attached.connections_open;
    figures.upstream_subscriptions = attached.subscriptions_active;

    if with_events {
        measure_events(&mut emitter, &load, gateway_pid, n, pace, &mut figures).await?;
    } else if variant.scenario == Scenario::Idle {
        time::sleep(Duration::from_millis(args.settle_ms)).await;
    }
    figures.memory_after = gateway_pid.map(proc_stats::memory).transpose()?;
    figures.emitter = emitter.stats().await?;
    let clients = load.finish().await;
    let (count, samples) = warnings(&system);
    figures.gateway_warnings = count;
    figures.gateway_warning_samples = samples;
    system.stop().await;
    emitter.stop().await;

    if let (Some(before), Some(after)) = (figures.memory_before, figures.memory_after) {
        let delta = after.rss_kib as f64 - before.rss_kib as f64;
        figures.rss_per_subscriber_kib = Some(delta / n as f64);
        let per_client = subscriptions_per_client(args, variant);
        if per_client > 1 {
            figures.subscriptions_per_client = Some(per_client);
            figures.rss_per_subscription_kib = Some(delta / (n * per_client) as f64);
        }
    }
    check_clients(&clients, &mut figures.problems);
    if !with_events && clients.events > 0 {
        figures.problems.push(format!(
            "{} events arrived where none were sent",
            clients.events
        ));
    }
    if kind == SystemKind::Subplex && figures.upstream_sockets != contexts as i64 {
        figures.problems.push(format!(
            "{} upstream sockets for {contexts} security contexts",
            figures.upstream_sockets
        ));
    }
    if with_events {
        let problems = check_events(&figures, &clients);
        figures.problems.extend(problems);
        figures.latency_us = clients.latency.as_ref().and_then(percentiles);
    }
    figures.clients = Some(clients);
    Ok(figures)
}

/// Starts the ticker and waits until delivery is complete or has stopped; fills in the
/// event figures.
async fn measure_events(
    emitter: &mut Emitter,
    load: &Load,
    gateway_pid: Option<u32>,
    n: usize,
    pace: Pace,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let events_per_subscription = pace.rate * pace.duration_s;
    let events_before = load.events();
    let gateway_cpu = optional_cpu_seconds(gateway_pid)?;
    let emitter_cpu = proc_stats::cpu_seconds(emitter.pid)?;
    let harness_cpu = proc_stats::cpu_seconds(std::process::id())?;
    let start_ns = tick::now_ns();
    let started = Instant::now();
    emitter.start(events_per_subscription).await?;

    // Wait for the ticker to finish and delivery to settle: everything arrived, or nothing
    // new arrived for DRAIN_QUIET (events a gateway dropped never will).
    let events_expected = n as u64 * events_per_subscription;
    let ticks_end = started + Duration::from_secs(pace.duration_s);
    let mut last_progress = (load.events(), Instant::now());
    loop {
        time::sleep(POLL).await;
        let stats = emitter.stats().await?;
        let delivered = load.events() - events_before;
        if delivered != last_progress.0 {
            last_progress = (delivered, Instant::now());
        }
        if !stats.ticking
            && (delivered >= events_expected || last_progress.1.elapsed() >= DRAIN_QUIET)
        {
            break;
        }
        if Instant::now() >= ticks_end + DRAIN_TIMEOUT {
            figures.problems.push(format!(
                "delivery still going {} s after the last tick; stopped waiting",
                DRAIN_TIMEOUT.as_secs()
            ));
            break;
        }
    }
    let gateway_cpu = optional_cpu_seconds(gateway_pid)?
        .zip(gateway_cpu)
        .map(|(after, before)| after - before);
    figures.emitter_cpu_s = proc_stats::cpu_seconds(emitter.pid)? - emitter_cpu;
    figures.harness_cpu_s = proc_stats::cpu_seconds(std::process::id())? - harness_cpu;
    let elapsed_s = load.last_event_ns().saturating_sub(start_ns) as f64 / 1e9;
    let delivered = load.events() - events_before;
    figures.events_expected = events_expected;
    figures.events_delivered = delivered;
    figures.delivered_per_s = (elapsed_s > 0.0).then(|| delivered as f64 / elapsed_s);
    figures.gateway_cpu_s = gateway_cpu;
    figures.gateway_cpu_s_per_million_events = gateway_cpu
        .filter(|_| delivered > 0)
        .map(|cpu| cpu * 1e6 / delivered as f64);
    Ok(())
}

/// The event checks: every client got every event, and the upstream sent what its
/// subscriptions should have had.
fn check_events(figures: &Figures, clients: &LoadSummary) -> Vec<String> {
    let mut problems = Vec::new();
    let per_client = figures.events_expected / clients.clients.max(1) as u64;
    if figures.events_delivered < figures.events_expected {
        problems.push(format!(
            "{} of {} events never reached a client (fewest per client: {} of {per_client})",
            figures.events_expected - figures.events_delivered,
            figures.events_expected,
            clients.min_events_per_client
        ));
    }
    let stats = &figures.emitter;
    let upstream_expected = stats.subscriptions_active.max(0) as u64 * per_client;
    if stats.events_sent < upstream_expected {
        problems.push(format!(
            "the upstream sent {} of {upstream_expected} events to its {} subscriptions ({} \
             connection-ticks skipped because a connection was not read fast enough)",
            stats.events_sent, stats.subscriptions_active, stats.connection_ticks_skipped
        ));
    }
    problems
}

fn optional_cpu_seconds(pid: Option<u32>) -> anyhow::Result<Option<f64>> {
    Ok(pid.map(proc_stats::cpu_seconds).transpose()?)
}

/// The per-client checks shared by every scenario.
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
pub fn percentiles(histogram: &hdrhistogram::Histogram<u64>) -> Option<Percentiles> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(18000), "18,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
