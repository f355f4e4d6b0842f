//! The `consumer` binary: configuration, logging, signals; everything else
//! is `consumer::run`.

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use consumer::faults::Faults;
use consumer::Config;
use ledger::signal::shutdown_signal;

fn main() -> ExitCode {
    let config = Config::parse();
    ledger::telemetry::init_logging(config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(
                message = "The shard stopped on an error.",
                error = %ledger::telemetry::chain(error.as_ref()),
            );
            match error.downcast_ref::<consumer::Error>() {
                Some(error) => ExitCode::from(error.exit_status()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let faults = Faults::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime failed")?;
    runtime.block_on(async {
        // Before anything else runs: a SIGTERM during recovery is not lost.
        let shutdown = shutdown_signal().context("installing the signal handlers")?;
        consumer::run(config, faults, shutdown).await?;
        anyhow::Ok(())
    })
}
