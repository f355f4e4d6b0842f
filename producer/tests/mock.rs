//! Error handling, driven by librdkafka's mock cluster and its error
//! injection. The mock does not enforce transactions (aborted records stay
//! visible, nobody is fenced), so these tests prove how the producer reacts
//! to an error, never an exactly-once property: `producer.rs` does that
//! against a real broker.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use common::{read, Until};
use harness::testkit::Isolation;
use ledger_core::domain::{Currency, TransferId};
use producer::generate::{Generator, GeneratorConfig};
use producer::progress::{Progress, StopSignal};
use producer::send::{Sender, Settings};
use producer::source::Source;
use producer::Config;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use time::OffsetDateTime;

#[test]
fn an_abortable_error_aborts_and_resends_the_same_batch() {
    let mock = MockCluster::new(1).expect("a mock cluster");
    let topic = "transfers";
    mock.create_topic(topic, common::PARTITIONS, 1)
        .expect("create the topic");
    // The first produce request fails permanently, which in a transaction
    // is an abortable error.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let bootstrap = mock.bootstrap_servers();
    let config = Config::try_parse_from([
        "producer",
        "--accounts",
        "50",
        "--duplicate-share",
        "0",
        "--count",
        "300",
    ])
    .unwrap_or_else(|error| panic!("{error}"));
    // The sending loop itself: `run` would first create the topic, which the
    // mock cannot do.
    let (source, _) = Source::open(&config, 11).expect("the generator");
    let settings = Settings {
        bootstrap_servers: bootstrap.clone(),
        topic: topic.to_owned(),
        transactional_id: Some("mock".to_owned()),
        batch_records: 100,
        batch_duration: Duration::from_secs(60),
        transaction_timeout: Duration::from_secs(120),
        call_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(30),
        rate: 0,
    };
    let progress = Arc::new(Progress::new(None));
    let stop = Arc::new(StopSignal::default());
    Sender::new(settings, source, stop, Arc::clone(&progress))
        .expect("the sender starts")
        .run()
        .expect("the run recovers from the abort");
    let counts = progress.counts();
    // Usually twice: after the failed request, the next attempt finds a gap
    // in the sequence numbers, which librdkafka also resolves by an abort
    // (with an epoch bump).
    assert!(counts.transactions_aborted >= 1, "{counts:?}");
    assert_eq!(counts.transactions_committed, 3, "{counts:?}");
    assert_eq!(counts.records_sent, 300, "a resend is not a new record");
    assert_eq!(counts.records_committed, 300);

    // Resent, not regenerated: the topic holds exactly the stream's first
    // 300 transfers (the rejected request left nothing in the mock's log).
    let mut generator = Generator::new(GeneratorConfig {
        accounts: 50,
        fail_share: 0.02,
        duplicate_share: 0.0,
        currency: Currency::EUR,
        seed: 11,
    });
    let expected: HashSet<TransferId> = (0..300)
        .map(|_| generator.next(OffsetDateTime::now_utc()).transfer.id)
        .collect();
    let written: HashSet<TransferId> = read(
        &bootstrap,
        topic,
        Isolation::ReadUncommitted,
        Until::AtLeastThenEnd(300),
    )
    .iter()
    .map(|record| record.transfer.id)
    .collect();
    assert_eq!(written, expected);
}
