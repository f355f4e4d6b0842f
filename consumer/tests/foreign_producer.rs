//! Transfers from a producer the project did not configure: rdkafka with its
//! defaults, whose `consistent_random` partitioner (CRC32) is not the
//! murmur2 the shards route by, writing into a running 2-shard pipeline
//! beside normal traffic, with source-account keys, no keys and wrong keys.
//!
//! Every record must get exactly one outcome; every one that sits outside
//! its source account's partition is `rejected/misrouted` and changes
//! nothing; the others are decided as usual; no id is decided twice; and the
//! audit passes with a balance sum of zero.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use ledger_cli::audit::{self, AuditInput, BalanceSource};
use ledger_core::domain::{OutcomeKind, RejectReason, Transfer, TransferId};
use ledger_core::machine::Rules;
use ledger_core::wire;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 6;
const FOREIGN_ACCOUNTS: usize = 30;
/// Transfers per foreign source account, each at most 50.00 out of a
/// 1000.00 deposit: no decision depends on the order of arrival.
const FOREIGN_SENT_MAX: usize = 8;

/// How the foreign producer keys a record.
#[derive(Debug, Clone, Copy)]
enum Keying {
    SourceAccount,
    None,
    /// The destination account: a plausible mistake.
    Wrong,
}

/// The foreign producer: rdkafka's defaults but the broker address.
fn foreign_producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("foreign producer")
}

fn send_foreign(producer: &BaseProducer, topic: &str, transfer: &Transfer, keying: Keying) {
    let payload = wire::encode_transfer(transfer);
    let key = match keying {
        Keying::SourceAccount => Some(transfer.from.as_str()),
        Keying::None => None,
        Keying::Wrong => Some(transfer.to.as_str()),
    };
    let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(&payload);
    if let Some(key) = key {
        record = record.key(key);
    }
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((error, back)) => {
                eprintln!("foreign producer: {error}; retrying");
                record = back;
                producer.poll(Duration::from_millis(50));
            }
        }
    }
    producer.poll(Duration::ZERO);
}

#[test]
fn a_producer_with_another_partitioner_gets_misrouted_outcomes_and_the_ledger_stays_whole() {
    let topics = Topics::create(PARTITIONS);
    let rules = Rules::new(PARTITIONS);
    let dir = test_dir();
    let mut running = InProcess::new();
    for shard in 0..2 {
        let data = dir.path().join(format!("shard-{shard}"));
        running.start(topics.config(shard, 2, &data, &[]));
    }
    let urls = running.urls.clone();

    // Normal traffic, and the foreign accounts' deposits, through the
    // murmur2 feeder.
    let scenario = Scenario::new(11, 12, 120);
    let foreign: Vec<String> = (0..FOREIGN_ACCOUNTS)
        .map(|i| format!("fx-{i:03}"))
        .collect();
    let mut deposits = scenario.deposits.clone();
    deposits.extend(
        foreign
            .iter()
            .map(|name| Input::Transfer(transfer("world", name, DEPOSIT_MINOR, "EUR"))),
    );
    feed(&topics, &deposits);
    let mut model = Model::default();
    model.apply(&deposits);
    wait_for_balances(&urls, &model.balances);

    // The foreign transfers, written while the normal ones flow. Some are
    // also written by the murmur2 feeder under the same id: that copy must
    // be decided, once, whatever happened to the foreign one.
    let mut rng = Rng::new(17);
    let mut foreign_transfers = Vec::new();
    for from in 0..FOREIGN_ACCOUNTS {
        for _ in 0..FOREIGN_SENT_MAX {
            let to =
                (from + 1 + rng.below(FOREIGN_ACCOUNTS as u64 - 1) as usize) % FOREIGN_ACCOUNTS;
            let minor = 1 + rng.below(5_000) as i64;
            foreign_transfers.push(transfer(&foreign[from], &foreign[to], minor, "EUR"));
        }
    }
    let also_fed: Vec<Input> = foreign_transfers
        .iter()
        .step_by(7)
        .map(|t| Input::Transfer(t.clone()))
        .collect();
    let producer = foreign_producer(&topics.bootstrap);
    let normal = std::thread::scope(|scope| {
        let normal = scope.spawn(|| feed(&topics, &scenario.transfers));
        for (n, transfer) in foreign_transfers.iter().enumerate() {
            let keying = [Keying::SourceAccount, Keying::None, Keying::Wrong][n % 3];
            send_foreign(&producer, &topics.transfers, transfer, keying);
        }
        producer
            .flush(Duration::from_secs(60))
            .expect("flush foreign");
        normal.join()
    });
    normal.expect("the feeder of normal traffic");
    feed(&topics, &also_fed);

    // What the shards must have done, from where each record really sits.
    let written =
        deposits.len() + scenario.transfers.len() + foreign_transfers.len() + also_fed.len();
    let mut inputs = topics
        .reader(&topics.transfers)
        .read_at_least(written)
        .to_vec();
    assert_eq!(inputs.len(), written, "every record written once");
    inputs.sort_by_key(|record| (record.partition, record.offset));
    let mut misrouted_expected: u64 = 0;
    let mut placed = Vec::new();
    for record in &inputs {
        let Some(Ok(transfer)) = record.payload.as_deref().map(wire::decode_transfer) else {
            continue;
        };
        if rules.partition_of(&transfer.from) == record.partition {
            placed.push(((record.partition, record.offset), transfer));
        } else {
            misrouted_expected += 1;
        }
    }
    assert!(
        misrouted_expected >= foreign_transfers.len() as u64 / 3,
        "the foreign producer should misplace many records, misplaced {misrouted_expected}"
    );
    // The deposits were applied before anything else was written; after
    // them no account spends more than its deposit, so the order of the
    // well-placed records across partitions does not matter.
    placed.sort_by_key(|(at, _)| *at);
    model.apply(
        &placed
            .into_iter()
            .map(|(_, transfer)| Input::Transfer(transfer))
            .collect::<Vec<_>>(),
    );
    wait_for_balances(&urls, &model.balances);

    let results = topics
        .reader(&topics.results)
        .read_at_least(inputs.len())
        .to_vec();
    running.stop_all();
    let outcomes = outcomes_of(&results);
    assert_eq!(outcomes.len(), inputs.len(), "one outcome per input record");
    let by_input: HashMap<(i32, i64), _> = outcomes
        .iter()
        .map(|outcome| ((outcome.partition, outcome.offset), outcome))
        .collect();
    let mut decided: BTreeSet<TransferId> = BTreeSet::new();
    let misrouted = OutcomeKind::Rejected(RejectReason::Misrouted);
    // In offset order, an id's first well-placed record gets the model's
    // decision and every later one is a duplicate (an id's copies share
    // their source account, so they share a partition).
    for record in &inputs {
        let outcome = by_input
            .get(&(record.partition, record.offset))
            .unwrap_or_else(|| panic!("no outcome for {}@{}", record.partition, record.offset));
        let Some(Ok(transfer)) = record.payload.as_deref().map(wire::decode_transfer) else {
            continue;
        };
        let owner = rules.partition_of(&transfer.from);
        if owner == record.partition {
            let seen = decided.contains(&transfer.id);
            let expected = if seen {
                OutcomeKind::Duplicate
            } else {
                model.decisions[&transfer.id].into()
            };
            assert_eq!(outcome.kind, expected, "{outcome:?}");
            decided.insert(transfer.id);
        } else {
            assert_eq!(
                outcome.kind, misrouted,
                "{}@{}",
                record.partition, record.offset
            );
            let detail = outcome.detail.as_deref().unwrap_or_default();
            assert!(
                detail.contains(&format!("belongs to partition {owner}")),
                "{detail}"
            );
        }
    }

    // The audit, over the real topics and the stopped shards' sled files.
    let audit_topics = audit::Topics {
        transactions: topics.transfers.clone(),
        results: topics.results.clone(),
        credits: topics.credits.clone(),
        dead_letters: topics.dlq.clone(),
    };
    let mut input = AuditInput::new(audit_topics, rules);
    for shard in 0..2 {
        let source = BalanceSource::Db(dir.path().join(format!("shard-{shard}")));
        input.push_balances(audit::fetch_balances(&source, DEADLINE).expect("balances"));
    }
    audit::read_topics(&topics.bootstrap, DEADLINE, &mut input, &mut |_| {}).expect("read");
    let report = audit::audit(&input);
    assert!(report.passed(), "{report}");
    assert_eq!(report.totals.misrouted, misrouted_expected);
    assert_eq!(
        report.totals.balance_sum,
        Some(ledger_core::domain::Money::ZERO)
    );
    eprintln!(
        "{} records, {misrouted_expected} misrouted, {} decided",
        inputs.len(),
        decided.len()
    );
}
