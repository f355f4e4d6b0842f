//! `--hold-max-ms` on a real broker: a shortage that cannot be proven
//! (a partition does not move) waits that long, then is rejected
//! `hold_expired`. Its own process: the order test counts held transfers
//! in the process's metrics.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use common::*;
use ledger_core::domain::{OutcomeKind, RejectReason};
use ledger_core::routing;

const PARTITIONS: i32 = 6;

/// A partition that does not move (here: its shard never starts) leaves a
/// shortage unprovable; `--hold-max-ms` bounds the wait, and the transfer
/// is rejected `hold_expired`, saying so. A funded transfer on the same
/// shard is not held at all.
#[test]
fn a_shortage_that_cannot_be_proven_is_rejected_after_the_hold() {
    let topics = Topics::create(PARTITIONS);
    let dir = test_dir();
    let mut running = InProcess::new();
    // Shard 0 of 2 owns the even partitions; shard 1 stays down.
    let config = topics.config(
        0,
        2,
        &dir.path().join("shard-0"),
        &["--hold-max-ms", "2000"],
    );
    running.start(config);
    let on_shard_0 = |prefix: &str| {
        (0..)
            .map(|index| format!("{prefix}-{index}"))
            .find(|name| routing::partition_for(name.as_bytes(), PARTITIONS) % 2 == 0)
            .expect("an account of shard 0")
    };
    let (poor, rich) = (on_shard_0("poor"), on_shard_0("rich"));
    let world = routing::partition_for(b"world", PARTITIONS);
    let mut inputs = Vec::new();
    if world % 2 == 0 {
        // The deposit is decided by shard 0 too: the payment is funded.
        inputs.push(Input::Transfer(transfer("world", &rich, 500, "EUR")));
        inputs.push(Input::Transfer(transfer(&rich, &poor, 100, "EUR")));
    }
    inputs.push(Input::Transfer(transfer(&poor, &rich, 1_000_000, "EUR")));
    let started = std::time::Instant::now();
    feed(&topics, &inputs);
    let mut results = topics.reader(&topics.results);
    let outcomes = outcomes_of(results.read_at_least(inputs.len()));
    let waited = started.elapsed();
    let overdraft = outcomes
        .iter()
        .find(|outcome| {
            outcome
                .transfer
                .as_ref()
                .is_some_and(|t| t.from.as_str() == poor && t.amount.minor() == 1_000_000)
        })
        .expect("the overdraft's outcome");
    assert_eq!(
        overdraft.kind,
        OutcomeKind::Rejected(RejectReason::HoldExpired),
        "{outcomes:?}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(2000),
        "rejected after {waited:?}, before --hold-max-ms"
    );
    for outcome in outcomes.iter().filter(|o| !std::ptr::eq(*o, overdraft)) {
        assert_eq!(outcome.kind, OutcomeKind::Accepted, "{outcome:?}");
    }
    running.stop_all();
}
