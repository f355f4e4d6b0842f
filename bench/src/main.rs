//! `txledger-bench`: the pipeline's performance figures (issue 8), each as a
//! ratio against a baseline measured in the same run on the same broker,
//! printed as one table (and written as JSON with `--json FILE`).
//!
//! ```sh
//! cargo build --release -p bench -p producer -p consumer
//! target/release/txledger-bench --json bench.json
//! ```
//!
//! The shards and the live producer run as the real release binaries, found
//! next to this one (`ledger_cli::pipeline::Binaries::locate`); the broker is a
//! local one started by the harness, or `KAFKA_BOOTSTRAP_SERVERS`. Every run
//! uses its own topics, groups and transactional ids, so it can share a
//! broker. Not part of `cargo test`: it takes minutes and wants a quiet
//! machine.
//!
//! # Layout
//!
//! - [`report`]: the table and its JSON form; quantiles.
//! - [`core_rows`]: row 4, the ledger core in process (no Kafka).
//! - [`producer_rows`]: row 1, the producer library in process; it also
//!   writes the input topic of rows 2 and 6.
//! - [`passthrough`]: row 2's baseline, an at-least-once copy loop.
//! - [`shards`]: shards as child processes timed from ready to caught up
//!   (rows 2, 6 and 7), with the breakdown their metrics give.
//! - [`latency`]: row 3 (and 7d-7f), a live reader stamping committed
//!   outcomes.
//! - [`recovery`]: row 5, restart-to-ready after SIGKILL over a sled ledger
//!   written directly.
//! - [`rebalance`]: row 8, the pause in outcomes while a shard joins.

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
mod core_rows;
mod latency;
mod passthrough;
mod producer_rows;
mod rebalance;
mod recovery;
mod report;
mod shards;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use ledger_cli::pipeline::{self, Binaries, ProducerRun};

use crate::report::{median_by, Report, Row};
use crate::shards::Setup;

/// Partitions of every topic: the issue's scaling row asks for six.
pub const PARTITIONS: i32 = 6;

/// Measures txledger against baselines on one broker and prints one table.
#[derive(Debug, Parser)]
#[command(name = "txledger-bench", version)]
struct Args {
    /// Small sizes for a smoke run (under a minute once the broker is up);
    /// the figures are much noisier, row 1 especially.
    #[arg(long)]
    quick: bool,

    /// Also write the table, with measurement details, as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Rows to run, comma-separated (1-8) [default: all]. Row 3 runs at half
    /// the one-shard rate of row 2, measured for it unless --latency-rate.
    /// Row 7 (what deciding in the ledger's order costs) reruns row 2's
    /// shard and row 3's fixed rate deciding on arrival. Row 8 is the pause
    /// in outcomes while a shard joins a group-assigned set.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=8))]
    rows: Vec<u8>,

    /// Transfers in the pipeline rows' input (2, 3's rate, 6)
    /// [default: 500000, 20000 with --quick]: a shard copes with 100000
    /// or more a second, and shorter runs are mostly start-up and noise.
    #[arg(long)]
    records: Option<u64>,

    /// Records written by each producer contender in row 1 [default:
    /// 500000, 20000 with --quick]: the idempotent producer sends 200000 in
    /// about half a second, too short a window on a shared machine.
    #[arg(long)]
    producer_records: Option<u64>,

    /// Seed of the generated transfers; the same seed gives the same input.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// The shards' transaction interval (TXLEDGER_BATCH_MS), rows 2, 3, 6.
    #[arg(long, default_value_t = 100)]
    shard_batch_ms: u64,

    /// The shards' records-per-transaction cap (TXLEDGER_BATCH_RECORDS)
    /// [default: the shard's own, 20000].
    #[arg(long)]
    shard_batch_records: Option<u32>,

    /// The live producer's transaction interval in row 3.
    #[arg(long, default_value_t = 100)]
    producer_batch_ms: u64,

    /// Row 3's producer rate when row 2 does not run to measure the maximum
    /// [default: half of row 2's shard rate].
    #[arg(long)]
    latency_rate: Option<u64>,

    /// Row 3 also runs at this fixed rate, below what this machine
    /// saturates at, to show the latency of an unhurried pipeline (rows
    /// 3d-3f, no target); 0 leaves it out.
    #[arg(long, default_value_t = 10_000)]
    latency_fixed_rate: u64,

    /// Keep the work directory (shard logs and sled directories).
    #[arg(long)]
    keep: bool,

    /// Every shard runs without its changelog (`--changelog-topic ""`),
    /// for tuning runs that compare rows with and without it; row 2b then
    /// compares two runs without.
    #[arg(long)]
    no_changelog: bool,
}

/// How much each row does.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sizes {
    /// Transfers in the pipeline input.
    pub records: u64,
    /// Records per producer contender (row 1).
    pub producer_records: u64,
    /// Accounts of the generated stream (rows 1, 2, 3, 4, 6).
    pub accounts: u32,
    /// Row 3: seconds of live traffic.
    pub latency_secs: u64,
    /// Row 4: batches of 8,190 transfers.
    pub core_batches: usize,
    /// Row 5: ledger sizes, in accounts.
    pub recovery_accounts: Vec<u64>,
    /// Row 5: kill-and-restart rounds per size (the median is reported).
    pub recovery_rounds: usize,
    /// Row 6: shard counts besides the one-shard baseline.
    pub scaling_shards: Vec<u32>,
    /// Row 8: the producer's rate, and seconds of traffic (the shard joins
    /// halfway).
    pub rebalance_rate: u64,
    pub rebalance_secs: u64,
    /// Rows 1, 2 and 6: runs of each contender; the median is reported.
    pub repeat: usize,
}

impl Sizes {
    fn new(quick: bool, records: Option<u64>, producer_records: Option<u64>) -> Sizes {
        if quick {
            Sizes {
                records: records.unwrap_or(20_000),
                producer_records: producer_records.unwrap_or(20_000),
                accounts: 10_000,
                latency_secs: 4,
                core_batches: 5,
                recovery_accounts: vec![10_000, 100_000],
                recovery_rounds: 1,
                scaling_shards: vec![2, 3],
                rebalance_rate: 2_000,
                rebalance_secs: 12,
                repeat: 1,
            }
        } else {
            Sizes {
                records: records.unwrap_or(500_000),
                producer_records: producer_records.unwrap_or(500_000),
                accounts: 10_000,
                latency_secs: 10,
                core_batches: 40,
                recovery_accounts: vec![10_000, 100_000, 1_000_000],
                recovery_rounds: 9,
                scaling_shards: vec![2, 3],
                rebalance_rate: 5_000,
                rebalance_secs: 30,
                repeat: 3,
            }
        }
    }
}

/// What every row needs: the broker, the binaries, names, sizes.
pub struct Bench {
    pub bootstrap: String,
    pub binaries: Binaries,
    pub work_dir: PathBuf,
    /// Makes this run's topic, group and transactional-id names unique.
    run_id: String,
    pub sizes: Sizes,
    pub seed: u64,
    pub shard_batch_ms: u64,
    pub shard_batch_records: Option<u32>,
    pub producer_batch_ms: u64,
    pub no_changelog: bool,
    /// For the producer library, which is async.
    pub runtime: tokio::runtime::Runtime,
}

impl Bench {
    /// A name unique to this run, for topics, groups and transactional ids.
    pub fn name(&self, what: &str) -> String {
        format!("bench-{}-{what}", self.run_id)
    }

    /// The live producer of the rows that send at a fixed rate (3, 8).
    pub fn live_producer(&self, count: u64, rate: u64) -> ProducerRun {
        ProducerRun {
            count,
            rate,
            seed: self.seed,
            accounts: self.sizes.accounts,
            batch_ms: self.producer_batch_ms,
        }
    }
}

/// Progress goes to stderr; stdout carries only the table.
pub fn say(message: impl std::fmt::Display) {
    eprintln!("[txledger-bench] {message}");
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Warnings of the in-process producer and of the harness are worth
    // seeing; their info lines would drown the progress messages. rdkafka's
    // default client context reports each partition EOF, which the
    // caught-up probes ask for, as an error: silenced.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rdkafka::client=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", ledger::telemetry::chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let binaries = Binaries::locate().context(
        "the shards and the live producer run as the release binaries: \
         `cargo build --release -p bench -p producer -p consumer` first",
    )?;
    let (bootstrap, _broker) = pipeline::broker().context("starting the local broker")?;
    let work = tempfile::Builder::new()
        .prefix("txledger-bench-")
        .tempdir()
        .context("creating the work directory")?;
    let bench = Bench {
        bootstrap,
        binaries,
        work_dir: work.path().to_owned(),
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        sizes: Sizes::new(args.quick, args.records, args.producer_records),
        seed: args.seed,
        shard_batch_ms: args.shard_batch_ms,
        shard_batch_records: args.shard_batch_records,
        no_changelog: args.no_changelog,
        producer_batch_ms: args.producer_batch_ms,
        runtime: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?,
    };
    say(format!(
        "broker {}, work directory {}, sizes {:?}",
        bench.bootstrap,
        bench.work_dir.display(),
        bench.sizes
    ));
    let mut rows = measure_rows(&bench, &args)?;
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    let report = report(&bench, &args, rows, started);
    print!("{}", report.render());
    println!("total {:.0} s", report.elapsed_seconds);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        say(format!("JSON written to {}", path.display()));
    }
    if args.keep {
        let kept = work.keep();
        say(format!("work directory kept: {}", kept.display()));
    }
    Ok(())
}

/// The selected rows: pure CPU first, on a quiet broker; the recovery row,
/// which writes the most to disk, last.
fn measure_rows(bench: &Bench, args: &Args) -> anyhow::Result<Vec<Row>> {
    let selected = |row: u8| args.rows.is_empty() || args.rows.contains(&row);
    let mut rows: Vec<Row> = Vec::new();
    if selected(4) {
        rows.extend(core_rows::run(bench)?);
    }
    if selected(1) {
        rows.extend(producer_rows::run(bench)?);
    }
    let mut shard_rate = None;
    if selected(2) || selected(6) || selected(7) || (selected(3) && args.latency_rate.is_none()) {
        let input = producer_rows::produce_input(bench)?;
        let chosen = Chosen {
            pipeline: selected(2),
            scaling: selected(6),
            holding: selected(7),
        };
        shard_rate = Some(shard_rows(bench, &input, chosen, &mut rows)?);
    }
    if selected(3) {
        let rate = match (args.latency_rate, shard_rate) {
            (Some(rate), _) => rate,
            (None, Some(max)) => (max / 2.0).round() as u64,
            (None, None) => anyhow::bail!(
                "row 3 runs at half of row 2's maximum rate: run row 2 too, or pass --latency-rate"
            ),
        };
        rows.extend(latency::run(bench, rate, latency::AT_HALF_MAXIMUM)?);
        if args.latency_fixed_rate > 0 {
            rows.extend(latency::run(
                bench,
                args.latency_fixed_rate,
                latency::AT_FIXED_RATE,
            )?);
        }
    }
    if selected(7) && args.latency_fixed_rate > 0 {
        rows.extend(latency::run(
            bench,
            args.latency_fixed_rate,
            latency::AT_FIXED_RATE_ON_ARRIVAL,
        )?);
    }
    if selected(8) {
        rows.extend(rebalance::run(bench)?);
    }
    if selected(5) {
        rows.extend(recovery::run(bench)?);
    }
    Ok(rows)
}

/// Which of the rows that run shards over the produced input are wanted.
struct Chosen {
    pipeline: bool,
    scaling: bool,
    holding: bool,
}

/// Rows 2 (with the pass-through copy), 2b (the changelog), 6 (scaling)
/// and 7a-7c (holding);
/// returns one shard's median rate. Contenders run in turn, round after
/// round, so that a slow spell of the machine hits all of them alike.
fn shard_rows(
    bench: &Bench,
    input: &producer_rows::Produced,
    chosen: Chosen,
    rows: &mut Vec<Row>,
) -> anyhow::Result<f64> {
    let mut copies = Vec::new();
    let mut one = Vec::new();
    let mut on_arrival = Vec::new();
    let mut without_changelog = Vec::new();
    let mut many: Vec<(u32, Vec<shards::ShardRun>)> = Vec::new();
    for round in 0..bench.sizes.repeat {
        if chosen.pipeline {
            copies.push(passthrough::run(bench, input, round)?);
        }
        one.push(shards::run(bench, input, 1, round, Setup::InOrder)?);
        if chosen.pipeline {
            without_changelog.push(shards::run(bench, input, 1, round, Setup::NoChangelog)?);
        }
        if chosen.holding {
            on_arrival.push(shards::run(bench, input, 1, round, Setup::OnArrival)?);
        }
        if chosen.scaling {
            for (index, count) in bench.sizes.scaling_shards.iter().enumerate() {
                let run = shards::run(bench, input, *count, round, Setup::InOrder)?;
                match many.get_mut(index) {
                    Some((_, runs)) => runs.push(run),
                    None => many.push((*count, vec![run])),
                }
            }
        }
    }
    let one = median_by(one, |run| run.rate).context("no shard run")?;
    if let Some(copied) = median_by(copies, passthrough::Copied::rate) {
        rows.push(shards::pipeline_row(&one, &copied));
    }
    if let Some(without) = median_by(without_changelog, |run| run.rate) {
        rows.push(shards::changelog_row(&one, &without));
    }
    if let Some(on_arrival) = median_by(on_arrival, |run| run.rate) {
        let fail_share = 100.0 * producer_rows::FAIL_SHARE;
        let openings = u64::from(bench.sizes.accounts);
        rows.extend(shards::holding_rows(
            &one,
            &on_arrival,
            fail_share,
            openings,
        ));
    }
    for (_, runs) in many {
        let runs = median_by(runs, |run| run.rate).context("no shard run")?;
        rows.push(shards::scaling_row(&runs, &one));
    }
    Ok(one.0.rate)
}

fn report(bench: &Bench, args: &Args, rows: Vec<Row>, started: Instant) -> Report {
    Report {
        title: format!(
            "txledger-bench: {} CPUs, broker {}, {} transfers per run, seed {}, \
             shard transactions {} ms",
            std::thread::available_parallelism().map_or(0, usize::from),
            bench.bootstrap,
            bench.sizes.records,
            bench.seed,
            bench.shard_batch_ms,
        ),
        environment: serde_json::json!({
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
            "bootstrap_servers": bench.bootstrap,
            "sizes": bench.sizes,
            "seed": bench.seed,
            "shard_batch_ms": bench.shard_batch_ms,
            "shard_batch_records": bench.shard_batch_records,
            "no_changelog": bench.no_changelog,
            "producer_batch_ms": bench.producer_batch_ms,
            "quick": args.quick,
        }),
        rows,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    }
}
