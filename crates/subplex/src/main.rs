//! The `subplex` binary: parses the command line, starts logging, loads the config and
//! runs the gateway library until SIGINT/SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use subplex::cli::{Cli, Command};
use subplex::config::{Config, ConfigError, RawRoute};
use subplex::probe_command::{self, ProbeCommandError};
use subplex::{telemetry, Gateway};
use subplex_demo::DemoUpstream;
use tokio_util::sync::CancellationToken;

/// EX_USAGE from sysexits.h: the configuration (or a command's arguments) is wrong.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("subplex: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(config_error) = err.downcast_ref::<ConfigError>() {
                eprintln!("subplex: {config_error}");
                return ExitCode::from(EXIT_CONFIG);
            }
            match err.downcast_ref::<ProbeCommandError>() {
                Some(ProbeCommandError::Usage(reason)) => {
                    eprintln!("subplex probe: {reason}");
                    return ExitCode::from(EXIT_CONFIG);
                }
                Some(ProbeCommandError::NothingWorks(report)) => {
                    eprintln!("{report}");
                    return ExitCode::FAILURE;
                }
                None => {}
            }
            eprintln!("subplex: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let config = Config::load(&cli.config)?;
            serve(config).await
        }
        Command::Check => {
            let config = Config::load(&cli.config)?;
            println!(
                "{}: ok ({} upstreams, {} routes)",
                cli.config.display(),
                config.upstreams.len(),
                config.routes.len()
            );
            Ok(())
        }
        Command::Demo {
            listen,
            upstream_listen,
            upstream_only,
            admin_listen,
        } => demo(listen, upstream_listen, upstream_only, admin_listen).await,
        Command::Schema => {
            let _ = write!(std::io::stdout(), "{}", subplex::config::json_schema());
            Ok(())
        }
        Command::Probe(args) => {
            let report = probe_command::run(&args).await?;
            // Not println!: piped into `head`, a closed stdout is not a reason to panic.
            let _ = writeln!(std::io::stdout(), "{report}");
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.server.listen;
    let gateway = Gateway::bind(config)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("subplex listening on {}", gateway.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    gateway.run(shutdown).await;
    Ok(())
}

async fn demo(
    listen: std::net::SocketAddr,
    upstream_listen: Option<std::net::SocketAddr>,
    upstream_only: bool,
    admin_listen: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    // Alone, the upstream takes the port gateway.toml expects; behind the embedded gateway
    // any free port will do, so a busy 4001 cannot stop the demo.
    let default_port = if upstream_only { 4001 } else { 0 };
    let upstream_listen = upstream_listen.unwrap_or_else(|| ([127, 0, 0, 1], default_port).into());

    let demo = DemoUpstream::bind(upstream_listen)
        .await
        .with_context(|| format!("cannot start the demo upstream on {upstream_listen}"))?;
    let upstream = demo.local_addr();
    if upstream_only {
        println!("subplex demo upstream (graphql-transport-ws) on ws://{upstream}/graphql");
        demo.run(shutdown).await;
        return Ok(());
    }
    tokio::spawn(demo.run(shutdown.clone()));

    let text = format!(
        "[server]\nlisten = \"{listen}\"\n\n[upstreams.demo]\nurl = \"http://{upstream}/graphql\"\nprotocol = \"graphql-transport-ws\"\nidle_timeout_ms = 5000\n\n[admin]\nenabled = true\nlisten = \"{admin_listen}\"\n"
    );
    let mut raw: subplex::config::RawConfig =
        toml::from_str(&text).context("demo configuration")?;
    raw.routes.push(RawRoute {
        path: "/graphql".into(),
        upstream: "demo".into(),
    });
    let config = subplex::config::validate(raw, "(demo)")?;
    let gateway = Gateway::bind(config)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = gateway.local_addr();
    let admin = gateway
        .admin_addr()
        .map(|admin| admin.to_string())
        .unwrap_or_default();
    println!(
        r#"subplex demo: gateway on http://{addr}/graphql, demo upstream (graphql-transport-ws) on ws://{upstream}/graphql

Status page: http://{admin}/status (metrics: http://{admin}/metrics)

Server-Sent Events (Ctrl-C to stop):
  curl -N -H 'accept: text/event-stream' 'http://{addr}/graphql?query=subscription%7Btick(count:5,intervalMs:1000)%7D'

WebSocket, graphql-transport-ws (npx fetches wscat):
  npx wscat -s graphql-transport-ws -c ws://{addr}/graphql
  then send, one per line:
  {{"type":"connection_init"}}
  {{"type":"subscribe","id":"1","payload":{{"query":"subscription {{ tick(count: 5, intervalMs: 1000) }}"}}}}

A query over HTTP:
  curl -H 'content-type: application/json' -d '{{"query":"{{ hello }}"}}' http://{addr}/graphql
"#
    );
    gateway.run(shutdown).await;
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
