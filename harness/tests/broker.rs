//! The broker's life cycle: restart on the same address with the data kept,
//! death with the process that started it, and the `txledger-kafka` daemon.
//! Each test starts its own broker (they stop or abandon it on purpose).

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{payloads, read_all, send, transactional_producer, wait_settled, DEADLINE};
use harness::testkit::{DaemonCli, Isolation};
use harness::{create_topics, unique_name, Broker, BrokerOptions};
use rdkafka::producer::Producer;

#[test]
fn restart_keeps_the_address_and_the_committed_records() {
    let mut broker = Broker::start(BrokerOptions::default()).expect("start a broker");
    let bootstrap = broker.bootstrap_servers().to_owned();
    let topic = unique_name("restart");
    create_topics(&bootstrap, &[(&topic, 2)]).expect("create topic");
    let producer = transactional_producer(&bootstrap, &unique_name("tx-restart"));
    producer.begin_transaction().expect("begin");
    for (i, payload) in payloads("before", 4).iter().enumerate() {
        send(&producer, &topic, i as i32 % 2, payload);
    }
    producer.commit_transaction(DEADLINE).expect("commit");
    let pid_before = broker.pid();

    broker.restart().expect("restart the broker");
    assert_eq!(broker.bootstrap_servers(), bootstrap);
    assert_ne!(broker.pid(), pid_before, "a new process");

    // The producer created before the restart carries on, as a pipeline's
    // producers must when the broker comes back.
    producer
        .begin_transaction()
        .expect("begin after the restart");
    for (i, payload) in payloads("after", 2).iter().enumerate() {
        send(&producer, &topic, i as i32 % 2, payload);
    }
    producer
        .commit_transaction(DEADLINE)
        .expect("commit after the restart");

    wait_settled(&bootstrap, &topic, 2);
    let mut expected = payloads("before", 4);
    expected.extend(payloads("after", 2));
    expected.sort();
    assert_eq!(
        read_all(&bootstrap, &topic, 2, Isolation::ReadCommitted),
        expected
    );

    broker.stop().expect("stop");
    assert_eq!(broker.pid(), None);
}

/// Set in the child process of `the_broker_dies_with_the_process_that_started_it`.
const ORPHAN_ENV: &str = "TXLEDGER_HARNESS_TEST_ORPHAN";

#[test]
fn the_broker_dies_with_the_process_that_started_it() {
    if std::env::var_os(ORPHAN_ENV).is_some() {
        // Child: start a broker, then exit without dropping it, which is what
        // happens to the shared broker held in a static.
        let broker = Broker::start(BrokerOptions::default()).expect("start a broker");
        let dir = broker
            .log_path()
            .parent()
            .expect("the log is in the broker directory")
            .to_path_buf();
        println!("broker-dir={}", dir.display());
        std::mem::forget(broker);
        std::process::exit(0);
    }

    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "the_broker_dies_with_the_process_that_started_it",
            "--nocapture",
        ])
        .env(ORPHAN_ENV, "1")
        .output()
        .expect("run the child test process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .find_map(|line| line.strip_prefix("broker-dir="))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "the child printed no broker directory; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });

    // The watchdog polls every second; a loaded machine may be slower.
    let deadline = Instant::now() + DEADLINE;
    while !processes_mentioning(&dir).is_empty() || dir.exists() {
        assert!(
            Instant::now() < deadline,
            "after {DEADLINE:?}: processes {:?} still run for {}, directory exists: {}",
            processes_mentioning(&dir),
            dir.display(),
            dir.exists()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_cli_starts_a_detached_broker_and_stops_it() {
    let daemon = DaemonCli::new(env!("CARGO_BIN_EXE_txledger-kafka"));
    let dir = daemon.dir();
    let cli = |args: &[&str]| {
        let out = daemon.run(args);
        (out.ok, out.stdout, out.stderr)
    };
    let (ok, stdout, stderr) = cli(&["start"]);
    assert!(ok, "start failed:\n{stdout}\n{stderr}");
    let bootstrap = stdout.lines().last().expect("an address").to_owned();
    assert!(bootstrap.starts_with("127.0.0.1:"), "{stdout}");
    // The CLI has exited; the broker works on.
    let topic = unique_name("cli");
    create_topics(&bootstrap, &[(&topic, 1)]).expect("create a topic on the daemon");

    let (ok, stdout, stderr) = cli(&["start"]);
    assert!(ok, "second start failed:\n{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().last(),
        Some(bootstrap.as_str()),
        "same broker"
    );

    let (ok, stdout, _) = cli(&["status"]);
    assert!(ok, "status: {stdout}");
    assert!(stdout.contains(&bootstrap), "{stdout}");

    let (ok, stdout, stderr) = cli(&["stop"]);
    assert!(ok, "stop failed:\n{stdout}\n{stderr}");
    assert!(processes_mentioning(&dir).is_empty(), "stopped means gone");
    let (ok, stdout, _) = cli(&["status"]);
    assert!(!ok, "status after stop: {stdout}");
}

/// Pids of the processes whose command line mentions `dir` (the broker's
/// JVM names its configuration file there).
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("list /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        // A process may exit between listing and reading: skip it.
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|window| window == needle) {
            pids.push(pid);
        }
    }
    pids
}
