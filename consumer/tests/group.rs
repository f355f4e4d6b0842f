//! Group-managed partitions (`--assignment group`), with the real `consumer`
//! binary as child processes against a real broker: shards that join and
//! leave take their partitions' state with them through the changelog, and
//! a shard the group has moved on from cannot commit.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use consumer::faults::{ENV_STALL_AFTER_BATCHES, ENV_STALL_AT, ENV_STALL_MS};

/// Shard `ordinal` of a group-managed set: the ordinal only names its
/// transactional id; the group decides its partitions.
fn group_args(topics: &Topics, ordinal: u32, data: &Path) -> Vec<String> {
    let mut args = topics.args(ordinal, 1, data);
    args.extend(
        [
            "--assignment",
            "group",
            "--batch-records",
            "20",
            // The least allowed: a stalled shard loses its partitions soon.
            "--max-poll-interval-ms",
            "10000",
        ]
        .map(str::to_owned),
    );
    args
}

/// Every shard ready (it owns partitions and serves them), and together
/// serving exactly `expected`, each account by one shard. While the group
/// rebalances, a shard answers 503 or a partition is briefly served twice:
/// both are waited out.
fn wait_served(urls: &[String], expected: &BTreeMap<String, i128>) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = None;
    loop {
        if urls.iter().all(|url| is_ready(url)) {
            match try_served_balances(urls) {
                Ok(served) if &served == expected => return,
                served => last = Some(served),
            }
        }
        assert!(
            Instant::now() < deadline,
            "the shards did not serve the expected balances in time:\nserved   {last:?}\nexpected {expected:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Scale out from one shard to two while transfers flow, then back in:
/// the joining shard restores the partitions it is given, the one left
/// takes them back and restores them again; every transfer is decided once,
/// balances equal the model, and every outcome is in the topic once.
#[test]
fn shards_that_join_and_leave_take_their_partitions_with_them() {
    let topics = Topics::create(4);
    let dir = test_dir();
    let scenario = Scenario::new(51, 16, 300);
    let (first_half, second_half) = scenario.transfers.split_at(scenario.transfers.len() / 2);

    let a_log = dir.path().join("a.log");
    let mut a = ChildShard::spawn(&group_args(&topics, 0, &dir.path().join("a")), &[], &a_log);
    a.wait_ready();
    feed(&topics, &scenario.deposits);
    wait_served(
        std::slice::from_ref(&a.url),
        &scenario.model_after_deposits().balances,
    );

    // Scale out, with transfers on the way.
    let b_log = dir.path().join("b.log");
    let mut b = ChildShard::spawn(&group_args(&topics, 1, &dir.path().join("b")), &[], &b_log);
    feed(&topics, first_half);
    b.wait_ready();
    let urls = [a.url.clone(), b.url.clone()];
    let mut after_first = Model::default();
    after_first.apply(&scenario.deposits);
    after_first.apply(first_half);
    wait_served(&urls, &after_first.balances);
    let b_text = b.log_text();
    assert!(
        b_text.contains("Restoring assigned partitions from the changelog.")
            && b_text.contains("Restored from the changelog."),
        "{b_text}"
    );

    // Scale in: b leaves the group cleanly; a takes everything back.
    assert!(b.terminate().success());
    feed(&topics, second_half);
    let model = scenario.model();
    wait_served(std::slice::from_ref(&a.url), &model.balances);
    verify_served(&model, std::slice::from_ref(&a.url));
    let a_text = a.log_text();
    assert!(
        count(&a_text, "Partitions assigned by the group.") >= 3,
        "a joined alone, shared with b, then got b's partitions back: {a_text}"
    );
    assert!(
        a_text.contains("Restored from the changelog."),
        "a restores the partitions b had: {a_text}"
    );
    assert!(a.terminate().success());
    verify_topics(
        &topics,
        scenario.deposits.len() + scenario.transfers.len(),
        &model,
    );
}

/// A shard that stalls inside a transaction of its second batch or a later
/// one, after its sled write and before its offsets, for longer than the
/// group waits: the group gives its partitions to the other shard, which
/// restores what the stalled one committed before and decides the rest. When the
/// stalled shard wakes, its offsets carry a generation the group has left
/// behind: the commit is refused, the transaction aborted and undone, and
/// nothing it did is visible. Everything is decided once.
#[test]
fn a_shard_the_group_has_moved_on_from_cannot_commit() {
    let topics = Topics::create(4);
    let dir = test_dir();
    let scenario = Scenario::new(53, 12, 120);

    let zombie_log = dir.path().join("zombie.log");
    let mut zombie = ChildShard::spawn(
        &group_args(&topics, 0, &dir.path().join("zombie")),
        &[
            (ENV_STALL_AT, "after_sled_write"),
            // Past the poll interval (10 s), then the session (10 s more: a
            // static member's heartbeats stop but it does not leave), then
            // a rebalance: the group has moved on before it wakes.
            (ENV_STALL_MS, "35000"),
            (ENV_STALL_AFTER_BATCHES, "2"),
        ],
        &zombie_log,
    );
    let other_log = dir.path().join("other.log");
    let mut other = ChildShard::spawn(
        &group_args(&topics, 1, &dir.path().join("other")),
        &[],
        &other_log,
    );
    zombie.wait_ready();
    other.wait_ready();
    let urls = [zombie.url.clone(), other.url.clone()];
    wait_served(&urls, &BTreeMap::new());

    feed(&topics, &scenario.deposits);
    feed(&topics, &scenario.transfers);
    let model = scenario.model();
    // Only the other shard can serve everything while the zombie sleeps;
    // then both, once the zombie has rejoined.
    wait_until("the stalled shard to stall", || {
        zombie
            .log_text()
            .contains("Failure injection: stalling the loop.")
    });
    // The other shard takes every partition, restoring what the stalled
    // one had committed.
    wait_until(
        "the other shard to restore the stalled one's partitions",
        || other.log_text().contains("Restored from the changelog."),
    );
    wait_served(&urls, &model.balances);
    verify_served(&model, &urls);

    let zombie_text = zombie.log_text();
    let refused = zombie_text
        .lines()
        .find(|line| line.contains("Transaction failed: aborting and redoing the batch."))
        .unwrap_or_else(|| panic!("the zombie's commit must fail: {zombie_text}"));
    assert!(
        refused.contains("send_offsets_to_transaction")
            && ["generation", "member", "fenced"]
                .iter()
                .any(|why| refused.contains(why)),
        "refused for its generation or membership: {refused}"
    );
    assert!(zombie.terminate().success());
    assert!(other.terminate().success());
    verify_topics(
        &topics,
        scenario.deposits.len() + scenario.transfers.len(),
        &model,
    );
}
