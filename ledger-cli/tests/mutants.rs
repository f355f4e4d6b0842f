//! The audit is proven able to catch the bugs it exists for: the pipeline
//! runs with shards built to break the protocol on purpose (compiled-in
//! mutants, switched on by `TXLEDGER_MUTANT`), and the audit must fail,
//! naming what went wrong. The same run without a mutant passes, so the
//! failure is the mutant's doing.
//!
//! A third mutant, `commit_before_sled_write`, is caught one step earlier:
//! the restarted shard's recovery rule refuses to start
//! (`consumer/tests/recovery.rs`).

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::time::{Duration, Instant};

use ledger::kafka;
use ledger_cli::audit::{AuditReport, Check, Status};
use ledger_cli::pipeline::{Binaries, Pipeline, PipelineConfig, PipelineError, ProducerRun};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Input no shard can decode, one per partition, written ahead of the
/// transfers: each must get exactly one dead letter, also when the batch
/// that holds it is aborted and redone, and the audit checks that with the
/// shards' real dead-letter headers.
const UNDECODABLE: [&[u8]; 4] = [b"not json", b"{}", b"[1, 2]", b"\xff\xfe"];

fn write_undecodable(bootstrap: &str, topic: &str) {
    let producer: BaseProducer = kafka::client_config(bootstrap)
        .create()
        .expect("a plain producer");
    for (partition, payload) in UNDECODABLE.iter().enumerate() {
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .partition(partition as i32)
                    .payload(payload),
            )
            .map_err(|(error, _)| error)
            .expect("queue an undecodable record");
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("the undecodable records are written");
}

/// Runs 3,000 transfers, after a few undecodable records, through two
/// shards that abort every third transaction on purpose (exercising the
/// abort path), with `mutant` if any, and audits the result.
fn audited_run(mutant: Option<&str>) -> AuditReport {
    let binaries = Binaries::locate().expect("the producer and consumer binaries");
    let bootstrap = harness::shared_bootstrap();
    let prefix = harness::unique_name(mutant.unwrap_or("control")) + "-";
    let work = tempfile::tempdir().expect("work dir");
    let mut shard_env = vec![("TXLEDGER_ABORT_EVERY".to_owned(), "3".to_owned())];
    if let Some(mutant) = mutant {
        shard_env.push(("TXLEDGER_MUTANT".to_owned(), mutant.to_owned()));
    }
    let config = PipelineConfig {
        shard_env,
        ..PipelineConfig::prefixed(bootstrap, &prefix, 4, 2, work.path().to_owned())
    };
    let transfers_topic = config.topics.transactions.clone();
    let bootstrap = config.bootstrap_servers.clone();
    let mut pipeline = Pipeline::new(config, binaries).expect("pipeline");
    pipeline.create_topics().expect("topics");
    write_undecodable(&bootstrap, &transfers_topic);
    pipeline.start_shards().expect("shards");
    pipeline
        .wait_ready(Duration::from_secs(180))
        .expect("shards ready");
    pipeline
        .start_producer(&ProducerRun {
            count: 3_000,
            rate: 1_000,
            seed: 5,
            accounts: 100,
            batch_ms: 100,
        })
        .expect("producer");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = pipeline.producer_exit() {
            assert!(
                status.success(),
                "the producer failed; its log: {}",
                pipeline.producer_log().display()
            );
            break;
        }
        assert!(Instant::now() < deadline, "the producer did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    let settled =
        pipeline.wait_caught_up(Duration::from_secs(if mutant.is_some() { 60 } else { 180 }));
    match (settled, mutant) {
        (Ok(()), _) => {}
        // A shard that skipped records may never look caught up: its
        // committed offsets stay behind the records it jumped over. Audit
        // what it committed; that is the evidence. A shard that died is
        // no such evidence.
        (Err(error @ PipelineError::Timeout { .. }), Some(mutant)) => {
            eprintln!("mutant {mutant}: {error}; auditing anyway");
        }
        (Err(error), _) => panic!("the shards did not catch up: {error}"),
    }
    let report = pipeline.audit().expect("the audit runs");
    eprintln!("mutant {mutant:?}:\n{report}");
    report
}

fn status(report: &AuditReport, check: Check) -> Status {
    report.check(check).status
}

#[test]
fn without_a_mutant_the_same_run_passes() {
    let report = audited_run(None);
    assert!(report.passed(), "{report}");
    // The dead-letter check judged real dead letters, not none.
    let undecodable = UNDECODABLE.len() as u64;
    assert_eq!(
        (report.totals.inputs_undecodable, report.totals.dead_letters),
        (undecodable, undecodable),
        "{report}"
    );
}

#[test]
fn the_audit_catches_a_shard_that_does_not_seek_back_after_an_abort() {
    let report = audited_run(Some("skip_seek_back"));
    assert!(!report.passed());
    // The aborted batches' input never got an outcome.
    assert_eq!(status(&report, Check::Lost), Status::Fail, "{report}");
}

#[test]
fn the_audit_catches_a_shard_that_does_not_undo_an_aborted_batch() {
    let report = audited_run(Some("skip_undo"));
    assert!(!report.passed());
    // The aborted batches stayed in the balances, their outcomes did not.
    assert_eq!(status(&report, Check::Lost), Status::Fail, "{report}");
    assert_eq!(status(&report, Check::Balances), Status::Fail, "{report}");
}

#[test]
fn the_audit_catches_a_shard_that_refuses_funded_transfers() {
    let report = audited_run(Some("refuse_funded"));
    assert!(!report.passed());
    // Balances and credits agree with the refusals; only replaying funds in
    // the ledger's order shows them wrong.
    assert_eq!(status(&report, Check::Decisions), Status::Fail, "{report}");
    assert_eq!(status(&report, Check::Balances), Status::Pass, "{report}");
    assert_eq!(status(&report, Check::Credits), Status::Pass, "{report}");
}
