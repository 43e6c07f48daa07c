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
    },
}
