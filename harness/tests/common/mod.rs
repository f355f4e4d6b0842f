//! Helpers shared by the harness's integration tests: a transactional
//! producer and exact reads of a topic under either isolation level.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Bound on every wait of a test. Generous: CI runs on a loaded 2-core
/// machine, and a healthy broker answers in milliseconds anyway.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A producer with `transactional.id = id`, `init_transactions` done.
pub fn transactional_producer(bootstrap: &str, id: &str) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        // Implied by transactional.id; explicit because the tests rely on it.
        .set("enable.idempotence", "true")
        .create()
        .expect("create the transactional producer");
    producer
        .init_transactions(DEADLINE)
        .expect("init_transactions");
    producer
}

/// Enqueues one record with `payload` (and the same key) for `partition`.
pub fn send(producer: &BaseProducer, topic: &str, partition: i32, payload: &str) {
    producer
        .send(
            BaseRecord::to(topic)
                .partition(partition)
                .key(payload)
                .payload(payload),
        )
        .map_err(|(error, _)| error)
        .expect("enqueue a record");
}

/// A consumer that does not join a group, reads with `isolation`
/// (`read_committed` or `read_uncommitted`) and reports partition ends.
fn reader(bootstrap: &str, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", harness::unique_name("reader"))
        // A reader must leave no offsets behind.
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .create()
        .expect("create a reader")
}

/// Waits until no transaction is open on `topic`: its last stable offset
/// equals its high watermark on every partition. Needed before an exact
/// read: `commit_transaction` and `abort_transaction` return once the
/// decision is logged, and the markers that settle the records follow.
pub fn wait_settled(bootstrap: &str, topic: &str, partitions: i32) {
    // librdkafka's ListOffsets uses the client's isolation level, so the
    // "high watermark" of a read_committed client is the last stable offset.
    let committed = reader(bootstrap, "read_committed");
    let uncommitted = reader(bootstrap, "read_uncommitted");
    let deadline = Instant::now() + DEADLINE;
    for partition in 0..partitions {
        loop {
            let (_, stable) = committed
                .fetch_watermarks(topic, partition, DEADLINE)
                .expect("last stable offset");
            let (_, high) = uncommitted
                .fetch_watermarks(topic, partition, DEADLINE)
                .expect("high watermark");
            if stable == high {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}/{partition}: last stable offset {stable} still behind high watermark {high} after {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Every record payload of `topic` from the beginning to the end of every
/// partition, as seen with `isolation`, sorted. Call [`wait_settled`] first.
pub fn read_all(bootstrap: &str, topic: &str, partitions: i32, isolation: &str) -> Vec<String> {
    let consumer = reader(bootstrap, isolation);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("add a partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut at_end = HashSet::new();
    let mut payloads = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while at_end.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "{topic}: reached the end of only {at_end:?} after {DEADLINE:?}, read {payloads:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                let payload = message
                    .payload_view::<str>()
                    .expect("a payload")
                    .expect("a UTF-8 payload");
                payloads.push(payload.to_owned());
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
        }
    }
    payloads.sort();
    payloads
}

/// `prefix-0` .. `prefix-(count-1)`, sorted like [`read_all`]'s result.
pub fn payloads(prefix: &str, count: usize) -> Vec<String> {
    let mut payloads: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    payloads.sort();
    payloads
}
