//! `ledger query`: an account's balance, the top accounts, a transfer's
//! status and shard stats, from running shards (`--url`, their HTTP API) or
//! from stopped shards' sled directories (`--db`).
//!
//! Both sources yield the same `ledger::api` views, so merging several
//! shards and printing them (a table, or `--json`) is one code path for
//! both. Shards are known by the name their views report, never by the
//! order or the address they were given in: one URL may stand for every
//! shard (`ledger_cli::shards`), and ownership of partitions (which
//! `balance` routes by) is what each shard's stats say. Answers show
//! committed state only: a stopped shard's last batch whose Kafka commit is
//! unknown (its pending record) is left out and reported, since only the
//! shard itself, talking to Kafka at start, can tell whether it happened.
//!
//! # Layout
//!
//! - this file: the arguments, the dispatch to a question, and printing
//!   an answer (JSON, text, "not found").
//! - `source`: the `ShardSource` trait (what a shard answers, however it
//!   is reached), and resolving `--db`, `--url` or `TXLEDGER_SHARD_URLS`
//!   into `Shard`s known by name, whose answers are checked to come from
//!   that shard.
//! - `http`: `ShardSource` for a running shard, asked over its HTTP API.
//! - `db`: `ShardSource` for a stopped shard's sled directory; its views
//!   are built by `ledger::api`, as the shard's own HTTP API builds them.
//! - `balance`, `top`, `transfer`, `stats`: one question each, merging
//!   the shards' views and printing them.
//! - `balances`: the export of every balance, as JSON lines or CSV.
//! - `table`: the text table the questions print.

mod balance;
mod balances;
mod db;
mod http;
mod source;
mod stats;
mod table;
mod top;
mod transfer;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::builder::RangedU64ValueParser;
use clap::Subcommand;
use reqwest::Url;
use rust_decimal::Decimal;
use serde::Serialize;

use ledger::api::ErrorView;
use ledger_cli::shards;
use ledger_core::domain::{AccountId, TransferId};

use balances::ExportFormat;

/// `top` is a table for a person: at most this many rows. Every balance,
/// for reconciling, is `balances`, streamed page by page.
const TOP_LIMIT_MAX: u64 = 1000;

/// The exit status of an answer that is "no such thing" (an unknown
/// account, a transfer no shard knows); errors exit with 2 (`main.rs`).
const EXIT_NOT_FOUND: u8 = 1;

const AFTER_HELP: &str = "\
Shards are given all with --db or all with --url, in any order. Without either,
the comma-separated URLs in TXLEDGER_SHARD_URLS are used. A --url whose host name
resolves to several addresses stands for one shard per address, so that one URL
reaches every shard: --url http://ledger-consumer:8080 (a Kubernetes headless
Service) or --url http://consumer:8080 (a compose service scaled with --scale).
Each shard is known by the name it reports (a running shard's transactional id,
e.g. ledger-consumer-0; a --db directory as given); two URLs that reach the same
shard count once, and shards are listed by name. `balance` asks the shard whose
stats report the account's partition.

Examples:
  ledger query stats --db /var/lib/txledger/shard-0
  ledger query balance acc-000042 --url http://127.0.0.1:8080 --url http://127.0.0.1:8081
  ledger query balances --format csv --url http://ledger-consumer:8080 > balances.csv
  ledger query top --limit 5 --json
  ledger query transfer 6f1c1f3e-4a2b-4c55-9d1e-2b8f0c7d9a10
  ledger query balances --format csv --db shard-0 --db shard-1 > balances.csv

--json prints, whatever the number of shards: for balance an AccountView; for
top an array of AccountView, largest first; for transfer {status, reason,
decided_by, credited_by, shards: [TransferView]}; for stats {shards:
[StatsView], total}; for an unknown account an ErrorView. balances prints JSON
lines (or CSV) whatever --json says.

Exit status: 0 answered; 1 not found (an unknown account, or a transfer no
shard asked knows); 2 error.";

// The one-line description is the `Query` variant's, in `main.rs`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(subcommand)]
    question: Question,

    /// A stopped shard's sled directory, read offline; repeat it once per
    /// shard. A running shard locks its directory: ask it with --url.
    #[arg(
        long = "db",
        value_name = "DIR",
        global = true,
        conflicts_with = "urls"
    )]
    dbs: Vec<PathBuf>,

    /// A running shard's HTTP API, e.g. http://127.0.0.1:8080; repeat it
    /// (or separate with commas) once per shard, or give one name that
    /// resolves to every shard: http://ledger-consumer:8080 (a headless
    /// Service) or http://consumer:8080 (a compose service scaled with
    /// --scale) reaches every shard, as a name with several addresses
    /// stands for one shard per address (not localhost: loopback addresses
    /// are one machine) [fallback: TXLEDGER_SHARD_URLS].
    #[arg(
        long = "url",
        value_name = "URL",
        global = true,
        value_delimiter = ',',
        value_parser = shards::parse_url
    )]
    urls: Vec<Url>,

    /// Print JSON (the `ledger::api` views) instead of a table.
    #[arg(long, global = true)]
    json: bool,

    /// Partition count of `transactions` and `ledger-credits`: `balance`
    /// needs it to find the account's partition, and so the shard that
    /// owns it.
    #[arg(
        long,
        value_name = "N",
        global = true,
        default_value_t = 6,
        value_parser = clap::value_parser!(i32).range(1..)
    )]
    partitions: i32,
}

#[derive(Debug, Subcommand)]
enum Question {
    /// One account's committed balance, asked of the shard that owns its
    /// partition now.
    Balance {
        #[arg(value_parser = AccountId::parse)]
        account: AccountId,
    },
    /// The accounts with the largest committed balances, over the shards given.
    Top {
        /// How many accounts to list.
        #[arg(
            long,
            value_name = "N",
            default_value_t = 10,
            value_parser = RangedU64ValueParser::<usize>::new().range(1..=TOP_LIMIT_MAX)
        )]
        limit: usize,
    },
    /// What the shards know about a transfer: the source account's shard
    /// decided it, the destination account's shard applied its credit.
    Transfer {
        /// The transfer id (a UUID).
        #[arg(value_parser = parse_transfer_id)]
        id: TransferId,
    },
    /// Per shard: accounts, sum of balances, input offsets, pending batch;
    /// and the totals.
    Stats,
    /// Every committed balance of the shards given, streamed shard after
    /// shard in account order: one JSON object (an AccountView) a line, or
    /// CSV with a header. From a stopped shard (--db) the export is one
    /// consistent state; from a running one (--url) each page of 10,000
    /// accounts is committed state, but two pages may straddle a batch.
    Balances {
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let shards = source::identify(source::sources(&args.dbs, &args.urls)?)?;
    match &args.question {
        Question::Balance { account } => {
            balance::balance(&shards, account, args.partitions, args.json)
        }
        Question::Top { limit } => top::top(&shards, *limit, args.json),
        Question::Transfer { id } => transfer::transfer(&shards, *id, args.json),
        Question::Stats => stats::stats(&shards, args.json),
        Question::Balances { format } => balances::balances(&shards, *format),
    }
}

fn parse_transfer_id(text: &str) -> Result<TransferId, String> {
    text.trim()
        .parse()
        .map_err(|error| format!("not a UUID ({error})"))
}

/// Amounts arrive as decimal strings (from a shard's API they are not yet
/// trusted); merging compares and adds them exactly, never as floats.
fn decimal(text: &str) -> anyhow::Result<Decimal> {
    Decimal::from_str_exact(text)
        .map_err(|error| anyhow!("{text:?} is not a decimal amount: {error}"))
}

fn not_found(json: bool, message: String) -> anyhow::Result<ExitCode> {
    if json {
        print_json(&ErrorView { error: message })?;
    } else {
        eprintln!("{message}");
    }
    Ok(ExitCode::from(EXIT_NOT_FOUND))
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding the answer as JSON")?;
    text.push('\n');
    print_text(&text)
}

/// Writes to stdout; a closed pipe (`| head`) is the reader's choice, not
/// an error, while any other write failure is reported.
fn print_text(text: &str) -> anyhow::Result<()> {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => {
            Err(error).context("writing to stdout")
        }
        _ => Ok(()),
    }
}
