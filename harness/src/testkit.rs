//! What the workspace's Kafka-backed tests share: reading topics back to
//! their end, waiting for open transactions to settle, bounded waits and
//! free ports. One copy, so that a fix to how a test reads Kafka (an end of
//! partition reported as a global error, a commit marker not yet written)
//! reaches every test.
//!
//! Every wait is bounded by [`DEADLINE`] and panics with what it waited
//! for; a test's broker log is printed by the panic hook of
//! [`crate::shared_bootstrap`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// Bound on every wait of a test. Generous: CI runs on a loaded 2-core
/// machine, and a healthy broker answers in milliseconds anyway.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// Waits until `condition` holds, checking every 100 ms; panics naming
/// `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free local port for a child process's server (see [`crate::ports`]).
pub fn free_port() -> u16 {
    crate::ports::free_local_port().expect("a free local port")
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Which records a reader sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Committed records only, up to the last stable offset.
    ReadCommitted,
    /// Every record written, aborted and still open ones included.
    ReadUncommitted,
}

impl Isolation {
    fn config_value(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Header values as text (lossy), in record order.
    pub headers: Vec<(String, String)>,
    /// The record's timestamp (its writer's clock at produce time), in
    /// milliseconds since the epoch, when it has one.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// The payload as text; panics when there is none or it is not UTF-8.
    pub fn text(&self) -> &str {
        let payload = self.payload.as_deref().expect("a record with a payload");
        std::str::from_utf8(payload).expect("a UTF-8 payload")
    }
}

/// The reader asks for end-of-partition events; they are not errors.
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            eprintln!("reader: {error}: {reason}");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// A consumer that joins no group and commits nothing (a reader must leave
/// no offsets behind) and reports the ends of partitions.
fn consumer(bootstrap: &str, isolation: Isolation) -> BaseConsumer<QuietEof> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", crate::unique_name("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation.config_value())
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)
        .expect("create a reader")
}

/// Reads every partition of a topic from the beginning, keeping what it
/// read and which partitions are at their end (the last stable offset under
/// `read_committed`) with nothing read since.
pub struct TopicReader {
    consumer: BaseConsumer<QuietEof>,
    topic: String,
    partitions: i32,
    at_end: BTreeSet<i32>,
    pub records: Vec<Record>,
}

impl TopicReader {
    pub fn new(bootstrap: &str, topic: &str, partitions: i32, isolation: Isolation) -> Self {
        let consumer = consumer(bootstrap, isolation);
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("add a partition");
        }
        consumer.assign(&assignment).expect("assign the partitions");
        TopicReader {
            consumer,
            topic: topic.to_owned(),
            partitions,
            at_end: BTreeSet::new(),
            records: Vec::new(),
        }
    }

    /// Whether every partition is at its end with nothing read since.
    pub fn at_end(&self) -> bool {
        self.at_end.len() == self.partitions as usize
    }

    /// One poll of at most `wait`: a record, an end of partition, or
    /// nothing. An error that is not an end is printed and skipped: a topic
    /// may not exist yet while its writer starts, and the deadline of the
    /// caller bounds the wait.
    fn poll_once(&mut self, wait: Duration) {
        match self.consumer.poll(wait) {
            Some(Ok(message)) => {
                self.at_end.remove(&message.partition());
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|header| {
                                let value = header.value.unwrap_or_default();
                                let value = String::from_utf8_lossy(value).into_owned();
                                (header.key.to_owned(), value)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp_ms: message.timestamp().to_millis(),
                });
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                self.at_end.insert(partition);
            }
            Some(Err(error)) => eprintln!("reading {}: {error}", self.topic),
            None => {}
        }
    }

    /// Reads until `done` holds, at most [`DEADLINE`]; panics naming `what`.
    pub fn read_until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) -> &[Record] {
        let deadline = Instant::now() + DEADLINE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{}: {} records read, partitions {:?} at their end, after {DEADLINE:?} \
                 waiting for {what}",
                self.topic,
                self.records.len(),
                self.at_end
            );
            self.poll_once(Duration::from_millis(100));
        }
        &self.records
    }

    /// Reads until at least `count` records are in and every partition is
    /// at its end. Waiting for the count first, rather than for the first
    /// end, keeps a test from stopping before commit markers land.
    pub fn read_at_least_then_end(&mut self, count: usize) -> &[Record] {
        self.read_until(&format!("{count} records and every end"), |reader| {
            reader.records.len() >= count && reader.at_end()
        })
    }

    /// Reads until at least `count` records are in, then [`drain`]s.
    ///
    /// [`drain`]: TopicReader::drain
    pub fn read_at_least(&mut self, count: usize) -> &[Record] {
        self.read_until(&format!("{count} records"), |reader| {
            reader.records.len() >= count
        });
        self.drain()
    }

    /// Reads until every partition has reported its end, or nothing new
    /// arrived for three seconds: librdkafka sometimes reports an end of
    /// partition as a global error that names no partition.
    pub fn drain(&mut self) -> &[Record] {
        const QUIET: Duration = Duration::from_secs(3);
        let mut seen = self.records.len();
        let mut last_news = Instant::now();
        self.read_until("the end of every partition", |reader| {
            if reader.records.len() > seen {
                seen = reader.records.len();
                last_news = Instant::now();
            }
            reader.at_end() || last_news.elapsed() >= QUIET
        })
    }
}

/// Waits until no transaction is open on `topic`: its last stable offset
/// equals its high watermark on every partition. Needed before an exact
/// read: `commit_transaction` and `abort_transaction` return once the
/// decision is logged, and the markers that settle the records follow.
pub fn wait_settled(bootstrap: &str, topic: &str, partitions: i32) {
    // librdkafka's ListOffsets uses the client's isolation level, so the
    // "high watermark" of a read_committed client is the last stable offset.
    let committed = consumer(bootstrap, Isolation::ReadCommitted);
    let uncommitted = consumer(bootstrap, Isolation::ReadUncommitted);
    for partition in 0..partitions {
        wait_until(
            &format!("{topic}/{partition}: last stable offset at the high watermark"),
            || {
                let (_, stable) = committed
                    .fetch_watermarks(topic, partition, DEADLINE)
                    .expect("last stable offset");
                let (_, high) = uncommitted
                    .fetch_watermarks(topic, partition, DEADLINE)
                    .expect("high watermark");
                stable == high
            },
        );
    }
}

/// The `txledger-kafka` binary (`binary`, from the test's
/// `env!("CARGO_BIN_EXE_txledger-kafka")`) on one daemon directory of its
/// own, stopped when this is dropped: a detached broker or cluster outlives
/// a failed test otherwise.
pub struct DaemonCli {
    binary: std::path::PathBuf,
    parent: tempfile::TempDir,
}

/// What one command printed.
pub struct CliOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl DaemonCli {
    pub fn new(binary: &str) -> DaemonCli {
        DaemonCli {
            binary: binary.into(),
            parent: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The daemon directory (`--dir`).
    pub fn dir(&self) -> std::path::PathBuf {
        self.parent.path().join("kafka")
    }

    /// Runs `txledger-kafka ARGS --dir DIR`.
    pub fn run(&self, args: &[&str]) -> CliOutput {
        let output = std::process::Command::new(&self.binary)
            .args(args)
            .arg("--dir")
            .arg(self.dir())
            .output()
            .expect("run txledger-kafka");
        CliOutput {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// [`DaemonCli::run`], which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let CliOutput { ok, stdout, stderr } = self.run(args);
        assert!(ok, "txledger-kafka {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }
}

impl Drop for DaemonCli {
    fn drop(&mut self) {
        let dir = self.dir();
        if let Err(error) = crate::daemon::stop(&dir) {
            eprintln!("could not stop the daemon in {}: {error}", dir.display());
        }
    }
}
