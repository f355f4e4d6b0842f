//! The shard's configuration: flags with environment fallbacks, and the
//! values derived from them once at start (the shard's name, owned
//! partitions, paths).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ledger::kafka;
use ledger::names;
use ledger::store::StoreOptions;
use ledger::telemetry::LogFormat;
use ledger_core::domain::Currency;
use ledger_core::machine::{Rules, Source};

/// Why the configuration cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no shard ordinal: pass --shard (or TXLEDGER_SHARD), or run on a host whose name \
         ends with -<ordinal>, like a StatefulSet pod `ledger-consumer-2` (this host is \
         {0:?}); with --assignment group no ordinal is needed"
    )]
    NoOrdinal(String),
    #[error("the shard's name in {path}: {error}")]
    Name { path: PathBuf, error: io::Error },
    #[error(
        "{path} holds {found:?}, not a shard name: restore the file, or delete it to give \
         this directory a new name (a new transactional.id and group member)"
    )]
    BadName { path: PathBuf, found: String },
    #[error("shard {shard} does not exist among {shards} shards: ordinals run from 0 to {last}", last = shards - 1)]
    OrdinalOutOfRange { shard: u32, shards: u32 },
    #[error(
        "shard {shard} of {shards} owns no partition of {partitions}: \
         run at most as many shards as partitions"
    )]
    NoPartition {
        shard: u32,
        shards: u32,
        partitions: i32,
    },
    #[error(
        "the transaction timeout ({timeout_ms} ms) must leave room for a batch: \
         use at least {TRANSACTION_TIMEOUT_BATCHES_MIN} times --batch-ms ({batch_ms} ms) \
         and at least {TRANSACTION_TIMEOUT_MIN_MS} ms"
    )]
    TransactionTimeout { timeout_ms: u64, batch_ms: u64 },
    #[error(
        "the session timeout ({session_ms} ms) must not exceed the poll interval \
         (--max-poll-interval-ms, {poll_ms} ms)"
    )]
    SessionTimeout { session_ms: u64, poll_ms: u64 },
}

/// How a shard comes to own its partitions (`--assignment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Assignment {
    Ordinal,
    Group,
}

/// The partitions a shard owns, as settled at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Fixed: `p mod shards == shard`.
    Ordinal(Vec<i32>),
    /// Whatever the consumer group assigns, from one rebalance to the next.
    Group {
        max_poll_interval: Duration,
        session_timeout: Duration,
    },
}

/// An exactly-once consumer shard of the txledger pipeline.
///
/// Kafka client security settings (SASL, TLS) come from KAFKA_SECURITY_PROTOCOL,
/// KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and
/// KAFKA_SSL_CA_LOCATION. Logs are filtered with RUST_LOG (default info).
#[derive(Debug, Clone, Parser)]
#[command(name = "consumer", version)]
pub struct Config {
    /// Kafka brokers, host:port[,host:port...].
    #[arg(
        long,
        env = kafka::ENV_BOOTSTRAP,
        default_value = "localhost:9092"
    )]
    pub bootstrap_servers: String,

    /// Input topic of transfers, keyed by source account.
    #[arg(long, env = names::TXLEDGER_TRANSFERS_TOPIC, default_value = names::TOPIC_TRANSFERS)]
    pub transfers_topic: String,

    /// Topic of credits between shards, keyed by destination account; read
    /// and written by the shards.
    #[arg(long, env = names::TXLEDGER_CREDITS_TOPIC, default_value = names::TOPIC_CREDITS)]
    pub credits_topic: String,

    /// Output topic of outcomes, one per input transfer record.
    #[arg(long, env = names::TXLEDGER_RESULTS_TOPIC, default_value = names::TOPIC_RESULTS)]
    pub results_topic: String,

    /// Dead-letter topic for undecodable input.
    #[arg(long, env = names::TXLEDGER_DLQ_TOPIC, default_value = names::TOPIC_DEAD_LETTERS)]
    pub dlq_topic: String,

    /// Compacted topic of the shards' state changes, written in each
    /// batch's transaction; a shard whose sled directory is lost or stale
    /// rebuilds it from there. Empty: no changelog (a little faster, and a
    /// lost directory is then refused, never restored).
    #[arg(long, env = names::TXLEDGER_CHANGELOG_TOPIC, default_value = names::TOPIC_CHANGELOG)]
    pub changelog_topic: String,

    /// Partitions of the topics, used to create missing ones and to check
    /// that transfers and credits have the same count.
    #[arg(long, env = names::TXLEDGER_PARTITIONS, default_value_t = 6,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,

    /// The sled directory of this shard [default: ./data/shard-<ordinal>].
    #[arg(long, env = names::TXLEDGER_DATA_DIR)]
    pub data_dir: Option<PathBuf>,

    /// This shard's ordinal, 0 to shards-1 [default: the number after the
    /// last `-` of the hostname, e.g. ledger-consumer-2]. With `--assignment
    /// group` it only names the shard, and may be left out altogether: a
    /// shard without one names itself once, in its data directory.
    #[arg(long, env = names::TXLEDGER_SHARD)]
    pub shard: Option<u32>,

    /// How many shards share the partitions (with `--assignment ordinal`).
    #[arg(long, env = names::TXLEDGER_SHARDS, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub shards: u32,

    /// Who decides which partitions this shard owns. `ordinal`: partition p
    /// belongs to shard `p mod --shards`, fixed at start. `group`: the
    /// consumer group does (range assignor), so that shards can come and
    /// go; a partition's state follows it through the changelog, and a
    /// shard of an older group generation cannot commit (KIP-447).
    #[arg(long, env = names::TXLEDGER_ASSIGNMENT, value_enum, default_value_t = Assignment::Ordinal)]
    pub assignment: Assignment,

    /// With `--assignment group`: how long the shard may go without asking
    /// for records (a batch, a restore of taken-over partitions) before
    /// the group gives its partitions to the others (Kafka's
    /// max.poll.interval.ms).
    #[arg(long, env = names::TXLEDGER_MAX_POLL_INTERVAL_MS, default_value_t = 300_000,
          value_parser = clap::value_parser!(u64).range(10_000..=3_600_000))]
    pub max_poll_interval_ms: u64,

    /// With `--assignment group`: how long the group waits for a shard that
    /// stopped answering (killed, cut off, or stopped for good: a static
    /// member does not leave the group) before it gives the shard's
    /// partitions to the others; a shard restarted within it takes them
    /// back with no rebalance (Kafka's session.timeout.ms). Keep it under
    /// --hold-max-ms, or transfers waiting on those partitions expire.
    #[arg(long, env = names::TXLEDGER_SESSION_TIMEOUT_MS, default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(6_000..=1_800_000))]
    pub session_timeout_ms: u64,

    /// Consumer group whose committed offsets the transactions carry.
    #[arg(long, env = names::TXLEDGER_GROUP_ID, default_value = "txledger-ledger")]
    pub group_id: String,

    /// The shard's transactional.id (and name) is `<prefix>-<ordinal>`, or
    /// `<prefix>-<random hex>` kept in the data directory for a group shard
    /// without an ordinal: stable across restarts, so that a new incarnation
    /// fences the old one.
    #[arg(
        long,
        env = names::TXLEDGER_TRANSACTIONAL_ID_PREFIX,
        default_value = "ledger-consumer"
    )]
    pub transactional_id_prefix: String,

    /// Address of the HTTP API (health, readiness, metrics, queries).
    #[arg(long, env = names::TXLEDGER_HTTP_ADDR, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Most records in one batch (one Kafka transaction, one sled write).
    #[arg(long, env = names::TXLEDGER_BATCH_RECORDS, default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub batch_records: u32,

    /// Longest time spent polling one batch, in milliseconds.
    #[arg(long, env = names::TXLEDGER_BATCH_MS, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub batch_ms: u64,

    /// Kafka transaction timeout in milliseconds; must stay at or below the
    /// broker's transaction.max.timeout.ms.
    #[arg(
        long,
        env = names::TXLEDGER_TRANSACTION_TIMEOUT_MS,
        default_value_t = kafka::TRANSACTION_TIMEOUT_DEFAULT_MS,
        value_parser = clap::value_parser!(u64)
            .range(kafka::TRANSACTION_TIMEOUT_MS_MIN..=kafka::TRANSACTION_TIMEOUT_MS_MAX)
    )]
    pub transaction_timeout_ms: u64,

    /// The timeout of each transactional call (begin, send offsets, commit,
    /// abort, flush), in milliseconds. librdkafka can block in some of them
    /// past their timeout; the shard cuts such a call off 2 s later and
    /// exits with status 75 for its supervisor to restart it (recovery makes
    /// that safe). Capped at --transaction-timeout-ms; keep it at most a sixth
    /// of --hold-max-ms, so that a call cut off and a restart end before
    /// other shards' held transfers expire.
    #[arg(
        long,
        env = names::TXLEDGER_CALL_TIMEOUT_MS,
        default_value_t = kafka::CALL_TIMEOUT_DEFAULT_MS,
        value_parser = clap::value_parser!(u64)
            .range(kafka::CALL_TIMEOUT_MS_MIN..=kafka::CALL_TIMEOUT_MS_MAX)
    )]
    pub call_timeout_ms: u64,

    /// The ledger's one currency; transfers in any other are rejected.
    #[arg(long, env = names::TXLEDGER_CURRENCY, default_value = "EUR")]
    pub currency: Currency,

    /// How long a transfer short of funds may wait, in milliseconds, for
    /// credits ordered before it that may still be on their way; then it is
    /// rejected `hold_expired`. 0 decides at once: a shortage not yet proven
    /// is then `hold_expired`, which depends on timing.
    #[arg(long, env = names::TXLEDGER_HOLD_MAX_MS, default_value_t = HOLD_MAX_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub hold_max_ms: u64,

    /// How many recent transfer ids are remembered for idempotency; a
    /// resubmission older than that is decided again.
    #[arg(long, env = names::TXLEDGER_IDEMPOTENCY_WINDOW, default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub idempotency_window: u64,

    /// Log line format.
    #[arg(long, env = names::TXLEDGER_LOG_FORMAT, value_enum, default_value = "human")]
    pub log_format: LogFormat,
}

/// Long enough for a credit to cross the pipeline under load, a shard
/// restart, and a broker failover on a replicated cluster (each fault of
/// the cluster test held the pipeline 14-22 s, and transfers already held
/// when it began waited that on top: 47 expired at 30 s), short enough
/// that a stuck partition does not freeze payments for long.
const HOLD_MAX_MS_DEFAULT: u64 = 60_000;

/// The shortest transaction timeout, and how many batch windows it must
/// hold at least: a batch must finish well inside its transaction.
const TRANSACTION_TIMEOUT_MIN_MS: u64 = 1000;
const TRANSACTION_TIMEOUT_BATCHES_MIN: u64 = 10;

/// Everything the shard loop needs, resolved and checked once.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub bootstrap_servers: String,
    pub transfers_topic: String,
    pub credits_topic: String,
    pub results_topic: String,
    pub dlq_topic: String,
    /// `None`: the changelog is off.
    pub changelog_topic: Option<String>,
    /// Which partitions of both input topics this shard owns.
    pub ownership: Ownership,
    pub data_dir: PathBuf,
    pub group_id: String,
    pub transactional_id: String,
    pub batch_records: usize,
    pub batch_time: Duration,
    pub transaction_timeout: Duration,
    /// Given to each transactional call; the watchdog cuts it off
    /// `kafka::CALL_CUTOFF_GRACE` later.
    pub call_timeout: Duration,
    pub rules: Rules,
    pub store: StoreOptions,
}

impl Settings {
    pub fn resolve(config: &Config) -> Result<Settings, ConfigError> {
        let (shard, ownership) = ownership(config)?;
        check_transaction_timeout(config)?;
        let data_dir = config.data_dir.clone().unwrap_or_else(|| match shard {
            Some(shard) => PathBuf::from(format!("./data/shard-{shard}")),
            None => PathBuf::from("./data/shard"),
        });
        let transactional_id = match shard {
            Some(shard) => kafka::shard_transactional_id(&config.transactional_id_prefix, shard),
            None => own_name(&data_dir, &config.transactional_id_prefix)?,
        };
        Ok(Settings {
            bootstrap_servers: config.bootstrap_servers.clone(),
            transfers_topic: config.transfers_topic.clone(),
            credits_topic: config.credits_topic.clone(),
            results_topic: config.results_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            changelog_topic: Some(config.changelog_topic.clone()).filter(|topic| !topic.is_empty()),
            ownership,
            data_dir,
            group_id: config.group_id.clone(),
            transactional_id,
            batch_records: config.batch_records as usize,
            batch_time: Duration::from_millis(config.batch_ms),
            transaction_timeout: Duration::from_millis(config.transaction_timeout_ms),
            // A call cannot outlast the transaction it belongs to.
            call_timeout: Duration::from_millis(
                config.call_timeout_ms.min(config.transaction_timeout_ms),
            ),
            rules: Rules {
                currency: config.currency,
                partitions: config.partitions,
                hold_max_ms: config.hold_max_ms,
            },
            store: StoreOptions {
                idempotency_window: usize::try_from(config.idempotency_window)
                    .unwrap_or(usize::MAX),
            },
        })
    }

    pub fn topic(&self, source: Source) -> &str {
        match source {
            Source::Transfers => &self.transfers_topic,
            Source::Credits => &self.credits_topic,
        }
    }

    /// The other way round: the source of a record read from `topic`, one
    /// of the two input topics the shard is assigned.
    pub fn source_of(&self, topic: &str) -> Source {
        if topic == self.transfers_topic {
            Source::Transfers
        } else {
            Source::Credits
        }
    }
}

/// The shard's ordinal, if it has one, and which partitions it owns: by
/// its ordinal (`--shard`, or the hostname's), or by the group.
fn ownership(config: &Config) -> Result<(Option<u32>, Ownership), ConfigError> {
    // The hostname's ordinal, or the hostname that has none.
    let host_ordinal = || {
        let host = hostname::get()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        ordinal_of_hostname(&host).ok_or(host)
    };
    match config.assignment {
        Assignment::Ordinal => {
            let shard = match config.shard {
                Some(shard) => shard,
                None => host_ordinal().map_err(ConfigError::NoOrdinal)?,
            };
            Ok((
                Some(shard),
                Ownership::Ordinal(ordinal_partitions(config, shard)?),
            ))
        }
        Assignment::Group => {
            // librdkafka refuses a session longer than the poll interval.
            if config.session_timeout_ms > config.max_poll_interval_ms {
                return Err(ConfigError::SessionTimeout {
                    session_ms: config.session_timeout_ms,
                    poll_ms: config.max_poll_interval_ms,
                });
            }
            Ok((
                config.shard.or_else(|| host_ordinal().ok()),
                Ownership::Group {
                    max_poll_interval: Duration::from_millis(config.max_poll_interval_ms),
                    session_timeout: Duration::from_millis(config.session_timeout_ms),
                },
            ))
        }
    }
}

/// The partitions shard `shard` owns by its ordinal: a shard that would own
/// none, or does not exist, is a mistake in the deployment.
fn ordinal_partitions(config: &Config, shard: u32) -> Result<Vec<i32>, ConfigError> {
    if shard >= config.shards {
        return Err(ConfigError::OrdinalOutOfRange {
            shard,
            shards: config.shards,
        });
    }
    let owned = owned_partitions(shard, config.shards, config.partitions);
    if owned.is_empty() {
        return Err(ConfigError::NoPartition {
            shard,
            shards: config.shards,
            partitions: config.partitions,
        });
    }
    Ok(owned)
}

/// A batch must finish well inside its transaction.
fn check_transaction_timeout(config: &Config) -> Result<(), ConfigError> {
    if config.transaction_timeout_ms < TRANSACTION_TIMEOUT_MIN_MS
        || config.transaction_timeout_ms < config.batch_ms * TRANSACTION_TIMEOUT_BATCHES_MIN
    {
        return Err(ConfigError::TransactionTimeout {
            timeout_ms: config.transaction_timeout_ms,
            batch_ms: config.batch_ms,
        });
    }
    Ok(())
}

/// The StatefulSet ordinal: the digits after the hostname's last `-`. A
/// container's default hostname (its id, hex digits) is no ordinal, even
/// when it happens to end in a digit.
pub fn ordinal_of_hostname(host: &str) -> Option<u32> {
    let (_, digits) = host.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The file in a group shard's data directory that holds its name.
const NAME_FILE: &str = "shard-name";

/// The name of a group shard without an ordinal (a replica of a compose
/// service scaled with `--scale`, which has none): read from its data
/// directory, or made up (`<prefix>-<16 hex digits>`) and written there the
/// first time. The directory keeps it, so a restarted shard is the same
/// transactional id and group member and fences its former self; a lost
/// directory makes a new shard, and the former one's open transaction, if
/// any, ends at its transaction timeout.
fn own_name(data_dir: &Path, prefix: &str) -> Result<String, ConfigError> {
    let path = data_dir.join(NAME_FILE);
    let io_error = |error| ConfigError::Name {
        path: path.clone(),
        error,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let name = text.trim();
            let valid = !name.is_empty()
                && name.len() <= NAME_LEN_MAX
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if valid {
                Ok(name.to_owned())
            } else {
                Err(ConfigError::BadName {
                    path: path.clone(),
                    found: text,
                })
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let random = uuid::Uuid::new_v4().simple().to_string();
            let name = format!("{prefix}-{}", &random[..16]);
            std::fs::create_dir_all(data_dir).map_err(io_error)?;
            // Written whole or not at all: a name cut short by a crash
            // would be a different shard.
            let partial = data_dir.join(format!("{NAME_FILE}.partial"));
            let write = || -> io::Result<()> {
                let mut file = std::fs::File::create(&partial)?;
                io::Write::write_all(&mut file, format!("{name}\n").as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&partial, &path)?;
                std::fs::File::open(data_dir)?.sync_all()
            };
            write().map_err(io_error)?;
            Ok(name)
        }
        Err(error) => Err(io_error(error)),
    }
}

/// Kafka's longest transactional.id is far longer; this keeps log lines
/// and answers readable and refuses a file that is not a name at all.
const NAME_LEN_MAX: usize = 200;

/// Partitions `p` with `p mod shards == shard`: static ownership, so no
/// group rebalance ever moves an account away from the sled that holds it.
pub fn owned_partitions(shard: u32, shards: u32, partitions: i32) -> Vec<i32> {
    (0..partitions)
        .filter(|p| u32::try_from(*p).is_ok_and(|p| p % shards == shard))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ordinal_is_the_hostname_suffix() {
        assert_eq!(ordinal_of_hostname("ledger-consumer-2"), Some(2));
        assert_eq!(ordinal_of_hostname("ledger-consumer-17"), Some(17));
        assert_eq!(ordinal_of_hostname("host3"), None);
        assert_eq!(ordinal_of_hostname("3fa9c2d1e045"), None);
        assert_eq!(ordinal_of_hostname("consumer-"), None);
        assert_eq!(ordinal_of_hostname("laptop"), None);
        assert_eq!(ordinal_of_hostname(""), None);
    }

    #[test]
    fn shards_split_the_partitions_modulo() {
        assert_eq!(owned_partitions(0, 1, 3), vec![0, 1, 2]);
        assert_eq!(owned_partitions(1, 3, 6), vec![1, 4]);
        assert_eq!(owned_partitions(2, 4, 6), vec![2]);
        assert!(owned_partitions(6, 7, 6).is_empty());
        let all: Vec<i32> = (0..5).flat_map(|s| owned_partitions(s, 5, 12)).collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..12).collect::<Vec<_>>(), "each partition once");
    }

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("consumer").chain(args.iter().copied())).unwrap()
    }

    /// A group shard without an ordinal names itself once; the directory
    /// keeps the name, so a restart is the same shard, and a directory that
    /// lost it is a new one.
    #[test]
    fn a_group_shard_without_an_ordinal_keeps_the_name_it_gave_itself() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("sled");
        let data_dir = data.to_str().unwrap();
        let args = [
            "--assignment",
            "group",
            "--data-dir",
            data_dir,
            "--transactional-id-prefix",
            "t",
        ];
        // Whatever this machine's hostname, an explicit ordinal is absent
        // only if the hostname has none either; name it here directly.
        let first = own_name(&data, "t").unwrap();
        let suffix = first.strip_prefix("t-").expect("the prefix");
        assert_eq!(suffix.len(), 16);
        assert!(suffix.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
        assert_eq!(own_name(&data, "t").unwrap(), first, "kept across starts");
        let settings = Settings::resolve(&parse(&args)).unwrap();
        let hostname_ordinal = hostname::get()
            .ok()
            .and_then(|host| ordinal_of_hostname(&host.to_string_lossy()));
        match hostname_ordinal {
            Some(ordinal) => assert_eq!(settings.transactional_id, format!("t-{ordinal}")),
            None => assert_eq!(settings.transactional_id, first),
        }
        let named = Settings::resolve(&parse(&[&args[..], &["--shard", "4"]].concat())).unwrap();
        assert_eq!(
            named.ownership,
            Ownership::Group {
                max_poll_interval: Duration::from_secs(300),
                session_timeout: Duration::from_secs(10),
            }
        );
        let long_session = [&args[..], &["--session-timeout-ms", "20000"]].concat();
        let short_poll = [&long_session[..], &["--max-poll-interval-ms", "15000"]].concat();
        assert!(matches!(
            Settings::resolve(&parse(&short_poll)),
            Err(ConfigError::SessionTimeout { .. })
        ));
        assert_eq!(named.transactional_id, "t-4");

        std::fs::remove_dir_all(&data).unwrap();
        let second = own_name(&data, "t").unwrap();
        assert_ne!(second, first, "a lost directory is a new shard");

        std::fs::write(data.join(NAME_FILE), "not a name!\n").unwrap();
        assert!(matches!(
            own_name(&data, "t"),
            Err(ConfigError::BadName { .. })
        ));
    }

    #[test]
    fn settings_are_derived_and_checked() {
        let config = parse(&[
            "--shard",
            "1",
            "--shards",
            "3",
            "--transactional-id-prefix",
            "t",
        ]);
        let settings = Settings::resolve(&config).unwrap();
        assert_eq!(settings.ownership, Ownership::Ordinal(vec![1, 4]));
        assert_eq!(settings.transactional_id, "t-1");
        assert_eq!(settings.data_dir, PathBuf::from("./data/shard-1"));
        assert_eq!(settings.rules.currency, Currency::EUR);

        let out_of_range = parse(&["--shard", "3", "--shards", "3"]);
        assert!(matches!(
            Settings::resolve(&out_of_range),
            Err(ConfigError::OrdinalOutOfRange { .. })
        ));
        let idle = parse(&["--shard", "6", "--shards", "7"]);
        assert!(matches!(
            Settings::resolve(&idle),
            Err(ConfigError::NoPartition { .. })
        ));
        let tight = parse(&[
            "--shard",
            "0",
            "--batch-ms",
            "500",
            "--transaction-timeout-ms",
            "2000",
        ]);
        assert!(matches!(
            Settings::resolve(&tight),
            Err(ConfigError::TransactionTimeout { .. })
        ));
        assert!(Config::try_parse_from(["consumer", "--currency", "euro"]).is_err());
        assert!(Config::try_parse_from(["consumer", "--batch-records", "0"]).is_err());
    }

    /// The producer's bounds: one setting, one range, in both binaries.
    #[test]
    fn the_transaction_timeout_is_bounded_like_the_producers() {
        let timeout = |ms: &str| {
            Config::try_parse_from(["consumer", "--transaction-timeout-ms", ms])
                .map(|config| config.transaction_timeout_ms)
        };
        assert_eq!(parse(&[]).transaction_timeout_ms, 60_000);
        assert_eq!(timeout("1000").unwrap(), 1_000);
        assert_eq!(timeout("900000").unwrap(), 900_000);
        for refused in ["999", "900001"] {
            let error = timeout(refused).unwrap_err().to_string();
            assert!(error.contains("1000..=900000"), "{refused}: {error}");
        }
    }
}
