//! `txledger-kafka`: a local Kafka broker that keeps running after this
//! command exits, for demos and manual testing.
//!
//! ```text
//! txledger-kafka start [--dir DIR] [--port N]   # prints 127.0.0.1:PORT last
//! txledger-kafka status [--dir DIR]
//! txledger-kafka stop [--dir DIR]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use harness::daemon;

#[derive(Parser)]
#[command(
    name = "txledger-kafka",
    version,
    about = "A local single-node Kafka broker (KRaft) that runs in the background"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a broker in the background, wait until it is ready and print its
    /// address (last line of stdout). Does nothing but print the address if
    /// one already runs in DIR.
    Start {
        /// Broker directory: configuration, data, log, pid.
        #[arg(long, default_value = ".kafka")]
        dir: PathBuf,
        /// Client port on 127.0.0.1 (default: a free one).
        #[arg(long)]
        port: Option<u16>,
        /// Give up if the broker is not ready after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Stop the broker running in DIR (SIGTERM, SIGKILL after 30 s).
    Stop {
        #[arg(long, default_value = ".kafka")]
        dir: PathBuf,
    },
    /// Say whether a broker runs in DIR and answers; exit code 0 if so.
    Status {
        #[arg(long, default_value = ".kafka")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Start {
            dir,
            port,
            timeout_secs,
        } => {
            if let Some(running) = daemon::status(&dir)? {
                eprintln!(
                    "A broker already runs in {} (pid {}).",
                    dir.display(),
                    running.pid
                );
                println!("{}", running.bootstrap);
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("Starting a Kafka broker in {} ...", dir.display());
            let bootstrap = daemon::start(&dir, port, Duration::from_secs(timeout_secs))
                .with_context(|| format!("starting a broker in {}", dir.display()))?;
            eprintln!(
                "Ready. Log: {}. Stop it with: txledger-kafka stop --dir {}",
                dir.join("broker.log").display(),
                dir.display()
            );
            println!("{bootstrap}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { dir } => {
            match daemon::stop(&dir)? {
                Some(stopped) => println!("Stopped the broker (pid {}).", stopped.pid),
                None => println!("No broker runs in {}.", dir.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { dir } => match daemon::status(&dir)? {
            Some(running) => {
                let answers = daemon::answers(&running.bootstrap);
                println!(
                    "running: pid {}, bootstrap {}, {}",
                    running.pid,
                    running.bootstrap,
                    if answers {
                        "answering"
                    } else {
                        "NOT answering"
                    }
                );
                Ok(if answers {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            None => {
                println!("not running ({})", dir.display());
                Ok(ExitCode::FAILURE)
            }
        },
    }
}
