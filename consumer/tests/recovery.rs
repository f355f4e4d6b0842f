//! Crashes, restarts and zombies, with the real `consumer` binary as a child
//! process against a real broker: the process dies at each named protocol
//! step (failure injection aborts it, like SIGKILL), is restarted on the
//! same sled directory, and the final state and outcome topic must be
//! exactly those of a run without failure.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Instant;

use common::*;
use consumer::faults::{
    Step, ENV_FAIL_AFTER_BATCHES, ENV_FAIL_AT, ENV_HANG_AFTER_BATCHES, ENV_HANG_IN, ENV_MUTANT,
    ENV_STALL_AFTER_BATCHES, ENV_STALL_AT, ENV_STALL_MS, HANGING_CALLS,
};
use consumer::EXIT_STUCK;
use ledger::store::{Store, StoreOptions};
use rustix::process::Signal;

const SIGABRT: i32 = 6;

fn shard_args(topics: &Topics, data: &Path) -> Vec<String> {
    let mut args = topics.args(0, 1, data);
    // Small batches: the scenario spans many transactions.
    args.extend(["--batch-records".to_owned(), "20".to_owned()]);
    args
}

/// The text the shard logged since its last start.
fn last_incarnation(log: &str) -> &str {
    log.rfind("Ledger opened.").map_or(log, |at| &log[at..])
}

/// Phase 1 (deposits) with a healthy shard stopped by SIGTERM, which must
/// exit 0 and leave no pending record.
fn deposits_then_sigterm(topics: &Topics, scenario: &Scenario, args: &[String], dir: &Path) {
    let log = dir.join("shard.log");
    let mut shard = ChildShard::spawn(args, &[], &log);
    shard.wait_ready();
    feed(topics, &scenario.deposits);
    wait_for_balances(
        std::slice::from_ref(&shard.url),
        &scenario.model_after_deposits().balances,
    );
    let status = shard.terminate();
    assert!(
        status.success(),
        "SIGTERM must end the shard with 0, got {status}"
    );
    let data = dir.join("shard-0");
    let store =
        Store::open_existing(&data, StoreOptions::default()).expect("open the stopped ledger");
    assert!(
        store.pending().is_none(),
        "a clean stop leaves no pending record"
    );
}

/// Restarts the shard on its directory and checks the whole run.
fn restart_and_verify(topics: &Topics, scenario: &Scenario, args: &[String], log: &Path) -> String {
    let mut shard = ChildShard::spawn(args, &[], log);
    shard.wait_ready();
    let model = scenario.model();
    wait_for_balances(std::slice::from_ref(&shard.url), &model.balances);
    verify_served(&model, std::slice::from_ref(&shard.url));
    let recovered = last_incarnation(&shard.log_text()).to_owned();
    let status = shard.terminate();
    assert!(status.success(), "{status}");
    verify_topics(
        topics,
        scenario.deposits.len() + scenario.transfers.len(),
        &model,
    );
    recovered
}

fn crash_at(step: Step, seed: u64) {
    let topics = Topics::create(3);
    let dir = test_dir();
    let data = dir.path().join("shard-0");
    let log = dir.path().join("shard.log");
    let args = shard_args(&topics, &data);
    let scenario = Scenario::new(seed, 12, 150);
    deposits_then_sigterm(&topics, &scenario, &args, dir.path());

    // Phase 2 with the shard dying at `step` of its second batch.
    feed(&topics, &scenario.transfers);
    let mut shard = ChildShard::spawn(
        &args,
        &[(ENV_FAIL_AT, step.name()), (ENV_FAIL_AFTER_BATCHES, "2")],
        &log,
    );
    let status = shard.wait_exit();
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "the shard must die at {}: {status}",
        step.name()
    );
    assert!(last_incarnation(&shard.log_text()).contains("Failure injection"));
    drop(shard);

    let recovered = restart_and_verify(&topics, &scenario, &args, &log);
    // What recovery found, per step (the batch before is committed but its
    // pending record not yet replaced).
    let expected: &[&str] = match step {
        Step::AfterPoll | Step::AfterProduce => &["KeepPending", "Normal"],
        Step::AfterSledWrite | Step::AfterSendOffsets => &["UndoPending"],
        Step::AfterCommit | Step::BeforeClearPending => &["KeepPending"],
    };
    assert!(
        expected
            .iter()
            .any(|d| recovered.contains(&format!("decision={d}"))),
        "recovery after {} should be one of {expected:?}:\n{recovered}",
        step.name()
    );
}

#[test]
fn crash_after_poll() {
    crash_at(Step::AfterPoll, 11);
}

#[test]
fn crash_after_produce() {
    crash_at(Step::AfterProduce, 12);
}

#[test]
fn crash_after_sled_write() {
    crash_at(Step::AfterSledWrite, 13);
}

#[test]
fn crash_after_send_offsets() {
    crash_at(Step::AfterSendOffsets, 14);
}

#[test]
fn crash_after_commit() {
    crash_at(Step::AfterCommit, 15);
}

#[test]
fn crash_before_clear_pending() {
    crash_at(Step::BeforeClearPending, 16);
}

/// SIGKILL while batches flow, then a restart: prints the restart-to-ready
/// time, and the result is exact.
#[test]
fn sigkill_mid_stream_then_restart() {
    let topics = Topics::create(3);
    let dir = test_dir();
    let data = dir.path().join("shard-0");
    let log = dir.path().join("shard.log");
    let args = shard_args(&topics, &data);
    let scenario = Scenario::new(21, 12, 150);
    deposits_then_sigterm(&topics, &scenario, &args, dir.path());

    let mut shard = ChildShard::spawn(&args, &[], &log);
    shard.wait_ready();
    feed(&topics, &scenario.transfers);
    wait_until("some transfers to be processed", || {
        let stats: ledger::api::StatsView = get_json(&format!("{}/v1/stats", shard.url));
        // The feeder is not transactional: transfer offsets are dense.
        stats
            .offsets
            .iter()
            .filter(|o| o.source == ledger_core::machine::Source::Transfers)
            .map(|o| o.next_offset)
            .sum::<i64>()
            > (scenario.deposits.len() + 20) as i64
    });
    shard.signal(Signal::KILL);
    let status = shard.wait_exit();
    assert_eq!(status.signal(), Some(9));
    drop(shard);

    let started = Instant::now();
    let mut shard = ChildShard::spawn(&args, &[], &log);
    shard.wait_ready();
    eprintln!("restart-to-ready after SIGKILL: {:?}", started.elapsed());
    assert!(shard.terminate().success());
    restart_and_verify(&topics, &scenario, &args, &log);
}

/// A second instance with the same ordinal, on an empty directory (a lost
/// volume), restores the ledger from the changelog and fences the first,
/// which exits non-zero at its next transaction. The second decides the
/// transfers; the first, restarted on its now stale directory, restores
/// again. Nothing is lost or applied twice, and every outcome is there once.
#[test]
fn a_second_instance_on_an_empty_directory_restores_and_fences_the_first() {
    let topics = Topics::create(3);
    let dir = test_dir();
    let data = dir.path().join("shard-0");
    let args = shard_args(&topics, &data);
    let scenario = Scenario::new(31, 12, 150);
    let log = dir.path().join("first.log");
    let mut first = ChildShard::spawn(&args, &[], &log);
    first.wait_ready();
    feed(&topics, &scenario.deposits);
    let after_deposits = scenario.model_after_deposits();
    wait_for_balances(std::slice::from_ref(&first.url), &after_deposits.balances);

    let second_args = shard_args(&topics, &dir.path().join("empty-dir"));
    let mut second = ChildShard::spawn(&second_args, &[], &dir.path().join("second.log"));
    second.wait_ready();
    let restored = second.log_text();
    assert!(
        restored.contains("Restored from the changelog."),
        "{restored}"
    );
    // Served from the restored state, before any new input.
    wait_for_balances(std::slice::from_ref(&second.url), &after_deposits.balances);

    feed(&topics, &scenario.transfers);
    let status = first.wait_exit();
    assert!(
        !status.success(),
        "the fenced shard must exit non-zero: {status}"
    );
    assert!(
        last_incarnation(&first.log_text()).contains("fatal Kafka error"),
        "{}",
        first.log_text()
    );
    drop(first);
    wait_for_balances(
        std::slice::from_ref(&second.url),
        &scenario.model().balances,
    );
    assert!(second.terminate().success());

    let recovered = restart_and_verify(&topics, &scenario, &args, &log);
    assert!(
        recovered.contains("Restored from the changelog."),
        "{recovered}"
    );
}

/// A restore is refused for partitions that another shard committed last:
/// with a changed `--shards`, that shard may still be processing them, and
/// its transactional id is not this one's, so nothing would fence it. Shard
/// 1 of 2, started on an empty directory after shard 0 of 1 ran the
/// deposits, refuses and names the committer; shard 0 of 1 then goes on
/// as if nothing had happened.
#[test]
fn a_restore_of_partitions_another_shard_committed_is_refused() {
    let topics = Topics::create(3);
    let dir = test_dir();
    let args = shard_args(&topics, &dir.path().join("shard-0"));
    let scenario = Scenario::new(41, 12, 150);
    deposits_then_sigterm(&topics, &scenario, &args, dir.path());

    let mut other_args = topics.args(1, 2, &dir.path().join("shard-1-of-2"));
    other_args.extend(["--batch-records".to_owned(), "20".to_owned()]);
    let mut other = ChildShard::spawn(&other_args, &[], &dir.path().join("other.log"));
    let status = other.wait_exit();
    assert!(!status.success(), "{status}");
    let text = other.log_text();
    let committer = format!("by {}-0", topics.transactional_prefix);
    assert!(
        text.contains("recovery refused")
            && text.contains("last committed by another shard")
            && text.contains(&committer)
            && !text.contains("Restored from the changelog."),
        "{text}"
    );
    drop(other);

    feed(&topics, &scenario.transfers);
    let recovered = restart_and_verify(&topics, &scenario, &args, &dir.path().join("shard.log"));
    assert!(
        !recovered.contains("Restored from the changelog."),
        "{recovered}"
    );
}

/// With the changelog off, nothing can rebuild a lost directory: a shard on
/// an empty one refuses to start, saying why, rather than start from zero.
#[test]
fn without_the_changelog_an_empty_directory_is_refused() {
    let topics = Topics::create(3);
    let dir = test_dir();
    let off = |data: &Path| {
        let mut args = shard_args(&topics, data);
        let at = args
            .iter()
            .position(|arg| arg == "--changelog-topic")
            .expect("the test's topics name a changelog");
        args[at + 1] = String::new();
        args
    };
    let scenario = Scenario::new(37, 12, 150);
    let log = dir.path().join("first.log");
    let mut first = ChildShard::spawn(&off(&dir.path().join("shard-0")), &[], &log);
    first.wait_ready();
    feed(&topics, &scenario.deposits);
    wait_for_balances(
        std::slice::from_ref(&first.url),
        &scenario.model_after_deposits().balances,
    );
    assert!(first.terminate().success());

    let mut second = ChildShard::spawn(
        &off(&dir.path().join("empty-dir")),
        &[],
        &dir.path().join("second.log"),
    );
    let status = second.wait_exit();
    assert!(!status.success(), "{status}");
    let text = second.log_text();
    assert!(
        text.contains("recovery refused") && text.contains("the changelog is off"),
        "{text}"
    );
}

/// With the `commit_before_sled_write` mutant, a crash between the commit
/// and the sled write leaves Kafka ahead of sled: the restart refuses
/// rather than serve balances that miss a committed batch.
#[test]
fn the_commit_before_sled_write_mutant_is_refused_at_restart() {
    let topics = Topics::create(3);
    let dir = test_dir();
    let data = dir.path().join("shard-0");
    let log = dir.path().join("shard.log");
    let args = shard_args(&topics, &data);
    let scenario = Scenario::new(41, 12, 150);
    deposits_then_sigterm(&topics, &scenario, &args, dir.path());
    feed(&topics, &scenario.transfers);
    let mut shard = ChildShard::spawn(
        &args,
        &[
            (ENV_MUTANT, "commit_before_sled_write"),
            (ENV_FAIL_AT, "after_commit"),
            (ENV_FAIL_AFTER_BATCHES, "2"),
        ],
        &log,
    );
    assert_eq!(shard.wait_exit().signal(), Some(SIGABRT));
    drop(shard);
    let mut restarted = ChildShard::spawn(&args, &[], &log);
    let status = restarted.wait_exit();
    assert!(!status.success(), "{status}");
    assert!(last_incarnation(&restarted.log_text()).contains("recovery refused"));
}

/// Waits until the shard's log since its last start holds `line`; the
/// shard must not exit first.
fn wait_logged(shard: &mut ChildShard, line: &str) {
    wait_until(&format!("the shard to log {line:?}"), || {
        if let Ok(Some(status)) = shard.child.try_wait() {
            panic!("the shard exited ({status}) before logging {line:?}");
        }
        last_incarnation(&shard.log_text()).contains(line)
    });
}

/// A transactional call that never returns, as librdkafka's
/// `send_offsets_to_transaction` can on a cluster whose coordinator fails
/// over, is cut off by the shard's watchdog at `--call-timeout-ms` plus
/// the grace: the shard exits with `EXIT_STUCK`, and its restart decides
/// every transfer exactly once.
fn hang_in(call: &str, seed: u64) {
    let topics = Topics::create(3);
    let dir = test_dir();
    let data = dir.path().join("shard-0");
    let log = dir.path().join("shard.log");
    let mut args = shard_args(&topics, &data);
    args.extend(["--call-timeout-ms".to_owned(), "1000".to_owned()]);
    let scenario = Scenario::new(seed, 12, 150);
    deposits_then_sigterm(&topics, &scenario, &args, dir.path());

    feed(&topics, &scenario.transfers);
    let mut shard = ChildShard::spawn(
        &args,
        &[(ENV_HANG_IN, call), (ENV_HANG_AFTER_BATCHES, "2")],
        &log,
    );
    wait_logged(&mut shard, "this call never returns");
    let status = shard.wait_exit();
    assert_eq!(
        status.code(),
        Some(i32::from(EXIT_STUCK)),
        "a call stuck in {call} must end the shard with {EXIT_STUCK}: {status}"
    );
    let text = shard.log_text();
    let incarnation = last_incarnation(&text);
    let overrun = incarnation
        .lines()
        .find(|line| line.contains("did not return within its bound"))
        .unwrap_or_else(|| panic!("the overrun is logged:\n{incarnation}"));
    assert!(
        overrun.contains(call) && overrun.contains("bound_ms=3000"),
        "the overrun names the call and its bound (1 s and 2 s of grace): {overrun}"
    );
    drop(shard);

    let recovered = restart_and_verify(&topics, &scenario, &args, &log);
    assert!(
        recovered.contains("UndoPending"),
        "the cut-off batch was written to sled and never committed: {recovered}"
    );
}

#[test]
fn a_send_offsets_that_never_returns_is_cut_off_and_the_restart_recovers() {
    hang_in(HANGING_CALLS[0], 51);
}

#[test]
fn a_commit_that_never_returns_is_cut_off_and_the_restart_recovers() {
    hang_in(HANGING_CALLS[1], 52);
}

/// A loop held where no bound of ours covers it (a hang nobody has found
/// yet): `/healthz` turns 503 once it has shown no progress for the
/// transaction timeout, and SIGTERM still ends the shard within that bound,
/// with `EXIT_STUCK`; the restart recovers.
#[test]
fn a_stuck_loop_fails_its_liveness_and_sigterm_still_stops_it() {
    let topics = Topics::create(3);
    let dir = test_dir();
    let data = dir.path().join("shard-0");
    let log = dir.path().join("shard.log");
    let mut args = shard_args(&topics, &data);
    args.extend(["--transaction-timeout-ms".to_owned(), "5000".to_owned()]);
    let scenario = Scenario::new(53, 12, 150);
    deposits_then_sigterm(&topics, &scenario, &args, dir.path());

    feed(&topics, &scenario.transfers);
    let mut shard = ChildShard::spawn(
        &args,
        &[
            (ENV_STALL_AT, Step::AfterSendOffsets.name()),
            (ENV_STALL_MS, "3600000"),
            (ENV_STALL_AFTER_BATCHES, "2"),
        ],
        &log,
    );
    wait_logged(&mut shard, "stalling the loop");
    let healthz = format!("{}/healthz", shard.url);
    assert_eq!(
        http().get(&healthz).send().expect("GET /healthz").status(),
        200,
        "healthy until the bound has passed"
    );
    let mut answer = String::new();
    wait_until("/healthz to report the stall", || {
        match http().get(&healthz).send() {
            Ok(response) if response.status() == 503 => {
                answer = response.text().unwrap_or_default();
                true
            }
            _ => false,
        }
    });
    assert!(answer.starts_with("stalled"), "{answer}");

    let terminated = Instant::now();
    shard.signal(Signal::TERM);
    let status = shard.wait_exit();
    let took = terminated.elapsed();
    assert_eq!(status.code(), Some(i32::from(EXIT_STUCK)), "{status}");
    assert!(
        took < std::time::Duration::from_secs(30),
        "SIGTERM took {took:?} to end a stuck shard, bound 5 s"
    );
    assert!(last_incarnation(&shard.log_text()).contains("did not stop within"));
    drop(shard);

    restart_and_verify(&topics, &scenario, &args, &log);
}
