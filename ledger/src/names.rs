//! One name per thing: the topics' default names and the environment
//! variables that configure the binaries. clap's `env =`, the orchestration
//! that starts the binaries as child processes (`ledger-cli`'s pipeline)
//! and the tests all use these constants, so that a misspelt name is a
//! compile error rather than a setting that silently does nothing. Each
//! constant is named as its variable, so that a search for the variable
//! finds it. The brokers' variable is `kafka::ENV_BOOTSTRAP`, with the
//! security settings it goes with.

/// Transfers, keyed by source account.
pub const TOPIC_TRANSFERS: &str = "transactions";
/// Credits between shards, keyed by destination account.
pub const TOPIC_CREDITS: &str = "ledger-credits";
/// One outcome per input transfer record.
pub const TOPIC_RESULTS: &str = "ledger-results";
/// Undecodable input, with the reason in headers.
pub const TOPIC_DEAD_LETTERS: &str = "ledger-dlq";

/// Read by every binary.
pub const TXLEDGER_LOG_FORMAT: &str = "TXLEDGER_LOG_FORMAT";

// The consumer shard's settings.
pub const TXLEDGER_BATCH_MS: &str = "TXLEDGER_BATCH_MS";
pub const TXLEDGER_BATCH_RECORDS: &str = "TXLEDGER_BATCH_RECORDS";
pub const TXLEDGER_CREDITS_TOPIC: &str = "TXLEDGER_CREDITS_TOPIC";
pub const TXLEDGER_CURRENCY: &str = "TXLEDGER_CURRENCY";
pub const TXLEDGER_DATA_DIR: &str = "TXLEDGER_DATA_DIR";
pub const TXLEDGER_DLQ_TOPIC: &str = "TXLEDGER_DLQ_TOPIC";
pub const TXLEDGER_GROUP_ID: &str = "TXLEDGER_GROUP_ID";
pub const TXLEDGER_HTTP_ADDR: &str = "TXLEDGER_HTTP_ADDR";
pub const TXLEDGER_IDEMPOTENCY_WINDOW: &str = "TXLEDGER_IDEMPOTENCY_WINDOW";
pub const TXLEDGER_PARTITIONS: &str = "TXLEDGER_PARTITIONS";
pub const TXLEDGER_RESULTS_TOPIC: &str = "TXLEDGER_RESULTS_TOPIC";
pub const TXLEDGER_SHARD: &str = "TXLEDGER_SHARD";
pub const TXLEDGER_SHARDS: &str = "TXLEDGER_SHARDS";
pub const TXLEDGER_TRANSACTIONAL_ID_PREFIX: &str = "TXLEDGER_TRANSACTIONAL_ID_PREFIX";
pub const TXLEDGER_TRANSACTION_TIMEOUT_MS: &str = "TXLEDGER_TRANSACTION_TIMEOUT_MS";
pub const TXLEDGER_TRANSFERS_TOPIC: &str = "TXLEDGER_TRANSFERS_TOPIC";

// The producer's settings.
pub const KAFKA_TOPIC: &str = "KAFKA_TOPIC";
pub const PRODUCER_ACCOUNTS: &str = "PRODUCER_ACCOUNTS";
pub const PRODUCER_BATCH_MS: &str = "PRODUCER_BATCH_MS";
pub const PRODUCER_BATCH_RECORDS: &str = "PRODUCER_BATCH_RECORDS";
pub const PRODUCER_CONNECT_TIMEOUT_SECS: &str = "PRODUCER_CONNECT_TIMEOUT_SECS";
pub const PRODUCER_COUNT: &str = "PRODUCER_COUNT";
pub const PRODUCER_CURRENCY: &str = "PRODUCER_CURRENCY";
pub const PRODUCER_DUPLICATE_SHARE: &str = "PRODUCER_DUPLICATE_SHARE";
pub const PRODUCER_FAIL_SHARE: &str = "PRODUCER_FAIL_SHARE";
pub const PRODUCER_FORMAT: &str = "PRODUCER_FORMAT";
pub const PRODUCER_FROM_FILE: &str = "PRODUCER_FROM_FILE";
pub const PRODUCER_METRICS_ADDR: &str = "PRODUCER_METRICS_ADDR";
pub const PRODUCER_NO_TRANSACTIONS: &str = "PRODUCER_NO_TRANSACTIONS";
pub const PRODUCER_ON_INVALID: &str = "PRODUCER_ON_INVALID";
pub const PRODUCER_PARTITIONS: &str = "PRODUCER_PARTITIONS";
pub const PRODUCER_PROGRESS_SECS: &str = "PRODUCER_PROGRESS_SECS";
pub const PRODUCER_RATE: &str = "PRODUCER_RATE";
pub const PRODUCER_SEED: &str = "PRODUCER_SEED";
pub const PRODUCER_TRANSACTIONAL_ID: &str = "PRODUCER_TRANSACTIONAL_ID";
pub const PRODUCER_TRANSACTION_TIMEOUT_SECS: &str = "PRODUCER_TRANSACTION_TIMEOUT_SECS";
