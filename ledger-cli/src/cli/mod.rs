//! The subcommands of the `ledger` binary; each module has `Args` and `run`.

pub mod audit;
pub mod demo;
pub mod query;
