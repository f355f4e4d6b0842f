//! Helpers shared by the harness's integration tests: a transactional
//! producer and exact reads of a topic under either isolation level.

use harness::testkit::{Isolation, TopicReader};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub use harness::testkit::{wait_settled, DEADLINE};

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

/// Every record payload of `topic` from the beginning to the end of every
/// partition, as seen with `isolation`, sorted. Call [`wait_settled`] first.
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: Isolation,
) -> Vec<String> {
    let mut reader = TopicReader::new(bootstrap, topic, partitions, isolation);
    let mut payloads: Vec<String> = reader
        .read_until("the end of every partition", TopicReader::at_end)
        .iter()
        .map(|record| record.text().to_owned())
        .collect();
    payloads.sort();
    payloads
}

/// `prefix-0` .. `prefix-(count-1)`, sorted like [`read_all`]'s result.
pub fn payloads(prefix: &str, count: usize) -> Vec<String> {
    let mut payloads: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    payloads.sort();
    payloads
}
