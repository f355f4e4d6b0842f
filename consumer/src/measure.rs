//! The shard's Prometheus metrics, named and recorded in one place.
//!
//! Everything here counts COMMITTED work (a batch that aborts and is redone
//! is counted once, when it commits), except `errors_total`, which counts
//! every error event, each also logged where it is recorded.

use std::time::Duration;

use ledger::txn::ErrorClass;
use ledger_core::domain::{Money, OutcomeKind};
use ledger_core::machine::{BatchEffects, InputRecord, Output, Source};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use time::OffsetDateTime;

const RECORDS_IN: &str = "txledger_consumer_records_in_total";
const OUTCOMES: &str = "txledger_consumer_outcomes_total";
const CREDITS_APPLIED: &str = "txledger_consumer_credits_applied_total";
const CREDITS_DUPLICATE: &str = "txledger_consumer_credits_duplicate_total";
const DEAD_LETTERS: &str = "txledger_consumer_dead_letters_total";
const TRANSACTIONS: &str = "txledger_consumer_transactions_total";
const BATCH_RECORDS: &str = "txledger_consumer_batch_records";
const BATCH_DURATION: &str = "txledger_consumer_batch_duration_seconds";
const SLED_FLUSH: &str = "txledger_consumer_sled_flush_seconds";
const END_TO_END: &str = "txledger_consumer_end_to_end_latency_seconds";
const BALANCE_SUM: &str = "txledger_consumer_balance_sum";
const READY: &str = "txledger_consumer_ready";
const HELD: &str = "txledger_consumer_held_total";
const RELEASED: &str = "txledger_consumer_released_total";
const HOLD_EXPIRED: &str = "txledger_consumer_hold_expired_total";
const RETIMED: &str = "txledger_consumer_retimed_total";
const HOLDING: &str = "txledger_consumer_holding";
const ERRORS: &str = "txledger_consumer_errors_total";
const RESTORED_RECORDS: &str = "txledger_consumer_restored_records_total";
const RESTORE_SECONDS: &str = "txledger_consumer_restore_seconds";

/// Registers descriptions; harmless to call more than once.
pub fn describe() {
    describe_counter!(
        RECORDS_IN,
        "Input records in committed batches, by source topic."
    );
    describe_counter!(
        OUTCOMES,
        "Outcomes published in committed batches, by status and reject reason."
    );
    describe_counter!(CREDITS_APPLIED, "Credits applied to this shard's accounts.");
    describe_counter!(
        CREDITS_DUPLICATE,
        "Credits read again for a transfer already credited here, and ignored."
    );
    describe_counter!(
        DEAD_LETTERS,
        "Undecodable records sent to the dead-letter topic."
    );
    describe_counter!(
        TRANSACTIONS,
        "Kafka transactions, by result (committed or aborted)."
    );
    describe_histogram!(BATCH_RECORDS, "Records per committed batch.");
    describe_histogram!(
        BATCH_DURATION,
        "Seconds from the end of polling to the commit of a batch."
    );
    describe_histogram!(
        SLED_FLUSH,
        "Seconds to flush one batch's sled write to disk."
    );
    describe_histogram!(
        END_TO_END,
        "Seconds from a transfer's created_at to the commit of its decision."
    );
    describe_gauge!(
        BALANCE_SUM,
        "Sum of this shard's committed balances, in major units (all shards together, plus credits in flight, sum to zero)."
    );
    describe_gauge!(
        READY,
        "1 once recovery is done and the shard consumes, else 0."
    );
    describe_counter!(ERRORS, "Errors, by class; each is also logged.");
    describe_counter!(
        HELD,
        "Transfers held for funds: short, with a credit ordered before them possibly on its way."
    );
    describe_counter!(RELEASED, "Held transfers decided.");
    describe_counter!(
        HOLD_EXPIRED,
        "Held transfers rejected hold_expired after --hold-max-ms."
    );
    describe_counter!(
        RETIMED,
        "Transfers that arrived after a later one of their partition and were re-timed (effective_at)."
    );
    describe_gauge!(HOLDING, "Transfers held right now, committed state.");
    describe_counter!(
        RESTORED_RECORDS,
        "Changelog records read to rebuild a lost or stale sled directory."
    );
    describe_gauge!(
        RESTORE_SECONDS,
        "Seconds the last restore from the changelog took (0: none since start)."
    );
}

/// A restore from the changelog is done.
pub fn restored(records: u64, took: Duration) {
    counter!(RESTORED_RECORDS).increment(records);
    gauge!(RESTORE_SECONDS).set(took.as_secs_f64());
}

/// Transfers held right now.
pub fn holding(count: usize) {
    gauge!(HOLDING).set(count as f64);
}

pub fn ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

pub fn balance_sum(sum: Money) {
    // A gauge is a float; the exact sum is in the logs and /v1/stats.
    gauge!(BALANCE_SUM).set(sum.0 as f64 / 100.0);
}

/// What an error event was: a Kafka call's error by its class, or an
/// error of the consumer, of the client, of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorEvent {
    Kafka(ErrorClass),
    Consumer,
    Client,
    Store,
}

impl ErrorEvent {
    /// The `class` label of the errors metric.
    pub fn name(self) -> &'static str {
        match self {
            ErrorEvent::Kafka(class) => class.name(),
            ErrorEvent::Consumer => "consumer",
            ErrorEvent::Client => "client",
            ErrorEvent::Store => "store",
        }
    }

    /// Possible data loss, or an operator must act: logged at ERROR.
    pub fn needs_operator(self) -> bool {
        matches!(
            self,
            ErrorEvent::Kafka(ErrorClass::Fatal) | ErrorEvent::Store
        )
    }
}

/// Counts one error event.
pub fn error(event: ErrorEvent) {
    counter!(ERRORS, "class" => event.name()).increment(1);
}

pub fn aborted() {
    counter!(TRANSACTIONS, "result" => "aborted").increment(1);
}

/// Records a committed batch.
pub fn committed(
    records: &[InputRecord<'_>],
    effects: &BatchEffects,
    flush: Duration,
    batch: Duration,
) {
    counter!(TRANSACTIONS, "result" => "committed").increment(1);
    let transfers = records
        .iter()
        .filter(|record| record.at.source == Source::Transfers)
        .count() as u64;
    counter!(RECORDS_IN, "source" => Source::Transfers.name()).increment(transfers);
    counter!(RECORDS_IN, "source" => Source::Credits.name())
        .increment(records.len() as u64 - transfers);
    histogram!(BATCH_RECORDS).record(records.len() as f64);
    histogram!(BATCH_DURATION).record(batch.as_secs_f64());
    histogram!(SLED_FLUSH).record(flush.as_secs_f64());
    counter!(CREDITS_APPLIED).increment(effects.counts.credits_applied);
    counter!(CREDITS_DUPLICATE).increment(effects.counts.credits_duplicate);
    counter!(DEAD_LETTERS).increment(effects.counts.dead_letters);
    counter!(HELD).increment(effects.counts.held);
    counter!(RELEASED).increment(effects.counts.released);
    counter!(HOLD_EXPIRED).increment(effects.counts.hold_expired);
    counter!(RETIMED).increment(effects.counts.retimed);

    let now = OffsetDateTime::now_utc();
    let end_to_end = histogram!(END_TO_END);
    for output in &effects.outputs {
        let Output::Outcome(outcome) = output else {
            continue;
        };
        let reason = outcome.kind.reason().map_or("none", |reason| reason.code());
        counter!(OUTCOMES, "status" => outcome.kind.status(), "reason" => reason).increment(1);
        if let (Some(transfer), OutcomeKind::Accepted | OutcomeKind::Rejected(_)) =
            (&outcome.transfer, outcome.kind)
        {
            // Clocks of other hosts may run ahead: a negative latency is 0.
            let latency = (now - transfer.created_at).as_seconds_f64().max(0.0);
            end_to_end.record(latency);
        }
    }
}
