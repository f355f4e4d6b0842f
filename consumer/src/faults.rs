//! Test-only failure injection and protocol mutants, compiled in so that
//! tests exercise the very binary that ships. Read once at start from the
//! environment; all off unless a variable is set:
//!
//! - `TXLEDGER_FAIL_AT=<step>` with `TXLEDGER_FAIL_AFTER_BATCHES=N` (default
//!   1): abort the process (no cleanup, like SIGKILL) at that protocol step
//!   of the N-th non-empty batch. `before_clear_pending` fires at the first
//!   idle-time (or shutdown) clearing of the pending record after that batch.
//! - `TXLEDGER_ABORT_EVERY=N` (N >= 2): abort every N-th transaction on
//!   purpose, after its sled write and offsets, through the ordinary abort
//!   path (undo, seek back); the redo is the next transaction, so it commits.
//! - `TXLEDGER_STALL_AT=<step>` with `TXLEDGER_STALL_MS=N` (and
//!   `TXLEDGER_STALL_AFTER_BATCHES=B`, default 1): the loop sleeps N ms at
//!   that step of the B-th non-empty batch or the first after it, once, as a
//!   shard does that a
//!   long pause or a partition cuts off from the group (a zombie), while its
//!   transaction stays open.
//! - `TXLEDGER_HANG_IN=<call>` (and `TXLEDGER_HANG_AFTER_BATCHES=B`, default
//!   1): that transactional call of the B-th non-empty batch or the first
//!   after it never returns, as librdkafka's can (`ledger::watchdog`); the
//!   call is `send_offsets_to_transaction` or `commit_transaction`.
//! - `TXLEDGER_MUTANT=skip_seek_back|skip_undo|commit_before_sled_write`: break the
//!   protocol on purpose, so that the audit can prove it notices.

use crate::config::ConfigError;

/// A named step of the protocol where the process can be made to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    AfterPoll,
    AfterProduce,
    AfterSledWrite,
    AfterSendOffsets,
    AfterCommit,
    BeforeClearPending,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::AfterPoll,
        Step::AfterProduce,
        Step::AfterSledWrite,
        Step::AfterSendOffsets,
        Step::AfterCommit,
        Step::BeforeClearPending,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::AfterPoll => "after_poll",
            Step::AfterProduce => "after_produce",
            Step::AfterSledWrite => "after_sled_write",
            Step::AfterSendOffsets => "after_send_offsets",
            Step::AfterCommit => "after_commit",
            Step::BeforeClearPending => "before_clear_pending",
        }
    }
}

/// A deliberate protocol bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutant {
    /// After an abort, keep reading from where the consumer is instead of
    /// seeking back: the aborted batch's records are never processed.
    SkipSeekBack,
    /// After an abort, keep the aborted batch's sled write instead of
    /// undoing it: its effects stay in the balances although its outcomes
    /// and credits were never committed.
    SkipUndo,
    /// Commit the Kafka transaction before the sled write: a crash between
    /// them leaves Kafka ahead of sled with nothing to recover from.
    CommitBeforeSledWrite,
    /// Reject the first funded payment of every batch `insufficient_funds`,
    /// consistently (no debit, no credit): a shard deciding funds wrongly,
    /// which only an exact replay of funds can tell.
    RefuseFunded,
}

pub const ENV_FAIL_AT: &str = "TXLEDGER_FAIL_AT";
pub const ENV_FAIL_AFTER_BATCHES: &str = "TXLEDGER_FAIL_AFTER_BATCHES";
pub const ENV_ABORT_EVERY: &str = "TXLEDGER_ABORT_EVERY";
pub const ENV_MUTANT: &str = "TXLEDGER_MUTANT";
pub const ENV_STALL_AT: &str = "TXLEDGER_STALL_AT";
pub const ENV_STALL_MS: &str = "TXLEDGER_STALL_MS";
pub const ENV_STALL_AFTER_BATCHES: &str = "TXLEDGER_STALL_AFTER_BATCHES";
pub const ENV_HANG_IN: &str = "TXLEDGER_HANG_IN";
pub const ENV_HANG_AFTER_BATCHES: &str = "TXLEDGER_HANG_AFTER_BATCHES";

/// The calls `TXLEDGER_HANG_IN` can make hang: the two of a batch's
/// transaction that librdkafka has been seen to block in.
pub const HANGING_CALLS: [&str; 2] = ["send_offsets_to_transaction", "commit_transaction"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Die at this step of the `fail_after_batches`-th non-empty batch.
    pub fail_at: Option<(Step, u64)>,
    /// Abort every N-th transaction deliberately.
    pub abort_every: Option<u64>,
    pub mutant: Option<Mutant>,
    /// Sleep this long at this step of the first non-empty batch numbered
    /// at least this.
    pub stall_at: Option<(Step, std::time::Duration, u64)>,
    /// This call of the first non-empty batch numbered at least this never
    /// returns.
    pub hang_in: Option<(&'static str, u64)>,
}

impl Faults {
    /// Reads the variables once; a set but invalid one is an error, so that
    /// a test never runs without the fault it asked for.
    pub fn from_env() -> Result<Faults, ConfigError> {
        Faults::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    fn from_lookup(lookup: impl Fn(&'static str) -> Option<String>) -> Result<Faults, ConfigError> {
        let invalid = |variable, value: String, why| ConfigError::Fault {
            variable,
            value,
            why,
        };
        let step_of = |variable, value: String| {
            Step::ALL
                .into_iter()
                .find(|step| step.name() == value)
                .ok_or_else(|| {
                    invalid(variable, value, "use after_poll, after_produce, after_sled_write, after_send_offsets, after_commit or before_clear_pending")
                })
        };
        let batch_of = |variable| match lookup(variable) {
            None => Ok(1),
            Some(value) => value
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid(variable, value, "use a number >= 1")),
        };
        let fail_at = match lookup(ENV_FAIL_AT) {
            None => None,
            Some(value) => Some((
                step_of(ENV_FAIL_AT, value)?,
                batch_of(ENV_FAIL_AFTER_BATCHES)?,
            )),
        };
        let abort_every = match lookup(ENV_ABORT_EVERY) {
            None => None,
            Some(value) => Some(
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 2)
                    // Every transaction aborted would redo the same batch forever.
                    .ok_or_else(|| invalid(ENV_ABORT_EVERY, value, "use a number >= 2"))?,
            ),
        };
        let mutant = match lookup(ENV_MUTANT).as_deref() {
            None => None,
            Some("skip_seek_back") => Some(Mutant::SkipSeekBack),
            Some("skip_undo") => Some(Mutant::SkipUndo),
            Some("commit_before_sled_write") => Some(Mutant::CommitBeforeSledWrite),
            Some("refuse_funded") => Some(Mutant::RefuseFunded),
            Some(other) => {
                return Err(invalid(
                    ENV_MUTANT,
                    other.to_owned(),
                    "use skip_seek_back, skip_undo, commit_before_sled_write or refuse_funded",
                ))
            }
        };
        let stall_at = match lookup(ENV_STALL_AT) {
            None => None,
            Some(value) => {
                let step = step_of(ENV_STALL_AT, value)?;
                let ms = lookup(ENV_STALL_MS).unwrap_or_default();
                let ms = ms
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms >= 1)
                    .ok_or_else(|| invalid(ENV_STALL_MS, ms, "use a number of ms >= 1"))?;
                Some((
                    step,
                    std::time::Duration::from_millis(ms),
                    batch_of(ENV_STALL_AFTER_BATCHES)?,
                ))
            }
        };
        let hang_in = match lookup(ENV_HANG_IN) {
            None => None,
            Some(value) => Some((
                HANGING_CALLS
                    .into_iter()
                    .find(|call| *call == value)
                    .ok_or_else(|| {
                        invalid(
                            ENV_HANG_IN,
                            value,
                            "use send_offsets_to_transaction or commit_transaction",
                        )
                    })?,
                batch_of(ENV_HANG_AFTER_BATCHES)?,
            )),
        };
        Ok(Faults {
            fail_at,
            abort_every,
            mutant,
            stall_at,
            hang_in,
        })
    }

    pub fn is_active(&self) -> bool {
        *self != Faults::default()
    }

    /// Aborts the process if `step` of batch number `batch` (1-based count
    /// of non-empty batches) is the one to die at.
    pub fn check(&self, step: Step, batch: u64) {
        if let Some((at, pause, nth)) = self.stall_at {
            // Once per process: later transactions of batch 1 (the
            // heartbeat's) pass the same step.
            static STALLED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if at == step
                && batch >= nth
                && !STALLED.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    message = "Failure injection: stalling the loop.",
                    step = step.name(),
                    ms = pause.as_millis() as u64,
                );
                std::thread::sleep(pause);
            }
        }
        let Some((at, nth)) = self.fail_at else {
            return;
        };
        let due = match step {
            Step::BeforeClearPending => batch >= nth,
            _ => batch == nth,
        };
        if at == step && due {
            tracing::warn!(
                message = "Failure injection: aborting the process.",
                step = step.name(),
                batch
            );
            std::process::abort();
        }
    }

    /// Never returns if `call` of batch number `batch` is the one to hang:
    /// called inside the watchdog's bound, before the real call.
    pub fn hang(&self, call: &str, batch: u64) {
        if self
            .hang_in
            .is_some_and(|(at, nth)| at == call && batch >= nth)
        {
            tracing::warn!(
                message = "Failure injection: this call never returns.",
                call,
                batch
            );
            loop {
                std::thread::park();
            }
        }
    }

    /// Whether transaction number `transaction` (1-based) is to be aborted.
    pub fn abort_transaction(&self, transaction: u64) -> bool {
        self.abort_every.is_some_and(|n| transaction % n == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(vars: &[(&'static str, &str)]) -> Result<Faults, ConfigError> {
        Faults::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn nothing_set_means_no_faults() {
        assert_eq!(faults(&[]).unwrap(), Faults::default());
        assert!(!Faults::default().is_active());
    }

    #[test]
    fn every_step_parses_and_bad_values_are_refused() {
        for step in Step::ALL {
            let parsed = faults(&[(ENV_FAIL_AT, step.name())]).unwrap();
            assert_eq!(parsed.fail_at, Some((step, 1)));
        }
        let parsed = faults(&[
            (ENV_FAIL_AT, "after_commit"),
            (ENV_FAIL_AFTER_BATCHES, "3"),
            (ENV_ABORT_EVERY, "4"),
            (ENV_MUTANT, "skip_seek_back"),
        ])
        .unwrap();
        assert_eq!(parsed.fail_at, Some((Step::AfterCommit, 3)));
        assert!(parsed.abort_transaction(8) && !parsed.abort_transaction(9));
        assert_eq!(parsed.mutant, Some(Mutant::SkipSeekBack));
        let stalled = faults(&[(ENV_STALL_AT, "after_sled_write"), (ENV_STALL_MS, "250")]).unwrap();
        assert_eq!(
            stalled.stall_at,
            Some((
                Step::AfterSledWrite,
                std::time::Duration::from_millis(250),
                1
            ))
        );
        let hanging = faults(&[
            (ENV_HANG_IN, "commit_transaction"),
            (ENV_HANG_AFTER_BATCHES, "2"),
        ])
        .unwrap();
        assert_eq!(hanging.hang_in, Some(("commit_transaction", 2)));
        for bad in [
            &[(ENV_FAIL_AT, "later")][..],
            &[(ENV_HANG_IN, "poll")],
            &[
                (ENV_HANG_IN, "send_offsets_to_transaction"),
                (ENV_HANG_AFTER_BATCHES, "0"),
            ],
            &[(ENV_FAIL_AT, "after_poll"), (ENV_FAIL_AFTER_BATCHES, "0")],
            &[(ENV_ABORT_EVERY, "1")],
            &[(ENV_MUTANT, "chaos")],
            &[(ENV_STALL_AT, "after_poll")],
            &[(ENV_STALL_AT, "soon"), (ENV_STALL_MS, "5")],
            &[
                (ENV_STALL_AT, "after_commit"),
                (ENV_STALL_MS, "5"),
                (ENV_STALL_AFTER_BATCHES, "0"),
            ],
        ] {
            assert!(faults(bad).is_err(), "{bad:?}");
        }
    }
}
