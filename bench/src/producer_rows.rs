//! Row 1: the transactional producer against the same producer with
//! idempotent writes only (`--no-transactions`: same client settings minus
//! the `transactional.id`), same record count, same seed, each into a topic
//! of its own, through the producer library in this process.
//!
//! The rate is taken over the append span: records divided by the time
//! from the broker's append of the first record to its append of the last
//! (the topics are created with `message.timestamp.type=LogAppendTime`). A
//! whole-run rate would also count the one-off start (topic check,
//! `init_transactions`: a few hundred milliseconds), which says nothing
//! about sustained throughput and, over a run of a few seconds, would decide
//! the ratio by itself. The producer's own CreateTime would not do either:
//! it is stamped when a record enters librdkafka's queue, up to 100,000
//! records ahead of the broker. Commits between transactions fall inside
//! the span, so what transactions cost is measured; only the last commit
//! (a few milliseconds) is outside it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ledger::kafka;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::report::{median_by, Row, Target, Unit, Value};
use crate::{say, Bench, PARTITIONS};

/// The target for transactional / idempotent-only.
const RATIO_TARGET: f64 = 0.95;
/// Records read back from the end of each partition to find the last
/// append: the last offset is a transaction marker, not a record.
const TAIL_RECORDS: i64 = 8;
/// Bound on reading the timestamps back.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A topic written by one producer run.
#[derive(Debug, Clone)]
pub struct Produced {
    pub topic: String,
    pub records: u64,
    pub transactions: u64,
    /// First to last record, by LogAppendTime.
    pub span: Duration,
    /// From `producer::run` entry to return, start-up included.
    pub elapsed: Duration,
}

impl Produced {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.span.as_secs_f64().max(1e-3)
    }

    fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "topic": self.topic,
            "records": self.records,
            "transactions": self.transactions,
            "send_span_seconds": self.span.as_secs_f64(),
            "mean_commit_interval_ms": if self.transactions > 0 {
                self.span.as_secs_f64() * 1000.0 / self.transactions as f64
            } else {
                0.0
            },
            "whole_run_seconds": self.elapsed.as_secs_f64(),
            "whole_run_records_per_second": self.records as f64 / self.elapsed.as_secs_f64(),
        })
    }
}

/// One producer configuration under test.
struct Contender {
    label: &'static str,
    figure: &'static str,
    /// `None`: idempotent only.
    batch: Option<(u64, u64)>,
}

/// The transactional contenders, as (records, milliseconds) per
/// transaction: small transactions capped at 1,000 records, then
/// transactions capped by time only, at 100 ms (the producer's default) and
/// at 1 s (100,000 records is the flag's maximum).
const CONTENDERS: [Contender; 3] = [
    Contender {
        label: "txn-1000",
        figure: "producer: transactional, 1000 rec / 100 ms per txn",
        batch: Some((1000, 100)),
    },
    Contender {
        label: "txn-100ms",
        figure: "producer: transactional, 100 ms per txn (default)",
        batch: Some((100_000, 100)),
    },
    Contender {
        label: "txn-1s",
        figure: "producer: transactional, 1 s per txn",
        batch: Some((100_000, 1000)),
    },
];

const BASELINE: Contender = Contender {
    label: "idempotent",
    figure: "producer: idempotent only",
    batch: None,
};

/// Runs row 1, every contender `repeat` times in turn; returns its rows
/// (median runs).
pub fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let records = bench.sizes.producer_records;
    let mut baseline_runs = Vec::new();
    let mut contender_runs: Vec<Vec<Produced>> = CONTENDERS.iter().map(|_| Vec::new()).collect();
    for round in 0..bench.sizes.repeat {
        let run = format!("r{round}");
        baseline_runs.push(produce(bench, &BASELINE, records, &run)?);
        for (runs, contender) in contender_runs.iter_mut().zip(&CONTENDERS) {
            runs.push(produce(bench, contender, records, &run)?);
        }
    }
    let (baseline, baseline_rates) =
        median_by(baseline_runs, Produced::rate).context("no baseline run")?;
    let mut rows = Vec::new();
    for (runs, contender) in contender_runs.into_iter().zip(&CONTENDERS) {
        let (produced, rates) = median_by(runs, Produced::rate).context("no run")?;
        rows.push(
            Row::new(
                format!("1{}", char::from(b'a' + rows.len() as u8)),
                contender.figure,
                Value::new(produced.rate(), Unit::RecordsPerSecond),
                "idempotent only",
                Value::new(baseline.rate(), Unit::RecordsPerSecond),
                Some(Target::RatioAtLeast {
                    ratio: RATIO_TARGET,
                }),
            )
            .with_details(serde_json::json!({
                "measured": produced.details(),
                "measured_rates": rates,
                "baseline": baseline.details(),
                "baseline_rates": baseline_rates,
            })),
        );
    }
    Ok(rows)
}

/// The pipeline rows' input: what the default transactional producer
/// writes, the shape a shard sees in production.
pub fn produce_input(bench: &Bench) -> anyhow::Result<Produced> {
    produce(bench, &CONTENDERS[0], bench.sizes.records, "input")
}

/// Writes `records` records with `contender`'s settings into a fresh topic
/// named after `run` (which tells row 1's rounds and the input apart).
fn produce(
    bench: &Bench,
    contender: &Contender,
    records: u64,
    run: &str,
) -> anyhow::Result<Produced> {
    let label = format!("producer-{}-{run}", contender.label);
    let topic = bench.name(&label);
    create_topic(bench, &topic)?;
    let config = producer_config(bench, contender, records, &topic, &label)?;
    say(format!(
        "producer {} {run}: {records} records...",
        contender.label
    ));
    let summary = bench
        .runtime
        .block_on(producer::run(config, std::future::pending()))
        .with_context(|| format!("producer {} {run}", contender.label))?;
    anyhow::ensure!(
        summary.records_committed == records,
        "{}: {} of {records} records committed",
        contender.label,
        summary.records_committed,
    );
    let (first_ms, last_ms) = send_span(&bench.bootstrap, &topic)?;
    let produced = Produced {
        topic,
        records: summary.records_committed,
        transactions: summary.transactions_committed,
        span: Duration::from_millis(u64::try_from(last_ms - first_ms).unwrap_or(0)),
        elapsed: summary.elapsed,
    };
    say(format!(
        "producer {} {run}: {:.0} records/s over {:.2} s of appends, {} transactions",
        contender.label,
        produced.rate(),
        produced.span.as_secs_f64(),
        produced.transactions
    ));
    Ok(produced)
}

/// Every flag that shapes the run is explicit, so that a TXLEDGER_*
/// variable in the environment cannot skew one contender.
/// The generator's share of transfers meant to overdraw (the producer's
/// default, passed explicitly): row 7 compares the shards' rejections with it.
pub const FAIL_SHARE: f64 = 0.02;

fn producer_config(
    bench: &Bench,
    contender: &Contender,
    records: u64,
    topic: &str,
    label: &str,
) -> anyhow::Result<producer::Config> {
    let count = records.to_string();
    let seed = bench.seed.to_string();
    let accounts = bench.sizes.accounts.to_string();
    let partitions = PARTITIONS.to_string();
    let transactional_id = bench.name(label);
    let (batch_records, batch_ms) = contender.batch.unwrap_or((1000, 100));
    let (batch_records, batch_ms) = (batch_records.to_string(), batch_ms.to_string());
    let fail_share = FAIL_SHARE.to_string();
    let mut argv = vec![
        "producer",
        "--bootstrap-servers",
        &bench.bootstrap,
        "--transfers-topic",
        topic,
        "--partitions",
        &partitions,
        "--count",
        &count,
        "--seed",
        &seed,
        "--accounts",
        &accounts,
        "--batch-records",
        &batch_records,
        "--batch-ms",
        &batch_ms,
        "--progress-secs",
        "86400",
        "--fail-share",
        &fail_share,
    ];
    match contender.batch {
        Some(_) => argv.extend(["--transactional-id", &transactional_id]),
        None => argv.push("--no-transactions"),
    }
    Ok(producer::Config::try_parse_from(argv)?)
}

/// Creates `topic` with broker-side timestamps.
fn create_topic(bench: &Bench, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        kafka::client_config(&bench.bootstrap).create()?;
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))
        .set("message.timestamp.type", "LogAppendTime");
    let options = AdminOptions::new().operation_timeout(Some(READ_TIMEOUT));
    for result in bench
        .runtime
        .block_on(admin.create_topics(&[new], &options))?
    {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    // Returns once every partition has a leader (the topic exists already).
    harness::create_topics(&bench.bootstrap, &[(topic, PARTITIONS)])?;
    Ok(())
}

/// The earliest and latest LogAppendTime (ms) of the topic's records: the
/// first record of every partition, and the last few.
fn send_span(bootstrap: &str, topic: &str) -> anyhow::Result<(i64, i64)> {
    let consumer: BaseConsumer = kafka::client_config(bootstrap)
        .set("group.id", format!("{topic}-span"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // Only the end of each partition is awaited; no need to linger.
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut heads = TopicPartitionList::new();
    let mut tails = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        let (low, high) = consumer.fetch_watermarks(topic, partition, READ_TIMEOUT)?;
        if high > low {
            heads.add_partition_offset(topic, partition, Offset::Offset(low))?;
            let tail = (high - TAIL_RECORDS).max(low);
            tails.add_partition_offset(topic, partition, Offset::Offset(tail))?;
        }
    }
    // The head of a partition is its earliest append.
    let first = read_timestamps(&consumer, &heads, true)?.into_iter().min();
    let last = read_timestamps(&consumer, &tails, false)?.into_iter().max();
    match (first, last) {
        (Some(first), Some(last)) if first <= last => Ok((first, last)),
        _ => anyhow::bail!("topic {topic} holds no timestamped record"),
    }
}

/// The timestamps of the records from the assigned offsets: only the first
/// record of each partition with `first_only`, else every record to the
/// partition's end.
fn read_timestamps(
    consumer: &BaseConsumer,
    assignment: &TopicPartitionList,
    first_only: bool,
) -> anyhow::Result<Vec<i64>> {
    consumer.assign(assignment)?;
    let mut done = BTreeSet::new();
    let mut timestamps = Vec::new();
    let deadline = Instant::now() + READ_TIMEOUT;
    while done.len() < assignment.count() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading timestamps back took more than {READ_TIMEOUT:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                if done.contains(&message.partition()) {
                    continue;
                }
                timestamps.push(
                    message
                        .timestamp()
                        .to_millis()
                        .context("a record without a timestamp")?,
                );
                if first_only {
                    done.insert(message.partition());
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                done.insert(partition);
            }
            Some(Err(error)) => return Err(error.into()),
            None => {}
        }
    }
    Ok(timestamps)
}
