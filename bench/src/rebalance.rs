//! Row 8: the pause in outcomes while a shard joins. Two shards with group
//! assignment decide a steady stream at a fixed rate; a third is started
//! halfway. The group rebalances (every partition stops for a moment, the
//! eager protocol) and the new shard restores the partitions it is given
//! from the changelog before it decides them.
//!
//! A reader in this process stamps each outcome as it becomes visible to
//! `read_committed` on `ledger-results`, by the input partition it answers.
//! The figure is the longest any input partition went without an outcome
//! after the scale-out (a partition that moves waits for its revocation,
//! the new owner's start and its restore); the baseline is the same before
//! it, in the same run, with the same traffic: what the commit interval and
//! the producer's transactions give anyway.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use ledger::kafka;
use ledger_cli::audit::Topics;
use ledger_cli::pipeline::Pipeline;
use ledger_core::wire;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::report::{Row, Target, Unit, Value};
use crate::shards::{self, Setup};
use crate::{say, Bench, PARTITIONS};

/// The target for the pause, in milliseconds.
const PAUSE_TARGET_MS: f64 = 2_000.0;
/// Shards before the scale-out; one more joins.
const SHARDS_BEFORE: usize = 2;
/// The first seconds of traffic are the shards' and the reader's first
/// fetches, not the steady state the baseline speaks for.
const WARM_UP: Duration = Duration::from_secs(2);
/// Bound on the reader after the producer's last record.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// A group-assigned pipeline sized for `shards_after`, with the first
/// `SHARDS_BEFORE` of them started and ready.
fn shards_before(
    bench: &Bench,
    label: &str,
    topics: &Topics,
    shards_after: u32,
) -> anyhow::Result<Pipeline> {
    let mut pipeline = shards::pipeline(
        bench,
        label,
        topics.clone(),
        shards_after,
        Setup::GroupAssigned,
    )?;
    for index in 0..SHARDS_BEFORE {
        pipeline.start_shard(index)?;
    }
    for index in 0..SHARDS_BEFORE {
        shards::wait_ready(&mut pipeline, index)?;
    }
    Ok(pipeline)
}

pub fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let label = "rebalance";
    let topics = shards::topics(bench, label, None);
    let shards_after = SHARDS_BEFORE as u32 + 1;
    let mut pipeline = shards_before(bench, label, &topics, shards_after)?;
    let rate = bench.sizes.rebalance_rate;
    let seconds = bench.sizes.rebalance_secs;
    let count = rate * seconds;
    say(format!(
        "row 8: {count} transfers at {rate}/s through {SHARDS_BEFORE} shards, a third joining after {}s...",
        seconds / 2
    ));

    let reader = reader(bench, label, &topics.results)?;
    let deadline = Instant::now() + Duration::from_secs(seconds) + DRAIN_TIMEOUT;
    let reading = thread::Builder::new()
        .name("rebalance-reader".to_owned())
        .spawn(move || arrivals(&reader, count, deadline))
        .context("starting the outcome reader")?;
    let started = Instant::now();
    pipeline.start_producer(&bench.live_producer(count, rate))?;
    thread::sleep(Duration::from_secs(seconds / 2));
    let scaled = Instant::now();
    pipeline.start_shard(SHARDS_BEFORE)?;
    shards::wait_ready(&mut pipeline, SHARDS_BEFORE)?;
    let joined = scaled.elapsed();
    let arrived = reading
        .join()
        .map_err(|_| anyhow::anyhow!("the outcome reader panicked"))??;
    let restores = shards::metric(&pipeline, "txledger_consumer_restored_records_total", "");
    pipeline.stop();

    let before = longest_pause(&arrived, started + WARM_UP, scaled);
    let after = longest_pause(&arrived, scaled, Instant::now());
    say(format!(
        "row 8: longest pause of a partition {:.0} ms after the scale-out (new shard ready after {:.0} ms), {:.0} ms before",
        after.as_secs_f64() * 1000.0,
        joined.as_secs_f64() * 1000.0,
        before.as_secs_f64() * 1000.0
    ));
    let details = serde_json::json!({
        "rate": rate,
        "transfers": count,
        "outcomes": arrived.len(),
        "figure": "the longest any input partition went without an outcome",
        "shards_before": SHARDS_BEFORE,
        "shards_after": shards_after,
        "new_shard_ready_ms": joined.as_secs_f64() * 1000.0,
        "changelog_records_restored": restores,
        "shard_batch_ms": bench.shard_batch_ms,
    });
    Ok(vec![Row::new(
        "8",
        format!(
            "longest pause of a partition's outcomes while a shard joins ({SHARDS_BEFORE} -> {shards_after}), at {rate}/s"
        ),
        Value::new(after.as_secs_f64() * 1000.0, Unit::Milliseconds),
        "before it, in the same run",
        Value::new(before.as_secs_f64() * 1000.0, Unit::Milliseconds),
        Some(Target::AtMost {
            value: PAUSE_TARGET_MS,
        }),
    )
    .with_details(details)])
}

/// A read_committed reader of `topic` from its start.
fn reader(bench: &Bench, label: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let mut config = kafka::read_committed_consumer_config(
        &bench.bootstrap,
        &bench.name(&format!("{label}-reader")),
    );
    // Stamped on arrival: an empty fetch must come back quickly.
    config.set("fetch.wait.max.ms", "5");
    let reader: BaseConsumer = config.create()?;
    kafka::prefetch_metadata(&reader, &[topic], DRAIN_TIMEOUT)
        .context("fetching the results topic's metadata")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    reader.assign(&assignment)?;
    Ok(reader)
}

/// When each of `expected` outcomes became visible, by the input partition
/// it answers.
fn arrivals(
    reader: &BaseConsumer,
    expected: u64,
    deadline: Instant,
) -> anyhow::Result<Vec<(i32, Instant)>> {
    let mut arrived = Vec::new();
    while (arrived.len() as u64) < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {expected} outcomes arrived in time",
            arrived.len()
        );
        if let Some(polled) = reader.poll(Duration::from_millis(100)) {
            let message = polled.context("reading the outcomes")?;
            let at = Instant::now();
            let outcome = wire::decode_outcome(message.payload().unwrap_or_default())
                .context("an undecodable outcome")?;
            arrived.push((outcome.partition, at));
        }
    }
    Ok(arrived)
}

/// The longest any input partition went without an outcome between `from`
/// and its last outcome before `to` (after its last one the stream has
/// ended, not paused).
fn longest_pause(arrived: &[(i32, Instant)], from: Instant, to: Instant) -> Duration {
    (0..PARTITIONS)
        .map(|partition| {
            let times: Vec<Instant> = arrived
                .iter()
                .filter(|(of, at)| *of == partition && *at <= to)
                .map(|(_, at)| *at)
                .collect();
            let end = times.last().copied().unwrap_or(from).max(from);
            longest_gap(&times, from, end)
        })
        .max()
        .unwrap_or_default()
}

/// The longest time without an outcome between `from` and `to`, the ends
/// included: a window that ends before outcomes resume counts up to it.
fn longest_gap(arrived: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for at in arrived.iter().filter(|at| **at > from && **at <= to) {
        longest = longest.max(*at - last);
        last = *at;
    }
    longest.max(to.saturating_duration_since(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_counts_the_window_edges() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let arrived = [at(100), at(150), at(900), at(1_000)];
        assert_eq!(
            longest_gap(&arrived, at(0), at(1_000)),
            Duration::from_millis(750)
        );
        // Nothing after 1000: a window to 3000 ends in a 2 s gap.
        assert_eq!(
            longest_gap(&arrived, at(0), at(3_000)),
            Duration::from_millis(2_000)
        );
        assert_eq!(
            longest_gap(&arrived, at(120), at(160)),
            Duration::from_millis(30)
        );
    }
}
