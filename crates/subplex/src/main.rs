//! The `subplex` binary: parses the command line, starts logging, loads the config and
//! runs the gateway library until SIGINT/SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use subplex::cli::{Cli, Command};
use subplex::config::{Config, ConfigError, RawRoute};
use subplex::probe_command::{self, ProbeCommandError};
use subplex::{reload, telemetry, Gateway};
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
    let result = runtime.block_on(run(cli));
    telemetry::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if err.downcast_ref::<ReloadUsage>().is_some() {
                eprintln!("subplex reload: {err}");
                return ExitCode::from(EXIT_CONFIG);
            }
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

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    match cli.command.take().unwrap_or(Command::Run) {
        Command::Run => {
            let config = Config::load(&cli.config)?;
            serve(config, &cli).await
        }
        Command::Reload => {
            let Some(pid_file) = &cli.pid_file else {
                anyhow::bail!(ReloadUsage);
            };
            let pid = reload::signal_reload(pid_file)?;
            println!("sent SIGHUP to subplex (pid {pid}); its log tells whether the configuration was reloaded");
            Ok(())
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
        Command::Healthcheck { address } => {
            let address = match address {
                Some(address) => address,
                None => loopback(Config::load(&cli.config)?.server.listen),
            };
            healthcheck(address).await?;
            println!("{address}: healthy");
            Ok(())
        }
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

/// `subplex reload` without `--pid-file`.
#[derive(Debug, thiserror::Error)]
#[error(
    "reload needs --pid-file FILE: the file the gateway was started with (subplex --pid-file FILE)"
)]
struct ReloadUsage;

async fn serve(config: Config, cli: &Cli) -> anyhow::Result<()> {
    let gateway = Gateway::bind(config)
        .await
        .context("cannot start the gateway")?;
    let _pid_file = match &cli.pid_file {
        Some(path) => Some(
            reload::PidFile::create(path.clone())
                .with_context(|| format!("cannot write the pid file {}", path.display()))?,
        ),
        None => None,
    };
    println!("subplex listening on {}", gateway.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    tokio::spawn(reload::reload_on_sighup(
        gateway.reloader(&cli.config),
        shutdown.clone(),
    ));
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
        hooks: None,
    });
    let config = subplex::config::validate(raw, "(demo)")?;
    let gateway = Gateway::bind(config)
        .await
        .context("cannot start the gateway")?;
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

/// `address` with an unspecified IP (a listener on every interface) replaced by loopback,
/// which reaches the same listener from inside its host or container.
fn loopback(mut address: std::net::SocketAddr) -> std::net::SocketAddr {
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    address
}

/// GET /healthz on `address`, within 3 seconds; an error unless the answer is 200.
async fn healthcheck(address: std::net::SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream
            .write_all(
                format!("GET /healthz HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(3), ask)
        .await
        .with_context(|| format!("{address}: no answer from /healthz within 3 s"))?
        .with_context(|| format!("{address}: /healthz could not be asked"))?;
    let status_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    if !status_line.starts_with("HTTP/1.1 200 ") {
        anyhow::bail!("{address}: /healthz answered {status_line:?}");
    }
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
