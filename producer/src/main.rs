//! The `producer` binary: parses the configuration, sets up logging, and
//! runs the producer until it is done or SIGTERM/Ctrl-C arrives.

use std::process::ExitCode;

use clap::Parser;
use producer::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    ledger::telemetry::init_logging(config.log_format);
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("error: cannot install the signal handlers: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match producer::run(config, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {:#}", anyhow::Error::new(error));
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM (what Kubernetes and Docker send) or
/// Ctrl-C. The handlers are installed before the run starts, so a signal
/// that arrives while the broker is being reached is not lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
