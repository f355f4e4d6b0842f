//! The shard's exactly-once pipeline against a real broker, with shards
//! running in this process: one shard, three shards, bad input, and the
//! abort path (undo + seek back) on real transactions.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use consumer::faults::Mutant;
use consumer::Faults;
use ledger::api::{AccountView, BalancesPageView, ErrorView, StatsView, TopView, TransferView};
use ledger_core::domain::{OutcomeKind, RejectReason};
use ledger_core::machine::Source;
use ledger_core::wire;

/// Deposits, then funded transfers with duplicates and bad records, through
/// `shards` shards; every exactly-once property checked against the model.
fn run_scenario(shards: u32, seed: u64, extra: &[&str], inject: impl Fn(&mut Faults)) {
    let topics = Topics::create(6);
    let dir = test_dir();
    let scenario = Scenario::new(seed, 24, 300);
    let mut running = InProcess::new();
    for shard in 0..shards {
        let config = topics.config(
            shard,
            shards,
            &dir.path().join(format!("shard-{shard}")),
            extra,
        );
        let mut faults = Faults::default();
        inject(&mut faults);
        running.start_with_faults(config, faults);
    }
    let urls = running.urls.clone();

    feed(&topics, &scenario.deposits);
    wait_for_balances(&urls, &scenario.model_after_deposits().balances);
    feed(&topics, &scenario.transfers);
    let model = scenario.model();
    wait_for_balances(&urls, &model.balances);
    verify_served(&model, &urls);
    running.stop_all();
    verify_topics(
        &topics,
        scenario.deposits.len() + scenario.transfers.len(),
        &model,
    );
}

#[test]
fn one_shard_is_exactly_once() {
    run_scenario(1, 1, &[], |_| {});
}

#[test]
fn three_shards_are_exactly_once_with_cross_shard_credits() {
    run_scenario(3, 3, &[], |_| {});
}

/// Every 3rd transaction is aborted on purpose after its sled write and its
/// offsets: undo and seek back must make the redo indistinguishable.
#[test]
fn aborted_transactions_are_undone_and_redone() {
    run_scenario(2, 5, &["--batch-records", "16"], |faults| {
        faults.abort_every = Some(3);
    });
}

/// Undecodable and invalid records each get a `rejected` outcome with their
/// reason; the undecodable ones also go to the DLQ with the reason in a
/// header, in the same transaction; records after them are processed.
#[test]
fn bad_input_is_rejected_dead_lettered_and_passed() {
    let topics = Topics::create(1);
    let dir = test_dir();
    let mut running = InProcess::new();
    let url = running.start(topics.config(0, 1, &dir.path().join("shard-0"), &[]));

    let id = "6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a6b";
    let valid = |amount: &str, currency: &str, to: &str| {
        format!(
            r#"{{"id":"{id}","from":"acc-1","to":"{to}","amount":{amount},"currency":"{currency}","created_at":"2026-11-25T10:00:00Z"}}"#
        )
        .into_bytes()
    };
    // (payload, expected reason, expected in the DLQ)
    let bad: Vec<(Option<Vec<u8>>, RejectReason, bool)> = vec![
        (
            Some(b"not json at all".to_vec()),
            RejectReason::Malformed,
            true,
        ),
        (Some(vec![0xff, 0xfe, 0x00]), RejectReason::Malformed, true),
        (None, RejectReason::Malformed, true),
        (Some(b"[1,2,3]".to_vec()), RejectReason::UnknownSchema, true),
        (
            Some(br#"{"id":"x"}"#.to_vec()),
            RejectReason::UnknownSchema,
            true,
        ),
        (
            Some(valid("\"1.00\"", "EUR", "acc-2").replace_bytes("\"acc-1\"", "17")),
            RejectReason::UnknownSchema,
            true,
        ),
        (
            Some(valid("12.5", "EUR", "acc-2")),
            RejectReason::InvalidAmount,
            true,
        ),
        (
            Some(valid("\"-5.00\"", "EUR", "acc-2")),
            RejectReason::InvalidAmount,
            true,
        ),
        (
            Some(valid("\"0.00\"", "EUR", "acc-2")),
            RejectReason::InvalidAmount,
            true,
        ),
        (
            Some(valid("\"1.001\"", "EUR", "acc-2")),
            RejectReason::InvalidAmount,
            true,
        ),
        // Spellings a lenient decimal parser takes; the wire has one.
        (
            Some(valid("\"+1.00\"", "EUR", "acc-2")),
            RejectReason::InvalidAmount,
            true,
        ),
        (
            Some(valid("\" 1.00\"", "EUR", "acc-2")),
            RejectReason::InvalidAmount,
            true,
        ),
        (
            Some(valid("\"1.00 \"", "EUR", "acc-2")),
            RejectReason::InvalidAmount,
            true,
        ),
        (
            Some(valid("\"1e2\"", "EUR", "acc-2")),
            RejectReason::InvalidAmount,
            true,
        ),
        (
            Some(valid("\".50\"", "EUR", "acc-2")),
            RejectReason::InvalidAmount,
            true,
        ),
        (
            Some(valid("\"99999999999999999999.00\"", "EUR", "acc-2")),
            RejectReason::InvalidAmount,
            true,
        ),
        (
            Some(valid("\"1.00\"", "euro", "acc-2")),
            RejectReason::InvalidCurrency,
            true,
        ),
        (
            Some(valid("\"1.00\"", "EUR", "acc-1")),
            RejectReason::SameAccount,
            true,
        ),
        (
            Some(
                valid("\"1.00\"", "EUR", "acc-2")
                    .replace_bytes("2026-11-25T10:00:00Z", "yesterday"),
            ),
            RejectReason::InvalidTimestamp,
            true,
        ),
        // Well-formed but not this ledger's currency: decided, not dead-lettered.
        (
            Some(valid("\"1.00\"", "USD", "acc-2")),
            RejectReason::CurrencyMismatch,
            false,
        ),
    ];
    let mut inputs: Vec<Input> = bad
        .iter()
        .map(|(payload, _, _)| Input::Raw {
            key: Some("acc-1".to_owned()),
            payload: payload.clone(),
        })
        .collect();
    let deposit = transfer("world", "acc-9", 12_345, "EUR");
    inputs.push(Input::Transfer(deposit.clone()));
    feed(&topics, &inputs);

    wait_until("the deposit after the bad records", || {
        let response = http().get(format!("{url}/v1/accounts/acc-9")).send();
        response.is_ok_and(|r| r.status().is_success())
    });
    let balance: AccountView = get_json(&format!("{url}/v1/accounts/acc-9"));
    assert_eq!(balance.balance, "123.45");
    running.stop_all();

    let mut results = topics.reader(&topics.results);
    let mut outcomes = outcomes_of(results.read_at_least(inputs.len()));
    assert_eq!(outcomes.len(), inputs.len());
    outcomes.sort_by_key(|o| o.offset);
    for (outcome, (_, reason, dead)) in outcomes.iter().zip(&bad) {
        assert_eq!(outcome.kind, OutcomeKind::Rejected(*reason), "{outcome:?}");
        if *dead {
            assert!(
                outcome.detail.is_some(),
                "undecodable input says why: {outcome:?}"
            );
        }
    }
    assert_eq!(outcomes.last().map(|o| o.kind), Some(OutcomeKind::Accepted));

    let dead: usize = bad.iter().filter(|(_, _, dlq)| *dlq).count();
    let mut dlq = topics.reader(&topics.dlq);
    let letters = dlq.read_at_least(dead).to_vec();
    assert_eq!(letters.len(), dead);
    let expected: Vec<_> = bad.iter().filter(|(_, _, dlq)| *dlq).collect();
    for (letter, (payload, reason, _)) in letters.iter().zip(expected) {
        let header = |name: &str| {
            letter
                .headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        assert_eq!(
            header(wire::DLQ_HEADER_REASON).as_deref(),
            Some(reason.code())
        );
        assert!(header(wire::DLQ_HEADER_DETAIL).is_some_and(|d| !d.is_empty()));
        assert!(header(wire::DLQ_HEADER_SOURCE)
            .is_some_and(|s| s.starts_with(&format!("{}/0@", topics.transfers))));
        assert_eq!(letter.key.as_deref(), Some(&b"acc-1"[..]));
        let original = payload.clone().unwrap_or_default();
        assert_eq!(letter.payload.clone().unwrap_or_default(), original);
    }
}

/// The HTTP API's answers beyond the happy path.
#[test]
fn the_http_api_answers_queries_and_errors() {
    let topics = Topics::create(2);
    let dir = test_dir();
    let mut running = InProcess::new();
    let url = running.start(topics.config(0, 1, &dir.path().join("shard-0"), &[]));
    let deposit = transfer("world", "acc-api", 5_000, "EUR");
    feed(&topics, &[Input::Transfer(deposit.clone())]);
    wait_until("the deposit", || {
        http()
            .get(format!("{url}/v1/accounts/acc-api"))
            .send()
            .is_ok_and(|r| r.status().is_success())
    });

    assert_eq!(
        http()
            .get(format!("{url}/healthz"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let top: TopView = get_json(&format!("{url}/v1/accounts?top=1"));
    assert_eq!(top.accounts.len(), 1);
    assert_eq!(top.accounts[0].account, "acc-api");
    assert_eq!(top.accounts[0].balance, "50.00");
    // Pages in account order: acc-api, then world.
    let page: BalancesPageView = get_json(&format!("{url}/v1/balances?limit=1"));
    assert_eq!(page.accounts.len(), 1);
    assert_eq!(page.accounts[0].account, "acc-api");
    let page: BalancesPageView = get_json(&format!("{url}/v1/balances?after=acc-api"));
    let rest: Vec<(&str, &str)> = page
        .accounts
        .iter()
        .map(|view| (view.account.as_str(), view.balance.as_str()))
        .collect();
    assert_eq!(rest, [("world", "-50.00")]);
    let status: TransferView = get_json(&format!("{url}/v1/transfers/{}", deposit.id));
    assert_eq!(
        status.decision(),
        Some(ledger_core::domain::Decision::Accepted)
    );
    assert!(status.credited);
    let stats: StatsView = get_json(&format!("{url}/v1/stats"));
    // Every view names the shard by its transactional id; alone, it owns
    // both partitions.
    let name = ledger::kafka::shard_transactional_id(&topics.transactional_prefix, 0);
    assert_eq!(
        (
            stats.shard.as_str(),
            stats.partitions.as_slice(),
            stats.accounts
        ),
        (name.as_str(), &[0, 1][..], 2)
    );
    // The cheap identity that clients ask first says the same.
    let identity: ledger::api::ShardView = get_json(&format!("{url}/v1/shard"));
    assert_eq!(
        (identity.shard.as_str(), identity.partitions.as_slice()),
        (name.as_str(), &[0, 1][..])
    );
    assert!(
        [
            &top.shard,
            &top.accounts[0].shard,
            &page.shard,
            &status.shard
        ]
        .iter()
        .all(|shard| **shard == name),
        "{top:?} {page:?} {status:?}"
    );
    assert_eq!(stats.sum, "0.00");
    assert!(stats
        .offsets
        .iter()
        .any(|o| o.source == Source::Transfers && o.next_offset == 1));

    for (path, code) in [
        ("/v1/accounts/nobody", 404),
        ("/v1/accounts/bad%20id", 400),
        ("/v1/accounts?top=0", 400),
        ("/v1/accounts?top=10000001", 400),
        ("/v1/accounts?top=many", 400),
        ("/v1/balances?limit=0", 400),
        ("/v1/balances?limit=10001", 400),
        ("/v1/balances?after=bad%20id", 400),
        ("/v1/transfers/not-a-uuid", 400),
    ] {
        let response = http().get(format!("{url}{path}")).send().unwrap();
        assert_eq!(response.status().as_u16(), code, "{path}");
        let body: ErrorView = response.json().expect("JSON error body");
        assert!(!body.error.is_empty());
    }
    let metrics = http()
        .get(format!("{url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for name in [
        "txledger_consumer_records_in_total{source=\"transfers\"}",
        "txledger_consumer_outcomes_total{status=\"accepted\",reason=\"none\"}",
        "txledger_consumer_transactions_total{result=\"committed\"}",
        "txledger_consumer_batch_records_bucket",
        "txledger_consumer_batch_duration_seconds_bucket",
        "txledger_consumer_sled_flush_seconds_bucket",
        "txledger_consumer_end_to_end_latency_seconds_bucket",
        "txledger_consumer_balance_sum",
        "txledger_consumer_ready",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    running.stop_all();
}

/// The abort test above is only meaningful if it notices a shard that does
/// not seek back: with the `skip_seek_back` mutant, aborted batches' input
/// never gets an outcome.
#[test]
fn the_skip_seek_back_mutant_loses_records() {
    let topics = Topics::create(1);
    let dir = test_dir();
    let mut running = InProcess::new();
    let config = topics.config(
        0,
        1,
        &dir.path().join("shard-0"),
        &["--batch-records", "10"],
    );
    let mut faults = Faults::default();
    faults.abort_every = Some(3);
    faults.mutant = Some(Mutant::SkipSeekBack);
    let url = running.start_with_faults(config, faults);
    let deposits: Vec<Input> = (0..200)
        .map(|i| Input::Transfer(transfer("world", &format!("acc-{i}"), 100, "EUR")))
        .collect();
    feed(&topics, &deposits);
    // Wait until the shard has read to the end, or stalls (an aborted last
    // batch is never redone).
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let stats: StatsView = get_json(&format!("{url}/v1/stats"));
        let next: i64 = stats
            .offsets
            .iter()
            .filter(|o| o.source == Source::Transfers)
            .map(|o| o.next_offset)
            .sum();
        if next >= 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    running.stop_all();
    let mut results = topics.reader(&topics.results);
    let outcomes = outcomes_of(results.drain());
    let decided: BTreeSet<i64> = outcomes.iter().map(|o| o.offset).collect();
    assert!(
        decided.len() < deposits.len(),
        "the mutant should have lost records, yet all {} have an outcome",
        deposits.len()
    );
}

trait ReplaceBytes {
    fn replace_bytes(self, from: &str, to: &str) -> Vec<u8>;
}

impl ReplaceBytes for Vec<u8> {
    fn replace_bytes(self, from: &str, to: &str) -> Vec<u8> {
        String::from_utf8(self)
            .expect("UTF-8 test input")
            .replacen(from, to, 1)
            .into_bytes()
    }
}
