//! `subplex-bench`: subplex, a floor forwarder, a naive forwarder and peer gateways (Hive
//! Router, Hive Gateway, Grafbase), side by side, in front of the same upstream, in one run.
//!
//! ```text
//! cargo build --release -p subplex
//! cargo run --release -p subplex-bench -- [--subscribers 1000 --rate 10 --duration 10 …]
//! ```
//!
//! The default command runs the scenarios (see [`run`]). It starts its helpers by
//! re-executing itself: `subplex-bench emitter` (the upstream, see [`emitter`]),
//! `subplex-bench forwarder` (the baseline, see [`forwarder`]), `subplex-bench floor` (one
//! upstream subscription re-framed per client, see [`floor`]) and `subplex-bench
//! supervise` (which keeps subplex from outliving the run, see [`supervise`]), so that
//! every party is a process of its own whose CPU time and memory `/proc` reports
//! separately. The load
//! generator ([`loadgen`]) runs in this process. Everything listens on 127.0.0.1 only.

mod chart;
mod emitter;
mod floor;
mod forwarder;
mod helper;
mod loadgen;
mod peers;
mod proc_stats;
mod report;
mod run;
mod saturation;
mod supervise;
mod systems;
mod tick;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// WebSocket settings of the harness's own sockets (load generator and emitter).
///
/// tungstenite 0.28 zero-fills the free part of its read buffer before every read
/// attempt, including attempts that find no data, so with the default 128 KiB buffer
/// each poll of a socket costs a 128 KiB memset: that was 44% of the load generator's CPU
/// in a profile. The harness reads small frames, so a small buffer is free.
pub(crate) fn harness_socket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Benchmark subplex against forwarders and peer gateways.
#[derive(Debug, Parser)]
#[command(name = "subplex-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the benchmark (the default).
    Run(Box<run::RunArgs>),
    /// The upstream: a graphql-transport-ws server emitting timestamped ticks (driven by
    /// the benchmark over stdin/stdout).
    Emitter(emitter::EmitterArgs),
    /// The baseline: a WebSocket forwarder with one upstream connection per client.
    Forwarder(forwarder::ForwarderArgs),
    /// The floor: one upstream subscription, each event re-framed for every client.
    Floor(floor::FloorArgs),
    /// Runs a program (subplex) and kills it when stdin closes or time runs out.
    Supervise(supervise::SuperviseArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("subplex-bench: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => benchmark(cli.run).await,
            Some(Command::Run(args)) => benchmark(*args).await,
            Some(Command::Emitter(args)) => emitter::main(args).await,
            Some(Command::Supervise(args)) => supervise::main(args).await,
            Some(Command::Floor(args)) => {
                let _ = proc_stats::raise_open_file_limit();
                floor::main(args).await
            }
            Some(Command::Forwarder(args)) => {
                // The forwarder holds two sockets per client.
                let _ = proc_stats::raise_open_file_limit();
                forwarder::main(args).await
            }
        }
    });
    // Helpers' connection tasks may still be running: do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("subplex-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn benchmark(args: run::RunArgs) -> anyhow::Result<()> {
    let json = args.json;
    let markdown_path = args.write_markdown.clone();
    let chart_path = args.chart.clone();
    let report = run::run(args).await?;
    if let Some(path) = &chart_path {
        chart::write(&report, path)?;
        eprintln!("chart written to {}", path.display());
    }
    if let Some(path) = &markdown_path {
        let chart_name = chart_path
            .as_deref()
            .and_then(|chart| chart.file_name())
            .map(|name| name.to_string_lossy().into_owned());
        report::write_markdown(&report, path, chart_name.as_deref())?;
        eprintln!("results written into {}", path.display());
    }
    let table = report::table(&report);
    if json {
        eprint!("\n{table}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("\n{table}");
    }
    Ok(())
}
