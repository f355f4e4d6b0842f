//! The producer against a real Kafka broker (the harness's, shared by the
//! tests of this process; each test has its own topic and transactional
//! id). A failing test prints the broker log's tail (the harness's hook).

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use clap::Parser as _;
use common::{read, run_binary, spawn, spawn_with_env, stderr, Until, PARTITIONS};
use harness::testkit::{Isolation, DEADLINE};
use ledger_core::domain::{Currency, Transfer, TransferId};
use producer::generate::{Generator, GeneratorConfig};
use producer::{Config, ProducerError};
use rustix::process::Signal;
use time::OffsetDateTime;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Flags every run here shares, then `extra`.
fn args(bootstrap: &str, topic: &str, extra: &[&str]) -> Vec<String> {
    let partitions = PARTITIONS.to_string();
    let base = [
        "--bootstrap-servers",
        bootstrap,
        "--transfers-topic",
        topic,
        "--partitions",
        &partitions,
        "--accounts",
        "50",
        "--connect-timeout-secs",
        "60",
    ];
    base.iter().chain(extra).map(|s| (*s).to_owned()).collect()
}

fn config(bootstrap: &str, topic: &str, extra: &[&str]) -> Config {
    let args = args(bootstrap, topic, extra);
    Config::try_parse_from(std::iter::once("producer".to_owned()).chain(args))
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Counts the records whose id was seen before, checking that each repeats
/// its original exactly.
fn repeated_ids(transfers: impl IntoIterator<Item = Transfer>) -> u64 {
    let mut seen: HashMap<TransferId, Transfer> = HashMap::new();
    let mut repeats = 0;
    for transfer in transfers {
        if let Some(original) = seen.insert(transfer.id, transfer.clone()) {
            assert_eq!(original, transfer, "a resubmission repeats its original");
            repeats += 1;
        }
    }
    repeats
}

#[test]
fn generated_transfers_are_committed_exactly_once() {
    let bootstrap = harness::shared_bootstrap();
    let topic = harness::unique_name("transfers");
    let id = harness::unique_name("producer");
    let config = config(
        &bootstrap,
        &topic,
        &[
            "--transactional-id",
            &id,
            "--count",
            "3000",
            "--batch-records",
            "250",
            "--fail-share",
            "0.1",
            "--duplicate-share",
            "0.05",
            "--seed",
            "42",
        ],
    );
    let summary = runtime()
        .block_on(producer::run(config, std::future::pending()))
        .expect("the run succeeds");
    assert_eq!(summary.records_sent, 3000);
    assert_eq!(summary.records_committed, 3000);
    assert!(summary.transactions_committed >= 3000 / 250, "{summary:?}");
    assert_eq!(summary.transactions_aborted, 0);

    let committed = read(
        &bootstrap,
        &topic,
        Isolation::ReadCommitted,
        Until::AtLeastThenEnd(3000),
    );
    assert_eq!(committed.len(), 3000, "exactly the committed records");
    for record in &committed {
        assert_eq!(
            record.key,
            record.transfer.from.as_str().as_bytes(),
            "keyed by source"
        );
        // The shards refuse a transfer anywhere else as misrouted.
        assert_eq!(
            record.partition,
            ledger_core::routing::partition_for(record.key.as_slice(), PARTITIONS),
            "in the partition that owns its source account: {}",
            record.transfer.from
        );
    }
    let repeats = repeated_ids(committed.into_iter().map(|record| record.transfer));
    assert!(repeats > 0, "the stream has resubmissions");
    assert_eq!(
        repeats, summary.resubmissions_committed,
        "and only those repeat an id"
    );

    let uncommitted = read(
        &bootstrap,
        &topic,
        Isolation::ReadUncommitted,
        Until::AtLeastThenEnd(3000),
    );
    assert_eq!(uncommitted.len(), 3000, "nothing was aborted and resent");
}

#[test]
fn without_transactions_every_record_is_written_once() {
    let bootstrap = harness::shared_bootstrap();
    let topic = harness::unique_name("transfers");
    let config = config(
        &bootstrap,
        &topic,
        &[
            "--no-transactions",
            "--count",
            "1000",
            "--duplicate-share",
            "0",
        ],
    );
    let summary = runtime()
        .block_on(producer::run(config, std::future::pending()))
        .expect("the run succeeds");
    assert_eq!(summary.records_committed, 1000);
    assert_eq!(summary.transactions_committed, 0);
    assert_eq!(summary.transactional_id, None);
    let read_back = read(
        &bootstrap,
        &topic,
        Isolation::ReadCommitted,
        Until::AtLeastThenEnd(1000),
    );
    assert_eq!(read_back.len(), 1000);
    assert_eq!(repeated_ids(read_back.into_iter().map(|r| r.transfer)), 0);
}

#[test]
fn an_import_sends_the_valid_lines_and_reports_the_invalid_ones() {
    let bootstrap = harness::shared_bootstrap();
    let topic = harness::unique_name("transfers");
    let mut generator = Generator::new(GeneratorConfig {
        accounts: 10,
        fail_share: 0.0,
        duplicate_share: 0.0,
        currency: Currency::EUR,
        seed: 5,
    });
    let invalid_at = [5_u64, 17, 40];
    let bad_lines = [
        "not json",
        r#"{"id":"0b6f5a36-4c8e-4b8e-9d5e-4d7f2c1f9a01","from":"acc-1","to":"acc-1","amount":"1.00","currency":"EUR","created_at":"2024-05-01T10:00:00Z"}"#,
        r#"{"id":"0b6f5a36-4c8e-4b8e-9d5e-4d7f2c1f9a02","from":"acc-1","to":"acc-2","amount":1.5,"currency":"EUR","created_at":"2024-05-01T10:00:00Z"}"#,
    ];
    let mut file = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .expect("a temporary file");
    let mut valid_ids = HashSet::new();
    let mut bad = bad_lines.iter();
    for line in 1..=53_u64 {
        let text = if invalid_at.contains(&line) {
            (*bad.next().expect("a bad line")).to_owned()
        } else {
            let transfer = generator.next(OffsetDateTime::now_utc()).transfer;
            valid_ids.insert(transfer.id);
            String::from_utf8(ledger_core::wire::encode_transfer(&transfer)).expect("UTF-8")
        };
        writeln!(file, "{text}").expect("write the file");
    }
    file.flush().expect("flush the file");
    let path = file.path().to_str().expect("a UTF-8 path");

    let id = harness::unique_name("importer");
    let config = config(
        &bootstrap,
        &topic,
        &[
            "--from-file",
            path,
            "--on-invalid",
            "skip",
            "--transactional-id",
            &id,
        ],
    );
    let summary = runtime()
        .block_on(producer::run(config, std::future::pending()))
        .expect("the import succeeds");
    assert_eq!(summary.records_committed, 50);
    assert_eq!(summary.invalid_lines, 3);
    let lines: Vec<u64> = summary.invalid_listed.iter().map(|i| i.line).collect();
    assert_eq!(lines, invalid_at);
    let reasons: Vec<&str> = summary
        .invalid_listed
        .iter()
        .map(|i| i.reason.as_str())
        .collect();
    assert!(reasons[0].starts_with("malformed"), "{reasons:?}");
    assert!(reasons[1].starts_with("same_account"), "{reasons:?}");
    assert!(reasons[2].starts_with("invalid_amount"), "{reasons:?}");

    let read_back = read(
        &bootstrap,
        &topic,
        Isolation::ReadCommitted,
        Until::AtLeastThenEnd(50),
    );
    let read_ids: HashSet<TransferId> = read_back.iter().map(|r| r.transfer.id).collect();
    assert_eq!(read_back.len(), 50);
    assert_eq!(read_ids, valid_ids);
}

#[test]
fn an_import_with_invalid_lines_aborts_before_sending_anything() {
    let bootstrap = harness::shared_bootstrap();
    let topic = harness::unique_name("transfers");
    harness::create_topics(&bootstrap, &[(&topic, PARTITIONS)]).expect("create the topic");
    let mut file = tempfile::Builder::new()
        .suffix(".csv")
        .tempfile()
        .expect("a temporary file");
    writeln!(file, "id,from,to,amount,currency,created_at").expect("write");
    for line in 2..=12 {
        let amount = match line {
            4 => "-3.00",
            9 => "abc",
            _ => "10.00",
        };
        writeln!(
            file,
            "{},acc-1,acc-2,{amount},EUR,2024-05-01T10:00:00Z",
            TransferId::new_random()
        )
        .expect("write");
    }
    file.flush().expect("flush the file");
    let path = file.path().to_str().expect("a UTF-8 path");

    let output = run_binary(
        &args(
            &bootstrap,
            &topic,
            &["--from-file", path, "--on-invalid", "abort"],
        ),
        DEADLINE,
    );
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for expected in [
        "2 invalid line(s)",
        "line 4: invalid_amount",
        "line 9: invalid_amount",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in:\n{stderr}");
    }
    assert!(read(
        &bootstrap,
        &topic,
        Isolation::ReadUncommitted,
        Until::AtLeastThenEnd(0)
    )
    .is_empty());
}

#[test]
fn a_killed_producers_transaction_is_aborted_when_its_successor_starts() {
    let bootstrap = harness::shared_bootstrap();
    let topic = harness::unique_name("transfers");
    let id = harness::unique_name("producer");
    // One transaction stays open for minutes, filling at 50 records/s.
    let killed = spawn(&args(
        &bootstrap,
        &topic,
        &[
            "--transactional-id",
            &id,
            "--seed",
            "1",
            "--rate",
            "50",
            "--batch-ms",
            "240000",
            "--batch-records",
            "100000",
            "--transaction-timeout-ms",
            "300000",
        ],
    ));
    read(
        &bootstrap,
        &topic,
        Isolation::ReadUncommitted,
        Until::AtLeast(5),
    );
    killed.signal(Signal::KILL);
    let output = killed.finish(DEADLINE);
    assert!(!output.status.success(), "killed: {}", stderr(&output));

    let open: HashSet<TransferId> = read(
        &bootstrap,
        &topic,
        Isolation::ReadUncommitted,
        Until::AtLeastThenEnd(5),
    )
    .iter()
    .map(|r| r.transfer.id)
    .collect();
    assert!(
        read(
            &bootstrap,
            &topic,
            Isolation::ReadCommitted,
            Until::AtLeastThenEnd(0)
        )
        .is_empty(),
        "the killed transaction is still open: nothing is committed"
    );

    // The successor fences the killed instance, which makes the broker abort
    // its transaction at once (not after the 300 s timeout), and goes on.
    let started = Instant::now();
    let successor = run_binary(
        &args(
            &bootstrap,
            &topic,
            &["--transactional-id", &id, "--seed", "2", "--count", "500"],
        ),
        DEADLINE,
    );
    assert!(
        successor.status.success(),
        "successor: {}",
        stderr(&successor)
    );
    let committed = read(
        &bootstrap,
        &topic,
        Isolation::ReadCommitted,
        Until::AtLeastThenEnd(500),
    );
    assert!(
        started.elapsed() < Duration::from_secs(200),
        "not the timeout's doing"
    );
    assert_eq!(committed.len(), 500, "exactly the successor's records");
    assert!(
        committed.iter().all(|r| !open.contains(&r.transfer.id)),
        "none of the killed transaction's records is visible"
    );
    let all = read(
        &bootstrap,
        &topic,
        Isolation::ReadUncommitted,
        Until::AtLeastThenEnd(500 + open.len()),
    );
    assert_eq!(all.len(), 500 + open.len());
}

#[test]
fn sigterm_commits_the_open_transaction_and_exits_zero() {
    let bootstrap = harness::shared_bootstrap();
    let topic = harness::unique_name("transfers");
    let id = harness::unique_name("producer");
    let running = spawn(&args(
        &bootstrap,
        &topic,
        &[
            "--transactional-id",
            &id,
            "--rate",
            "100",
            "--batch-ms",
            "60000",
            "--transaction-timeout-ms",
            "120000",
        ],
    ));
    read(
        &bootstrap,
        &topic,
        Isolation::ReadUncommitted,
        Until::AtLeast(5),
    );
    running.signal(Signal::TERM);
    let output = running.finish(DEADLINE);
    let stderr = stderr(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("Producer finished."), "{stderr}");

    let sent = read(
        &bootstrap,
        &topic,
        Isolation::ReadUncommitted,
        Until::AtLeastThenEnd(5),
    )
    .len();
    let committed = read(
        &bootstrap,
        &topic,
        Isolation::ReadCommitted,
        Until::AtLeastThenEnd(sent),
    );
    assert_eq!(committed.len(), sent, "the open transaction was committed");
}

#[test]
fn a_running_producer_is_fenced_by_a_new_instance_and_fails() {
    let bootstrap = harness::shared_bootstrap();
    let topic = harness::unique_name("transfers");
    let id = harness::unique_name("producer");
    let runtime = runtime();
    let first = runtime.spawn(producer::run(
        config(
            &bootstrap,
            &topic,
            &["--transactional-id", &id, "--rate", "200"],
        ),
        std::future::pending(),
    ));
    read(
        &bootstrap,
        &topic,
        Isolation::ReadCommitted,
        Until::AtLeast(1),
    );

    let second = runtime
        .block_on(producer::run(
            config(
                &bootstrap,
                &topic,
                &["--transactional-id", &id, "--count", "100"],
            ),
            std::future::pending(),
        ))
        .expect("the new instance runs");
    assert_eq!(second.records_committed, 100);

    let first = runtime
        .block_on(async { tokio::time::timeout(DEADLINE, first).await })
        .expect("the fenced instance stops")
        .expect("no panic");
    assert!(
        matches!(first, Err(ProducerError::Fatal { .. })),
        "fenced: {first:?}"
    );
}

#[test]
fn bad_flags_are_refused_with_the_reason() {
    for (flags, code, says) in [
        (&["--fail-share", "2"][..], 2, "not between 0 and 1"),
        (&["--on-invalid", "maybe"][..], 2, "maybe"),
        (
            &["--batch-ms", "60000"][..],
            1,
            "--transaction-timeout-ms (60000 ms)",
        ),
        // The name before 0.2, in seconds, still read.
        (
            &["--transaction-timeout-secs", "3"][..],
            1,
            "--transaction-timeout-ms (3000 ms)",
        ),
        (
            &["--from-file", "/nonexistent/transfers.jsonl"][..],
            1,
            "cannot read",
        ),
    ] {
        let output = run_binary(flags, DEADLINE);
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(code), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {says:?} in {stderr}");
    }
}

#[test]
fn the_environment_names_before_0_2_are_read_with_a_warning() {
    // A 60 s batch leaves a 61 s timeout too short: the refusal shows that
    // both old names were read, the timeout in its old unit.
    let output = spawn_with_env(
        &[] as &[&str],
        &[
            ("PRODUCER_BATCH_MS", "60000"),
            ("PRODUCER_TRANSACTION_TIMEOUT_SECS", "61"),
        ],
    )
    .finish(DEADLINE);
    let said = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    for expected in [
        "--transaction-timeout-ms (61000 ms) must exceed --batch-ms (60000 ms)",
        "PRODUCER_BATCH_MS is deprecated and will be ignored in the next release: \
         use TXLEDGER_PRODUCER_BATCH_MS",
        "use --transaction-timeout-ms (TXLEDGER_TRANSACTION_TIMEOUT_MS) = 61000",
    ] {
        assert!(said.contains(expected), "{expected:?} in:\n{said}");
    }

    // The new name wins, and the warning says the old one is ignored.
    let output = spawn_with_env(
        &[] as &[&str],
        &[
            ("PRODUCER_BATCH_MS", "60000"),
            ("TXLEDGER_PRODUCER_BATCH_MS", "100"),
            ("TXLEDGER_TRANSACTION_TIMEOUT_MS", "5000"),
        ],
    )
    .finish(DEADLINE);
    let said = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    for expected in [
        "--transaction-timeout-ms (5000 ms) must exceed --batch-ms (100 ms)",
        "PRODUCER_BATCH_MS is ignored: it was renamed TXLEDGER_PRODUCER_BATCH_MS, which is given \
         too",
    ] {
        assert!(said.contains(expected), "{expected:?} in:\n{said}");
    }
}

#[test]
fn an_unreachable_broker_is_an_error_within_the_connect_timeout() {
    for mode in ["--transactional-id=unreachable", "--no-transactions"] {
        let started = Instant::now();
        let output = run_binary(
            &[
                "--bootstrap-servers",
                "127.0.0.1:1",
                "--connect-timeout-secs",
                "3",
                mode,
            ],
            DEADLINE,
        );
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
        // The cause is librdkafka's time-out, printed once after the context.
        let error = stderr
            .lines()
            .find(|line| line.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line in {stderr}"));
        assert_eq!(error.matches("timed out").count(), 1, "{error}");
    }
}

#[test]
fn metrics_are_served_on_the_given_address() {
    let bootstrap = harness::shared_bootstrap();
    let topic = harness::unique_name("transfers");
    let id = harness::unique_name("producer");
    // A free port, released for the producer to take (a tiny race, in a
    // test only).
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let running = spawn(&args(
        &bootstrap,
        &topic,
        &[
            "--transactional-id",
            &id,
            "--rate",
            "200",
            "--metrics-addr",
            &address,
        ],
    ));
    read(
        &bootstrap,
        &topic,
        Isolation::ReadCommitted,
        Until::AtLeast(1),
    );
    let metrics = http_get(&address, "/metrics");
    running.signal(Signal::TERM);
    let output = running.finish(DEADLINE);
    assert!(output.status.success(), "{}", stderr(&output));
    for name in [
        "txledger_producer_records_total",
        "txledger_producer_transactions_total{result=\"committed\"}",
        "txledger_producer_transaction_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} in:\n{metrics}");
    }
}

/// A minimal HTTP/1.0 GET: enough for `/metrics`, no client library needed.
fn http_get(address: &str, path: &str) -> String {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the metrics server");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("a read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
}
