//! txledger's adapters: what a shard, the producer and the tools share
//! around the pure core of `ledger_core`.
//!
//! # Layout
//!
//! - [`api`]: the JSON views of a shard's state (HTTP API and `ledger query`).
//! - [`names`]: topic names and environment variables, defined once.
//! - [`signal`]: the shutdown signal of every long-running binary.
//! - [`store`]: the sled store of one shard, written once per batch; a
//!   folder, one concern per file (keys, value codec, writing a batch, the
//!   pending record, the idempotency window, caches, order-state records,
//!   legacy layouts, reader, restore), listed in its own `# Layout`.
//! - [`kafka`]: Kafka client settings shared by every binary.
//! - [`telemetry`]: logging setup shared by every binary.
//! - [`txn`]: the error path of transactional calls (classify, retry,
//!   wait for room, settle, start up), for the shard and the producer.
//! - [`watchdog`]: a bound of our own on librdkafka calls that can block
//!   past their timeout; an overrun ends the process for a restart.

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
pub mod api;
pub mod kafka;
pub mod names;
pub mod signal;
pub mod store;
pub mod telemetry;
pub mod txn;
pub mod watchdog;
