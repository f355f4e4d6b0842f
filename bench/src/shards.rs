//! Shards as child processes (the release `consumer` binary, through
//! `ledger_cli::pipeline::Pipeline`) over a pre-produced input: rows 2 and 6.
//!
//! A run is timed from the moment every shard answers `/readyz` (start-up,
//! under a second of topic checks and `init_transactions`, is not
//! throughput) to the moment the shards' metrics show every input transfer
//! decided and every accepted transfer's credit applied. The figure counts
//! input transfers only, although a shard also writes each accepted
//! transfer's credit and consumes it back from `ledger-credits`: up to two
//! records in and two out per transfer, against the passthrough's one and
//! one.

use std::time::{Duration, Instant};

use anyhow::Context;
use ledger::names;
use ledger_cli::audit::Topics;
use ledger_cli::pipeline::{self, Pipeline, PipelineConfig};
use serde::Serialize;

use crate::passthrough::Copied;
use crate::producer_rows::Produced;
use crate::report::{Row, Target, Unit, Value};
use crate::{say, Bench, PARTITIONS};

/// The target for the exactly-once shard / passthrough.
const PIPELINE_RATIO_TARGET: f64 = 0.85;
/// Bound on start-up (topics, init_transactions, recovery).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on consuming the whole input.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// How often progress is sampled: the resolution of the timing.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How often readiness is probed: the resolution of row 5's figure.
const READY_PROBE_EVERY: Duration = Duration::from_millis(10);

const RECORDS_IN: &str = "txledger_consumer_records_in_total";
const CREDITS_APPLIED: &str = "txledger_consumer_credits_applied_total";
const OUTCOMES: &str = "txledger_consumer_outcomes_total";

/// The median run and every run's rate.
pub type Median<T> = (T, Vec<f64>);

/// How the shards run: the defaults, or without one of their costs to
/// measure it against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Deciding in the ledger's order, holding what is not yet certain,
    /// with the changelog (the defaults).
    InOrder,
    /// Deciding at once, `--hold-max-ms 0`: what holding is measured
    /// against.
    OnArrival,
    /// In order, without the changelog (`--changelog-topic ""`): what the
    /// changelog is measured against.
    NoChangelog,
    /// The defaults, with the consumer group assigning the partitions
    /// (`--assignment group`): shards can join while traffic flows.
    GroupAssigned,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::InOrder => "",
            Setup::OnArrival => "-arrival",
            Setup::NoChangelog => "-nochangelog",
            Setup::GroupAssigned => "-group",
        }
    }
}

/// Outcomes of a run that speak of funds, from the shards' metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Funds {
    /// Accepted and rejected outcomes (no duplicates).
    pub decided: f64,
    pub insufficient_funds: f64,
    pub hold_expired: f64,
}

impl Funds {
    fn of(pipeline: &Pipeline) -> Funds {
        Funds {
            decided: metric(pipeline, OUTCOMES, "status=\"accepted\"")
                + metric(pipeline, OUTCOMES, "status=\"rejected\""),
            insufficient_funds: metric(pipeline, OUTCOMES, "reason=\"insufficient_funds\""),
            hold_expired: metric(pipeline, OUTCOMES, "reason=\"hold_expired\""),
        }
    }

    /// Rejections for funds, proven or not, in percent of the decided
    /// transfers after the generator's `openings` (one opening deposit per
    /// account, which its fail share does not apply to).
    pub fn short_percent(&self, openings: f64) -> f64 {
        let rejected = self.insufficient_funds + self.hold_expired;
        100.0 * rejected / (self.decided - openings).max(1.0)
    }
}

/// One timed run of the shards over the input.
#[derive(Debug, Clone)]
pub struct ShardRun {
    pub shards: u32,
    pub transfers: u64,
    /// Every shard ready to every transfer decided and credit applied.
    pub elapsed: Duration,
    /// Spawn to every shard ready.
    pub startup: Duration,
    pub rate: f64,
    /// Where the shards' time went, from their own metrics.
    pub breakdown: serde_json::Value,
    pub funds: Funds,
}

/// This run's topic names under `label`; `transactions` names an existing
/// input topic instead of a fresh one.
pub fn topics(bench: &Bench, label: &str, transactions: Option<&str>) -> Topics {
    let mut topics = pipeline::prefixed_topics(&format!("{}-", bench.name(label)));
    if let Some(input) = transactions {
        topics.transactions = input.to_owned();
    }
    topics
}

/// A pipeline of `shards` shards under `label`, its topics created.
pub fn pipeline(
    bench: &Bench,
    label: &str,
    topics: Topics,
    shards: u32,
    setup: Setup,
) -> anyhow::Result<Pipeline> {
    let mut shard_env: Vec<(String, String)> = bench
        .shard_batch_records
        .map(|records| {
            vec![(
                names::TXLEDGER_BATCH_RECORDS.to_owned(),
                records.to_string(),
            )]
        })
        .unwrap_or_default();
    if bench.no_changelog {
        shard_env.push((names::TXLEDGER_CHANGELOG_TOPIC.to_owned(), String::new()));
    }
    match setup {
        Setup::InOrder | Setup::GroupAssigned => {}
        Setup::OnArrival => {
            shard_env.push((names::TXLEDGER_HOLD_MAX_MS.to_owned(), "0".to_owned()));
        }
        Setup::NoChangelog => {
            shard_env.push((names::TXLEDGER_CHANGELOG_TOPIC.to_owned(), String::new()));
        }
    }
    let config = PipelineConfig {
        bootstrap_servers: bench.bootstrap.clone(),
        topics,
        partitions: PARTITIONS,
        shards,
        work_dir: bench.work_dir.join(label),
        group_id: bench.name(&format!("{label}-ledger")),
        transactional_id_prefix: bench.name(&format!("{label}-ledger-consumer")),
        producer_transactional_id: bench.name(&format!("{label}-producer")),
        batch_ms: bench.shard_batch_ms,
        shard_env,
        group_assignment: setup == Setup::GroupAssigned,
    };
    let pipeline = Pipeline::new(config, bench.binaries.clone())?;
    pipeline.create_topics()?;
    Ok(pipeline)
}

/// Waits until shard `index` answers `/readyz`; a shard that exits first is
/// an error with the end of its log.
pub fn wait_ready(pipeline: &mut Pipeline, index: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !pipeline.shard_ready(index) {
        pipeline.check_shards()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "shard {index} was not ready within {READY_TIMEOUT:?}; its log: {}",
            pipeline.shard_log(index).display()
        );
        std::thread::sleep(READY_PROBE_EVERY);
    }
    Ok(())
}

/// Starts every shard and waits until all are ready; returns how long that
/// took.
pub fn start_ready(pipeline: &mut Pipeline) -> anyhow::Result<Duration> {
    let started = Instant::now();
    pipeline.start_shards()?;
    for index in 0..pipeline.config().shards as usize {
        wait_ready(pipeline, index)?;
    }
    Ok(started.elapsed())
}

/// Sum over the shards of a metric's samples whose labels contain `label`
/// (`""`: every sample).
pub fn metric(pipeline: &Pipeline, name: &str, label: &str) -> f64 {
    pipeline
        .metric_totals(name)
        .iter()
        .filter(|(labels, _)| labels.contains(label))
        .map(|(_, value)| value)
        .sum()
}

/// Runs `shards` shards over `input` from offset 0 until every transfer is
/// decided and every credit applied; `round` tells repeated runs apart.
pub fn run(
    bench: &Bench,
    input: &Produced,
    shards: u32,
    round: usize,
    setup: Setup,
) -> anyhow::Result<ShardRun> {
    let label = format!("shards-{shards}{}-r{round}", setup.label());
    let topics = topics(bench, &label, Some(&input.topic));
    let mut pipeline = pipeline(bench, &label, topics, shards, setup)?;
    say(format!(
        "rows 2/6/7: {shards} exactly-once shard(s) ({setup:?}) over {} transfers...",
        input.records
    ));
    let startup = start_ready(&mut pipeline)?;
    let started = Instant::now();
    let deadline = started + RUN_TIMEOUT;
    loop {
        // Done when every transfer is decided (a held one was read long
        // before) and every accepted one's credit applied: the credits are
        // half of a shard's work, and they trail the transfers by a batch
        // or more.
        let outcomes = metric(&pipeline, OUTCOMES, "");
        let credits = metric(&pipeline, CREDITS_APPLIED, "");
        let accepted = metric(&pipeline, OUTCOMES, "status=\"accepted\"");
        if outcomes >= input.records as f64 && credits >= accepted {
            break;
        }
        pipeline.check_shards()?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "{shards} shard(s) decided {outcomes} of {} transfers and applied {credits} of \
             {accepted} credits in {RUN_TIMEOUT:?}",
            input.records
        );
        std::thread::sleep(SAMPLE_EVERY);
    }
    let elapsed = started.elapsed();
    let breakdown = breakdown(&pipeline, shards, elapsed);
    let funds = Funds::of(&pipeline);
    // Not timed: the read_committed probe that proves no input is left
    // over; a run that never settles is a bug worth failing on.
    pipeline
        .wait_caught_up(Duration::from_secs(120))
        .context("the shards did not settle after the input")?;
    pipeline.stop();
    let run = ShardRun {
        shards,
        transfers: input.records,
        elapsed,
        startup,
        rate: input.records as f64 / elapsed.as_secs_f64(),
        breakdown,
        funds,
    };
    say(format!(
        "rows 2/6: {shards} shard(s): {:.0} transfers/s over {:.2} s (start-up {:.2} s)",
        run.rate,
        elapsed.as_secs_f64(),
        startup.as_secs_f64()
    ));
    Ok(run)
}

/// Where the shards' wall time went, from their metrics: the batch
/// histogram covers the end of polling to the commit (state machine,
/// produce, sled write and flush, offsets, commit); the rest is polling.
fn breakdown(pipeline: &Pipeline, shards: u32, elapsed: Duration) -> serde_json::Value {
    let batches = metric(
        pipeline,
        "txledger_consumer_batch_duration_seconds_count",
        "",
    );
    let batch_seconds = metric(pipeline, "txledger_consumer_batch_duration_seconds_sum", "");
    let flush_seconds = metric(pipeline, "txledger_consumer_sled_flush_seconds_sum", "");
    let records = metric(pipeline, "txledger_consumer_batch_records_sum", "");
    let credits = metric(pipeline, RECORDS_IN, "source=\"credits\"");
    let wall = elapsed.as_secs_f64() * f64::from(shards);
    let per_batch_ms = |seconds: f64| seconds * 1000.0 / batches.max(1.0);
    serde_json::json!({
        "batches": batches,
        "records_per_batch": records / batches.max(1.0),
        "credits_in": credits,
        "batch_ms_mean": per_batch_ms(batch_seconds),
        "sled_flush_ms_mean": per_batch_ms(flush_seconds),
        "share_in_batch": batch_seconds / wall,
        "share_in_sled_flush": flush_seconds / wall,
        "share_polling": 1.0 - batch_seconds / wall,
    })
}

/// Row 2: one exactly-once shard against the passthrough (median runs;
/// every run's rate in the details).
pub fn pipeline_row(one: &Median<ShardRun>, baseline: &Median<Copied>) -> Row {
    let (one, one_rates) = one;
    let (baseline, baseline_rates) = baseline;
    Row::new(
        "2",
        "pipeline: 1 exactly-once shard (sled, txns), input transfers/s",
        Value::new(one.rate, Unit::TransfersPerSecond),
        "at-least-once passthrough",
        Value::new(baseline.rate(), Unit::RecordsPerSecond),
        Some(Target::RatioAtLeast {
            ratio: PIPELINE_RATIO_TARGET,
        }),
    )
    .with_details(serde_json::json!({
        "transfers": one.transfers,
        "seconds": one.elapsed.as_secs_f64(),
        "startup_seconds": one.startup.as_secs_f64(),
        "shard": one.breakdown,
        "rates": one_rates,
        "baseline_records": baseline.records,
        "baseline_seconds": baseline.elapsed.as_secs_f64(),
        "baseline_rates": baseline_rates,
    }))
}

/// The bound on what the changelog may cost.
const CHANGELOG_RATIO_TARGET: f64 = 0.8;

/// Row 2b: one shard with its changelog against the same shard without it,
/// over the same input.
pub fn changelog_row(with: &Median<ShardRun>, without: &Median<ShardRun>) -> Row {
    let ((with, with_rates), (without, without_rates)) = (with, without);
    Row::new(
        "2b",
        "changelog: 1 shard writing its changelog, input transfers/s",
        Value::new(with.rate, Unit::TransfersPerSecond),
        "without the changelog",
        Value::new(without.rate, Unit::TransfersPerSecond),
        Some(Target::RatioAtLeast {
            ratio: CHANGELOG_RATIO_TARGET,
        }),
    )
    .with_details(serde_json::json!({
        "rates": with_rates,
        "baseline_rates": without_rates,
        "shard": with.breakdown,
        "baseline_shard": without.breakdown,
    }))
}

/// Row 7: what deciding in the ledger's order costs and buys, one shard
/// over the same input: throughput against deciding on arrival, and the
/// share of transfers rejected for funds against what the generator meant
/// to fail (`fail_share`, in percent, of the transfers after its
/// `openings`).
pub fn holding_rows(
    in_order: &Median<ShardRun>,
    on_arrival: &Median<ShardRun>,
    fail_share: f64,
    openings: u64,
) -> Vec<Row> {
    let ((in_order, in_order_rates), (on_arrival, on_arrival_rates)) = (in_order, on_arrival);
    let openings = openings as f64;
    let in_order_short = in_order.funds.short_percent(openings);
    let short = Row::new(
        "7b",
        "holding: rejected for funds, % of transfers after the openings (in order)",
        Value::new(in_order_short, Unit::Percent),
        "on arrival",
        Value::new(on_arrival.funds.short_percent(openings), Unit::Percent),
        None,
    )
    .with_details(serde_json::json!({
        "openings": openings,
        "in_order": in_order.funds,
        "on_arrival": on_arrival.funds,
    }));
    let off = (in_order_short - fail_share).abs();
    vec![
        Row::new(
            "7a",
            "holding: 1 shard deciding in the ledger's order, input transfers/s",
            Value::new(in_order.rate, Unit::TransfersPerSecond),
            "deciding on arrival (--hold-max-ms 0)",
            Value::new(on_arrival.rate, Unit::TransfersPerSecond),
            None,
        )
        .with_details(serde_json::json!({
            "rates": in_order_rates,
            "baseline_rates": on_arrival_rates,
            "shard": in_order.breakdown,
            "baseline_shard": on_arrival.breakdown,
        })),
        short,
        Row::new(
            "7c",
            "holding: |rejected for funds - generator's fail share|, points",
            Value::new(off, Unit::Percent),
            "generator's fail share",
            Value::new(fail_share, Unit::Percent),
            Some(Target::AtMost {
                value: HOLDING_SHARE_SLACK_POINTS,
            }),
        ),
    ]
}

/// How far the share of transfers rejected for funds may be from the
/// share the generator meant to fail, in percentage points.
const HOLDING_SHARE_SLACK_POINTS: f64 = 0.5;

/// Row 6: `many` shards against one (median runs).
pub fn scaling_row(many: &Median<ShardRun>, one: &Median<ShardRun>) -> Row {
    let ((many, many_rates), (one, _)) = (many, one);
    let letter = char::from(b'a' + u8::try_from(many.shards.saturating_sub(2)).unwrap_or(0));
    Row::new(
        format!("6{letter}"),
        format!("scaling: {} shards on {PARTITIONS} partitions", many.shards),
        Value::new(many.rate, Unit::TransfersPerSecond),
        "1 shard",
        Value::new(one.rate, Unit::TransfersPerSecond),
        None,
    )
    .with_details(serde_json::json!({
        "seconds": many.elapsed.as_secs_f64(),
        "startup_seconds": many.startup.as_secs_f64(),
        "shards": many.breakdown,
        "rates": many_rates,
    }))
}
