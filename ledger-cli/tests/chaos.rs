//! The chaos run: the whole pipeline as child processes on a real broker,
//! with shards killed (SIGKILL) every few seconds, twice with their sled
//! directory deleted, the producer killed mid-transaction and restarted,
//! and the broker stopped and restarted, while transfers flow. At the end
//! the audit must pass. It runs twice: with partitions assigned by ordinal,
//! and with the consumer group assigning them, where the shard set is also
//! scaled in (a shard stopped for good) and out again (started) meanwhile.
//!
//! The test is the supervisor (as Kubernetes would be): it restarts what
//! died, including shards that exit on their own after the broker outage
//! (a fenced or broken producer is fatal to a shard by design).
//!
//! It proves its faults happened, not only that they were attempted: a
//! producer kill counts only when the killed producer left a transaction
//! with records open (so the audit must see aborted input), and one shard
//! incarnation is made to die between its sled write and its commit, and
//! its successor must say it undid that batch.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::io::Write as _;
use std::time::{Duration, Instant};

mod common;

use common::OpenTransactions;
use ledger_cli::pipeline::{self, Binaries, Pipeline, PipelineConfig, ProducerRun};

/// Transfers per producer run; every incarnation resends the same seeded
/// stream from the start, so the last one alone delivers all of them.
const TRANSFERS: u64 = 24_000;
const SHARDS: u32 = 3;
/// The producer's default `--fail-share`: transfers meant to overdraw.
const FAIL_SHARE: f64 = 0.02;
const SHARD_KILLS_MIN: u32 = 10;
const PRODUCER_KILLS: u32 = 2;
/// Shards killed with their sled directory deleted (a lost volume).
const DATA_LOSSES: u32 = 2;
const KILL_INTERVAL: Duration = Duration::from_secs(3);
/// With group assignment, the round from which a shard is retired (the
/// first whose victim is not the planted crash); it is started again once
/// the others have taken its partitions over. The producer, restarted from
/// the start of its stream at rounds 3 and 6, runs well past both.
const SCALE_IN_ROUND: u32 = 1;
/// The shard that dies between its sled write and its commit, at its
/// second non-empty batch (the first may be a recovery's small one).
const PLANTED_CRASH: [(&str, &str); 2] = [
    ("TXLEDGER_FAIL_AT", "after_sled_write"),
    ("TXLEDGER_FAIL_AFTER_BATCHES", "2"),
];

/// Kills the producer at a moment it has records in an open transaction,
/// restarts it, and says whether that transaction was really left open:
/// after a pause long enough for a commit already asked for to complete,
/// records must still be beyond the last stable offset.
fn kill_producer_mid_transaction(
    pipeline: &mut Pipeline,
    open: &OpenTransactions,
    run: &ProducerRun,
) -> bool {
    let had_records = open.wait_for_records(Duration::from_secs(5));
    pipeline.kill_producer();
    std::thread::sleep(Duration::from_millis(500));
    let left_open = had_records && open.records().is_some_and(|records| records > 0);
    pipeline.start_producer(run).expect("producer restart");
    left_open
}
/// Whether the shards not retired own every partition between them, each
/// answering with its offsets (after a rebalance, the partitions it took).
fn taken_over(pipeline: &Pipeline, partitions: i32) -> bool {
    let active = pipeline.active_shards();
    let stats = pipeline.stats();
    let mut owned = std::collections::BTreeSet::new();
    for index in active {
        let Some(view) = &stats[index] else {
            return false;
        };
        owned.extend(view.offsets.iter().map(|offset| offset.partition));
    }
    owned.len() == partitions as usize
}

/// How often `text` occurs in the shards' logs, together.
fn count_in_logs(pipeline: &Pipeline, text: &str) -> usize {
    (0..SHARDS as usize)
        .map(|shard| {
            std::fs::read_to_string(pipeline.shard_log(shard))
                .unwrap_or_default()
                .matches(text)
                .count()
        })
        .sum()
}

/// A shard's log from byte `from` on.
fn shard_log_from(pipeline: &Pipeline, shard: usize, from: u64) -> String {
    let log = std::fs::read(pipeline.shard_log(shard)).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(log.len());
    String::from_utf8_lossy(&log[from..]).into_owned()
}

fn print_logs(pipeline: &Pipeline, broker: &harness::Broker) {
    for shard in 0..SHARDS as usize {
        let log = std::fs::read_to_string(pipeline.shard_log(shard)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("--- shard {shard} log tail ---");
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
    eprintln!("--- broker log tail ---\n{}", broker.log_tail(60));
}

#[test]
fn the_pipeline_survives_chaos_and_the_audit_passes() {
    chaos(false);
}

#[test]
fn with_group_assignment_the_pipeline_survives_chaos_and_scaling() {
    chaos(true);
}

fn chaos(group_assignment: bool) {
    let binaries = Binaries::locate().expect("the producer and consumer binaries");
    // Its own broker, not the shared one: this test stops and restarts it.
    let mut broker = harness::Broker::start(harness::BrokerOptions::default())
        .unwrap_or_else(|error| panic!("starting the broker: {error}"));
    let prefix = harness::unique_name("chaos") + "-";
    let work = tempfile::tempdir().expect("work dir");
    let config = PipelineConfig {
        group_assignment,
        ..PipelineConfig::prefixed(
            broker.bootstrap_servers().to_owned(),
            &prefix,
            6,
            SHARDS,
            work.path().to_owned(),
        )
    };
    let mut pipeline = Pipeline::new(config, binaries).expect("pipeline");
    pipeline.create_topics().expect("topics");
    pipeline.start_shards().expect("shards");
    if let Err(error) = pipeline.wait_ready(Duration::from_secs(180)) {
        print_logs(&pipeline, &broker);
        panic!("{error}");
    }
    let open = OpenTransactions::new(
        broker.bootstrap_servers(),
        &pipeline::prefixed_topics(&prefix).transactions,
        6,
    );
    let run = ProducerRun {
        count: TRANSFERS,
        rate: 1_500,
        seed: 11,
        accounts: 500,
        batch_ms: 100,
    };
    pipeline.start_producer(&run).expect("producer");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(420);
    let mut next_kill = started + KILL_INTERVAL;
    let mut round = 0u32;
    let mut broker_restarted = false;
    let mut unplanned_restarts = 0u32;
    let mut producer_kills_mid_transaction = 0u32;
    // The shard made to crash inside its protocol, until it has; then that
    // shard and the length of its log when its successor started.
    let mut planted: Option<usize> = None;
    let mut planted_successor: Option<(usize, u64)> = None;
    // With group assignment: the shard retired, until it is started again,
    // and whether both happened while the producer ran.
    let mut retired: Option<usize> = None;
    let mut scaled_while_producing = true;
    // Pseudo-random but reproducible choice of victims.
    let mut victim = 0x9e37_79b9_u32;
    loop {
        assert!(
            Instant::now() < deadline,
            "the chaos run did not finish in time: {:?}",
            pipeline.disruptions
        );
        std::thread::sleep(Duration::from_millis(200));
        let scaled = !group_assignment || pipeline.disruptions.scale_outs > 0;
        let producer_done = producer_kills_mid_transaction >= PRODUCER_KILLS && scaled;
        match pipeline.producer_exit() {
            Some(status) if status.success() && producer_done => break,
            Some(status) if status.success() && !scaled => {
                // Traffic goes on until the shard set has been scaled in
                // and out: the next run resends the stream (duplicates).
                pipeline.start_producer(&run).expect("producer restart");
            }
            Some(_) => {
                // Died on its own (e.g. during the broker outage): restart.
                unplanned_restarts += 1;
                pipeline.start_producer(&run).expect("producer restart");
            }
            None => {}
        }
        for shard in pipeline.active_shards() {
            if pipeline.shard_exit(shard).is_some() {
                if planted == Some(shard) {
                    planted = None;
                    let log = std::fs::metadata(pipeline.shard_log(shard)).map_or(0, |m| m.len());
                    planted_successor = Some((shard, log));
                } else {
                    unplanned_restarts += 1;
                }
                pipeline.start_shard(shard).expect("shard restart");
            }
        }
        if Instant::now() < next_kill {
            continue;
        }
        next_kill = Instant::now() + KILL_INTERVAL;
        round += 1;
        victim ^= victim << 13;
        victim ^= victim >> 17;
        victim ^= victim << 5;
        let active = pipeline.active_shards();
        let shard = active[victim as usize % active.len()];
        let scale_in = group_assignment
            && pipeline.disruptions.scale_ins == 0
            && round >= SCALE_IN_ROUND
            && planted != Some(shard);
        if scale_in {
            scaled_while_producing &= pipeline.producer_exit().is_none();
            let status = pipeline.retire_shard(shard);
            assert!(
                status.is_some_and(|status| status.success()),
                "a retired shard stops cleanly: {status:?}"
            );
            retired = Some(shard);
        } else if let Some(shard) = retired.filter(|_| taken_over(&pipeline, 6)) {
            scaled_while_producing &= pipeline.producer_exit().is_none();
            pipeline.start_shard(shard).expect("scale-out");
            retired = None;
        } else if round == 2 {
            // Once: this incarnation dies by itself, mid-protocol.
            pipeline.kill_shard(shard);
            pipeline
                .start_shard_with(shard, &PLANTED_CRASH)
                .expect("shard restart");
            planted = Some(shard);
        } else if planted != Some(shard) {
            if round % 3 == 1 && pipeline.disruptions.data_losses < DATA_LOSSES {
                pipeline
                    .lose_shard_data(shard)
                    .expect("deleting a shard's data");
            } else {
                pipeline.kill_shard(shard);
            }
            pipeline.start_shard(shard).expect("shard restart");
        }
        if round % 3 == 0
            && producer_kills_mid_transaction < PRODUCER_KILLS
            && kill_producer_mid_transaction(&mut pipeline, &open, &run)
        {
            producer_kills_mid_transaction += 1;
        }
        if round == 5 && !broker_restarted {
            // A deliberate outage of a few seconds while everyone is busy.
            broker.stop().expect("stopping the broker");
            std::thread::sleep(Duration::from_secs(3));
            broker.restart().expect("restarting the broker");
            broker_restarted = true;
        }
    }
    // Keep killing shards until the minimum is reached, then settle.
    while pipeline.disruptions.shard_kills < SHARD_KILLS_MIN {
        std::thread::sleep(KILL_INTERVAL);
        let active = pipeline.active_shards();
        let shard = active[pipeline.disruptions.shard_kills as usize % active.len()];
        pipeline.kill_shard(shard);
        pipeline.start_shard(shard).expect("shard restart");
    }
    let settled = pipeline
        .wait_ready(Duration::from_secs(180))
        .and_then(|()| pipeline.wait_caught_up(Duration::from_secs(300)));
    if let Err(error) = settled {
        print_logs(&pipeline, &broker);
        panic!("the shards did not settle: {error}");
    }
    let report = match pipeline.audit() {
        Ok(report) => report,
        Err(error) => {
            print_logs(&pipeline, &broker);
            panic!("the audit could not run: {error}");
        }
    };
    let disruptions = pipeline.disruptions;
    let restores = count_in_logs(&pipeline, "Restored from the changelog.");
    // Written to stderr directly, not with eprintln!, which the test harness
    // captures: what the run survived belongs in every test log, passing or
    // not.
    let _ = writeln!(
        std::io::stderr(),
        "chaos run: {TRANSFERS} transfers per producer run over {:?}; shard kills {}, \
         shard crashes between sled write and commit {}, sled directories deleted {} \
         (restores from the changelog {restores}), producer kills {} ({} left a \
         transaction with records open), producer runs {}, broker restarts {}, \
         scale-ins {}, scale-outs {}, unplanned restarts {}\n{report}",
        started.elapsed(),
        disruptions.shard_kills,
        u32::from(planted_successor.is_some()),
        disruptions.data_losses,
        disruptions.producer_kills,
        producer_kills_mid_transaction,
        disruptions.producer_starts,
        u32::from(broker_restarted),
        disruptions.scale_ins,
        disruptions.scale_outs,
        unplanned_restarts,
    );
    if !report.passed() {
        print_logs(&pipeline, &broker);
    }
    assert!(report.passed(), "the audit failed after the chaos run");
    // Decisions follow the generator's order, kills or not: the ledger
    // rejects for want of funds what the generator meant to fail, and
    // nothing for timing (the audit has proven each insufficient_funds).
    let totals = &report.totals;
    let decided = (totals.accepted + totals.rejected) as f64;
    let short = totals.insufficient_funds as f64 / decided;
    assert!(
        (short - FAIL_SHARE).abs() <= 0.005,
        "insufficient_funds is {:.2}% of decided transfers, the generator asked for {:.2}%",
        100.0 * short,
        100.0 * FAIL_SHARE
    );
    assert!(disruptions.shard_kills >= SHARD_KILLS_MIN);
    assert_eq!(disruptions.data_losses, DATA_LOSSES);
    // Each lost directory came back from the changelog (a kill between a
    // restore's start and its end restores once more).
    assert!(
        restores >= DATA_LOSSES as usize,
        "{restores} restores for {DATA_LOSSES} lost directories"
    );
    assert!(producer_kills_mid_transaction >= PRODUCER_KILLS);
    assert!(
        report.totals.inputs_aborted > 0,
        "producers killed mid-transaction leave aborted input records"
    );
    assert!(broker_restarted);
    if group_assignment {
        for shard in 0..SHARDS as usize {
            let log = std::fs::read_to_string(pipeline.shard_log(shard)).unwrap_or_default();
            for line in log.lines().filter(|line| {
                line.contains("Partitions assigned by the group.")
                    || line.contains("Partitions revoked by the group.")
            }) {
                let _ = writeln!(std::io::stderr(), "shard {shard}: {line}");
            }
        }
        assert!(disruptions.scale_ins >= 1 && disruptions.scale_outs >= 1);
        assert!(
            scaled_while_producing,
            "the shard set was scaled in and out while the producer ran"
        );
        // The others restored the retired shard's partitions, and it
        // restored them back: more restores than lost directories.
        assert!(
            restores > DATA_LOSSES as usize,
            "{restores} restores: partitions moved with the scale-in and out"
        );
        let regroups = count_in_logs(&pipeline, "Partitions assigned by the group.");
        assert!(
            regroups >= 2 * SHARDS as usize,
            "the group assigned partitions {regroups} times"
        );
    }
    let (shard, from) = planted_successor.expect("the planted shard crash happened");
    let successor = shard_log_from(&pipeline, shard, from);
    assert!(
        successor
            .lines()
            .any(|line| line.contains("Recovery decided") && line.contains("UndoPending")),
        "the successor of the shard that died between its sled write and its commit \
         undid that batch:\n{successor}"
    );
    let statuses = pipeline.stop();
    assert!(
        statuses.iter().all(|s| s.is_some_and(|s| s.success())),
        "every shard stops cleanly on SIGTERM: {statuses:?}"
    );
}
