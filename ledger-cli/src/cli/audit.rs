//! `ledger audit`: reads the pipeline's topics and the shards' balances and
//! prints a verdict. Exit code 0 when every check passes, 1 on any
//! violation, 2 when the audit could not run (see `main`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use ledger::names;
use ledger_cli::audit::{self, AuditInput, BalanceSource, ReadProgress, Topics};
use ledger_cli::shards;
use ledger_core::domain::Currency;
use ledger_core::machine::Rules;
use reqwest::Url;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kafka brokers.
    #[arg(long, env = ledger::kafka::ENV_BOOTSTRAP)]
    bootstrap_servers: String,
    /// Input topic of transfers.
    #[arg(long, default_value = names::TOPIC_TRANSFERS)]
    transactions_topic: String,
    /// Topic of the shards' outcomes.
    #[arg(long, default_value = names::TOPIC_RESULTS)]
    results_topic: String,
    /// Topic of the shards' credits.
    #[arg(long, default_value = names::TOPIC_CREDITS)]
    credits_topic: String,
    /// Topic of the shards' dead letters.
    #[arg(long, default_value = names::TOPIC_DEAD_LETTERS)]
    dlq_topic: String,
    /// A running shard's HTTP API, e.g. http://127.0.0.1:8080; repeat it
    /// once per shard, or give one name that resolves to every shard's
    /// address, e.g. http://ledger-consumer:8080 (a headless Service) or
    /// http://consumer:8080 (a compose service scaled with --scale): a
    /// name with several addresses stands for one shard per address. The
    /// shards must own every partition once between them. Without --url or
    /// --db the balance checks are skipped.
    #[arg(long = "url", value_name = "URL", value_parser = shards::parse_url)]
    urls: Vec<Url>,
    /// A stopped shard's sled directory; once per shard.
    #[arg(long = "db", value_name = "DIR", conflicts_with = "urls")]
    dbs: Vec<PathBuf>,
    /// Partitions of `transactions` and `ledger-credits` (the shards'
    /// --partitions); read from the transactions topic when not given.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: Option<i32>,
    /// The ledger's currency: must be the shards' own.
    #[arg(long, default_value = "EUR", value_parser = Currency::parse)]
    currency: Currency,
    /// Give up reading the topics after this long (an open transaction
    /// holds the read back until it ends).
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Bound on one shard's HTTP answers.
const SHARD_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let topics = Topics {
        transactions: args.transactions_topic,
        results: args.results_topic,
        credits: args.credits_topic,
        dead_letters: args.dlq_topic,
    };
    let partitions = match args.partitions {
        Some(partitions) => partitions,
        None => audit::partition_count(&args.bootstrap_servers, &topics.transactions)
            .context("reading the partition count of the transactions topic")?,
    };
    let mut input = AuditInput::new(
        topics,
        Rules {
            currency: args.currency,
            ..Rules::new(partitions)
        },
    );
    // Balances first: a shard that cannot be reached fails the audit in
    // seconds, not after minutes of reading topics.
    let sources: Vec<BalanceSource> = shards::expand(&args.urls)?
        .into_iter()
        .map(|url| BalanceSource::Url(url.into()))
        .chain(args.dbs.into_iter().map(BalanceSource::Db))
        .collect();
    for balances in audit::fetch_all(&sources, partitions, SHARD_TIMEOUT)
        .context("reading the shards' balances")?
    {
        input.push_balances(balances);
    }
    audit::read_topics(
        &args.bootstrap_servers,
        Duration::from_secs(args.timeout_secs),
        &mut input,
        &mut print_progress,
    )
    .context("reading the topics")?;
    let report = audit::audit(&input);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{report}")?;
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Progress on stderr, so stdout holds only the report.
fn print_progress(progress: &ReadProgress<'_>) {
    let seconds = progress.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        progress.records as f64 / seconds
    } else {
        0.0
    };
    eprintln!(
        "audit: {} ({}): {} records{} in {seconds:.1} s ({rate:.0}/s)",
        progress.topic,
        progress.isolation,
        progress.records,
        if progress.done { ", done" } else { " so far" },
    );
}
