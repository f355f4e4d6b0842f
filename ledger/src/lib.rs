//! txledger's adapters: what a shard, the producer and the tools share
//! around the pure core of `ledger_core`.
//!
//! # Layout
//!
//! - [`api`]: the JSON views of a shard's state (HTTP API and `ledger query`).
//! - [`store`]: the sled store of one shard, written once per batch.
//! - [`kafka`]: Kafka client settings shared by every binary.
//! - [`telemetry`]: logging setup shared by every binary.

pub mod api;
pub mod kafka;
pub mod store;
pub mod telemetry;
