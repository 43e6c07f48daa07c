//! Logging setup: `tracing` with an env filter, plain or JSON lines, coloured only when
//! stderr is a terminal.
//!
//! Header values, init payloads and variables are never logged: security contexts appear
//! as an 8-hex-digit prefix of their hash, payload types print only their length.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Installs the global subscriber. The filter comes from `SUBPLEX_LOG` (then `RUST_LOG`),
/// default `info`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SUBPLEX_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file, a pipe or journald would
        // otherwise store the escape sequences.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
