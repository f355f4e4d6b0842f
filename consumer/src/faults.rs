//! Test-only failure injection and protocol mutants, compiled in so that
//! tests exercise the very binary that ships. The binary reads them once at
//! start from the environment (in-process tests set [`Faults`]' fields
//! instead); all off unless a variable is set:
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
//! - `TXLEDGER_MUTANT=skip_seek_back|skip_undo|commit_before_sled_write|refuse_funded`:
//!   break the protocol on purpose, so that the audit can prove it notices.
//!
//! The shard calls every fault and mutant at fixed points of its production
//! path, unconditionally ([`Faults::check`], [`Faults::hang`],
//! [`Faults::abort_transaction`], and the mutants' seam:
//! [`Faults::rewrite_effects`], [`Faults::write_after_commit`],
//! [`Faults::after_abort_keep_sled`], [`Faults::after_abort_skip_seek`]);
//! each does nothing unless its fault is set, so that the shard itself has
//! no test branches. The faults are handed to `consumer::serve` (the binary
//! reads them with [`Faults::from_env`]), not parsed into the configuration.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ledger::store::Store;
use ledger_core::domain::{Decision, OutcomeKind, RejectReason, TransferId};
use ledger_core::machine::{BatchEffects, Output};
use tracing::warn;

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

/// A set fault variable whose value cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value:?} is not valid: {why}")]
pub struct FaultError {
    pub variable: &'static str,
    pub value: String,
    pub why: &'static str,
}

/// The faults of one shard. Off by default; tests set the fields.
#[derive(Default)]
pub struct Faults {
    /// Die at this step of the `fail_after_batches`-th non-empty batch.
    pub fail_at: Option<(Step, u64)>,
    /// Abort every N-th transaction deliberately.
    pub abort_every: Option<u64>,
    pub mutant: Option<Mutant>,
    /// Sleep this long at this step of the first non-empty batch numbered
    /// at least this.
    pub stall_at: Option<(Step, Duration, u64)>,
    /// This call of the first non-empty batch numbered at least this never
    /// returns.
    pub hang_in: Option<(&'static str, u64)>,
    /// The stall happened: it happens once per shard (a process runs one).
    stalled: AtomicBool,
}

/// The configured faults only; `stalled` is state, not configuration.
impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("fail_at", &self.fail_at)
            .field("abort_every", &self.abort_every)
            .field("mutant", &self.mutant)
            .field("stall_at", &self.stall_at)
            .field("hang_in", &self.hang_in)
            .finish()
    }
}

/// The fault variables as read, each parsed by one method, so that every
/// refusal names its variable and what to use instead.
struct Vars<L> {
    lookup: L,
}

impl<L: Fn(&'static str) -> Option<String>> Vars<L> {
    fn invalid(variable: &'static str, value: String, why: &'static str) -> FaultError {
        FaultError {
            variable,
            value,
            why,
        }
    }

    /// A step named by `variable`'s value, which is set.
    fn step(variable: &'static str, value: String) -> Result<Step, FaultError> {
        Step::ALL
            .into_iter()
            .find(|step| step.name() == value)
            .ok_or_else(|| {
                Self::invalid(
                    variable,
                    value,
                    "use after_poll, after_produce, after_sled_write, after_send_offsets, \
                     after_commit or before_clear_pending",
                )
            })
    }

    /// A 1-based batch number, 1 when unset.
    fn batch(&self, variable: &'static str) -> Result<u64, FaultError> {
        match (self.lookup)(variable) {
            None => Ok(1),
            Some(value) => value
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| Self::invalid(variable, value, "use a number >= 1")),
        }
    }

    fn fail_at(&self) -> Result<Option<(Step, u64)>, FaultError> {
        let Some(value) = (self.lookup)(ENV_FAIL_AT) else {
            return Ok(None);
        };
        let step = Self::step(ENV_FAIL_AT, value)?;
        Ok(Some((step, self.batch(ENV_FAIL_AFTER_BATCHES)?)))
    }

    fn abort_every(&self) -> Result<Option<u64>, FaultError> {
        let Some(value) = (self.lookup)(ENV_ABORT_EVERY) else {
            return Ok(None);
        };
        value
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 2)
            .map(Some)
            // Every transaction aborted would redo the same batch forever.
            .ok_or_else(|| Self::invalid(ENV_ABORT_EVERY, value, "use a number >= 2"))
    }

    fn mutant(&self) -> Result<Option<Mutant>, FaultError> {
        match (self.lookup)(ENV_MUTANT).as_deref() {
            None => Ok(None),
            Some("skip_seek_back") => Ok(Some(Mutant::SkipSeekBack)),
            Some("skip_undo") => Ok(Some(Mutant::SkipUndo)),
            Some("commit_before_sled_write") => Ok(Some(Mutant::CommitBeforeSledWrite)),
            Some("refuse_funded") => Ok(Some(Mutant::RefuseFunded)),
            Some(other) => Err(Self::invalid(
                ENV_MUTANT,
                other.to_owned(),
                "use skip_seek_back, skip_undo, commit_before_sled_write or refuse_funded",
            )),
        }
    }

    fn stall_at(&self) -> Result<Option<(Step, Duration, u64)>, FaultError> {
        let Some(value) = (self.lookup)(ENV_STALL_AT) else {
            return Ok(None);
        };
        let step = Self::step(ENV_STALL_AT, value)?;
        let ms = (self.lookup)(ENV_STALL_MS).unwrap_or_default();
        let ms = ms
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms >= 1)
            .ok_or_else(|| Self::invalid(ENV_STALL_MS, ms, "use a number of ms >= 1"))?;
        Ok(Some((
            step,
            Duration::from_millis(ms),
            self.batch(ENV_STALL_AFTER_BATCHES)?,
        )))
    }

    fn hang_in(&self) -> Result<Option<(&'static str, u64)>, FaultError> {
        let Some(value) = (self.lookup)(ENV_HANG_IN) else {
            return Ok(None);
        };
        let call = HANGING_CALLS
            .into_iter()
            .find(|call| *call == value)
            .ok_or_else(|| {
                Self::invalid(
                    ENV_HANG_IN,
                    value,
                    "use send_offsets_to_transaction or commit_transaction",
                )
            })?;
        Ok(Some((call, self.batch(ENV_HANG_AFTER_BATCHES)?)))
    }
}

impl Faults {
    /// Reads the variables once; a set but invalid one is an error, so that
    /// a test never runs without the fault it asked for.
    pub fn from_env() -> Result<Faults, FaultError> {
        Faults::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    fn from_lookup(lookup: impl Fn(&'static str) -> Option<String>) -> Result<Faults, FaultError> {
        let vars = Vars { lookup };
        Ok(Faults {
            fail_at: vars.fail_at()?,
            abort_every: vars.abort_every()?,
            mutant: vars.mutant()?,
            stall_at: vars.stall_at()?,
            hang_in: vars.hang_in()?,
            stalled: AtomicBool::new(false),
        })
    }

    pub fn is_active(&self) -> bool {
        self.fail_at.is_some()
            || self.abort_every.is_some()
            || self.mutant.is_some()
            || self.stall_at.is_some()
            || self.hang_in.is_some()
    }

    /// Aborts the process if `step` of batch number `batch` (1-based count
    /// of non-empty batches) is the one to die at.
    pub fn check(&self, step: Step, batch: u64) {
        if let Some((at, pause, nth)) = self.stall_at {
            // Once: later transactions of batch 1 (the heartbeat's) pass
            // the same step.
            if at == step && batch >= nth && !self.stalled.swap(true, Ordering::Relaxed) {
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
    /// Never under the commit-before-write mutant: its transaction holds no
    /// sled write yet, so an abort would test nothing.
    pub fn abort_transaction(&self, transaction: u64) -> bool {
        !self.write_after_commit() && self.abort_every.is_some_and(|n| transaction % n == 0)
    }

    /// The mutants' seam, first point: the batch's effects once decided.
    /// `refuse_funded` lies about one transfer; otherwise nothing changes.
    pub fn rewrite_effects(&self, effects: &mut BatchEffects) {
        if self.mutant == Some(Mutant::RefuseFunded) {
            refuse_first_funded(effects);
        }
    }

    /// Whether the batch's sled write comes after the Kafka commit instead
    /// of before it (`commit_before_sled_write`).
    pub fn write_after_commit(&self) -> bool {
        self.mutant == Some(Mutant::CommitBeforeSledWrite)
    }

    /// After an abort of a batch that sled holds: `true` when `skip_undo`
    /// keeps the write (marked committed) and the caller must not undo it.
    pub fn after_abort_keep_sled(&self, store: &mut Store) -> bool {
        if self.mutant != Some(Mutant::SkipUndo) {
            return false;
        }
        tracing::warn!(message = "Mutant skip_undo: keeping the aborted batch in sled.");
        store.mark_committed();
        true
    }

    /// After an abort, undone: `true` when `skip_seek_back` reads on from
    /// where the consumer is, and the caller must not seek back.
    pub fn after_abort_skip_seek(&self) -> bool {
        if self.mutant != Some(Mutant::SkipSeekBack) {
            return false;
        }
        tracing::warn!(message = "Mutant skip_seek_back: not seeking back after an abort.");
        true
    }
}

/// The `refuse_funded` mutant: the batch's first accepted payment (not from
/// `world`) whose credit leaves through `ledger-credits` becomes
/// `insufficient_funds`, its debit and its credit taken back, so that the
/// balances and credits stay consistent with the lie. A payment whose credit
/// was applied here is never chosen: the batch may have spent that credit
/// already, and taking it back could leave a balance negative.
fn refuse_first_funded(effects: &mut BatchEffects) {
    let refused = Decision::Rejected(RejectReason::InsufficientFunds);
    let sent: HashSet<TransferId> = effects
        .outputs
        .iter()
        .filter_map(|output| match output {
            Output::Credit(credit) if !credit.local => Some(credit.transfer_id),
            _ => None,
        })
        .collect();
    let transfer = effects.outputs.iter_mut().find_map(|output| match output {
        Output::Outcome(outcome)
            if outcome.kind == OutcomeKind::Accepted
                && outcome
                    .transfer
                    .as_ref()
                    .is_some_and(|t| !t.from.is_world() && sent.contains(&t.id)) =>
        {
            outcome.kind = refused.into();
            outcome.transfer.clone()
        }
        _ => None,
    });
    let Some(transfer) = transfer else {
        return;
    };
    warn!(message = "Mutant refuse_funded: refusing a funded transfer.", id = %transfer.id);
    effects.outputs.retain(
        |output| !matches!(output, Output::Credit(credit) if credit.transfer_id == transfer.id),
    );
    if let Some(balance) = effects.balances.get_mut(&transfer.from) {
        *balance = *balance + transfer.amount.money();
    }
    for (_, id, decision) in &mut effects.decided {
        if *id == transfer.id {
            *decision = refused;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::domain::{AccountId, Amount, Currency, Money, Transfer};
    use ledger_core::machine::{
        process_batch_at, InputPartition, InputRecord, MemoryLedger, Rules, Source, Tick,
    };
    use ledger_core::wire;
    use time::OffsetDateTime;

    fn faults(vars: &[(&'static str, &str)]) -> Result<Faults, FaultError> {
        Faults::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn nothing_set_means_no_faults() {
        assert!(!faults(&[]).unwrap().is_active());
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

    /// The first `count` accounts `acc-N` that partition `owner` of
    /// `rules` holds, or that it does not.
    fn accounts(rules: &Rules, owner: i32, held: bool, count: usize) -> Vec<AccountId> {
        (0..)
            .map(|n| AccountId::parse(&format!("acc-{n}")).unwrap())
            .filter(|account| (rules.partition_of(account) == owner) == held)
            .take(count)
            .collect()
    }

    /// The mutant lies about one transfer but must leave a state that the
    /// shard can go on from: a funded payment whose local credit the batch
    /// spent again must not be the one refused.
    #[test]
    fn the_refuse_funded_mutant_never_takes_back_a_credit_spent_in_its_batch() {
        let rules = Rules::new(2);
        let world = AccountId::world();
        let here = rules.partition_of(&world);
        let [a, b] = accounts(&rules, here, true, 2).try_into().unwrap();
        let [away] = accounts(&rules, here, false, 1).try_into().unwrap();
        let cents = |minor| Amount::from_minor(minor).unwrap();
        let epoch = OffsetDateTime::UNIX_EPOCH;
        let transfers: Vec<Transfer> = [(&world, &a, 10_000), (&a, &b, 6_000), (&b, &away, 6_000)]
            .into_iter()
            .enumerate()
            .map(|(n, (from, to, minor))| {
                let at = epoch + time::Duration::milliseconds(n as i64);
                Transfer::new(
                    TransferId::new_random(),
                    from.clone(),
                    to.clone(),
                    cents(minor),
                    Currency::EUR,
                    at,
                )
                .unwrap()
            })
            .collect();
        let payloads: Vec<Vec<u8>> = transfers.iter().map(wire::encode_transfer).collect();
        let records: Vec<InputRecord<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(offset, payload)| InputRecord {
                at: InputPartition {
                    source: Source::Transfers,
                    partition: here,
                },
                offset: offset as i64,
                key: None,
                payload: Some(payload),
            })
            .collect();
        let tick = Tick {
            now_ms: 0,
            local: &[here],
            ..Tick::default()
        };
        let mut effects =
            process_batch_at(&MemoryLedger::default(), &rules, &records, tick).unwrap();
        assert_eq!(effects.counts.accepted, 3, "{:?}", effects.outputs);

        refuse_first_funded(&mut effects);

        let refused = Decision::Rejected(RejectReason::InsufficientFunds);
        let decided: Vec<(TransferId, Decision)> = effects
            .decided
            .iter()
            .map(|(_, id, decision)| (*id, *decision))
            .collect();
        assert_eq!(
            decided,
            vec![
                (transfers[0].id, Decision::Accepted),
                (transfers[1].id, Decision::Accepted),
                (transfers[2].id, refused),
            ]
        );
        assert!(
            effects
                .balances
                .iter()
                .all(|(account, balance)| account.is_world() || *balance >= Money::ZERO),
            "{:?}",
            effects.balances
        );
        assert_eq!(effects.balances[&b], cents(6_000).money());
        assert!(!effects.outputs.iter().any(
            |output| matches!(output, Output::Credit(credit) if credit.transfer_id == transfers[2].id)
        ));
    }
}
