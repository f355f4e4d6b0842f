//! txledger's adapters: what a shard, the producer and the tools share
//! around the pure core of `ledger_core`.
//!
//! # Layout
//!
//! - [`api`]: the JSON views of a shard's state (HTTP API and `ledger query`).
//! - [`audit`]: the Jepsen-style checker behind `ledger audit`: topics and
//!   balances in, a verdict naming every violation out.
//! - [`store`]: the sled store of one shard, written once per batch.
//! - [`kafka`]: Kafka client settings shared by every binary.
//! - [`pipeline`]: the producer and the shards as child processes, for
//!   `ledger demo`, the chaos test and the benchmarks.
//! - [`telemetry`]: logging setup shared by every binary.

pub mod api;
pub mod audit;
pub mod kafka;
pub mod pipeline;
pub mod store;
pub mod telemetry;
