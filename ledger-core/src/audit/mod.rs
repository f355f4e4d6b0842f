//! The audit's judge: proves, or disproves naming the exact records, that
//! the pipeline processed its committed input exactly once and conserved
//! money, from facts alone.
//!
//! | check | what must hold |
//! |---|---|
//! | `lost` | every committed `transactions` record has an outcome |
//! | `duplicated` | no input record has two outcomes; no transfer id is decided twice |
//! | `aborted_reads` | every outcome names a committed input record (none for aborted input) |
//! | `outcome_mismatch` | an outcome carries the id and transfer of the record it names |
//! | `credits` | every accepted transfer has exactly one credit, equal to it; no credit without one |
//! | `balances` | each shard balance equals the fold of accepted debits and credits |
//! | `conservation` | the balances of all shards sum to zero (double entry) |
//! | `negative` | no account but `world` is negative |
//! | `decisions` | each outcome is one the ledger rules allow for its input; funds replayed exactly in the ledger's order |
//! | `unreadable` | every record on `ledger-results` and `ledger-credits` decodes |
//! | `dead_letters` | exactly one dead letter per undecodable input or credit, naming it in its `txledger-source` header; none for anything else |
//!
//! [`AuditInput`] folds the records of the topics into compact facts as
//! they are read, using the same decoders and the same state machine the
//! shards run, and [`audit`] judges those facts. Neither does I/O, so tests
//! feed them hand-made anomalies; `ledger_cli::audit` reads Kafka and the
//! shards' balances into them.
//!
//! The audit judges a quiescent pipeline: producer stopped, shards caught up,
//! every credit applied. On a pipeline still moving, an input whose outcome
//! comes later counts as lost and a credit not yet applied breaks the
//! balances.
//!
//! # Layout
//!
//! - `facts`: what the judge takes: the topics' records folded, as they are
//!   read, into compact facts ([`AuditInput`]), with the reference model
//!   that decides each input record as a shard would.
//! - `judge`: [`audit`], the checks run over the facts in phases, one
//!   verdict per check.
//! - `funds`: the part of the `decisions` check that replays every
//!   decision depending on funds in the ledger's order.
//! - `report`: the checks' names and rules, their results, the totals, and
//!   how [`AuditReport`] prints (its JSON is its `Serialize`).

mod facts;
mod funds;
mod judge;
mod report;

pub use facts::{AuditInput, Position, ShardBalances, Topics};
pub use judge::audit;
pub use report::{AuditReport, Check, CheckResult, Finding, Status, Totals, FINDINGS_MAX};
