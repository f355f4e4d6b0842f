//! Row 2's baseline: the cheapest loop that does what a shard does to its
//! input, at least once. It reads the pre-produced transfers (committed
//! ones, like a shard) and writes one output record per input record, with
//! no transaction, no sled, no decoding, offsets auto-committed. One thread,
//! one consumer and one producer, polled one record at a time: the shard's
//! own shape, minus everything exactly-once costs.
//!
//! Guarantee of this loop: at least once (a crash after producing and before
//! the auto-commit re-copies records); which is why it is only a baseline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ledger::{kafka, txn};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::producer_rows::Produced;
use crate::{say, Bench, PARTITIONS};

/// Bound on the whole copy: generous, a slow machine copies 200k records in
/// well under a minute.
const COPY_TIMEOUT: Duration = Duration::from_secs(300);
/// Same as the shards' transaction timeout default, so that the producer's
/// message timeout (derived from it) is the same too.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// What the copy did.
#[derive(Debug, Clone)]
pub struct Copied {
    pub records: u64,
    pub elapsed: Duration,
}

impl Copied {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

/// Counts acknowledged and failed deliveries.
#[derive(Default)]
pub struct Deliveries {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.delivered
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies `input` to a fresh topic; timed from the first poll to the last
/// acknowledgement. `round` tells repeated runs apart.
pub fn run(bench: &Bench, input: &Produced, round: usize) -> anyhow::Result<Copied> {
    let output = bench.name(&format!("passthrough-r{round}-out"));
    harness::create_topics(&bench.bootstrap, &[(&output, PARTITIONS)])?;
    let (consumer, producer) = clients(bench, input, round)?;
    say(format!(
        "row 2: at-least-once passthrough of {} records...",
        input.records
    ));
    let started = Instant::now();
    let copied = copy(&consumer, &producer, input, &output, started + COPY_TIMEOUT)?;
    producer
        .flush(TRANSACTION_TIMEOUT)
        .context("flushing the copies")?;
    let elapsed = started.elapsed();
    let deliveries = producer.context();
    let failed = deliveries.failed.load(Ordering::Relaxed);
    let delivered = deliveries.delivered.load(Ordering::Relaxed);
    anyhow::ensure!(
        failed == 0 && delivered == copied,
        "the passthrough delivered {delivered} of {copied} copies ({failed} failed)"
    );
    let copied = Copied {
        records: copied,
        elapsed,
    };
    say(format!(
        "row 2: passthrough: {:.0} records/s over {:.2} s",
        copied.rate(),
        elapsed.as_secs_f64()
    ));
    Ok(copied)
}

/// The shards' consumer settings (read_committed, fetch tuning), except
/// that offsets are committed in the background, independently of the
/// outputs' delivery: at least once. The shard's producer settings minus
/// the transactional.id (idempotent, acks=all, same partitioner and
/// timeouts): only transactions differ.
fn clients(
    bench: &Bench,
    input: &Produced,
    round: usize,
) -> anyhow::Result<(BaseConsumer, BaseProducer<Deliveries>)> {
    let mut config = kafka::read_committed_consumer_config(
        &bench.bootstrap,
        &bench.name(&format!("passthrough-r{round}")),
    );
    config
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "true");
    let consumer: BaseConsumer = config.create()?;
    let mut producer_config =
        kafka::transactional_producer_config(&bench.bootstrap, "", TRANSACTION_TIMEOUT);
    producer_config.remove("transactional.id");
    let producer: BaseProducer<Deliveries> =
        producer_config.create_with_context(Deliveries::default())?;
    // Assigned, not subscribed, like the shards: no rebalance to wait for;
    // and, like them, with the topic's metadata fetched first.
    kafka::prefetch_metadata(&consumer, &[&input.topic], COPY_TIMEOUT)
        .context("fetching the input's metadata")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(&input.topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    Ok((consumer, producer))
}

/// Copies every input record to `output`, sent as the shard sends
/// (`txn::send`); returns how many.
fn copy(
    consumer: &BaseConsumer,
    producer: &BaseProducer<Deliveries>,
    input: &Produced,
    output: &str,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let mut copied = 0u64;
    while copied < input.records {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the passthrough copied {copied} of {} records in {COPY_TIMEOUT:?}",
            input.records
        );
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            producer.poll(Duration::ZERO);
            continue;
        };
        let message = polled.context("consuming the input")?;
        let mut record = BaseRecord::to(output).payload(message.payload().unwrap_or_default());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        txn::send(producer, record, TRANSACTION_TIMEOUT).context("producing the copy")?;
        copied += 1;
        // Serve delivery reports now and then, as the shard does per batch.
        if copied % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    Ok(copied)
}
