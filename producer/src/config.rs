//! The producer's configuration: command-line flags, each with an
//! environment-variable fallback so that a container needs no arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ledger::kafka;
use ledger::names;
use ledger::telemetry::LogFormat;
use ledger_core::domain::Currency;

/// Largest `--batch-records`: a transaction's records are kept in memory to
/// be resent after an abort, and librdkafka's queue
/// (`queue.buffering.max.messages`, 100 000 by default) must hold them all.
pub const BATCH_RECORDS_MAX: usize = 100_000;

/// The environment variables renamed in 0.2, as (old, new), so that every
/// setting is spelt `TXLEDGER_...` and the settings the shards have too are
/// named as theirs: read under the old names for one release, with a warning
/// (`Config::from_env_and_args`). The old `PRODUCER_TRANSACTION_TIMEOUT_SECS`,
/// in another unit, is an argument of its own.
pub const RENAMED_ENV: &[(&str, &str)] = &[
    ("KAFKA_TOPIC", names::TXLEDGER_TRANSFERS_TOPIC),
    ("PRODUCER_PARTITIONS", names::TXLEDGER_PARTITIONS),
    ("PRODUCER_CURRENCY", names::TXLEDGER_CURRENCY),
    ("PRODUCER_ACCOUNTS", names::TXLEDGER_PRODUCER_ACCOUNTS),
    ("PRODUCER_BATCH_MS", names::TXLEDGER_PRODUCER_BATCH_MS),
    (
        "PRODUCER_BATCH_RECORDS",
        names::TXLEDGER_PRODUCER_BATCH_RECORDS,
    ),
    (
        "PRODUCER_CONNECT_TIMEOUT_SECS",
        names::TXLEDGER_PRODUCER_CONNECT_TIMEOUT_SECS,
    ),
    ("PRODUCER_COUNT", names::TXLEDGER_PRODUCER_COUNT),
    (
        "PRODUCER_DUPLICATE_SHARE",
        names::TXLEDGER_PRODUCER_DUPLICATE_SHARE,
    ),
    ("PRODUCER_FAIL_SHARE", names::TXLEDGER_PRODUCER_FAIL_SHARE),
    ("PRODUCER_FORMAT", names::TXLEDGER_PRODUCER_FORMAT),
    ("PRODUCER_FROM_FILE", names::TXLEDGER_PRODUCER_FROM_FILE),
    (
        "PRODUCER_METRICS_ADDR",
        names::TXLEDGER_PRODUCER_METRICS_ADDR,
    ),
    (
        "PRODUCER_NO_TRANSACTIONS",
        names::TXLEDGER_PRODUCER_NO_TRANSACTIONS,
    ),
    ("PRODUCER_ON_INVALID", names::TXLEDGER_PRODUCER_ON_INVALID),
    (
        "PRODUCER_PROGRESS_SECS",
        names::TXLEDGER_PRODUCER_PROGRESS_SECS,
    ),
    ("PRODUCER_RATE", names::TXLEDGER_PRODUCER_RATE),
    ("PRODUCER_SEED", names::TXLEDGER_PRODUCER_SEED),
    (
        "PRODUCER_TRANSACTIONAL_ID",
        names::TXLEDGER_PRODUCER_TRANSACTIONAL_ID,
    ),
];

/// The prefix of the default `transactional.id`, followed by the hostname.
pub const TRANSACTIONAL_ID_PREFIX: &str = "txledger-producer-";

/// Writes money transfers to Kafka with idempotent, transactional writes:
/// generated (the default) or imported from a file.
///
/// Every record of a committed transaction is visible to `read_committed`
/// readers exactly once; the records of an aborted or interrupted transaction
/// never are. A transfer resubmitted on purpose (`--duplicate-share`) is a
/// second record with the same id, which the ledger decides only once.
#[derive(Debug, Clone, Parser)]
#[command(name = "producer", version)]
pub struct Config {
    /// Kafka brokers, comma-separated host:port.
    #[arg(long, env = kafka::ENV_BOOTSTRAP, default_value = "localhost:9092")]
    pub bootstrap_servers: String,

    /// Topic the transfers are written to; created at start if missing
    /// [default: transactions].
    #[arg(long, env = names::TXLEDGER_TRANSFERS_TOPIC)]
    transfers_topic: Option<String>,

    /// --transfers-topic under its name before 0.2: read for one release,
    /// with a warning.
    #[arg(long = "topic", hide = true)]
    topic: Option<String>,

    /// Partition count used when the topic is created. An existing topic with
    /// another count is refused: shards map accounts to partitions.
    #[arg(long, env = names::TXLEDGER_PARTITIONS, default_value_t = 6,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,

    /// Stable identity of this producer instance across restarts; a restarted
    /// instance with the same id fences the old one and aborts its open
    /// transaction. Default: txledger-producer-<hostname>.
    #[arg(
        long,
        env = names::TXLEDGER_PRODUCER_TRANSACTIONAL_ID,
        conflicts_with = "no_transactions"
    )]
    pub transactional_id: Option<String>,

    /// Idempotent writes without transactions (no transactional.id): for
    /// benchmarks only, since a crash can leave part of a batch visible.
    #[arg(long, env = names::TXLEDGER_PRODUCER_NO_TRANSACTIONS)]
    pub no_transactions: bool,

    /// Most records in one transaction. High by default so that the time
    /// cap (--batch-ms) ends transactions: each commit costs a fixed ~15 ms,
    /// which 1,000-record transactions pay every 2 ms of sending.
    #[arg(long, env = names::TXLEDGER_PRODUCER_BATCH_RECORDS, default_value_t = 100_000,
          value_parser = parse_batch_records)]
    pub batch_records: usize,

    /// Longest time a transaction stays open, in milliseconds, counted from
    /// its first record.
    #[arg(long, env = names::TXLEDGER_PRODUCER_BATCH_MS, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub batch_ms: u64,

    /// Kafka's transaction.timeout.ms: the broker aborts a transaction left
    /// open longer (a crashed producer's). Must exceed --batch-ms by at least
    /// 5000 ms [default: 60000].
    #[arg(long, env = names::TXLEDGER_TRANSACTION_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64)
              .range(kafka::TRANSACTION_TIMEOUT_MS_MIN..=kafka::TRANSACTION_TIMEOUT_MS_MAX))]
    transaction_timeout_ms: Option<u64>,

    /// The transaction timeout in seconds, under its name before 0.2: read
    /// for one release, with a warning. --transaction-timeout-ms wins.
    #[arg(long, env = "PRODUCER_TRANSACTION_TIMEOUT_SECS", hide = true,
          value_parser = clap::value_parser!(u64).range(1..=kafka::TRANSACTION_TIMEOUT_MS_MAX / 1000))]
    transaction_timeout_secs: Option<u64>,

    /// Bound on reaching the broker at start (topic creation, transactional
    /// initialization); an unreachable broker is an error after this long.
    #[arg(long, env = names::TXLEDGER_PRODUCER_CONNECT_TIMEOUT_SECS, default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout_secs: u64,

    /// The timeout of each transactional call (begin, commit, abort,
    /// flush), in milliseconds, capped at the transaction timeout.
    /// librdkafka can block in some of them past their timeout; the
    /// producer cuts such a call off 2 s later and exits with status 75 for
    /// its supervisor to restart it.
    #[arg(long, env = names::TXLEDGER_CALL_TIMEOUT_MS,
          default_value_t = kafka::CALL_TIMEOUT_DEFAULT_MS,
          value_parser = clap::value_parser!(u64)
              .range(kafka::CALL_TIMEOUT_MS_MIN..=kafka::CALL_TIMEOUT_MS_MAX))]
    pub call_timeout_ms: u64,

    /// Records per second; 0 means as fast as possible.
    #[arg(long, env = names::TXLEDGER_PRODUCER_RATE, default_value_t = 0)]
    pub rate: u64,

    /// Records to send before exiting; 0 means endless (or, with
    /// --from-file, the whole file).
    #[arg(long, env = names::TXLEDGER_PRODUCER_COUNT, default_value_t = 0)]
    pub count: u64,

    /// Generation: number of customer accounts (acc-000000, acc-000001, ...),
    /// at most one million (the generator keeps each in memory). Each gets an opening deposit from `world` before any other transfer.
    #[arg(long, env = names::TXLEDGER_PRODUCER_ACCOUNTS, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    pub accounts: u32,

    /// Generation: share of transfers (0 to 1) that exceed the sender's
    /// balance, so that the ledger rejects them with insufficient_funds.
    #[arg(long, env = names::TXLEDGER_PRODUCER_FAIL_SHARE, default_value_t = 0.02, value_parser = parse_share)]
    pub fail_share: f64,

    /// Generation: share of records (0 to 1) that resubmit an earlier
    /// transfer with the same id and content, to exercise idempotency.
    #[arg(long, env = names::TXLEDGER_PRODUCER_DUPLICATE_SHARE, default_value_t = 0.01, value_parser = parse_share)]
    pub duplicate_share: f64,

    /// Generation: seed of the random stream; the same seed gives the same
    /// transfers (ids, accounts, amounts). Default: random, logged at start.
    #[arg(long, env = names::TXLEDGER_PRODUCER_SEED)]
    pub seed: Option<u64>,

    /// Generation: currency of every transfer (the ledger's currency).
    #[arg(long, env = names::TXLEDGER_CURRENCY, default_value = "EUR", value_parser = parse_currency)]
    pub currency: Currency,

    /// Import mode: read transfers from this file (JSON lines, or CSV with a
    /// header row id,from,to,amount,currency,created_at) instead of
    /// generating them.
    #[arg(long, env = names::TXLEDGER_PRODUCER_FROM_FILE)]
    pub from_file: Option<PathBuf>,

    /// Import mode: file format; `auto` picks CSV for a .csv file, JSON lines
    /// otherwise.
    #[arg(long, env = names::TXLEDGER_PRODUCER_FORMAT, value_enum, default_value_t = FileFormat::Auto)]
    pub format: FileFormat,

    /// Import mode: what an invalid line does. `abort` checks the whole file
    /// first and sends nothing if any line is invalid; `skip` sends the valid
    /// lines. Either way every invalid line is reported with its number.
    #[arg(long, env = names::TXLEDGER_PRODUCER_ON_INVALID, value_enum, default_value_t = OnInvalid::Abort)]
    pub on_invalid: OnInvalid,

    /// Serve Prometheus metrics on http://ADDRESS/metrics (e.g.
    /// 0.0.0.0:9100). Off when not given.
    #[arg(long, env = names::TXLEDGER_PRODUCER_METRICS_ADDR)]
    pub metrics_addr: Option<SocketAddr>,

    /// Seconds between progress log lines.
    #[arg(long, env = names::TXLEDGER_PRODUCER_PROGRESS_SECS, default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub progress_secs: u64,

    /// Log line format.
    #[arg(long, env = names::TXLEDGER_LOG_FORMAT, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// The format of an import file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    Auto,
    /// One JSON transfer per line, as on the topic.
    Jsonl,
    /// Comma-separated, with a header row naming the six transfer fields.
    Csv,
}

/// What an invalid import line does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnInvalid {
    /// Report it and go on with the next line.
    Skip,
    /// Report every invalid line and send nothing.
    Abort,
}

/// A combination of flags that parses but cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--transaction-timeout-ms ({timeout_ms} ms) must exceed --batch-ms ({batch_ms} ms) \
         by at least {TRANSACTION_TIMEOUT_SLACK_MS} ms, or the broker aborts transactions \
         that are still filling"
    )]
    TimeoutTooShort { timeout_ms: u64, batch_ms: u64 },
    #[error("--fail-share ({fail}) plus --duplicate-share ({duplicate}) must not exceed 1")]
    SharesTooLarge { fail: f64, duplicate: f64 },
    #[error("the hostname could not be read ({0}); pass --transactional-id")]
    Hostname(String),
    #[error("--transactional-id must not be empty")]
    EmptyTransactionalId,
}

/// How much longer than a batch's window a transaction may live: the time
/// to send, settle and commit what the window filled.
const TRANSACTION_TIMEOUT_SLACK_MS: u64 = 5000;

impl Config {
    /// `Config::parse`, reading the variables of `RENAMED_ENV` under their
    /// old names too; returns the warnings to log once logging is set up,
    /// one per old name in use. Call it first thing in `main`, while no
    /// other thread exists: it changes the process environment.
    pub fn from_env_and_args() -> (Config, Vec<String>) {
        let mut warnings = names::adopt_renamed(RENAMED_ENV);
        let config = Config::try_parse().unwrap_or_else(|error| {
            // Logging is not set up yet; a bad value may come from an old name.
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            error.exit()
        });
        warnings.extend(config.deprecations());
        (config, warnings)
    }

    /// Warnings about deprecated arguments in use, naming what replaces them.
    pub fn deprecations(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(secs) = self.transaction_timeout_secs {
            warnings.push(names::renamed_warning(
                "--transaction-timeout-secs (PRODUCER_TRANSACTION_TIMEOUT_SECS)",
                &format!(
                    "--transaction-timeout-ms ({}) = {}",
                    names::TXLEDGER_TRANSACTION_TIMEOUT_MS,
                    secs * 1000
                ),
                self.transaction_timeout_ms.is_some(),
            ));
        }
        if self.topic.is_some() {
            warnings.push(names::renamed_warning(
                "--topic",
                &format!("--transfers-topic ({})", names::TXLEDGER_TRANSFERS_TOPIC),
                self.transfers_topic.is_some(),
            ));
        }
        warnings
    }

    /// The topic the transfers are written to.
    pub fn transfers_topic(&self) -> &str {
        self.transfers_topic
            .as_deref()
            .or(self.topic.as_deref())
            .unwrap_or(names::TOPIC_TRANSFERS)
    }

    fn transaction_timeout_ms(&self) -> u64 {
        self.transaction_timeout_ms
            .or(self.transaction_timeout_secs.map(|secs| secs * 1000))
            .unwrap_or(kafka::TRANSACTION_TIMEOUT_DEFAULT_MS)
    }

    /// Checks what clap cannot check flag by flag. `run` calls it, so a
    /// `Config` built in code is held to the same rules as the command line.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let timeout_ms = self.transaction_timeout_ms();
        if timeout_ms < self.batch_ms + TRANSACTION_TIMEOUT_SLACK_MS {
            return Err(ConfigError::TimeoutTooShort {
                timeout_ms,
                batch_ms: self.batch_ms,
            });
        }
        if self.fail_share + self.duplicate_share > 1.0 {
            return Err(ConfigError::SharesTooLarge {
                fail: self.fail_share,
                duplicate: self.duplicate_share,
            });
        }
        if self.transactional_id.as_deref() == Some("") {
            return Err(ConfigError::EmptyTransactionalId);
        }
        Ok(())
    }

    /// The `transactional.id` to use, or `None` with `--no-transactions`.
    pub fn resolved_transactional_id(&self) -> Result<Option<String>, ConfigError> {
        if self.no_transactions {
            return Ok(None);
        }
        if let Some(id) = &self.transactional_id {
            return Ok(Some(id.clone()));
        }
        let host = hostname::get().map_err(|error| ConfigError::Hostname(error.to_string()))?;
        Ok(Some(format!(
            "{TRANSACTIONAL_ID_PREFIX}{}",
            host.to_string_lossy()
        )))
    }

    pub fn batch_duration(&self) -> Duration {
        Duration::from_millis(self.batch_ms)
    }

    pub fn transaction_timeout(&self) -> Duration {
        Duration::from_millis(self.transaction_timeout_ms())
    }

    /// A call cannot outlast the transaction it belongs to.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms.min(self.transaction_timeout_ms()))
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("{share} is not between 0 and 1"))
    }
}

fn parse_batch_records(text: &str) -> Result<usize, String> {
    let records: usize = text
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if (1..=BATCH_RECORDS_MAX).contains(&records) {
        Ok(records)
    } else {
        Err(format!(
            "{records} is not between 1 and {BATCH_RECORDS_MAX}"
        ))
    }
}

fn parse_currency(text: &str) -> Result<Currency, String> {
    Currency::parse(text).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("producer").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&["--bootstrap-servers", "b:9092"]).unwrap();
        config.validate().unwrap();
        assert_eq!(config.transfers_topic(), "transactions");
        assert_eq!(config.partitions, 6);
        assert_eq!(config.batch_records, 100_000);
        assert_eq!(config.batch_ms, 100);
        let id = config.resolved_transactional_id().unwrap().unwrap();
        assert!(id.starts_with(TRANSACTIONAL_ID_PREFIX), "{id}");
    }

    #[test]
    fn out_of_range_flags_are_refused_with_the_reason() {
        for (args, says) in [
            (&["--fail-share", "1.5"][..], "not between 0 and 1"),
            (&["--batch-records", "0"][..], "not between 1 and 100000"),
            (&["--partitions", "0"][..], "0 is not in 1..=10000"),
            (&["--currency", "euro"][..], "three-letter"),
            (
                &["--no-transactions", "--transactional-id", "x"][..],
                "cannot be used with",
            ),
        ] {
            let error = parse(args).unwrap_err().to_string();
            assert!(error.contains(says), "{args:?}: {error}");
        }
    }

    #[test]
    fn the_timeout_in_seconds_is_read_for_one_release_with_a_warning() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.transaction_timeout(), Duration::from_secs(60));
        assert!(config.deprecations().is_empty());

        let config = parse(&["--transaction-timeout-secs", "7"]).unwrap();
        assert_eq!(config.transaction_timeout(), Duration::from_millis(7_000));
        let warnings = config.deprecations();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .contains("use --transaction-timeout-ms (TXLEDGER_TRANSACTION_TIMEOUT_MS) = 7000"),
            "{warnings:?}"
        );

        let config = parse(&[
            "--transaction-timeout-secs",
            "7",
            "--transaction-timeout-ms",
            "9000",
        ])
        .unwrap();
        assert_eq!(config.transaction_timeout(), Duration::from_millis(9_000));
        assert!(config.deprecations()[0].contains("is ignored"));

        let config = parse(&["--topic", "old"]).unwrap();
        assert_eq!(config.transfers_topic(), "old");
        assert!(config.deprecations()[0].contains("use --transfers-topic"));
        let config = parse(&["--topic", "old", "--transfers-topic", "new"]).unwrap();
        assert_eq!(config.transfers_topic(), "new");
        assert!(config.deprecations()[0].starts_with("--topic is ignored"));
    }

    #[test]
    fn combinations_are_checked() {
        let config = parse(&["--batch-ms", "60000", "--transaction-timeout-ms", "60000"]).unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::TimeoutTooShort { .. })
        ));
        let config = parse(&["--fail-share", "0.6", "--duplicate-share", "0.5"]).unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::SharesTooLarge { .. })
        ));
        let config = parse(&["--no-transactions"]).unwrap();
        assert_eq!(config.resolved_transactional_id().unwrap(), None);
    }
}
