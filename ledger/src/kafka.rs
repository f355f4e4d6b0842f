//! Kafka client settings shared by every binary, and topic creation.
//!
//! Settings that the exactly-once protocol depends on are set here
//! explicitly, with the reason next to each, rather than left to defaults.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};

use crate::store::Stamp;

/// The environment variable naming the brokers, read by every binary.
pub const ENV_BOOTSTRAP: &str = "KAFKA_BOOTSTRAP_SERVERS";

/// Security settings read from the environment, so that a secured cluster
/// (SASL, TLS) works without code changes: each variable maps to one
/// librdkafka property. Values come from a Secret in Kubernetes, never git.
pub const SECURITY_ENV: [(&str, &str); 5] = [
    ("KAFKA_SECURITY_PROTOCOL", "security.protocol"),
    ("KAFKA_SASL_MECHANISM", "sasl.mechanism"),
    ("KAFKA_SASL_USERNAME", "sasl.username"),
    ("KAFKA_SASL_PASSWORD", "sasl.password"),
    ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
];

/// The partitioner of every producer here. Shards route credits to the
/// shard that owns the destination account by producing with the same
/// partitioner the transfer producer used; murmur2 is also what the Java
/// client uses, so transfers written by JVM producers land alike.
pub const PARTITIONER: &str = "murmur2_random";

/// The base configuration: brokers plus the security settings from env.
pub fn client_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers);
    for (variable, property) in SECURITY_ENV {
        if let Ok(value) = std::env::var(variable) {
            if !value.is_empty() {
                config.set(property, value);
            }
        }
    }
    config
}

/// Kafka's `transaction.timeout.ms` of the producer's and the shards'
/// transactions when none is given (`TXLEDGER_TRANSACTION_TIMEOUT_MS`).
pub const TRANSACTION_TIMEOUT_DEFAULT_MS: u64 = 60_000;
/// The bounds both binaries accept for it: librdkafka refuses less than a
/// second, and the broker's default `transaction.max.timeout.ms` refuses
/// more than 15 minutes at `init_transactions`.
pub const TRANSACTION_TIMEOUT_MS_MIN: u64 = 1_000;
pub const TRANSACTION_TIMEOUT_MS_MAX: u64 = 900_000;

/// The timeout each transactional call (begin, send offsets, commit, abort,
/// flush) is given when none is set (`TXLEDGER_CALL_TIMEOUT_MS`); the
/// binary's watchdog (`crate::watchdog`) cuts a call off
/// [`CALL_CUTOFF_GRACE`] after it, whether librdkafka honoured it or not.
/// Well under the shards' default `--hold-max-ms` (60 s): a call cut off
/// (7 s), a restart and its recovery (whose `init_transactions` waits for
/// the broker to abort the cut-off transaction: up to 15 s while a node is
/// down) end before another shard's held transfers expire waiting for this
/// one's marks. A coordinator failing over takes longer than 5 s (the
/// broker session, 9 s): such a call returns a retriable timeout, and is
/// retried.
pub const CALL_TIMEOUT_DEFAULT_MS: u64 = 5_000;
/// The bounds both binaries accept for it: under a second, an ordinary
/// coordinator round trip on a loaded machine would be cut off.
pub const CALL_TIMEOUT_MS_MIN: u64 = 1_000;
pub const CALL_TIMEOUT_MS_MAX: u64 = TRANSACTION_TIMEOUT_MS_MAX;
/// How long after its own timeout a call is cut off: room for librdkafka to
/// return the timeout it does honour, as a retriable error the caller can
/// act on, before the watchdog ends the process.
pub const CALL_CUTOFF_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A transactional, idempotent producer's configuration.
pub fn transactional_producer_config(
    bootstrap_servers: &str,
    transactional_id: &str,
    transaction_timeout: Duration,
) -> ClientConfig {
    let mut config = client_config(bootstrap_servers);
    config
        .set("transactional.id", transactional_id)
        // Implied by transactional.id; set so nobody wonders.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", PARTITIONER)
        .set(
            "transaction.timeout.ms",
            transaction_timeout.as_millis().to_string(),
        )
        // Must stay below transaction.timeout.ms: a message that cannot be
        // delivered fails its transaction before the broker aborts it.
        .set(
            "message.timeout.ms",
            (transaction_timeout.as_millis() * 9 / 10).to_string(),
        );
    config
}

/// A consumer that reads only committed records and never commits on its
/// own: offsets are committed inside the producer's transaction.
pub fn read_committed_consumer_config(bootstrap_servers: &str, group_id: &str) -> ClientConfig {
    let mut config = client_config(bootstrap_servers);
    config
        .set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // librdkafka's default (1000 ms) makes the fetcher sleep a whole
        // second whenever the application falls behind its prefetch queue,
        // which stalls a busy shard for far longer than a batch.
        .set("fetch.queue.backoff.ms", "10")
        // A fetch waits this long on partitions without records, and
        // partitions that become fetchable meanwhile (a fresh assignment
        // whose start offsets are still being looked up) wait with it:
        // librdkafka's 500 ms default delayed a shard's first batch by as
        // much. An idle shard asks ten times a second instead of twice.
        .set("fetch.wait.max.ms", "100")
        // Off: a shard polls on and never asks whether it is caught up.
        // Readers that stop at the end of each partition (the audit, the
        // demo's probe, the tests, the bench) turn it on themselves, the
        // audit and the probe with an `EofReaderContext`, which keeps the
        // events out of the error log.
        .set("enable.partition.eof", "false");
    config
}

/// A shard's transactional.id: `prefix-N` for shard N. An incarnation of
/// the same shard fences the previous one through it.
pub fn shard_transactional_id(prefix: &str, shard: u32) -> String {
    format!("{prefix}-{shard}")
}

/// The metadata a shard commits with each offset: `txledger:<id>` names
/// the committer by its transactional.id, so that whoever takes the
/// partition next knows whether its own `init_transactions` fenced it, and
/// `#<stamp>` (32 hex digits) is the partition's state version
/// (`store::Stamp`).
pub fn committer_tag(transactional_id: &str, stamp: Option<&Stamp>) -> String {
    match stamp {
        Some(stamp) => format!(
            "{COMMITTER_PREFIX}{transactional_id}#{}",
            uuid::Uuid::from_bytes(*stamp).simple()
        ),
        None => format!("{COMMITTER_PREFIX}{transactional_id}"),
    }
}

/// The other way round: the committer's transactional.id and the stamp, or
/// `None` for metadata that no shard wrote.
pub fn parse_committer_tag(metadata: &str) -> Option<(&str, Option<Stamp>)> {
    let tag = metadata.strip_prefix(COMMITTER_PREFIX)?;
    match tag.split_once('#') {
        None => Some((tag, None)),
        Some((id, stamp)) => {
            let stamp = uuid::Uuid::try_parse(stamp).ok()?;
            Some((id, Some(*stamp.as_bytes())))
        }
    }
}

/// How every committer tag starts; other metadata came from something else.
const COMMITTER_PREFIX: &str = "txledger:";

/// Fetches `topics`' metadata into the consumer's cache before an
/// `assign`. Without it the assignment finds no partition leader and
/// librdkafka looks them up on 500 ms timers: the first records arrived a
/// second or more after `assign`.
pub fn prefetch_metadata<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topics: &[&str],
    timeout: Duration,
) -> KafkaResult<()> {
    for topic in topics {
        consumer.fetch_metadata(Some(topic), timeout)?;
    }
    Ok(())
}

/// Why topics could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("could not create an admin client for {bootstrap}")]
    Client {
        bootstrap: String,
        #[source]
        source: KafkaError,
    },
    #[error("the broker at {bootstrap} did not answer within {timeout:?}")]
    Unreachable {
        bootstrap: String,
        timeout: Duration,
        #[source]
        source: KafkaError,
    },
    #[error("the broker refused to create topic {topic}: {code}")]
    Refused {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error(
        "topic {topic} has {actual} partitions but {expected} are required: \
         transfers and credits must have the same partition count"
    )]
    PartitionMismatch {
        topic: String,
        expected: i32,
        actual: i32,
    },
}

/// A topic a binary needs.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec<'a> {
    pub name: &'a str,
    pub partitions: i32,
    /// Refuse an existing topic with another partition count: `transactions`
    /// and `ledger-credits` must match, since partition numbers decide which
    /// shard owns an account.
    pub exact: bool,
    /// Created with `cleanup.policy=compact`: the topic keeps the last
    /// value of each key (the changelog).
    pub compacted: bool,
}

/// Creates each topic that does not exist yet (replication factor from the
/// broker's default), and checks the partition count where it matters.
pub async fn ensure_topics(
    config: &ClientConfig,
    topics: &[TopicSpec<'_>],
    timeout: Duration,
) -> Result<(), TopicError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let bootstrap = config.get("bootstrap.servers").unwrap_or("?").to_owned();
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|source| TopicError::Client {
            bootstrap: bootstrap.clone(),
            source,
        })?;
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|spec| {
            let topic = NewTopic::new(spec.name, spec.partitions, TopicReplication::Fixed(-1));
            if spec.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let unreachable = |source| TopicError::Unreachable {
        bootstrap: bootstrap.clone(),
        timeout,
        source,
    };
    let results = tokio::time::timeout(timeout, admin.create_topics(&new_topics, &options))
        .await
        .map_err(|_| unreachable(KafkaError::AdminOpCreation("timed out".into())))?
        .map_err(unreachable)?;
    for result in results {
        if let Err((topic, code)) = result {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(TopicError::Refused { topic, code });
            }
        }
    }
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(unreachable)?;
    for spec in topics.iter().filter(|spec| spec.exact) {
        if let Some(topic) = metadata.topics().iter().find(|t| t.name() == spec.name) {
            let actual = topic.partitions().len() as i32;
            if actual != spec.partitions {
                return Err(TopicError::PartitionMismatch {
                    topic: spec.name.to_owned(),
                    expected: spec.partitions,
                    actual,
                });
            }
        }
    }
    Ok(())
}

/// The client context of readers that ask for end-of-partition events
/// (`enable.partition.eof`): librdkafka may also raise those as client-level
/// errors, which the default context logs at ERROR. Here they are expected
/// and handled where the reader polls; anything else is a warning.
#[derive(Debug, Clone, Copy, Default)]
pub struct EofReaderContext;

impl rdkafka::client::ClientContext for EofReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end_of_partition {
            tracing::warn!(message = "Kafka client error.", error = %crate::telemetry::chain(&error), reason);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofReaderContext {}

/// A `BaseConsumer` for readers that stop at the end of each partition.
pub type EofReader = rdkafka::consumer::BaseConsumer<EofReaderContext>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committer_tags_read_back_and_foreign_metadata_is_none() {
        let stamp: Stamp = *b"0123456789abcdef";
        let tag = committer_tag("ledger-consumer-2", Some(&stamp));
        assert_eq!(
            parse_committer_tag(&tag),
            Some(("ledger-consumer-2", Some(stamp)))
        );
        let plain = committer_tag("ledger-consumer-2", None);
        assert_eq!(plain, "txledger:ledger-consumer-2");
        assert_eq!(
            parse_committer_tag(&plain),
            Some(("ledger-consumer-2", None))
        );
        assert_eq!(parse_committer_tag(""), None);
        assert_eq!(parse_committer_tag("checkpoint 7"), None);
        assert_eq!(parse_committer_tag("txledger:x#not-hex"), None);
    }
}
