//! txledger's pure core: the rules of the ledger, with no I/O and no clock.
//!
//! # Layout
//!
//! - [`audit`]: the audit's judge: facts folded from the topics in
//!   (`audit/facts.rs`), a verdict per check out (`audit/judge.rs`, the
//!   replay of funds in the ledger's order in `audit/funds.rs`), and the
//!   report that `ledger audit` prints (`audit/report.rs`).
//! - [`domain`]: types that cannot hold invalid values (accounts, amounts,
//!   transfers, credits, outcomes).
//! - [`hash`]: the hash maps of the per-record paths (foldhash).
//! - [`wire`]: the JSON messages on the topics, decoded strictly.
//! - [`machine`]: the pure ledger state machine (batch in, effects out).
//! - [`order`]: the ledger's order: which credits a decision counts, held
//!   transfers, and the marks that prove a shortage.
//! - [`recovery`]: the pure rule that decides, after a crash, whether the
//!   last batch happened.
//! - [`replay`]: encoded input and a shard's own credits fed back, for
//!   running the core without Kafka (benchmarks).
//! - [`routing`]: which partition and shard own an account (Kafka's murmur2
//!   partitioner, exactly).

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
pub mod audit;
pub mod domain;
pub mod hash;
pub mod machine;
pub mod order;
mod plain_json;
pub mod recovery;
pub mod replay;
pub mod routing;
pub mod wire;
