//! The audit against a real broker: a consistent history written with
//! transactions (one of them aborted) passes; injected anomalies fail,
//! named. Each test uses its own random topics and transactional ids.
//!
//! The history is written by a test shard that runs the real state machine
//! over what it reads with read_committed, as the consumer shards do, minus
//! sled and crash handling (the audit judges records, not how they came).
//!
//! `audit_reads_a_million_records` (ignored) measures the read and check
//! rate; see its comment for how to run it.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::time::{Duration, Instant};

use ledger_cli::audit::{
    self, AuditInput, AuditReport, Check, Extent, Isolation, ShardBalances, Status, Topics,
};
use ledger_core::domain::{AccountId, Amount, Currency, Transfer, TransferId};
use ledger_core::machine::{
    process_batch, InputPartition, InputRecord, MemoryLedger, Output, Rules, Source,
};
use ledger_core::wire;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use time::macros::datetime;
use uuid::Uuid;

/// A producer whose own thread serves delivery reports, which commit and
/// abort wait for.
type Transactional = ThreadedProducer<DefaultProducerContext>;

/// Bound on every wait on the broker.
const WAIT: Duration = Duration::from_secs(120);

fn new_topics(bootstrap: &str, partitions: i32) -> Topics {
    let topics = Topics {
        transactions: harness::unique_name("transactions"),
        results: harness::unique_name("ledger-results"),
        credits: harness::unique_name("ledger-credits"),
        dead_letters: harness::unique_name("ledger-dlq"),
    };
    harness::create_topics(
        bootstrap,
        &[
            (&topics.transactions, partitions),
            (&topics.results, partitions),
            (&topics.credits, partitions),
            (&topics.dead_letters, 1),
        ],
    )
    .expect("create topics");
    topics
}

fn transactional_producer(bootstrap: &str) -> Transactional {
    let producer: Transactional = ledger::kafka::transactional_producer_config(
        bootstrap,
        &harness::unique_name("audit-test"),
        Duration::from_secs(60),
    )
    // Room for a large transaction of small records.
    .set("queue.buffering.max.messages", "500000")
    .create()
    .expect("producer");
    producer.init_transactions(WAIT).expect("init_transactions");
    producer
}

/// Sends, waiting for room in the local queue when it is full.
fn send(producer: &Transactional, topic: &str, key: &[u8], payload: &[u8]) {
    send_record(producer, BaseRecord::to(topic).key(key).payload(payload));
}

fn send_record(producer: &Transactional, mut record: BaseRecord<'_, [u8], [u8]>) {
    let topic = record.topic.to_owned();
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((error, _)) => panic!("send to {topic}: {error}"),
        }
    }
}

fn transfer(n: u128, from: &str, to: &str, amount_minor: i64) -> Transfer {
    Transfer::new(
        TransferId(Uuid::from_u128(n)),
        AccountId::parse(from).unwrap(),
        AccountId::parse(to).unwrap(),
        Amount::from_minor(amount_minor).unwrap(),
        Currency::EUR,
        datetime!(2026-11-25 10:00 UTC),
    )
    .unwrap()
}

/// Writes transfers in one transaction, committed or aborted.
fn write_transfers(producer: &Transactional, topic: &str, transfers: &[Transfer], commit: bool) {
    producer.begin_transaction().expect("begin");
    for transfer in transfers {
        send(
            producer,
            topic,
            transfer.from.as_str().as_bytes(),
            &wire::encode_transfer(transfer),
        );
    }
    if commit {
        producer.commit_transaction(WAIT).expect("commit");
    } else {
        // Deliver first: abort purges what is still queued locally, and the
        // aborted records must reach the log for the test to mean anything.
        producer.flush(WAIT).expect("flush");
        producer.abort_transaction(WAIT).expect("abort");
    }
}

/// One record read back, owned.
struct Owned {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

fn read_new(bootstrap: &str, topic: &str, below: impl Fn(i32) -> i64) -> Vec<Owned> {
    let [extent]: [Extent; 1] = audit::extents(bootstrap, &[topic])
        .expect("extents")
        .try_into()
        .unwrap();
    let mut records = Vec::new();
    audit::read_to_end(
        bootstrap,
        &extent,
        Isolation::ReadCommitted,
        Instant::now() + WAIT,
        &mut |_| {},
        |record| {
            if record.offset >= below(record.partition) {
                records.push(Owned {
                    partition: record.partition,
                    offset: record.offset,
                    key: record.key.map(<[u8]>::to_vec),
                    payload: record.payload.map(<[u8]>::to_vec),
                });
            }
        },
    )
    .expect("read");
    records
}

/// A single shard owning every partition, state in memory.
struct TestShard {
    bootstrap: String,
    topics: Topics,
    ledger: MemoryLedger,
    producer: Transactional,
    /// Records per transaction.
    batch_records: usize,
    /// The shards' rules, over the topics' real partition count.
    rules: Rules,
}

impl TestShard {
    fn new(bootstrap: &str, topics: &Topics) -> Self {
        TestShard {
            bootstrap: bootstrap.to_owned(),
            topics: topics.clone(),
            ledger: MemoryLedger::default(),
            producer: transactional_producer(bootstrap),
            batch_records: 5000,
            rules: rules_of(bootstrap, topics),
        }
    }

    fn next_offset(&self, source: Source, partition: i32) -> i64 {
        self.ledger
            .offsets
            .get(&InputPartition { source, partition })
            .copied()
            .unwrap_or(0)
    }

    /// Decides every transfer not yet read and publishes the outputs, one
    /// transaction per batch; with `lose_credits`, credits are dropped (the
    /// anomaly the credit check must catch).
    fn process_transfers(&mut self, lose_credits: bool) {
        let records = read_new(&self.bootstrap, &self.topics.transactions, |p| {
            self.next_offset(Source::Transfers, p)
        });
        for batch in records.chunks(self.batch_records) {
            let effects = self.run(Source::Transfers, batch);
            self.producer.begin_transaction().expect("begin");
            for output in &effects.outputs {
                match output {
                    Output::Outcome(outcome) => send(
                        &self.producer,
                        &self.topics.results,
                        &outcome
                            .transfer_id
                            .map(|id| id.to_string())
                            .unwrap_or_default()
                            .into_bytes(),
                        &wire::encode_outcome(outcome),
                    ),
                    Output::Credit(credit) if !lose_credits => send(
                        &self.producer,
                        &self.topics.credits,
                        credit.to.as_str().as_bytes(),
                        &wire::encode_credit(credit),
                    ),
                    Output::Credit(_) => {}
                    // With the source header, as a shard writes it: the
                    // audit matches dead letters to records by it.
                    Output::DeadLetter(letter) => {
                        let source = wire::record_location(
                            &self.topics.transactions,
                            letter.at.partition,
                            letter.offset,
                        );
                        send_record(
                            &self.producer,
                            BaseRecord::to(&self.topics.dead_letters)
                                .key(letter.key.as_deref().unwrap_or_default())
                                .payload(letter.payload.as_slice())
                                .headers(OwnedHeaders::new().insert(Header {
                                    key: wire::DLQ_HEADER_SOURCE,
                                    value: Some(source.as_str()),
                                })),
                        );
                    }
                }
            }
            self.producer.commit_transaction(WAIT).expect("commit");
        }
    }

    /// Applies every credit not yet read.
    fn apply_credits(&mut self) {
        let records = read_new(&self.bootstrap, &self.topics.credits, |p| {
            self.next_offset(Source::Credits, p)
        });
        for batch in records.chunks(self.batch_records) {
            self.run(Source::Credits, batch);
        }
    }

    fn run(&mut self, source: Source, batch: &[Owned]) -> ledger_core::machine::BatchEffects {
        let inputs: Vec<InputRecord<'_>> = batch
            .iter()
            .map(|record| InputRecord {
                at: InputPartition {
                    source,
                    partition: record.partition,
                },
                offset: record.offset,
                key: record.key.as_deref(),
                payload: record.payload.as_deref(),
            })
            .collect();
        let effects = process_batch(&self.ledger, &self.rules, &inputs)
            .expect("credits are written to their owner's partition");
        self.ledger.apply(&effects);
        effects
    }

    fn balances(&self) -> ShardBalances {
        ShardBalances {
            source: "test-shard".to_owned(),
            balances: self.ledger.balances.clone().into_iter().collect(),
        }
    }

    /// Writes one raw record to a topic in its own transaction.
    fn inject(&self, topic: &str, key: &[u8], payload: &[u8]) {
        self.producer.begin_transaction().expect("begin");
        send(&self.producer, topic, key, payload);
        self.producer.commit_transaction(WAIT).expect("commit");
    }
}

/// The ledger rules over the partition count the broker reports.
fn rules_of(bootstrap: &str, topics: &Topics) -> Rules {
    Rules::new(audit::partition_count(bootstrap, &topics.transactions).expect("partition count"))
}

fn run_audit(bootstrap: &str, topics: &Topics, shard: &TestShard) -> AuditReport {
    let mut input = AuditInput::new(topics.clone(), shard.rules);
    input.push_balances(shard.balances());
    audit::read_topics(bootstrap, WAIT, &mut input, &mut |_| {}).expect("read topics");
    audit::audit(&input)
}

#[test]
fn audit_passes_a_consistent_history_and_names_injected_anomalies() {
    let bootstrap = harness::shared_bootstrap();
    let topics = new_topics(&bootstrap, 2);
    let producer = transactional_producer(&bootstrap);
    let mut shard = TestShard::new(&bootstrap, &topics);
    write_transfers(
        &producer,
        &topics.transactions,
        &[
            transfer(1, "world", "alice", 10_000),
            transfer(2, "world", "bob", 5_000),
        ],
        true,
    );
    // Never committed: no shard may decide it.
    write_transfers(
        &producer,
        &topics.transactions,
        &[transfer(3, "alice", "carol", 1_000)],
        false,
    );
    // The deposits' credits land before the next transfers, as they would
    // on a shard keeping up.
    shard.process_transfers(false);
    shard.apply_credits();
    write_transfers(
        &producer,
        &topics.transactions,
        &[
            transfer(4, "alice", "bob", 3_000),
            transfer(5, "bob", "carol", 99_999),
            transfer(4, "alice", "bob", 3_000),
        ],
        true,
    );
    producer.begin_transaction().expect("begin");
    send(&producer, &topics.transactions, b"dave", b"not json");
    producer.commit_transaction(WAIT).expect("commit");
    shard.process_transfers(false);
    shard.apply_credits();

    let report = run_audit(&bootstrap, &topics, &shard);
    assert_eq!(report.verdict, Status::Pass, "{report:#?}");
    let totals = &report.totals;
    assert_eq!(totals.inputs_committed, 6);
    assert_eq!(totals.inputs_aborted, 1);
    assert_eq!(
        (totals.accepted, totals.rejected, totals.duplicate),
        (3, 2, 1)
    );
    assert_eq!((totals.credits, totals.dead_letters), (3, 1));
    // world, alice, bob: carol was never credited.
    assert_eq!(totals.accounts, 3);

    // Anomaly 1: a second outcome for an input record already decided.
    let [extent]: [Extent; 1] = audit::extents(&bootstrap, &[topics.results.as_str()])
        .unwrap()
        .try_into()
        .unwrap();
    let mut copied = None;
    audit::read_to_end(
        &bootstrap,
        &extent,
        Isolation::ReadCommitted,
        Instant::now() + WAIT,
        &mut |_| {},
        |record| {
            if copied.is_none() {
                copied = record.payload.map(<[u8]>::to_vec);
            }
        },
    )
    .unwrap();
    let copied = copied.expect("an outcome");
    let outcome = wire::decode_outcome(&copied).unwrap();
    shard.inject(&topics.results, b"again", &copied);

    // Anomaly 2: an accepted transfer whose credit is never written.
    write_transfers(
        &producer,
        &topics.transactions,
        &[transfer(6, "alice", "erin", 500)],
        true,
    );
    shard.process_transfers(true);

    let report = run_audit(&bootstrap, &topics, &shard);
    assert_eq!(report.verdict, Status::Fail);
    assert_eq!(
        report.findings(Check::Duplicated),
        vec![format!(
            "{}/{}@{} id={} 2 outcomes for one record",
            topics.transactions,
            outcome.partition,
            outcome.offset,
            outcome.transfer_id.unwrap()
        )]
    );
    let credits = report.findings(Check::Credits);
    assert_eq!(credits.len(), 1, "{credits:?}");
    assert!(
        credits[0].ends_with(&format!(
            "id={} accepted, but no credit",
            TransferId(Uuid::from_u128(6))
        )),
        "{credits:?}"
    );
    assert_eq!(
        report.findings(Check::Conservation),
        vec!["the balances sum to -5.00, not 0 (no credit is in flight at quiescence)"]
    );
    for check in [Check::Lost, Check::AbortedReads, Check::Decisions] {
        assert_eq!(report.check(check).status, Status::Pass, "{check:?}");
    }
}

#[test]
fn an_outcome_of_aborted_input_is_caught_on_a_real_broker() {
    let bootstrap = harness::shared_bootstrap();
    let topics = new_topics(&bootstrap, 1);
    let producer = transactional_producer(&bootstrap);
    write_transfers(
        &producer,
        &topics.transactions,
        &[transfer(1, "world", "alice", 100)],
        false,
    );
    write_transfers(
        &producer,
        &topics.transactions,
        &[transfer(2, "world", "alice", 100)],
        true,
    );
    // The partition now ends with an abort marker after skipped records:
    // the read must still know it reached the end.
    write_transfers(
        &producer,
        &topics.transactions,
        &[transfer(3, "world", "alice", 100)],
        false,
    );
    let mut shard = TestShard::new(&bootstrap, &topics);
    shard.process_transfers(false);
    shard.apply_credits();
    // What a shard reading read_uncommitted would have written: the aborted
    // record is the first of the partition.
    let ghost = wire::Outcome {
        transfer_id: Some(TransferId(Uuid::from_u128(1))),
        kind: ledger_core::domain::OutcomeKind::Accepted,
        detail: None,
        transfer: Some(transfer(1, "world", "alice", 100)),
        effective_at: None,
        partition: 0,
        offset: 0,
    };
    shard.inject(&topics.results, b"ghost", &wire::encode_outcome(&ghost));
    let report = run_audit(&bootstrap, &topics, &shard);
    let aborted = report.findings(Check::AbortedReads);
    assert_eq!(aborted.len(), 1, "{report:#?}");
    assert!(
        aborted[0].ends_with(&format!(
            "outcome of {}/0@0, a record of an aborted transaction",
            topics.transactions
        )),
        "{aborted:?}"
    );
    assert_eq!(report.totals.inputs_committed, 1);
    assert_eq!(report.totals.inputs_aborted, 2);
}

/// The read and check rate on a real broker. Writes a consistent history
/// of `AUDIT_BENCH_TRANSFERS` transfers (default 1,000,000) over 1,000
/// accounts, then times `read_topics` + `audit`, and prints the rate and a
/// `ledger audit` command line for the same topics:
///
/// ```text
/// KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo test -p ledger-cli --release \
///   --test audit_kafka -- --ignored --nocapture audit_reads_a_million_records
/// ```
#[test]
#[ignore = "writes a million records; run by hand to measure"]
fn audit_reads_a_million_records() {
    let transfers: u128 = std::env::var("AUDIT_BENCH_TRANSFERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let accounts = 1_000u128;
    let bootstrap = harness::shared_bootstrap();
    let topics = new_topics(&bootstrap, 6);
    let producer = transactional_producer(&bootstrap);

    let started = Instant::now();
    let mut shard = TestShard::new(&bootstrap, &topics);
    // Deposits first, their credits applied, then transfers between
    // pseudo-random accounts (xorshift: deterministic, no dependency).
    let name = |n: u64| format!("acc-{:06}", n % accounts as u64);
    let deposits: Vec<Transfer> = (0..accounts)
        .map(|n| transfer(n, "world", &name(n as u64), 1_000_000))
        .collect();
    write_transfers(&producer, &topics.transactions, &deposits, true);
    shard.process_transfers(false);
    shard.apply_credits();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut batch = Vec::with_capacity(10_000);
    for n in accounts..transfers {
        let from = next();
        let mut to = next();
        if from % accounts as u64 == to % accounts as u64 {
            to += 1;
        }
        batch.push(transfer(
            n,
            &name(from),
            &name(to),
            1 + (next() % 5_000) as i64,
        ));
        if batch.len() == batch.capacity() {
            write_transfers(&producer, &topics.transactions, &batch, true);
            batch.clear();
        }
    }
    write_transfers(&producer, &topics.transactions, &batch, true);
    shard.process_transfers(false);
    shard.apply_credits();
    eprintln!("wrote the history in {:.1?}", started.elapsed());

    let started = Instant::now();
    let mut input = AuditInput::new(topics.clone(), shard.rules);
    input.push_balances(shard.balances());
    audit::read_topics(
        &bootstrap,
        Duration::from_secs(1800),
        &mut input,
        &mut |p| {
            if p.done {
                eprintln!(
                    "{} ({}): {} records in {:.1?}",
                    p.topic, p.isolation, p.records, p.elapsed
                );
            }
        },
    )
    .expect("read topics");
    let read = started.elapsed();
    let report = audit::audit(&input);
    let total = started.elapsed();
    assert_eq!(report.verdict, Status::Pass, "{report:#?}");
    let totals = &report.totals;
    let records = 2 * totals.inputs_committed + totals.outcomes + totals.credits;
    eprintln!(
        "audit: {records} records read (transactions twice, results, credits) in {read:.1?}, \
         judged in {:.1?}: {:.0} records/s overall; accepted {}, rejected {}",
        total - read,
        records as f64 / total.as_secs_f64(),
        totals.accepted,
        totals.rejected,
    );
    eprintln!(
        "rerun: ledger audit --bootstrap-servers {bootstrap} --transactions-topic {} \
         --results-topic {} --credits-topic {} --dlq-topic {}",
        topics.transactions, topics.results, topics.credits, topics.dead_letters
    );
}
