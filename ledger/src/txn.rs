//! The transactional calls' error path, written once for the shard and the
//! producer: classify an error (retriable, abortable, fatal), retry with one
//! backoff policy, wait for room in a full queue, settle deliveries before a
//! commit, and the `init_transactions` start-up loop.
//!
//! What differs between the two callers is passed in, not copied: the
//! shard's `BaseProducer` has its delivery reports served by whoever polls
//! it, the producer's `ThreadedProducer` by its own thread ([`Reports`]);
//! each logs and counts a retry its own way (the `on_retry` callbacks).

use std::thread;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext, ThreadedProducer};

/// Attempts of a call that keeps failing with a retriable error, within a
/// transaction, before the caller gives the transaction up.
pub const RETRIES_MAX: u32 = 5;
/// The backoff policy of every retried Kafka call: doubling from the
/// minimum, capped. The cap keeps the retries of one transaction (about
/// 1.5 s for `RETRIES_MAX`) well inside a transaction timeout.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long to wait for delivery reports between two looks at a full queue
/// or at the count of records in flight.
const REPORTS_PAUSE: Duration = Duration::from_millis(1);

/// The three ways a Kafka call can fail, as librdkafka defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try the same call again after a pause.
    Retriable,
    /// The transaction is lost: abort it and redo the batch.
    Abortable,
    /// The producer is unusable (fenced, or in an unknown state): exit and
    /// let the supervisor start a fresh incarnation.
    Fatal,
}

impl ErrorClass {
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Retriable => "retriable",
            ErrorClass::Abortable => "abortable",
            ErrorClass::Fatal => "fatal",
        }
    }
}

/// Classifies an error of a transactional call. Anything not classified by
/// librdkafka is fatal: continuing with a producer in an unknown state could
/// apply a batch twice.
pub fn classify(error: &KafkaError) -> ErrorClass {
    match error {
        KafkaError::Transaction(inner) => {
            if inner.is_fatal() {
                ErrorClass::Fatal
            } else if inner.txn_requires_abort() {
                ErrorClass::Abortable
            } else if inner.is_retriable() {
                ErrorClass::Retriable
            } else {
                ErrorClass::Fatal
            }
        }
        // A record of the transaction was not delivered: the transaction
        // cannot commit, but the producer itself is fine.
        KafkaError::MessageProduction(code) if !is_fatal_code(*code) => ErrorClass::Abortable,
        _ => ErrorClass::Fatal,
    }
}

/// Codes that mean the producer itself is done for: fenced by a newer
/// incarnation, or in librdkafka's fatal state.
fn is_fatal_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
    )
}

/// The pause before the `attempt`-th retry (1-based).
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// A call that failed for good: not retriable, or still retriable after
/// `RETRIES_MAX` attempts (or past the start-up timeout); then `class`
/// stays `Retriable`.
#[derive(Debug)]
pub struct Failed {
    pub step: &'static str,
    pub class: ErrorClass,
    pub error: KafkaError,
}

/// Runs `call` again while it fails with a retriable error, at most
/// `RETRIES_MAX` times, pausing by [`backoff`]. `on_retry` sees each error
/// that is retried and its attempt number, to log and count it.
pub fn retrying<T>(
    step: &'static str,
    mut call: impl FnMut() -> KafkaResult<T>,
    mut on_retry: impl FnMut(&KafkaError, u32),
) -> Result<T, Failed> {
    let mut attempt = 1;
    loop {
        let error = match call() {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let class = classify(&error);
        if class != ErrorClass::Retriable || attempt >= RETRIES_MAX {
            return Err(Failed { step, class, error });
        }
        on_retry(&error, attempt);
        thread::sleep(backoff(attempt));
        attempt += 1;
    }
}

/// The start-up loop of a transactional client: the broker may still be
/// starting, so every error but a fatal one is retried, by [`backoff`],
/// until `timeout` has passed or `stopping` says so. `Ok(None)`: stopped
/// before the call succeeded.
pub fn starting<T>(
    step: &'static str,
    timeout: Duration,
    stopping: impl Fn() -> bool,
    mut call: impl FnMut(Duration) -> KafkaResult<T>,
    mut on_retry: impl FnMut(&KafkaError, u32),
) -> Result<Option<T>, Failed> {
    let deadline = Instant::now() + timeout;
    let mut attempt = 1;
    loop {
        let error = match call(deadline.saturating_duration_since(Instant::now())) {
            Ok(value) => return Ok(Some(value)),
            Err(error) => error,
        };
        let fatal = matches!(&error, KafkaError::Transaction(inner) if inner.is_fatal());
        if fatal || Instant::now() + backoff(attempt) >= deadline {
            return Err(Failed {
                step,
                class: if fatal {
                    ErrorClass::Fatal
                } else {
                    ErrorClass::Retriable
                },
                error,
            });
        }
        on_retry(&error, attempt);
        thread::sleep(backoff(attempt));
        attempt += 1;
        if stopping() {
            return Ok(None);
        }
    }
}

/// `init_transactions` over a connection that is already up, both within
/// `timeout`. librdkafka looks the transaction coordinator up only through
/// a broker connection that is up, and otherwise waits out a fixed 500 ms
/// timer: half of all starts did. A metadata request for `topic` (one the
/// producer writes, created already) first brings a connection up.
pub fn init_transactions<C: ProducerContext>(
    producer: &impl Producer<C>,
    topic: &str,
    timeout: Duration,
) -> KafkaResult<()> {
    let deadline = Instant::now() + timeout;
    producer.client().fetch_metadata(Some(topic), timeout)?;
    producer.init_transactions(deadline.saturating_duration_since(Instant::now()))
}

/// A record for a producer whose context is `C`.
pub type Record<'a, K, P, C> = BaseRecord<'a, K, P, <C as ProducerContext>::DeliveryOpaque>;

/// What `send` of either producer type returns: on failure, the error and
/// the record back, to try again.
pub type Enqueued<'a, K, P, C> = Result<(), (KafkaError, Record<'a, K, P, C>)>;

/// The two producer types, as far as the helpers here need them: hand a
/// record over, and let delivery reports be served for a moment.
pub trait Reports<C: ProducerContext>: Producer<C> {
    /// `send` of the producer type (each has its own, with the same shape,
    /// whose large error hands the record back without a copy).
    #[allow(clippy::result_large_err)]
    fn enqueue<'a, K, P>(&self, record: Record<'a, K, P, C>) -> Enqueued<'a, K, P, C>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized;

    /// Lets delivery reports arrive for about `pause`.
    fn serve_reports(&self, pause: Duration);
}

/// [`Reports::enqueue`] as the producer type's own `send`: both types have
/// one of the same shape, but no rdkafka trait declares it to call it through.
macro_rules! enqueue_by_send {
    () => {
        fn enqueue<'a, K, P>(&self, record: Record<'a, K, P, C>) -> Enqueued<'a, K, P, C>
        where
            K: ToBytes + ?Sized,
            P: ToBytes + ?Sized,
        {
            self.send(record)
        }
    };
}

/// A `BaseProducer` serves its reports only when polled. `poll` with a
/// timeout returns only at the timeout, so poll without one, then pause.
impl<C: ProducerContext> Reports<C> for BaseProducer<C> {
    enqueue_by_send!();

    fn serve_reports(&self, pause: Duration) {
        self.poll(Duration::ZERO);
        thread::sleep(pause);
    }
}

/// A `ThreadedProducer`'s own thread serves its reports: just wait.
impl<C: ProducerContext + 'static> Reports<C> for ThreadedProducer<C> {
    enqueue_by_send!();

    fn serve_reports(&self, pause: Duration) {
        thread::sleep(pause);
    }
}

/// Hands one record to librdkafka, waiting for room while its queue is
/// full, at most `timeout`. Bounded because records fail after
/// `message.timeout.ms`: a queue that stays full that long will not drain.
pub fn send<C, K, P>(
    producer: &impl Reports<C>,
    mut record: Record<'_, K, P, C>,
    timeout: Duration,
) -> KafkaResult<()>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    let give_up = Instant::now() + timeout;
    loop {
        match producer.enqueue(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if Instant::now() < give_up =>
            {
                record = back;
                producer.serve_reports(REPORTS_PAUSE);
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Waits until no record is in flight, at most `timeout` (records fail
/// after `message.timeout.ms`, which is shorter than a transaction's
/// timeout). Why before a commit: rust-rdkafka's `commit_transaction`
/// flushes first, and its flush polls in whole 100 ms steps while a record
/// is in flight, even when the last acknowledgement comes a millisecond
/// later; that alone capped a producer at about ten transactions a second.
/// Settled here, the flush has nothing to wait for.
pub fn settle<C: ProducerContext>(producer: &impl Reports<C>, timeout: Duration) {
    settle_while(producer, timeout, || false);
}

/// [`settle`], doing `meanwhile` between rounds of delivery reports: work
/// that does not depend on the transaction's outcome (a shard reads its
/// next batch). `meanwhile` says whether it did something; while it does,
/// reports are served without waiting.
pub fn settle_while<C: ProducerContext>(
    producer: &impl Reports<C>,
    timeout: Duration,
    mut meanwhile: impl FnMut() -> bool,
) {
    let give_up = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < give_up {
        let pause = if meanwhile() {
            Duration::ZERO
        } else {
            REPORTS_PAUSE
        };
        producer.serve_reports(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), BACKOFF_MIN);
        assert_eq!(backoff(2), BACKOFF_MIN * 2);
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

    #[test]
    fn an_error_that_is_not_retriable_is_handed_back_at_once() {
        let mut calls = 0;
        let result: Result<(), Failed> = retrying(
            "produce",
            || {
                calls += 1;
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
            },
            |_, _| panic!("not retriable, so never retried"),
        );
        let failed = result.unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(
            (failed.step, failed.class),
            ("produce", ErrorClass::Abortable)
        );
    }

    #[test]
    fn anything_librdkafka_does_not_classify_is_fatal() {
        assert_eq!(
            classify(&KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
            ErrorClass::Abortable
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::ProducerFenced
            )),
            ErrorClass::Fatal
        );
    }
}
