//! Row 3: end-to-end latency, from a transfer's `created_at` (stamped by the
//! producer as it generates the record) to the moment its outcome is
//! visible to a `read_committed` reader of `ledger-results`, with the
//! producer (the release binary) sending at a fixed rate into one live
//! shard.
//!
//! A record's own timestamp cannot serve: it is the produce time inside the
//! shard's transaction, not the commit. So a reader in this process reads
//! the outcomes as they become visible and stamps their arrival. The same
//! reader stamps the input transfers as they become visible on
//! `transactions`: that is the baseline, what the producer's own
//! transactions cost before any shard is involved. Both clocks are this
//! machine's.

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use ledger::kafka;
use ledger_cli::audit::Topics;
use ledger_cli::pipeline::Pipeline;
use ledger_core::domain::{OutcomeKind, TransferId};
use ledger_core::wire;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use time::OffsetDateTime;

use crate::report::{quantile, Row, Target, Unit, Value};
use crate::shards::{self, metric, Setup};
use crate::{say, Bench, PARTITIONS};

/// The allowance on top of the commit interval for p99.
const P99_SLACK_MS: u64 = 50;
/// Transfers created in the first second are left out: the producer's and
/// the reader's first fetches, not the steady state.
const WARM_UP: Duration = Duration::from_secs(1);
/// Bound on the reader after the producer's last record.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Which rows a run fills: their ids for p50, p99 and max, and whether the
/// issue's p99 target applies (it is set at half of the maximum rate).
pub struct Rows {
    ids: [&'static str; 3],
    targeted: bool,
    setup: Setup,
}

/// At half of row 2's one-shard rate: the figure.
pub const AT_HALF_MAXIMUM: Rows = Rows {
    ids: ["3a", "3b", "3c"],
    targeted: true,
    setup: Setup::InOrder,
};

/// At a fixed, lower rate: for context, no target.
pub const AT_FIXED_RATE: Rows = Rows {
    ids: ["3d", "3e", "3f"],
    targeted: false,
    setup: Setup::InOrder,
};

/// The same fixed rate, deciding on arrival: what holding costs in latency
/// is 3d-3f against these.
pub const AT_FIXED_RATE_ON_ARRIVAL: Rows = Rows {
    ids: ["7d", "7e", "7f"],
    targeted: false,
    setup: Setup::OnArrival,
};

/// Latencies in milliseconds, by where they were observed.
#[derive(Debug, Default)]
struct Samples {
    /// Transfer visible (committed) on `transactions`.
    input: Vec<f64>,
    /// Outcome visible (committed) on `ledger-results`.
    outcome: Vec<f64>,
}

pub fn run(bench: &Bench, rate: u64, rows: Rows) -> anyhow::Result<Vec<Row>> {
    // Each run its own topics and groups.
    let label = format!("latency-{}", rows.ids[0]);
    let topics = shards::topics(bench, &label, None);
    let mut pipeline = shards::pipeline(bench, &label, topics.clone(), 1, rows.setup)?;
    shards::start_ready(&mut pipeline)?;
    let count = rate * bench.sizes.latency_secs;
    say(format!(
        "row 3: {count} transfers at {rate}/s through one live shard..."
    ));

    let reader = reader(bench, &label, &topics)?;
    let started_at = OffsetDateTime::now_utc();
    pipeline.start_producer(&bench.live_producer(count, rate))?;
    let deadline = Instant::now() + Duration::from_secs(bench.sizes.latency_secs) + DRAIN_TIMEOUT;
    let samples = read_on_a_thread(reader, topics.results.clone(), count, started_at, deadline)?;
    if let Some(status) = pipeline.producer_exit() {
        anyhow::ensure!(
            status.success(),
            "the producer failed ({status}); its log: {}",
            pipeline.producer_log().display()
        );
        // Reaped already: forget it, so that stopping does not signal a
        // process id that may have been reused.
        pipeline.kill_producer();
    }
    let (shard_view, batch_buckets, flush_buckets) = shard_metrics(&pipeline);
    pipeline.stop();

    let mut input = samples.input;
    let mut outcome = samples.outcome;
    input.sort_by(f64::total_cmp);
    outcome.sort_by(f64::total_cmp);
    say(format!(
        "row 3: {} outcomes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        outcome.len(),
        quantile(&outcome, 0.5),
        quantile(&outcome, 0.99),
        quantile(&outcome, 1.0)
    ));
    let details = serde_json::json!({
        "rate": rate,
        "transfers": count,
        "samples_outcome": outcome.len(),
        "samples_input": input.len(),
        "producer_batch_ms": bench.producer_batch_ms,
        "shard_batch_ms": bench.shard_batch_ms,
        "shard_histogram_mean_ms": shard_view,
        "shard_batch_seconds_buckets": batch_buckets,
        "shard_sled_flush_seconds_buckets": flush_buckets,
        "warm_up_excluded_seconds": WARM_UP.as_secs_f64(),
    });
    Ok(latency_rows(bench, rate, rows, &input, &outcome, &details))
}

/// `read`, on a thread of its own, so that stamps are not delayed by this
/// one.
fn read_on_a_thread(
    reader: BaseConsumer,
    results_topic: String,
    count: u64,
    started_at: OffsetDateTime,
    deadline: Instant,
) -> anyhow::Result<Samples> {
    let reading = thread::Builder::new()
        .name("latency-reader".to_owned())
        .spawn(move || {
            read(
                &reader,
                &results_topic,
                count,
                started_at + WARM_UP,
                deadline,
            )
        })
        .context("starting the latency reader")?;
    reading
        .join()
        .map_err(|_| anyhow::anyhow!("the latency reader panicked"))?
}

/// A read_committed reader of both topics from their start, stamping
/// records on arrival.
fn reader(bench: &Bench, label: &str, topics: &Topics) -> anyhow::Result<BaseConsumer> {
    let reader: BaseConsumer = {
        let mut config = kafka::read_committed_consumer_config(
            &bench.bootstrap,
            &bench.name(&format!("{label}-reader")),
        );
        // Stamped on arrival: an empty fetch must come back quickly, or
        // the broker's wait would be measured as pipeline latency.
        config.set("fetch.wait.max.ms", "5");
        config.create()?
    };
    // Without the metadata first, the reader's first records would come a
    // second or more late, and their stamps with them.
    kafka::prefetch_metadata(
        &reader,
        &[&topics.transactions, &topics.results],
        DRAIN_TIMEOUT,
    )
    .context("fetching the topics' metadata")?;
    let mut assignment = TopicPartitionList::new();
    for topic in [&topics.transactions, &topics.results] {
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    reader.assign(&assignment)?;
    Ok(reader)
}

/// The shard's own view of the latency (its histogram's mean, in ms), and
/// the tail's usual suspects: slow batches (commit, sled) and slow
/// flushes, as cumulative histogram buckets by upper bound in seconds.
fn shard_metrics(pipeline: &Pipeline) -> (f64, Buckets, Buckets) {
    let shard_view = {
        let sum = metric(
            pipeline,
            "txledger_consumer_end_to_end_latency_seconds_sum",
            "",
        );
        let count = metric(
            pipeline,
            "txledger_consumer_end_to_end_latency_seconds_count",
            "",
        );
        sum * 1000.0 / count.max(1.0)
    };
    let buckets = |name: &str| {
        pipeline
            .metric_totals(name)
            .into_iter()
            .map(|(labels, count)| (labels, serde_json::Value::from(count)))
            .collect::<serde_json::Map<_, _>>()
    };
    let batch_buckets = buckets("txledger_consumer_batch_duration_seconds_bucket");
    let flush_buckets = buckets("txledger_consumer_sled_flush_seconds_bucket");
    (shard_view, batch_buckets, flush_buckets)
}

/// Histogram buckets: upper bound label to cumulative count.
type Buckets = serde_json::Map<String, serde_json::Value>;

/// Rows p50, p99 and max of the outcome latency, each against the input's.
fn latency_rows(
    bench: &Bench,
    rate: u64,
    rows: Rows,
    input: &[f64],
    outcome: &[f64],
    details: &serde_json::Value,
) -> Vec<Row> {
    let target_ms = (bench.shard_batch_ms + P99_SLACK_MS) as f64;
    let p99_target = rows.targeted.then_some(Target::AtMost { value: target_ms });
    let [p50_id, p99_id, max_id] = rows.ids;
    [
        (p50_id, "p50", 0.5, None),
        (p99_id, "p99", 0.99, p99_target),
        (max_id, "max", 1.0, None),
    ]
    .into_iter()
    .map(|(id, name, fraction, target)| {
        Row::new(
            id,
            format!("latency {name}: created -> committed outcome, at {rate}/s"),
            Value::new(quantile(outcome, fraction), Unit::Milliseconds),
            "input committed",
            Value::new(quantile(input, fraction), Unit::Milliseconds),
            target,
        )
        .with_details(details.clone())
    })
    .collect()
}

/// Reads both topics until `expected` outcomes have been seen, stamping
/// each record on arrival. Resubmissions (a transfer id seen before) keep
/// their original `created_at`, so they are left out, as are transfers
/// created before `from`.
fn read(
    reader: &BaseConsumer,
    results_topic: &str,
    expected: u64,
    from: OffsetDateTime,
    deadline: Instant,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    let mut outcomes = 0u64;
    let mut seen_inputs: HashSet<TransferId> = HashSet::new();
    while outcomes < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {outcomes} of {expected} outcomes arrived in time"
        );
        let Some(polled) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = polled.context("reading the topics")?;
        let arrived = OffsetDateTime::now_utc();
        let payload = message.payload().unwrap_or_default();
        let latency_ms = |created: OffsetDateTime| (arrived - created).as_seconds_f64() * 1000.0;
        if message.topic() == results_topic {
            outcomes += 1;
            let outcome = wire::decode_outcome(payload).context("an undecodable outcome")?;
            if outcome.kind == OutcomeKind::Duplicate {
                continue;
            }
            if let Some(transfer) = outcome.transfer.filter(|t| t.created_at >= from) {
                samples.outcome.push(latency_ms(transfer.created_at));
            }
        } else {
            let transfer = wire::decode_transfer(payload).context("an undecodable transfer")?;
            if seen_inputs.insert(transfer.id) && transfer.created_at >= from {
                samples.input.push(latency_ms(transfer.created_at));
            }
        }
    }
    Ok(samples)
}
