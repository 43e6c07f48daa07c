//! subplex: an edge gateway that unifies GraphQL subscription protocols.
//!
//! Clients speak graphql-transport-ws, legacy graphql-ws or SSE on one path per upstream;
//! upstreams are reached over WebSocket in their own dialect, with one connection per
//! security context shared by every subscription in it.
//!
//! The library is the whole gateway: [`Config::load`] reads `gateway.toml`,
//! [`Gateway::bind`] binds it and [`Gateway::run`] serves until cancelled;
//! [`Gateway::reloader`] reloads its config file while it serves. `main.rs` is a
//! thin shell around it, and tests run it in-process.

mod admin;
pub mod cli;
pub mod config;
mod cors;
mod downstream;
mod metrics;
pub mod probe_command;
pub mod reload;
mod responses;
mod routes;
mod server;
pub(crate) mod state;
pub mod telemetry;
pub mod tls_reloader;
mod trace;
mod write_deadline;

pub use config::Config;
pub use server::Gateway;
pub use state::DownstreamStats;
