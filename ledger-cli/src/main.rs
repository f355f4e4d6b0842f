//! `ledger`: query a shard, audit the pipeline, run a local demo.

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// txledger's command-line tool.
#[derive(Debug, Parser)]
#[command(name = "ledger", version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read balances, transfers and shard stats, from running shards
    /// (--url) or from a stopped shard's sled directory (--db).
    Query(cli::query::Args),
    /// Prove (or disprove, naming the ids) exactly-once over the topics
    /// and the shards' balances.
    Audit(cli::audit::Args),
    /// Run the whole pipeline locally (broker, producer, shards) with a
    /// live status line, optional chaos, and the audit at the end.
    Demo(cli::demo::Args),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Query(args) => cli::query::run(args),
        Command::Audit(args) => cli::audit::run(args),
        Command::Demo(args) => cli::demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", ledger::telemetry::chain(error.as_ref()));
            ExitCode::from(2)
        }
    }
}
