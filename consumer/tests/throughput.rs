//! Throughput of one shard on the local broker; ignored by default, as it is
//! a measurement, not a check. Run it in release:
//!
//! ```text
//! cargo test -p consumer --release --test throughput -- --ignored --nocapture
//! ```
//!
//! `TXLEDGER_BENCH_TRANSFERS` sets the number of transfers (default 200000).
//! The transfers are fed while the shard is stopped, then the shard is
//! started and timed until it has decided them all, and until every credit
//! is applied (its sum of balances is back to exactly zero).

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use std::time::{Duration, Instant};

use common::*;
use ledger::api::StatsView;
use ledger_core::machine::Source;

fn stats(url: &str) -> StatsView {
    get_json(&format!("{url}/v1/stats"))
}

fn transfers_read(stats: &StatsView) -> i64 {
    stats
        .offsets
        .iter()
        .filter(|o| o.source == Source::Transfers)
        .map(|o| o.next_offset)
        .sum()
}

#[test]
#[ignore = "a measurement; run in release with --ignored --nocapture"]
fn one_shard_throughput() {
    let count: usize = std::env::var("TXLEDGER_BENCH_TRANSFERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let accounts = 1000;
    let topics = Topics::create(6);
    let dir = test_dir();
    let log = dir.path().join("shard.log");
    let mut args = topics.args(0, 1, &dir.path().join("shard-0"));
    // The production batch time, not the tests' shorter one.
    if let Some(at) = args.iter().position(|a| a == "--batch-ms") {
        args[at + 1] = "100".to_owned();
    }

    let names: Vec<String> = (0..accounts).map(|i| format!("acc-{i:04}")).collect();
    let deposits: Vec<Input> = names
        .iter()
        .map(|name| Input::Transfer(transfer("world", name, 1_000_000, "EUR")))
        .collect();
    let mut shard = ChildShard::spawn(&args, &[], &log);
    shard.wait_ready();
    feed(&topics, &deposits);
    wait_until("the deposits", || {
        let stats = stats(&shard.url);
        stats.accounts == accounts as u64 + 1 && stats.sum == "0.00"
    });
    assert!(shard.terminate().success());

    // At most count/accounts*1.00 out of each 10000.00 deposit: all funded.
    let mut rng = Rng::new(7);
    let transfers: Vec<Input> = (0..count)
        .map(|_| {
            let from = rng.below(accounts as u64) as usize;
            let to = (from + 1 + rng.below(accounts as u64 - 1) as usize) % accounts;
            let minor = 1 + rng.below(100) as i64;
            Input::Transfer(transfer(&names[from], &names[to], minor, "EUR"))
        })
        .collect();
    let fed = Instant::now();
    feed(&topics, &transfers);
    eprintln!("fed {count} transfers in {:?}", fed.elapsed());

    let mut shard = ChildShard::spawn(&args, &[], &log);
    let ready = shard.wait_ready();
    let started = Instant::now();
    let total = (accounts + count) as i64;
    let mut decided = None;
    loop {
        let stats = stats(&shard.url);
        if decided.is_none() && transfers_read(&stats) >= total {
            decided = Some(started.elapsed());
        }
        if decided.is_some() && stats.sum == "0.00" {
            break;
        }
        assert!(started.elapsed() < DEADLINE * 5, "not done in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    let settled = started.elapsed();
    let decided = decided.unwrap_or(settled);
    eprintln!(
        "one shard: {count} transfers decided in {decided:.2?} ({:.0} transfers/s); \
         all credits applied after {settled:.2?} ({:.0} transfers/s end to end, \
         {:.0} input records/s); start-up to ready {ready:.2?}",
        count as f64 / decided.as_secs_f64(),
        count as f64 / settled.as_secs_f64(),
        (2 * count) as f64 / settled.as_secs_f64(),
    );
    let metrics = http()
        .get(format!("{}/metrics", shard.url))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    for line in metrics.lines().filter(|l| {
        l.starts_with("txledger_consumer_batch_records_sum")
            || l.starts_with("txledger_consumer_batch_records_count")
            || l.starts_with("txledger_consumer_sled_flush_seconds_sum")
            || l.starts_with("txledger_consumer_sled_flush_seconds_count")
            || l.starts_with("txledger_consumer_batch_duration_seconds_sum")
            || l.starts_with("txledger_consumer_transactions_total")
    }) {
        eprintln!("  {line}");
    }
    assert!(shard.terminate().success());
}
