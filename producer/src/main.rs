//! The `producer` binary: parses the configuration, sets up logging, and
//! runs the producer until it is done or SIGTERM/Ctrl-C arrives.

use std::process::ExitCode;

use clap::Parser;
use ledger::signal::shutdown_signal;
use producer::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    ledger::telemetry::init_logging(config.log_format);
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("error: cannot install the signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    match producer::run(config, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", ledger::telemetry::chain(&error));
            ExitCode::FAILURE
        }
    }
}
