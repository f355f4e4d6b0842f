//! txledger's core: everything a shard, the producer and the tools share.
//!
//! # Layout
//!
//! - [`api`]: the JSON views of a shard's state (HTTP API and `ledger query`).
//! - [`audit`]: the Jepsen-style checker behind `ledger audit`: topics and
//!   balances in, a verdict naming every violation out.
//! - [`domain`]: types that cannot hold invalid values (accounts, amounts,
//!   transfers, credits, outcomes).
//! - [`wire`]: the JSON messages on the topics, decoded strictly.
//! - [`machine`]: the pure ledger state machine (batch in, effects out).
//! - [`store`]: the sled store of one shard, written once per batch.
//! - [`recovery`]: the pure rule that decides, after a crash, whether the
//!   last batch happened.
//! - [`replay`]: encoded input and a shard's own credits fed back, for
//!   running the core without Kafka (benchmarks).
//! - [`kafka`]: Kafka client settings shared by every binary.
//! - [`pipeline`]: the producer and the shards as child processes, for
//!   `ledger demo`, the chaos test and the benchmarks.
//! - [`routing`]: which partition and shard own an account (Kafka's murmur2
//!   partitioner, exactly).
//! - [`telemetry`]: logging setup shared by every binary.

pub mod api;
pub mod audit;
pub mod domain;
pub mod kafka;
pub mod machine;
pub mod pipeline;
pub mod recovery;
pub mod replay;
pub mod routing;
pub mod store;
pub mod telemetry;
pub mod wire;
