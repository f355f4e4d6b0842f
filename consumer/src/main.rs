//! The `consumer` binary: configuration, logging, signals; everything else
//! is `consumer::run`.

use std::process::ExitCode;

use clap::Parser;
use consumer::faults::Faults;
use consumer::Config;

fn main() -> ExitCode {
    let config = Config::parse();
    ledger::telemetry::init_logging(config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Display only: every error of the library names its cause.
            tracing::error!(message = "The shard stopped on an error.", error = %error);
            ExitCode::FAILURE
        }
    }
}

fn run(mut config: Config) -> anyhow::Result<()> {
    config.faults = Faults::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| anyhow::anyhow!("starting the async runtime failed: {error}"))?;
    runtime.block_on(consumer::run(config, shutdown_signal()))?;
    Ok(())
}

/// SIGTERM (Kubernetes, compose) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(message = "No SIGTERM handler; only Ctrl-C stops the shard cleanly.", error = %error);
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
