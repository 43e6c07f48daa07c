//! `subplex-bench supervise -- PROGRAM ARGS…`: runs a program that does not know to stop
//! when the harness goes away (subplex), and stops it when it should.
//!
//! The harness holds the supervisor's stdin. When it closes — the harness finished,
//! failed, or was killed outright — or after `--max-seconds`, the supervisor kills the
//! program and exits. It prints `PID <pid>` on stdout first, so the harness can read the
//! program's own `/proc` entries; the program inherits stdout and stderr.

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::time;

/// Command line of `subplex-bench supervise`.
#[derive(Debug, Clone, clap::Args)]
pub struct SuperviseArgs {
    /// Kill the program after this long whatever happens.
    #[arg(long, default_value_t = 900)]
    pub max_seconds: u64,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

pub async fn main(args: SuperviseArgs) -> anyhow::Result<()> {
    let (program, program_args) = args.command.split_first().context("no program given")?;
    let mut child = Command::new(program)
        .args(program_args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    let pid = child.id().context("the program exited at once")?;
    let mut stdout = tokio::io::stdout();
    stdout.write_all(format!("PID {pid}\n").as_bytes()).await?;
    stdout.flush().await?;

    let stdin_closed = async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = lines.next_line().await {}
    };
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            anyhow::ensure!(status.success(), "{} exited with {status}", program.to_string_lossy());
        }
        () = stdin_closed => {
            let _ = child.kill().await;
        }
        () = time::sleep(Duration::from_secs(args.max_seconds)) => {
            eprintln!("supervise: --max-seconds reached; killing {}", program.to_string_lossy());
            let _ = child.kill().await;
        }
    }
    Ok(())
}
