//! The audit's I/O half: reads the topics (Kafka) and the shards' balances
//! (HTTP, or a stopped shard's sled directory) into the facts that
//! `ledger_core::audit` judges. Its items are re-exported here, so that this
//! module is the one place callers name.
//!
//! Every read stops at the end each partition had when the audit started.

pub use ledger_core::audit::*;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rust_decimal::Decimal;

use ledger::api::{self, AccountView, BalancesPageView, StatsView, BALANCES_PAGE_MAX};
use ledger::kafka::{EofReader, EofReaderContext};
use ledger::store::{Store, StoreError, StoreOptions};
use ledger_core::domain::{AccountId, Money, SCALE};
use ledger_core::wire;

/// How often a long read reports progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Bound on one poll, so the deadline and progress are checked regularly.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Bound on one metadata or watermark request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the audit could not reach a verdict. Messages carry their cause and
/// only `Store` has a `source` (the store error's own), so
/// `ledger::telemetry::chain` prints each cause once.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("could not create a Kafka consumer for {bootstrap}: {error}")]
    Client {
        bootstrap: String,
        error: KafkaError,
    },
    #[error("could not read the partitions of topic {topic}: {error}")]
    Metadata { topic: String, error: KafkaError },
    #[error("topic {topic} does not exist on {bootstrap}")]
    MissingTopic { topic: String, bootstrap: String },
    #[error(
        "topic {topic} has {found} partitions, the audit expects {expected}: `transactions` and \
         `ledger-credits` must have the same partition count, the one the shards run with"
    )]
    PartitionCount {
        topic: String,
        found: usize,
        expected: i32,
    },
    #[error(
        "{topic}/{partition} starts at offset {low}: its earlier records were deleted \
         (retention), so the audit cannot account for them; audit topics that keep \
         everything (retention.ms=-1)"
    )]
    Truncated {
        topic: String,
        partition: i32,
        low: i64,
    },
    #[error(
        "reading {topic} ({isolation}) did not reach the end within {timeout:?}; \
         behind: {behind}. An open transaction holds read_committed readers back \
         until it commits or aborts: rerun once the pipeline is quiescent{last_error}"
    )]
    Timeout {
        topic: String,
        isolation: Isolation,
        timeout: Duration,
        behind: String,
        last_error: String,
    },
    #[error("reading {topic} failed: {error}")]
    Consume { topic: String, error: KafkaError },
    #[error("shard {url}: {detail}")]
    Shard { url: String, detail: String },
    #[error(
        "the running shards given do not own every partition once: {detail}; their balances \
         would not be the ledger's. Give every shard (one URL whose name resolves to all of \
         them will do), and retry once none is down or rebalancing"
    )]
    Coverage { detail: String },
    // Boxed: sled's errors are large, and every `Result` here carries the size
    // of its largest error.
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error("reading the balances in {path} failed: {error}")]
    Sled {
        path: PathBuf,
        error: Box<sled::Error>,
    },
    #[error(
        "the ledger at {path} holds a pending batch (seq {seq}) whose Kafka commit \
         cannot be known offline: start its shard once (recovery resolves it), or \
         audit the running shard with --url"
    )]
    Pending { path: PathBuf, seq: u64 },
}

/// The isolation level of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadCommitted,
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

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_value())
    }
}

/// One record as read, borrowed from the consumer (no `Debug`: rdkafka's
/// headers have none).
#[derive(Clone, Copy)]
pub struct Record<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: Option<&'a BorrowedHeaders>,
}

impl<'a> Record<'a> {
    pub fn position(&self) -> Position {
        Position {
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers?
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
    }
}

/// How far a read got, for a progress line.
#[derive(Debug, Clone, Copy)]
pub struct ReadProgress<'a> {
    pub topic: &'a str,
    pub isolation: Isolation,
    pub records: u64,
    pub elapsed: Duration,
    /// The last report of this read.
    pub done: bool,
}

/// The partitions of a topic and the end (high watermark) each had when
/// the audit started: the snapshot every read of the topic stops at.
#[derive(Debug, Clone)]
pub struct Extent {
    pub topic: String,
    /// `(partition, high watermark)`.
    pub ends: Vec<(i32, i64)>,
}

/// The partition count of `topic`.
pub fn partition_count(bootstrap: &str, topic: &str) -> Result<i32, AuditError> {
    let [extent] = extents(bootstrap, &[topic])?
        .try_into()
        .expect("one extent per topic");
    Ok(i32::try_from(extent.ends.len()).expect("Kafka counts partitions in an i32"))
}

/// A consumer that never joins a group and never commits: the audit only
/// looks, and must not move any offset a shard depends on.
fn reader(bootstrap: &str, isolation: Isolation) -> Result<EofReader, AuditError> {
    let group = format!("ledger-audit-{}", uuid::Uuid::new_v4().simple());
    let mut config: ClientConfig = ledger::kafka::read_committed_consumer_config(bootstrap, &group);
    config
        .set("isolation.level", isolation.config_value())
        // Partition EOF tells a read_committed reader it reached the last
        // stable offset, where it checks whether that is the snapshot's end.
        .set("enable.partition.eof", "true")
        // A transactional partition ends with a commit marker, so its end is
        // known only from the empty fetch that raises EOF; the broker holds
        // that fetch this long (500 ms by default) before answering.
        .set("fetch.wait.max.ms", "50");
    // The shared config sets fetch.queue.backoff.ms: with librdkafka's
    // default the audit read 145k instead of 615k records/s.
    config
        .create_with_context(EofReaderContext)
        .map_err(|error| AuditError::Client {
            bootstrap: bootstrap.to_owned(),
            error,
        })
}

/// The snapshot of each topic's end. Taken with read_uncommitted, so the
/// end is the high watermark, not the last stable offset: a transaction
/// still open then is waited for, not cut in half.
pub fn extents(bootstrap: &str, topics: &[&str]) -> Result<Vec<Extent>, AuditError> {
    let consumer = reader(bootstrap, Isolation::ReadUncommitted)?;
    let metadata_error = |topic: &str| {
        let topic = topic.to_owned();
        move |error| AuditError::Metadata { topic, error }
    };
    let mut extents = Vec::with_capacity(topics.len());
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(metadata_error(topic))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == *topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(AuditError::MissingTopic {
                topic: (*topic).to_owned(),
                bootstrap: bootstrap.to_owned(),
            });
        }
        let mut ends = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
                .map_err(metadata_error(topic))?;
            if low > 0 {
                return Err(AuditError::Truncated {
                    topic: (*topic).to_owned(),
                    partition,
                    low,
                });
            }
            ends.push((partition, high));
        }
        ends.sort_unstable();
        extents.push(Extent {
            topic: (*topic).to_owned(),
            ends,
        });
    }
    Ok(extents)
}

/// Reads every partition of `extent.topic` from its beginning up to its end
/// in the snapshot, calling `on_record` for each record in partition order.
/// Returns the number of records read.
///
/// Offsets of transactional topics are not dense (commit and abort markers
/// take offsets, aborted records are skipped under read_committed), so a
/// partition is done when a record at or past the end arrives, or when the
/// consumer reports EOF with its position at or past the end.
pub fn read_to_end(
    bootstrap: &str,
    extent: &Extent,
    isolation: Isolation,
    deadline: Instant,
    progress: &mut dyn FnMut(&ReadProgress<'_>),
    mut on_record: impl FnMut(Record<'_>),
) -> Result<u64, AuditError> {
    let topic = extent.topic.as_str();
    let consumer = reader(bootstrap, isolation)?;
    let mut reading = Reading::start(&consumer, extent)?;
    let started = Instant::now();
    let mut reported = started;
    let mut last_error: Option<KafkaError> = None;
    while !reading.remaining.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            return Err(AuditError::Timeout {
                topic: topic.to_owned(),
                isolation,
                timeout: deadline.saturating_duration_since(started),
                behind: reading.behind(),
                last_error: last_error.map_or_else(String::new, |e| format!(" (last error: {e})")),
            });
        }
        if now.duration_since(reported) >= PROGRESS_INTERVAL {
            reported = now;
            progress(&ReadProgress {
                topic,
                isolation,
                records: reading.records,
                elapsed: now.duration_since(started),
                done: false,
            });
        }
        match consumer.poll(POLL_INTERVAL.min(deadline.saturating_duration_since(now))) {
            None => {}
            Some(Ok(message)) => reading.record(&message, &mut on_record)?,
            Some(Err(KafkaError::PartitionEOF(partition))) => reading.end_of(partition)?,
            Some(Err(error)) if is_permanent(&error) => return Err(reading.consume_error(error)),
            // librdkafka retries transport errors by itself; the deadline
            // bounds how long that may take.
            Some(Err(error)) => last_error = Some(error),
        }
    }
    progress(&ReadProgress {
        topic,
        isolation,
        records: reading.records,
        elapsed: started.elapsed(),
        done: true,
    });
    Ok(reading.records)
}

/// The partitions of one topic still being read, up to their ends in the
/// snapshot.
struct Reading<'a> {
    topic: &'a str,
    consumer: &'a EofReader,
    /// Partition to end offset (exclusive), for the partitions not done.
    remaining: HashMap<i32, i64>,
    /// Partition to the next offset to hand over: each record once, in
    /// offset order, whatever the client does (an offset reset would
    /// deliver records again).
    next_offsets: HashMap<i32, i64>,
    records: u64,
}

impl<'a> Reading<'a> {
    /// Assigns every non-empty partition from offset 0: `extents` refused
    /// truncated partitions, and an absolute offset spares the offset
    /// lookup that a logical one (`Offset::Beginning`) costs before the
    /// first fetch, about 500 ms.
    fn start(consumer: &'a EofReader, extent: &'a Extent) -> Result<Self, AuditError> {
        let reading = Reading {
            topic: extent.topic.as_str(),
            consumer,
            remaining: extent
                .ends
                .iter()
                .filter(|(_, end)| *end > 0)
                .copied()
                .collect(),
            next_offsets: HashMap::new(),
            records: 0,
        };
        let mut assignment = TopicPartitionList::new();
        for partition in reading.remaining.keys() {
            assignment
                .add_partition_offset(reading.topic, *partition, Offset::Offset(0))
                .map_err(|error| reading.consume_error(error))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|error| reading.consume_error(error))?;
        Ok(reading)
    }

    fn consume_error(&self, error: KafkaError) -> AuditError {
        AuditError::Consume {
            topic: self.topic.to_owned(),
            error,
        }
    }

    /// Pausing a finished partition stops fetching what came after the
    /// snapshot.
    fn finish(&mut self, partition: i32) -> Result<(), AuditError> {
        self.remaining.remove(&partition);
        let mut done = TopicPartitionList::new();
        done.add_partition(self.topic, partition);
        self.consumer
            .pause(&done)
            .map_err(|error| self.consume_error(error))
    }

    /// Hands `message` to `on_record` if it is the next record before its
    /// partition's end.
    fn record(
        &mut self,
        message: &impl Message<Headers = BorrowedHeaders>,
        on_record: &mut impl FnMut(Record<'_>),
    ) -> Result<(), AuditError> {
        let partition = message.partition();
        let offset = message.offset();
        let Some(end) = self.remaining.get(&partition).copied() else {
            return Ok(());
        };
        if offset >= end {
            return self.finish(partition);
        }
        let next = self.next_offsets.entry(partition).or_insert(0);
        if offset < *next {
            return Ok(());
        }
        *next = offset + 1;
        self.records += 1;
        on_record(Record {
            partition,
            offset,
            key: message.key(),
            payload: message.payload(),
            headers: message.headers(),
        });
        if offset + 1 >= end {
            self.finish(partition)?;
        }
        Ok(())
    }

    /// End of `partition`: done if the consumer's position is at or past
    /// the partition's end (offsets are not dense, so no record may say so).
    fn end_of(&mut self, partition: i32) -> Result<(), AuditError> {
        let Some(end) = self.remaining.get(&partition).copied() else {
            return Ok(());
        };
        let position = self
            .consumer
            .position()
            .map_err(|error| self.consume_error(error))?
            .find_partition(self.topic, partition)
            .map(|e| e.offset());
        if matches!(position, Some(Offset::Offset(at)) if at >= end) {
            self.finish(partition)?;
        }
        Ok(())
    }

    /// Where each unfinished partition stands, for a timeout's message.
    fn behind(&self) -> String {
        let positions = self.consumer.position().ok();
        let mut behind: Vec<String> = self
            .remaining
            .iter()
            .map(|(partition, end)| {
                let position = positions
                    .as_ref()
                    .and_then(|p| p.find_partition(self.topic, *partition))
                    .map(|e| e.offset());
                let position = match position {
                    Some(Offset::Offset(offset)) => offset.to_string(),
                    _ => "none".to_owned(),
                };
                format!("{}/{partition} at {position} of {end}", self.topic)
            })
            .collect();
        behind.sort();
        behind.join(", ")
    }
}

/// Errors that no retry will cure.
fn is_permanent(error: &KafkaError) -> bool {
    match error {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(
            code,
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
        ),
        _ => false,
    }
}

/// Reads the four topics into `input`: `transactions` twice (committed and
/// uncommitted, whose difference is the aborted input), the outputs
/// committed, each up to its end when this call started.
pub fn read_topics(
    bootstrap: &str,
    timeout: Duration,
    input: &mut AuditInput,
    progress: &mut dyn FnMut(&ReadProgress<'_>),
) -> Result<(), AuditError> {
    let deadline = Instant::now() + timeout;
    let topics = input.topics().clone();
    let names = [
        topics.transactions.as_str(),
        topics.results.as_str(),
        topics.credits.as_str(),
        topics.dead_letters.as_str(),
    ];
    let [transactions, results, credits, dead_letters] = extents(bootstrap, &names)?
        .try_into()
        .expect("one extent per topic");
    // Ownership (and so every `misrouted` decision) is computed over this
    // count: with another one the model would judge a different ledger.
    for extent in [&transactions, &credits] {
        if usize::try_from(input.rules().partitions).ok() != Some(extent.ends.len()) {
            return Err(AuditError::PartitionCount {
                topic: extent.topic.clone(),
                found: extent.ends.len(),
                expected: input.rules().partitions,
            });
        }
    }
    let committed = Isolation::ReadCommitted;
    read_to_end(
        bootstrap,
        &transactions,
        committed,
        deadline,
        progress,
        |r| {
            input.push_transfer(r.position(), r.key, r.payload);
        },
    )?;
    read_to_end(
        bootstrap,
        &transactions,
        Isolation::ReadUncommitted,
        deadline,
        progress,
        |r| input.push_uncommitted_transfer(r.position()),
    )?;
    read_to_end(bootstrap, &results, committed, deadline, progress, |r| {
        input.push_outcome(r.position(), r.payload);
    })?;
    read_to_end(bootstrap, &credits, committed, deadline, progress, |r| {
        input.push_credit(r.position(), r.payload);
    })?;
    read_to_end(
        bootstrap,
        &dead_letters,
        committed,
        deadline,
        progress,
        |r| {
            input.push_dead_letter(r.header(wire::DLQ_HEADER_SOURCE));
        },
    )?;
    Ok(())
}

/// Where a shard's balances come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalanceSource {
    /// A running shard's HTTP API, e.g. `http://ledger-consumer-0:8080`.
    Url(String),
    /// A stopped shard's sled directory.
    Db(PathBuf),
}

impl fmt::Display for BalanceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BalanceSource::Url(url) => f.write_str(url),
            BalanceSource::Db(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Every committed balance of one shard. A running shard answers from its
/// last committed view; a stopped shard's directory must hold no pending
/// batch, since whether that batch committed is only known to Kafka's
/// group offsets, which the shard's own recovery consults.
pub fn fetch_balances(
    source: &BalanceSource,
    timeout: Duration,
) -> Result<ShardBalances, AuditError> {
    let balances = match source {
        BalanceSource::Url(url) => fetch_url(url, timeout)?.1,
        BalanceSource::Db(path) => {
            let store = Store::open_existing(path, StoreOptions::default())
                .map_err(|error| AuditError::Store(Box::new(error)))?;
            if let Some(pending) = store.pending() {
                return Err(AuditError::Pending {
                    path: path.clone(),
                    seq: pending.seq,
                });
            }
            store
                .reader()
                .balances()
                .map_err(|error| AuditError::Sled {
                    path: path.clone(),
                    error: Box::new(error),
                })?
        }
    };
    Ok(ShardBalances {
        source: source.to_string(),
        balances,
    })
}

/// Every committed balance of the shards at `sources`, once per shard: two
/// URLs reaching the running shard of one name count once. The running
/// shards must own each of the `partitions` exactly once between them: a
/// partition missing (its shard not given, down, or between owners) or
/// owned twice (a rebalance under way) would make the balance checks judge
/// another ledger than the topics', so it is an error, not a finding.
/// Stopped shards' directories are read as given: no live ownership to ask.
pub fn fetch_all(
    sources: &[BalanceSource],
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<ShardBalances>, AuditError> {
    // Shard name to the first URL that reached it and its partitions.
    let mut running: BTreeMap<String, (&str, Vec<i32>)> = BTreeMap::new();
    let mut all = Vec::new();
    for source in sources {
        let BalanceSource::Url(url) = source else {
            all.push(fetch_balances(source, timeout)?);
            continue;
        };
        let (stats, balances) = fetch_url(url, timeout)?;
        if running.contains_key(&stats.shard) {
            continue;
        }
        running.insert(stats.shard, (url, stats.partitions));
        all.push(ShardBalances {
            source: source.to_string(),
            balances,
        });
    }
    if !running.is_empty() {
        check_coverage(&running, partitions)?;
    }
    Ok(all)
}

/// Whether the shards (name to URL and partitions) own each partition of
/// `0..partitions` exactly once.
fn check_coverage(
    shards: &BTreeMap<String, (&str, Vec<i32>)>,
    partitions: i32,
) -> Result<(), AuditError> {
    let mut owners: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (name, (url, owned)) in shards {
        for partition in owned {
            owners
                .entry(*partition)
                .or_default()
                .push(format!("{name} ({url})"));
        }
    }
    let missing: Vec<String> = (0..partitions)
        .filter(|partition| !owners.contains_key(partition))
        .map(|partition| partition.to_string())
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "partition(s) {} of {partitions} owned by no shard given",
            missing.join(", ")
        ));
    }
    for (partition, names) in &owners {
        if !(0..partitions).contains(partition) {
            problems.push(format!(
                "partition {partition}, not one of 0..{partitions}, owned by {} (check \
                 --partitions)",
                names.join(" and ")
            ));
        } else if names.len() > 1 {
            problems.push(format!(
                "partition {partition} owned by both {}",
                names.join(" and ")
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AuditError::Coverage {
            detail: problems.join("; "),
        })
    }
}

/// A running shard's stats and all of its accounts, listed page by page;
/// then checks the listing is as long as the stats count, so that a shard
/// that lists fewer is an error, never a partial audit, and that every page
/// came from the shard of the stats (the address may serve another shard
/// after a restart).
fn fetch_url(
    url: &str,
    timeout: Duration,
) -> Result<(StatsView, Vec<(AccountId, Money)>), AuditError> {
    let fail = |detail: String| AuditError::Shard {
        url: url.to_owned(),
        detail,
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| fail(format!("HTTP client: {e}")))?;
    let base = url.trim_end_matches('/');
    let get = |path: &str| {
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .map_err(|e| fail(format!("GET {path}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().unwrap_or_default();
            return Err(fail(format!("GET {path}: {status}: {}", body.trim())));
        }
        Ok(response)
    };
    let stats: StatsView = get("/v1/stats")?
        .json()
        .map_err(|e| fail(format!("GET /v1/stats: {e}")))?;
    // Page by page: one answer per page, whatever the shard holds. The next
    // page's `after` is an account of this page, which `parse_balance` has
    // validated (URL-safe characters only) before it is asked for.
    let mut balances = Vec::new();
    let limit = BALANCES_PAGE_MAX.to_string();
    api::page_through(
        BALANCES_PAGE_MAX,
        |after| {
            let mut path = format!("/v1/balances?limit={limit}");
            if let Some(after) = after {
                path.push_str("&after=");
                path.push_str(after);
            }
            let page: BalancesPageView = get(&path)?
                .json()
                .map_err(|e| fail(format!("GET {path}: {e}")))?;
            if page.shard != stats.shard {
                return Err(fail(format!(
                    "GET {path}: answered by shard {}, not {}: the address serves another \
                     shard now; retry",
                    page.shard, stats.shard
                )));
            }
            Ok(page.accounts)
        },
        |page| {
            for entry in page {
                balances.push(parse_balance(&entry).map_err(fail)?);
            }
            Ok(())
        },
    )?;
    if balances.len() as u64 != stats.accounts {
        return Err(fail(format!(
            "listed {} accounts but its stats count {} (is the shard still processing?)",
            balances.len(),
            stats.accounts
        )));
    }
    Ok((stats, balances))
}

/// An account and its balance as a shard's API shows them.
fn parse_balance(entry: &AccountView) -> Result<(AccountId, Money), String> {
    let account = AccountId::parse(&entry.account)
        .map_err(|e| format!("account {:?}: {e}", entry.account))?;
    let decimal: Decimal = entry
        .balance
        .parse()
        .map_err(|e| format!("balance {:?} of {account}: {e}", entry.balance))?;
    let balance = to_money(decimal).ok_or_else(|| {
        format!(
            "balance {} of {account} has more than {SCALE} decimals",
            entry.balance
        )
    })?;
    Ok((account, balance))
}

fn to_money(mut decimal: Decimal) -> Option<Money> {
    if decimal.scale() > SCALE {
        return None;
    }
    decimal.rescale(SCALE);
    Some(Money(decimal.mantissa()))
}
