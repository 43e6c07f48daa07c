//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// subplex: one endpoint for every GraphQL subscription protocol.
#[derive(Debug, Parser)]
#[command(name = "subplex", version, about)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = "gateway.toml")]
    pub config: PathBuf,
    /// The gateway writes its process id here while it runs; `subplex reload` reads it.
    #[arg(long, global = true, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Log format (filter with SUBPLEX_LOG, e.g. SUBPLEX_LOG=debug).
    #[arg(long, global = true, value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway with the configuration file (the default).
    Run,
    /// Check the configuration file and exit.
    Check,
    /// Run an embedded demo upstream and the gateway in front of it; needs nothing else.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:4000")]
        listen: SocketAddr,
        /// Where the demo upstream listens. Default: any free port on 127.0.0.1, or
        /// 127.0.0.1:4001 (where the example gateway.toml points) with --upstream-only.
        #[arg(long)]
        upstream_listen: Option<SocketAddr>,
        /// Run only the demo upstream, for a gateway started with --config gateway.toml.
        #[arg(long)]
        upstream_only: bool,
        /// Where the admin listener (status page, metrics) listens.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
    /// Find out which protocol a GraphQL server speaks, and show the evidence.
    Probe(ProbeArgs),
    /// Make the gateway whose process id is in --pid-file reload its configuration file
    /// (sends it SIGHUP). The outcome is in that gateway's log.
    Reload,
    /// Print the JSON Schema of the configuration file (gateway.schema.json).
    Schema,
    /// Ask a running gateway's /healthz; exit 0 if it answers 200 (a container
    /// HEALTHCHECK: images without curl).
    Healthcheck {
        /// The gateway's address. Default: the configuration's server.listen, with an
        /// unspecified IP (0.0.0.0, [::]) replaced by loopback.
        #[arg(long)]
        address: Option<SocketAddr>,
    },
}

/// `subplex probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The GraphQL endpoint: http(s):// (the ws(s):// URL is derived from it) or ws(s)://
    /// (the http(s):// URL for the SSE step is derived from it).
    pub url: String,
    /// A header to send with every probe request, as 'name: value'. Repeatable. Values
    /// are never printed.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The connection_init payload, a JSON object (default {}). Never printed.
    #[arg(long, value_name = "JSON")]
    pub init_payload: Option<String>,
    /// The WebSocket URL, when it is not the derived one.
    #[arg(long, value_name = "URL")]
    pub ws_url: Option<String>,
    /// Method of the GraphQL over SSE step: POST or GET.
    #[arg(long, default_value = "POST", value_name = "METHOD")]
    pub sse_method: String,
    /// Bound of each step (connect, acknowledgement, response), in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,
    /// PEM file of extra CA certificates to trust for https/wss, besides Mozilla's roots.
    #[arg(long, value_name = "FILE")]
    pub tls_ca_file: Option<std::path::PathBuf>,
}
