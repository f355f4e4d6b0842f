//! Decisions in the ledger's order, on a real broker: a transfer is decided
//! against the credits of the transfers created before it, however the
//! records of different partitions arrive, on one shard or three.
//!
//! Every import below is written without a transaction, so its records on
//! different partitions race each other: a payment routinely reaches its
//! shard before the deposit that funds it. Each must still be accepted, and
//! each overdraft must still be proven short (`insufficient_funds`, never
//! the timing-dependent `hold_expired`).

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use common::*;
use ledger_core::routing;

const PARTITIONS: i32 = 6;
/// Independent imports per pipeline, each on fresh accounts.
const RUNS: usize = 10;

/// `count` account names, each on its own partition, none on `world`'s:
/// every hop of a chain crosses partitions.
fn spread_accounts(prefix: &str, count: usize) -> Vec<String> {
    let partition = |name: &str| routing::partition_for(name.as_bytes(), PARTITIONS);
    let mut used = vec![partition("world")];
    let mut names = Vec::new();
    for index in 0.. {
        if names.len() == count {
            break;
        }
        let name = format!("{prefix}-{index}");
        if !used.contains(&partition(&name)) {
            used.push(partition(&name));
            names.push(name);
        }
    }
    names
}

/// The import of the issue that found the problem, then a chain of
/// deposit-then-spend hops across partitions, ending in an overdraft.
fn import(run: usize) -> Vec<Input> {
    let alice = format!("alice-{run}");
    let bob = format!("bob-{run}");
    let mut inputs = vec![
        Input::Transfer(transfer("world", &alice, 10_000, "EUR")),
        Input::Transfer(transfer(&alice, &bob, 3_050, "EUR")),
    ];
    let chain = spread_accounts(&format!("chain{run}"), 5);
    inputs.push(Input::Transfer(transfer("world", &chain[0], 10_000, "EUR")));
    // Each account passes most of what it got on, and a little back.
    let mut amount = 9_000;
    for hop in chain.windows(2) {
        inputs.push(Input::Transfer(transfer(&hop[0], &hop[1], amount, "EUR")));
        inputs.push(Input::Transfer(transfer(&hop[1], &hop[0], 500, "EUR")));
        amount -= 1_000;
    }
    // One cent more than the last account has (the last hop's amount less
    // what it gave back): a shortage every partition's marks must prove.
    let last = amount + 1_000 - 500;
    inputs.push(Input::Transfer(transfer(&chain[4], &bob, last + 1, "EUR")));
    inputs
}

/// Transfers held so far by the shards of this process (the metrics
/// registry is the process's, shared by its shards).
fn held_so_far(url: &str) -> f64 {
    let metrics = http()
        .get(format!("{url}/metrics"))
        .send()
        .and_then(|response| response.text())
        .expect("/metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("txledger_consumer_held_total "))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

fn decided_in_the_order_of_creation(shards: u32) {
    let topics = Topics::create(PARTITIONS);
    let dir = test_dir();
    let mut running = InProcess::new();
    for shard in 0..shards {
        let data = dir.path().join(format!("shard-{shard}"));
        running.start(topics.config(shard, shards, &data, &[]));
    }
    let held_before = held_so_far(&running.urls[0]);
    let mut model = Model::default();
    let mut count = 0;
    for run in 0..RUNS {
        let inputs = import(run);
        model.apply(&inputs);
        feed(&topics, &inputs);
        count += inputs.len();
    }
    let rejected = model
        .decisions
        .values()
        .filter(|decision| **decision != ledger_core::domain::Decision::Accepted)
        .count();
    assert_eq!(
        rejected, RUNS,
        "one overdraft per run, everything else funded"
    );
    wait_for_balances(&running.urls, &model.balances);
    // Every decision exactly as the model's, which folds in creation order.
    verify_served(&model, &running.urls);
    // The race happened: payments reached their shard before their funds.
    let held = held_so_far(&running.urls[0]) - held_before;
    assert!(
        held > 0.0,
        "no transfer was ever held: the imports did not race"
    );
    running.stop_all();
    verify_topics(&topics, count, &model);
}

/// One test, so that nothing else in this process moves the counter of
/// held transfers while a pipeline is measured.
#[test]
fn one_shard_and_three_decide_in_the_order_of_creation() {
    decided_in_the_order_of_creation(1);
    decided_in_the_order_of_creation(3);
}

/// The same imports on three shard processes, one of them killed (SIGKILL)
/// right after every second import and started again on its directory:
/// held transfers, marks and floors survive the kills (sled, the pending
/// record, the changelog), and every decision is still the model's.
#[test]
fn shards_killed_mid_import_still_decide_in_the_order_of_creation() {
    const SHARDS: u32 = 3;
    let topics = Topics::create(PARTITIONS);
    let dir = test_dir();
    let args: Vec<Vec<String>> = (0..SHARDS)
        .map(|shard| topics.args(shard, SHARDS, &dir.path().join(format!("shard-{shard}"))))
        .collect();
    let log = |shard: usize| dir.path().join(format!("shard-{shard}.log"));
    let mut shards: Vec<ChildShard> = (0..SHARDS as usize)
        .map(|shard| ChildShard::spawn(&args[shard], &[], &log(shard)))
        .collect();
    for shard in &mut shards {
        shard.wait_ready();
    }
    let mut model = Model::default();
    let mut count = 0;
    let mut kills_while_holding = 0;
    for run in 0..RUNS {
        let inputs = import(run);
        model.apply(&inputs);
        feed(&topics, &inputs);
        count += inputs.len();
        if run % 2 == 1 {
            let victim = (run / 2) % SHARDS as usize;
            let held =
                get_json::<ledger::api::StatsView>(&format!("{}/v1/stats", shards[victim].url))
                    .held;
            if held > 0 {
                kills_while_holding += 1;
            }
            shards[victim].signal(rustix::process::Signal::KILL);
            shards[victim].wait_exit();
            shards[victim] = ChildShard::spawn(&args[victim], &[], &log(victim));
            shards[victim].wait_ready();
        }
    }
    let urls: Vec<String> = shards.iter().map(|shard| shard.url.clone()).collect();
    wait_for_balances(&urls, &model.balances);
    verify_served(&model, &urls);
    println!(
        "{} shard kills, {kills_while_holding} of them with transfers held",
        RUNS / 2
    );
    for shard in shards {
        let status = shard.terminate();
        assert!(status.success(), "a shard did not stop cleanly: {status}");
    }
    verify_topics(&topics, count, &model);
}
