//! The harness's broker enforces Kafka transactions: the four behaviours the
//! exactly-once pipeline relies on, and that librdkafka's mock cluster does
//! not enforce. Each test uses its own topics, group and transactional id, so
//! they share one broker (`harness::shared_bootstrap`) and run in parallel.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use common::{payloads, read_all, send, transactional_producer, wait_settled, DEADLINE};
use harness::testkit::Isolation;
use harness::{create_topics, shared_bootstrap, unique_name};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::{Message, Offset, TopicPartitionList};

#[test]
fn committed_records_are_visible_to_read_committed() {
    let bootstrap = shared_bootstrap();
    let topic = unique_name("committed");
    create_topics(&bootstrap, &[(&topic, 3)]).expect("create topic");

    let producer = transactional_producer(&bootstrap, &unique_name("tx-committed"));
    producer.begin_transaction().expect("begin");
    for (i, payload) in payloads("c", 10).iter().enumerate() {
        send(&producer, &topic, i as i32 % 3, payload);
    }
    producer.commit_transaction(DEADLINE).expect("commit");

    wait_settled(&bootstrap, &topic, 3);
    assert_eq!(
        read_all(&bootstrap, &topic, 3, Isolation::ReadCommitted),
        payloads("c", 10)
    );
}

#[test]
fn aborted_records_are_invisible_to_read_committed_only() {
    let bootstrap = shared_bootstrap();
    let topic = unique_name("aborted");
    create_topics(&bootstrap, &[(&topic, 2)]).expect("create topic");

    let producer = transactional_producer(&bootstrap, &unique_name("tx-aborted"));
    producer
        .begin_transaction()
        .expect("begin the aborted transaction");
    for (i, payload) in payloads("aborted", 7).iter().enumerate() {
        send(&producer, &topic, i as i32 % 2, payload);
    }
    // Make sure the records reach the broker: abort_transaction purges what
    // is still queued, and then the broker would have nothing to filter.
    producer
        .flush(DEADLINE)
        .expect("deliver the aborted records");
    producer.abort_transaction(DEADLINE).expect("abort");

    // A committed transaction after the aborted one: read_committed must
    // skip the aborted records, not just stop before them.
    producer
        .begin_transaction()
        .expect("begin the committed transaction");
    for (i, payload) in payloads("committed", 3).iter().enumerate() {
        send(&producer, &topic, i as i32 % 2, payload);
    }
    producer.commit_transaction(DEADLINE).expect("commit");

    wait_settled(&bootstrap, &topic, 2);
    assert_eq!(
        read_all(&bootstrap, &topic, 2, Isolation::ReadCommitted),
        payloads("committed", 3)
    );
    let mut everything = payloads("aborted", 7);
    everything.extend(payloads("committed", 3));
    everything.sort();
    assert_eq!(
        read_all(&bootstrap, &topic, 2, Isolation::ReadUncommitted),
        everything
    );
}

#[test]
fn offsets_sent_with_a_committed_transaction_become_the_group_offsets() {
    let bootstrap = shared_bootstrap();
    let input = unique_name("offsets-in");
    let output = unique_name("offsets-out");
    let group = unique_name("group");
    create_topics(&bootstrap, &[(&input, 3), (&output, 1)]).expect("create topics");

    // Input: 2 records in partition 0, 3 in partition 1, none in partition 2.
    let input_producer = transactional_producer(&bootstrap, &unique_name("tx-input"));
    input_producer.begin_transaction().expect("begin input");
    for (partition, payload) in [(0, "a"), (0, "b"), (1, "c"), (1, "d"), (1, "e")] {
        send(&input_producer, &input, partition, payload);
    }
    input_producer
        .commit_transaction(DEADLINE)
        .expect("commit input");

    // Read-process-write with manual assignment, as the ledger shards do: the
    // consumer never joins the group, its offsets go through the transaction.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        // Offsets are committed by the transaction, never by the consumer.
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("create the consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..3 {
        assignment
            .add_partition_offset(&input, partition, Offset::Beginning)
            .expect("add a partition");
    }
    consumer.assign(&assignment).expect("assign");

    let producer = transactional_producer(&bootstrap, &unique_name("tx-offsets"));
    producer.begin_transaction().expect("begin");
    let mut next_offsets = TopicPartitionList::new();
    let mut consumed = 0;
    let deadline = std::time::Instant::now() + DEADLINE;
    while consumed < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "consumed only {consumed} of 5 input records after {DEADLINE:?}"
        );
        let Some(message) = consumer.poll(std::time::Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("consume an input record");
        let payload = message
            .payload_view::<str>()
            .expect("a payload")
            .expect("UTF-8");
        send(&producer, &output, 0, &format!("processed-{payload}"));
        next_offsets
            .add_partition_offset(
                &input,
                message.partition(),
                Offset::Offset(message.offset() + 1),
            )
            .expect("record the next offset");
        consumed += 1;
    }
    let group_metadata = consumer.group_metadata().expect("consumer group metadata");
    producer
        .send_offsets_to_transaction(&next_offsets, &group_metadata, DEADLINE)
        .expect("send_offsets_to_transaction");
    producer.commit_transaction(DEADLINE).expect("commit");

    // Ask the broker, through a fresh consumer of the same group, so the
    // answer cannot come from the first consumer's memory.
    let checker: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create the checking consumer");
    let mut partitions = TopicPartitionList::new();
    for partition in 0..3 {
        partitions.add_partition(&input, partition);
    }
    let committed = checker
        .committed_offsets(partitions, DEADLINE)
        .expect("committed offsets");
    let offsets: Vec<Offset> = (0..3)
        .map(|partition| {
            committed
                .find_partition(&input, partition)
                .expect("partition in the answer")
                .offset()
        })
        .collect();
    assert_eq!(
        offsets,
        [Offset::Offset(2), Offset::Offset(3), Offset::Invalid]
    );

    wait_settled(&bootstrap, &output, 1);
    assert_eq!(
        read_all(&bootstrap, &output, 1, Isolation::ReadCommitted),
        [
            "processed-a",
            "processed-b",
            "processed-c",
            "processed-d",
            "processed-e"
        ]
    );
}

#[test]
fn a_second_producer_with_the_same_transactional_id_fences_the_first() {
    let bootstrap = shared_bootstrap();
    let topic = unique_name("fenced");
    let transactional_id = unique_name("tx-fenced");
    create_topics(&bootstrap, &[(&topic, 1)]).expect("create topic");

    let zombie = transactional_producer(&bootstrap, &transactional_id);
    zombie.begin_transaction().expect("zombie begins");
    send(&zombie, &topic, 0, "zombie");
    zombie.flush(DEADLINE).expect("deliver the zombie's record");

    // The successor's init_transactions bumps the epoch and aborts the
    // zombie's open transaction.
    let successor = transactional_producer(&bootstrap, &transactional_id);

    let error = zombie
        .commit_transaction(DEADLINE)
        .expect_err("a fenced producer must not commit");
    assert_fenced(&error);
    // Fatal means for good: the zombie cannot even start again.
    let error = zombie
        .begin_transaction()
        .expect_err("a fenced producer must not begin a transaction");
    assert_fenced(&error);

    successor.begin_transaction().expect("successor begins");
    send(&successor, &topic, 0, "successor");
    successor
        .commit_transaction(DEADLINE)
        .expect("successor commits");

    wait_settled(&bootstrap, &topic, 1);
    assert_eq!(
        read_all(&bootstrap, &topic, 1, Isolation::ReadCommitted),
        ["successor"]
    );
    assert_eq!(
        read_all(&bootstrap, &topic, 1, Isolation::ReadUncommitted),
        ["successor", "zombie"]
    );
}

fn assert_fenced(error: &KafkaError) {
    match error {
        KafkaError::Transaction(error) => {
            assert!(error.is_fatal(), "expected a fatal error, got {error:?}");
            assert_eq!(error.code(), RDKafkaErrorCode::Fenced, "{error:?}");
        }
        other => panic!("expected a transaction error, got {other:?}"),
    }
}
