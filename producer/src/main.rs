//! The `producer` binary: parses the configuration, sets up logging, and
//! runs the producer until it is done or SIGTERM/Ctrl-C arrives.

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
use std::process::ExitCode;

use ledger::signal::shutdown_signal;
use producer::Config;

fn main() -> ExitCode {
    // Before the runtime's threads exist: reading the renamed variables
    // changes the process environment.
    let (config, deprecations) = Config::from_env_and_args();
    ledger::telemetry::init_logging(config.log_format);
    for warning in deprecations {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("error: cannot install the signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    match producer::run(config, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error @ producer::ProducerError::StopTimedOut(_)) => {
            eprintln!("error: {}", ledger::telemetry::chain(&error));
            // Not through `main`'s return: dropping the runtime would wait
            // for the blocked sending loop, forever.
            std::process::exit(i32::from(ledger::watchdog::EXIT_STUCK));
        }
        Err(error) => {
            eprintln!("error: {}", ledger::telemetry::chain(&error));
            ExitCode::FAILURE
        }
    }
}
