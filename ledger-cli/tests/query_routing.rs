//! `ledger_core::routing::partition_for` against the real thing: keyed records
//! produced through librdkafka with the pipeline's partitioner
//! (`ledger::kafka::PARTITIONER`) to a real broker must land exactly in the
//! partitions it computes, or `ledger query balance` would ask the wrong
//! shard. Needs the harness's broker (Java and Maven) or
//! `KAFKA_BOOTSTRAP_SERVERS`.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use ledger::kafka::{client_config, PARTITIONER};
use ledger_core::routing::partition_for;

/// Account-like keys and arbitrary bytes (non-UTF-8, bytes >= 0x80, every
/// tail length of murmur2's 4-byte blocks, up to the 64-byte account limit).
fn keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = (0..150)
        .map(|n| format!("acc-{n:06}").into_bytes())
        .collect();
    keys.push(b"world".to_vec());
    for len in 1..=64usize {
        keys.push(
            (0..len)
                .map(|i| ((i * 37 + len * 11) % 256) as u8)
                .collect(),
        );
    }
    keys
}

#[tokio::test]
async fn records_land_in_the_partition_partition_for_computes() {
    let bootstrap = harness::shared_bootstrap();
    // 6 is the pipeline's default; 13, a prime, catches a wrong modulus.
    for partitions in [6, 13] {
        let topic = harness::unique_name("routing");
        harness::create_topics(&bootstrap, &[(&topic, partitions)]).unwrap();

        let producer: FutureProducer = client_config(&bootstrap)
            .set("partitioner", PARTITIONER)
            // Nothing here may wait forever: a lost broker fails the test.
            .set("message.timeout.ms", "30000")
            .create()
            .unwrap();
        let keys = keys();
        let mut expected_counts: BTreeMap<i32, i64> = BTreeMap::new();
        for key in &keys {
            let record = FutureRecord::to(&topic).key(key).payload("x");
            let delivery = producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(error, _)| error)
                .unwrap();
            let expected = partition_for(key, partitions);
            assert_eq!(
                delivery.partition,
                expected,
                "key {:?} with {partitions} partitions",
                String::from_utf8_lossy(key)
            );
            *expected_counts.entry(expected).or_default() += 1;
        }

        // Check again from the broker's side: each partition holds exactly
        // the records routed to it.
        let consumer: BaseConsumer = client_config(&bootstrap)
            .set("group.id", harness::unique_name("routing"))
            .create()
            .unwrap();
        for partition in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .unwrap();
            assert_eq!(
                high - low,
                expected_counts.get(&partition).copied().unwrap_or(0),
                "records in partition {partition} of {partitions}"
            );
        }
        // Several partitions used: the keys really exercise the modulus.
        assert_eq!(
            expected_counts.len(),
            partitions as usize,
            "{expected_counts:?}"
        );
    }
}
