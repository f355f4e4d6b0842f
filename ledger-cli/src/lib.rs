//! The `ledger` tool's library: what the CLI, the chaos test and the
//! benchmarks share, and the only production code that links `harness`.
//!
//! # Layout
//!
//! - [`audit`]: the Jepsen-style checker behind `ledger audit`: topics and
//!   balances in, a verdict naming every violation out.
//! - [`pipeline`]: the producer and the shards as child processes, for
//!   `ledger demo`, the chaos test and the benchmarks.
//! - [`shards`]: shard URLs, one of which may stand for every shard, for
//!   `ledger query` and `ledger audit`.

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
pub mod audit;
pub mod pipeline;
pub mod shards;
