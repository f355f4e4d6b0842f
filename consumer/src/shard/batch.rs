//! One batch: decided by the pure state machine, then its Kafka
//! transaction around the one sled write (`transact`), and what follows
//! a commit (`committed`) or its failure (`interrupted`, `abort`: undo and
//! seek back, so that the batch is redone from the same state).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ledger::kafka;
use ledger::store::{Stamp, StoreError, WriteReport};
use ledger::telemetry::chain;
use ledger::txn::{self, ErrorClass, Failed};
use ledger_core::domain::Money;
use ledger_core::machine::{
    process_batch_at, BatchEffects, InputPartition, InputRecord, LedgerView, Source, Tick,
};
use ledger_core::recovery;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaResult;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::faults::Step;
use crate::measure::{self, ErrorEvent};
use crate::Error;

use super::{now_ms, report, Polled, Shard};

/// Why a transaction did not commit.
pub(super) enum Interrupted {
    Kafka(Failed),
    /// `TXLEDGER_ABORT_EVERY` asked for this abort.
    Deliberate,
    /// sled failed: corruption or I/O, never retried.
    Store(StoreError),
}

impl From<Failed> for Interrupted {
    fn from(failed: Failed) -> Self {
        Interrupted::Kafka(failed)
    }
}

/// What a committed batch cost, for metrics.
struct BatchCost {
    flush: Duration,
    /// Change of this shard's sum of balances.
    delta: Money,
}

impl Shard {
    pub(super) fn process(&mut self, polled: &[Polled]) -> Result<(), Error> {
        let started = Instant::now();
        let records: Vec<InputRecord<'_>> = polled
            .iter()
            .map(|record| InputRecord {
                at: record.at,
                offset: record.offset,
                key: record.key.as_deref(),
                payload: record.payload.as_deref(),
            })
            .collect();
        let catching_up = self.catching_up(polled);
        let tick = Tick {
            now_ms: now_ms(),
            local: &self.owned,
            catching_up,
            ..Tick::default()
        };
        let mut effects = process_batch_at(&self.store, &self.settings.rules, &records, tick)
            .inspect_err(|error| {
                error!(
                    message = "A credit sits on a partition that does not own its account; stopping.",
                    error = %chain(error),
                );
            })?;
        self.faults.rewrite_effects(&mut effects);
        self.cover(&mut effects);
        if effects.counts.misrouted > 0 {
            warn!(
                message = "Transfers in a partition that does not own their source account were rejected as misrouted; their producer must use the murmur2 partitioner.",
                misrouted = effects.counts.misrouted,
            );
        }
        if effects.counts.hold_expired > 0 {
            warn!(
                message = "Transfers short of funds waited --hold-max-ms for credits that may still come, and were rejected hold_expired; a partition may be stuck or the hold too short.",
                hold_expired = effects.counts.hold_expired,
                hold_max_ms = self.settings.rules.hold_max_ms,
            );
        }
        self.run(&records, &effects, started)
    }

    /// Gives every partition the batch changes offsets in the batch, both
    /// topics', unchanged where it consumed nothing (from 0 where nothing
    /// was ever consumed): the transaction then commits them with the
    /// batch's stamp, and the stamp goes on the partition in sled, so that
    /// the committed offsets always name the version of the partition's
    /// state. A batch changes partitions it did not consume from when it
    /// applies a credit locally or moves order state.
    pub(super) fn cover(&self, effects: &mut BatchEffects) {
        let rules = &self.settings.rules;
        let touched: BTreeSet<i32> = effects
            .balances
            .keys()
            .map(|account| rules.partition_of(account))
            .chain(effects.orders.keys().copied())
            .chain(effects.decided.iter().map(|(partition, _, _)| *partition))
            .chain(effects.credited.iter().map(|(partition, _)| *partition))
            .chain(effects.offsets.keys().map(|at| at.partition))
            .collect();
        for partition in touched {
            // Invariant: a batch changes only what this shard owns; an
            // offset committed for another shard's partition would move it.
            assert!(
                self.owned.contains(&partition),
                "invariant violated: a batch changes partition {partition}, which this shard \
                 does not own ({:?})",
                self.owned
            );
            for source in [Source::Transfers, Source::Credits] {
                let at = InputPartition { source, partition };
                let now = self.store.offsets().get(&at).copied().unwrap_or(0);
                effects.offsets.entry(at).or_insert(now);
            }
        }
    }

    /// The batch's transaction, and what follows its commit or its failure.
    pub(super) fn run(
        &mut self,
        records: &[InputRecord<'_>],
        effects: &BatchEffects,
        started: Instant,
    ) -> Result<(), Error> {
        let mut written = false;
        match self.transact(effects, &mut written) {
            Ok(cost) => {
                self.committed(records, effects, &cost, started);
                Ok(())
            }
            Err(interrupted) => self.interrupted(interrupted, written),
        }
    }

    /// The batch's transaction committed: its sled write is the committed
    /// state now.
    fn committed(
        &mut self,
        records: &[InputRecord<'_>],
        effects: &BatchEffects,
        cost: &BatchCost,
        started: Instant,
    ) {
        self.store.mark_committed();
        self.balance_sum = self.balance_sum + cost.delta;
        measure::balance_sum(self.balance_sum);
        for (destination, mark) in &effects.marks {
            self.published
                .insert((mark.partition, *destination), mark.clone());
        }
        if !effects.orders.is_empty() {
            measure::holding(self.store.held_count(&self.owned));
        }
        measure::committed(records, effects, cost.flush, started.elapsed());
        debug!(
            message = "Batch committed.",
            records = records.len(),
            accepted = effects.counts.accepted,
            rejected = effects.counts.rejected,
            duplicate = effects.counts.duplicate,
            credits_applied = effects.counts.credits_applied,
            dead_letters = effects.counts.dead_letters,
            offsets = %recovery::show(self.store.offsets()),
        );
    }

    /// The batch's transaction did not commit: stop on a store or fatal
    /// error, otherwise abort and redo. `written`: sled holds the batch.
    fn interrupted(&mut self, interrupted: Interrupted, written: bool) -> Result<(), Error> {
        match interrupted {
            Interrupted::Store(error) => {
                report(
                    ErrorEvent::Store,
                    "sled write",
                    &error,
                    "Writing the ledger failed.",
                );
                Err(Error::Store(error))
            }
            Interrupted::Kafka(Failed {
                step,
                class: ErrorClass::Fatal,
                error,
            }) => {
                report(
                    ErrorEvent::Kafka(ErrorClass::Fatal),
                    step,
                    &error,
                    "Fatal Kafka error: exiting; the next incarnation recovers.",
                );
                Err(Error::Kafka { step, error })
            }
            Interrupted::Kafka(Failed { step, error, .. }) => {
                report(
                    ErrorEvent::Kafka(ErrorClass::Abortable),
                    step,
                    &error,
                    "Transaction failed: aborting and redoing the batch.",
                );
                self.abort(written)
            }
            Interrupted::Deliberate => {
                info!(message = "Aborting a transaction on purpose (TXLEDGER_ABORT_EVERY).");
                self.abort(written)
            }
        }
    }

    /// One Kafka transaction around the batch. `written` tells the abort path
    /// whether sled holds this batch (and must be undone).
    fn transact(
        &mut self,
        effects: &BatchEffects,
        written: &mut bool,
    ) -> Result<BatchCost, Interrupted> {
        self.transactions += 1;
        self.attempt("begin_transaction", || self.producer.begin_transaction())?;
        self.produce(effects)?;
        self.faults.check(Step::AfterProduce, self.batches);
        // Old balances must be read before the write replaces them.
        let delta: Money = effects
            .balances
            .iter()
            .map(|(account, new)| *new - self.store.balance(account))
            .sum();
        // This batch's version of every partition it changes (`cover` gave
        // each of them offsets).
        let stamp: Stamp = *uuid::Uuid::new_v4().as_bytes();

        // One sequence; the commit-before-write mutant only moves its sled
        // write after the commit (and, writing nothing before, never
        // aborts on purpose: `Faults::abort_transaction`).
        let mut report = None;
        if !self.faults.write_after_commit() {
            let written_report = self.write(effects, stamp)?;
            *written = true;
            self.produce_changes(&written_report.changes)?;
            report = Some(written_report);
        }
        let offsets = self.offsets_to_commit(effects)?;
        self.send_offsets(&offsets)?;
        self.faults.check(Step::AfterSendOffsets, self.batches);
        if self.faults.abort_transaction(self.transactions) {
            return Err(Interrupted::Deliberate);
        }
        // Every record is acknowledged (or failed) here, so the commit's own
        // flush has nothing to wait for and its timeout is the coordinator's
        // round trip: a retriable timeout while a coordinator fails over is
        // retried by `attempt`. (A flush timeout would carry no
        // retriable/abortable/fatal flag: fatal, and recovery decides.)
        self.settle();
        self.attempt("commit_transaction", || {
            self.faults.hang("commit_transaction", self.batches);
            self.producer.commit_transaction(self.settings.call_timeout)
        })?;
        self.faults.check(Step::AfterCommit, self.batches);
        let report = match report {
            Some(report) => report,
            None => self.write(effects, stamp)?,
        };
        Ok(BatchCost {
            flush: report.flush,
            delta,
        })
    }

    /// The batch's one durable sled write, with its pending record.
    fn write(&mut self, effects: &BatchEffects, stamp: Stamp) -> Result<WriteReport, Interrupted> {
        let report = self
            .store
            .write_stamped(effects, Some(stamp))
            .map_err(Interrupted::Store)?;
        self.faults.check(Step::AfterSledWrite, self.batches);
        Ok(report)
    }

    /// The offsets the transaction commits: the batch's, each with its
    /// committer and its partition's stamp as sled holds them now (after the
    /// sled write, this batch's) in the metadata.
    ///
    /// Never empty: every transaction changes some partition (records, or a
    /// heartbeat's order state and the marks read from it), and `cover`
    /// gave each such partition offsets. That matters with group
    /// assignment: only offsets carry the group generation that fences a
    /// shard the group has moved on from, and without them a zombie's
    /// heartbeat would commit, its changelog records overwriting the state
    /// the partitions' new owner restores.
    fn offsets_to_commit(&self, effects: &BatchEffects) -> Result<TopicPartitionList, Interrupted> {
        let mut list = TopicPartitionList::new();
        for (at, next) in &effects.offsets {
            list.add_partition_offset(
                self.settings.topic(at.source),
                at.partition,
                Offset::Offset(*next),
            )
            .map_err(|error| Failed {
                step: "building the offsets",
                class: ErrorClass::Fatal,
                error,
            })?;
        }
        for mut element in list.elements() {
            let stamp = self
                .store
                .stamp(element.partition())
                .map_err(Interrupted::Store)?;
            element.set_metadata(kafka::committer_tag(
                &self.settings.transactional_id,
                stamp.as_ref(),
            ));
        }
        Ok(list)
    }

    fn send_offsets(&self, offsets: &TopicPartitionList) -> Result<(), Failed> {
        self.attempt("send_offsets_to_transaction", || {
            self.faults
                .hang("send_offsets_to_transaction", self.batches);
            self.producer.send_offsets_to_transaction(
                offsets,
                &self.group,
                self.settings.call_timeout,
            )
        })
    }

    /// A transactional call of the batch thread: each try bounded by the
    /// watchdog, retriable failures retried (`txn::retrying`); a retriable
    /// failure that persists aborts the transaction like an abortable one.
    fn attempt<T>(
        &self,
        step: &'static str,
        mut call: impl FnMut() -> KafkaResult<T>,
    ) -> Result<T, Failed> {
        let bound = self.settings.call_timeout + kafka::CALL_CUTOFF_GRACE;
        txn::retrying(
            step,
            || self.watchdog.bounded(step, bound, &mut call),
            |error, _| {
                report(
                    ErrorEvent::Kafka(ErrorClass::Retriable),
                    step,
                    error,
                    "Kafka call failed; retrying.",
                );
            },
        )
    }

    /// Abort, undo in sled, seek back: the batch is redone from the same
    /// state, and the state machine being deterministic, it produces the
    /// same records. A failing abort leaves the producer in an unknown
    /// state: fatal.
    fn abort(&mut self, written: bool) -> Result<(), Error> {
        // abort_transaction waits until every record of the transaction is
        // accounted for, and with a BaseProducer their delivery reports are
        // served only by polling it: serve them first (bounded by
        // message.timeout.ms). Purging instead would break the idempotent
        // producer's sequence numbers and fail the next transaction. A
        // failure here is aborted along with the rest.
        let call_timeout = self.settings.call_timeout;
        let _ = self
            .watchdog
            .bounded("flush", call_timeout + kafka::CALL_CUTOFF_GRACE, || {
                self.producer.flush(call_timeout)
            });
        if let Err(Failed { step, error, .. }) = self.attempt("abort_transaction", || {
            self.producer.abort_transaction(call_timeout)
        }) {
            report(
                ErrorEvent::Kafka(ErrorClass::Fatal),
                step,
                &error,
                "Aborting the transaction failed: exiting.",
            );
            return Err(Error::Kafka { step, error });
        }
        measure::aborted();
        if written && !self.faults.after_abort_keep_sled(&mut self.store) {
            self.store.undo_pending()?;
        }
        // Read past the batch, so read again after the seek.
        self.ahead.clear();
        if self.faults.after_abort_skip_seek() {
            return Ok(());
        }
        if self.consumer.context().group_change().is_some() {
            // The group moved the partitions while the batch settled: the
            // loop's regroup positions them at sled's offsets.
            return Ok(());
        }
        self.seek_to_store()?;
        info!(
            message = "Transaction aborted and undone; redoing the batch.",
            offsets = %recovery::show(self.store.offsets()),
        );
        Ok(())
    }
}
