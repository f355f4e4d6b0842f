//! One name per thing: the topics' default names and the environment
//! variables that configure the binaries. clap's `env =`, the orchestration
//! that starts the binaries as child processes (`ledger-cli`'s pipeline)
//! and the tests all use these constants, so that a misspelt name is a
//! compile error rather than a setting that silently does nothing. Each
//! constant is named as its variable, so that a search for the variable
//! finds it. Every variable of the project's own settings is spelt
//! `TXLEDGER_...`. The brokers' variable is `kafka::ENV_BOOTSTRAP`, with the
//! security settings it goes with.

/// The topics' default names, defined with the wire format they carry.
pub use ledger_core::wire::{TOPIC_CREDITS, TOPIC_DEAD_LETTERS, TOPIC_RESULTS, TOPIC_TRANSFERS};

/// The shards' changelog: their sled writes (`crate::store`), compacted.
pub const TOPIC_CHANGELOG: &str = "ledger-changelog";

/// Read by every binary.
pub const TXLEDGER_LOG_FORMAT: &str = "TXLEDGER_LOG_FORMAT";

// Settings the producer and the shards both have, under one name: the topic
// the producer writes and the shards read, its partition count, the
// ledger's currency, Kafka's transaction.timeout.ms of each binary's
// transactions, and the timeout of each transactional call.
pub const TXLEDGER_CALL_TIMEOUT_MS: &str = "TXLEDGER_CALL_TIMEOUT_MS";
pub const TXLEDGER_CURRENCY: &str = "TXLEDGER_CURRENCY";
pub const TXLEDGER_PARTITIONS: &str = "TXLEDGER_PARTITIONS";
pub const TXLEDGER_TRANSACTION_TIMEOUT_MS: &str = "TXLEDGER_TRANSACTION_TIMEOUT_MS";
pub const TXLEDGER_TRANSFERS_TOPIC: &str = "TXLEDGER_TRANSFERS_TOPIC";

// The consumer shard's settings.
pub const TXLEDGER_BATCH_MS: &str = "TXLEDGER_BATCH_MS";
pub const TXLEDGER_BATCH_RECORDS: &str = "TXLEDGER_BATCH_RECORDS";
pub const TXLEDGER_CHANGELOG_TOPIC: &str = "TXLEDGER_CHANGELOG_TOPIC";
pub const TXLEDGER_CREDITS_TOPIC: &str = "TXLEDGER_CREDITS_TOPIC";
pub const TXLEDGER_DATA_DIR: &str = "TXLEDGER_DATA_DIR";
pub const TXLEDGER_DLQ_TOPIC: &str = "TXLEDGER_DLQ_TOPIC";
pub const TXLEDGER_GROUP_ID: &str = "TXLEDGER_GROUP_ID";
pub const TXLEDGER_HOLD_MAX_MS: &str = "TXLEDGER_HOLD_MAX_MS";
pub const TXLEDGER_HTTP_ADDR: &str = "TXLEDGER_HTTP_ADDR";
pub const TXLEDGER_IDEMPOTENCY_WINDOW: &str = "TXLEDGER_IDEMPOTENCY_WINDOW";
pub const TXLEDGER_RESULTS_TOPIC: &str = "TXLEDGER_RESULTS_TOPIC";
pub const TXLEDGER_SHARD: &str = "TXLEDGER_SHARD";
pub const TXLEDGER_SHARDS: &str = "TXLEDGER_SHARDS";
pub const TXLEDGER_ASSIGNMENT: &str = "TXLEDGER_ASSIGNMENT";
pub const TXLEDGER_MAX_POLL_INTERVAL_MS: &str = "TXLEDGER_MAX_POLL_INTERVAL_MS";
pub const TXLEDGER_SESSION_TIMEOUT_MS: &str = "TXLEDGER_SESSION_TIMEOUT_MS";
pub const TXLEDGER_TRANSACTIONAL_ID_PREFIX: &str = "TXLEDGER_TRANSACTIONAL_ID_PREFIX";

// The producer's own settings. Its batch is not the shards' (another
// default, another bound), so it has a name of its own.
pub const TXLEDGER_PRODUCER_ACCOUNTS: &str = "TXLEDGER_PRODUCER_ACCOUNTS";
pub const TXLEDGER_PRODUCER_BATCH_MS: &str = "TXLEDGER_PRODUCER_BATCH_MS";
pub const TXLEDGER_PRODUCER_BATCH_RECORDS: &str = "TXLEDGER_PRODUCER_BATCH_RECORDS";
pub const TXLEDGER_PRODUCER_CONNECT_TIMEOUT_SECS: &str = "TXLEDGER_PRODUCER_CONNECT_TIMEOUT_SECS";
pub const TXLEDGER_PRODUCER_COUNT: &str = "TXLEDGER_PRODUCER_COUNT";
pub const TXLEDGER_PRODUCER_DUPLICATE_SHARE: &str = "TXLEDGER_PRODUCER_DUPLICATE_SHARE";
pub const TXLEDGER_PRODUCER_FAIL_SHARE: &str = "TXLEDGER_PRODUCER_FAIL_SHARE";
pub const TXLEDGER_PRODUCER_FORMAT: &str = "TXLEDGER_PRODUCER_FORMAT";
pub const TXLEDGER_PRODUCER_FROM_FILE: &str = "TXLEDGER_PRODUCER_FROM_FILE";
pub const TXLEDGER_PRODUCER_METRICS_ADDR: &str = "TXLEDGER_PRODUCER_METRICS_ADDR";
pub const TXLEDGER_PRODUCER_NO_TRANSACTIONS: &str = "TXLEDGER_PRODUCER_NO_TRANSACTIONS";
pub const TXLEDGER_PRODUCER_ON_INVALID: &str = "TXLEDGER_PRODUCER_ON_INVALID";
pub const TXLEDGER_PRODUCER_PROGRESS_SECS: &str = "TXLEDGER_PRODUCER_PROGRESS_SECS";
pub const TXLEDGER_PRODUCER_RATE: &str = "TXLEDGER_PRODUCER_RATE";
pub const TXLEDGER_PRODUCER_SEED: &str = "TXLEDGER_PRODUCER_SEED";
pub const TXLEDGER_PRODUCER_TRANSACTIONAL_ID: &str = "TXLEDGER_PRODUCER_TRANSACTIONAL_ID";

/// Reads renamed environment variables, given as (old, new), under their
/// old names for one release: an old variable's value is copied to its new
/// name unless that is set too. Returns one warning per old variable set,
/// naming the new one, for the caller to log once logging is set up.
///
/// Call it first thing in `main`, while no other thread exists: it changes
/// the process environment, which clap then reads as usual.
pub fn adopt_renamed(renamed: &[(&str, &str)]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (old, new) in renamed {
        let Some(value) = std::env::var_os(old) else {
            continue;
        };
        let new_set = std::env::var_os(new).is_some();
        if !new_set {
            std::env::set_var(new, value);
        }
        warnings.push(renamed_warning(old, new, new_set));
    }
    warnings
}

/// The warning about a setting still given under its old name `old`: it is
/// ignored when the new one is given too, else read for this release.
pub fn renamed_warning(old: &str, new: &str, new_given: bool) -> String {
    if new_given {
        format!("{old} is ignored: it was renamed {new}, which is given too; remove {old}")
    } else {
        format!("{old} is deprecated and will be ignored in the next release: use {new}")
    }
}
