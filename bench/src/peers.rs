//! The peer gateways: installed by the harness itself into a cache directory
//! (`bench/.peers/`, ignored by git) from crates.io and npm only, and started in front of
//! the emitter with the configuration committed in `bench/peers/`.
//!
//! Installation is idempotent: a peer whose executable is present is not installed again.
//! A peer that cannot be installed is reported as not available, with the reason, and the
//! run goes on without it.
//!
//! - Hive Router: `cargo install hive-router --version 0.2.5 --locked --features graphiql`.
//!   0.3 needs a newer rustc than 1.95; without `graphiql` its build script runs npm for
//!   an IDE package the registry does not have. The build takes about 18 minutes on 2
//!   cores, so it runs at `nice -n 19` with one job.
//! - Hive Gateway: `npm ci` of `bench/peers/hive-gateway/package.json` (exact versions,
//!   with its lock file).
//! - Grafbase: `npm ci` of `bench/peers/grafbase/package.json`: the Grafbase CLI's binary
//!   for x86_64 Linux (`@grafbase/cli-x86_64-unknown-linux-musl`, which the `grafbase`
//!   package would pick for this platform; depending on it directly gets the newest
//!   release, 0.103.0, while `grafbase` itself stops at 0.80.4). Its `dev` command serves
//!   Grafbase's gateway.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::systems::{Emitter, System, SystemKind};

/// The Hive Router release measured: the newest that builds with rustc 1.95.
pub const HIVE_ROUTER_VERSION: &str = "0.2.5";

/// Where the committed peer configuration lives (`bench/peers/`).
fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The default cache directory for installed peers (`bench/.peers/`).
pub fn default_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers")
}

fn hive_router_bin(cache: &Path) -> PathBuf {
    cache.join("hive-router").join("bin").join("hive_router")
}

/// Where the npm project `bench/peers/<project>/` is installed.
fn npm_dir(cache: &Path, project: &str) -> PathBuf {
    cache.join(project)
}

/// `file` (a path under `node_modules`) of the installed npm project `project`.
fn npm_file(cache: &Path, project: &str, file: &str) -> PathBuf {
    npm_dir(cache, project).join("node_modules").join(file)
}

fn hive_gateway_dir(cache: &Path) -> PathBuf {
    npm_dir(cache, "hive-gateway")
}

fn hive_gateway_bin(cache: &Path) -> PathBuf {
    npm_file(cache, "hive-gateway", "@graphql-hive/gateway/dist/bin.js")
}

/// The Grafbase CLI's executable for x86_64 Linux.
fn grafbase_bin(cache: &Path) -> PathBuf {
    npm_file(
        cache,
        "grafbase",
        "@grafbase/cli-x86_64-unknown-linux-musl/grafbase",
    )
}

/// `Ok` when `kind` is installed in `cache`.
pub fn installed(kind: SystemKind, cache: &Path) -> anyhow::Result<()> {
    let bin = match kind {
        SystemKind::HiveRouter => hive_router_bin(cache),
        SystemKind::HiveGateway => hive_gateway_bin(cache),
        SystemKind::Grafbase => grafbase_bin(cache),
        _ => return Ok(()),
    };
    if !bin.is_file() {
        bail!("{} is missing (run without --no-install)", bin.display());
    }
    Ok(())
}

/// Installs `kind` into `cache` unless it is there already. `Ok` when it is usable.
pub fn install(kind: SystemKind, cache: &Path) -> anyhow::Result<()> {
    match kind {
        SystemKind::HiveRouter => install_hive_router(cache),
        SystemKind::HiveGateway => npm_ci(
            "Hive Gateway",
            cache,
            "hive-gateway",
            &hive_gateway_bin(cache),
        ),
        SystemKind::Grafbase => npm_ci("Grafbase", cache, "grafbase", &grafbase_bin(cache)),
        _ => Ok(()),
    }
}

fn install_hive_router(cache: &Path) -> anyhow::Result<()> {
    if hive_router_bin(cache).is_file() {
        return Ok(());
    }
    let root = cache.join("hive-router");
    eprintln!(
        "installing Hive Router {HIVE_ROUTER_VERSION} into {} (cargo install, about 20 min on \
         2 cores; once)",
        root.display()
    );
    let status = Command::new("nice")
        .args(["-n", "19", "cargo", "install", "hive-router", "--locked"])
        .args(["--version", HIVE_ROUTER_VERSION])
        .args(["--features", "graphiql", "-j", "1", "--root"])
        .arg(&root)
        .status()
        .context("running cargo install")?;
    if !status.success() || !hive_router_bin(cache).is_file() {
        bail!("cargo install hive-router {HIVE_ROUTER_VERSION} failed ({status})");
    }
    Ok(())
}

/// Installs the npm project `bench/peers/<name>/` (its package.json and lock file) into
/// `cache` with `npm ci`, unless `bin` is there already.
fn npm_ci(what: &str, cache: &Path, name: &str, bin: &Path) -> anyhow::Result<()> {
    if bin.is_file() {
        return Ok(());
    }
    let dir = &npm_dir(cache, name);
    eprintln!("installing {what} into {} (npm ci; once)", dir.display());
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in ["package.json", "package-lock.json"] {
        let from = config_dir().join(name).join(file);
        std::fs::copy(&from, dir.join(file))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .context("running npm ci")?;
    if !status.success() {
        bail!("npm ci of bench/peers/{name} failed ({status})");
    }
    if !bin.is_file() {
        bail!(
            "npm ci of bench/peers/{name} did not install {} (a package for another \
             platform?)",
            bin.display()
        );
    }
    Ok(())
}

/// A port nobody listens on now. The peers take a port number, not a listener; the race
/// with another process taking it in between is harmless on a benchmark machine.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// Writes the committed configuration `bench/peers/<template>` to `to`, each placeholder
/// replaced by its value, and returns `to`.
fn write_config(template: &str, values: &[(&str, String)], to: PathBuf) -> anyhow::Result<PathBuf> {
    let mut config = std::fs::read_to_string(config_dir().join(template))
        .with_context(|| format!("reading bench/peers/{template}"))?;
    for (placeholder, value) in values {
        config = config.replace(placeholder, value);
    }
    std::fs::write(&to, config).with_context(|| format!("writing {}", to.display()))?;
    Ok(to)
}

/// Starts an installed peer in front of `emitter`, with its files in `temp`.
pub async fn start(
    kind: SystemKind,
    cache: &Path,
    bench_exe: &Path,
    temp: &Path,
    run_name: &str,
    emitter: &Emitter,
) -> anyhow::Result<System> {
    let addr = free_port()?;
    let log = temp.join(format!("{run_name}.log"));
    match kind {
        SystemKind::HiveRouter => {
            let dir = config_dir().join("hive-router");
            let supergraph = dir.join("supergraph.graphql").display().to_string();
            let config_path = write_config(
                "hive-router/router.config.yaml",
                &[
                    ("@SUPERGRAPH@", supergraph),
                    ("@UPSTREAM_HTTP@", emitter.http_url()),
                ],
                temp.join(format!("{run_name}.router.yaml")),
            )?;
            let mut command = Command::new(hive_router_bin(cache));
            command
                .env("ROUTER_CONFIG_FILE_PATH", &config_path)
                .env("HOST", addr.ip().to_string())
                .env("PORT", addr.port().to_string())
                .current_dir(temp);
            System::external(bench_exe, command, addr, "/readiness", log).await
        }
        SystemKind::HiveGateway => {
            // The config imports `graphql`, which resolves from the config file's directory:
            // it has to sit next to the installed node_modules.
            let dir = hive_gateway_dir(cache);
            let config_path = dir.join("gateway.config.mjs");
            std::fs::copy(
                config_dir().join("hive-gateway").join("gateway.config.mjs"),
                &config_path,
            )
            .context("copying bench/peers/hive-gateway/gateway.config.mjs")?;
            let mut command = Command::new("node");
            command
                .arg(hive_gateway_bin(cache))
                .arg("proxy")
                .arg("-c")
                .arg(&config_path)
                .args(["--host", &addr.ip().to_string()])
                .args(["--port", &addr.port().to_string()])
                .env("NODE_ENV", "production")
                .env("BENCH_UPSTREAM_HTTP", emitter.http_url())
                .env("BENCH_UPSTREAM_WS", emitter.ws_url())
                .env("BENCH_SCHEMA", config_dir().join("emitter.graphql"))
                .env("NO_COLOR", "1")
                .current_dir(&dir);
            // `/readiness` asks the upstream a query over HTTP, which the emitter does not
            // serve; `/healthcheck` answers once the gateway is up.
            System::external(bench_exe, command, addr, "/healthcheck", log).await
        }
        SystemKind::Grafbase => {
            let schema = config_dir().join("emitter.graphql").display().to_string();
            let config_path = write_config(
                "grafbase/grafbase.toml",
                &[
                    ("@UPSTREAM_HTTP@", emitter.http_url()),
                    ("@UPSTREAM_WS@", emitter.ws_url()),
                    ("@SCHEMA@", schema),
                ],
                temp.join(format!("{run_name}.grafbase.toml")),
            )?;
            // `dev` unpacks its web IDE into `$HOME/.grafbase` (its `--home` option does
            // not move that): keep it in the run's temporary directory.
            let mut command = Command::new(grafbase_bin(cache));
            command
                .env("HOME", temp.join("grafbase-home"))
                .args(["--log-style", "text"])
                .arg("dev")
                .arg("--config")
                .arg(&config_path)
                .args(["--listen-address", &addr.to_string()])
                // Warnings and errors only, like the other peers.
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .current_dir(temp);
            let system = System::external(bench_exe, command, addr, "/health", log).await?;
            Ok(system.with_ws_path("/ws"))
        }
        other => bail!("{other} is not a peer gateway"),
    }
}
