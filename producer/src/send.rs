//! The sending loop. It runs on a dedicated thread that owns the Kafka
//! producer, so every librdkafka call that may block (init, begin, commit,
//! abort, flush, and the pauses of rate limiting) stays off the async
//! runtime.
//!
//! Guarantee: with transactions, the records of a batch become visible to
//! `read_committed` readers together and once, or not at all. A batch whose
//! transaction aborts is resent whole, same transfers and ids, in a new
//! transaction. Without transactions (`--no-transactions`, for benchmarks)
//! the idempotent producer still writes each record once per partition, but
//! a crash can leave part of a batch visible.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger::kafka;
use ledger::telemetry::chain;
use ledger::txn::{self, classify, ErrorClass, Failed};
use ledger::watchdog::Watchdog;
use ledger_core::wire::encode_transfer;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tracing::{error, info, warn};

use crate::progress::{Progress, StopSignal};
use crate::source::{Record, Source};
use crate::ProducerError;

/// Attempts of one batch whose transaction keeps aborting.
pub const BATCH_ATTEMPTS_MAX: u32 = 10;
/// A producer that fell behind its rate (a slow commit) sends at most this
/// much of the backlog in a burst, and forgets the rest.
const CATCH_UP_MAX: Duration = Duration::from_secs(1);

/// What the sending loop needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bootstrap_servers: String,
    pub topic: String,
    /// `None`: idempotent writes without transactions.
    pub transactional_id: Option<String>,
    pub batch_records: usize,
    pub batch_duration: Duration,
    pub transaction_timeout: Duration,
    /// Given to each transactional call; the watchdog cuts it off
    /// `kafka::CALL_CUTOFF_GRACE` later.
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    /// Records per second; 0 for no limit.
    pub rate: u64,
}

/// Counts deliveries, which is how `--no-transactions` learns of records
/// that could not be written (with transactions, a failed delivery fails
/// the commit instead).
#[derive(Debug, Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {
    // librdkafka reports connection trouble here, then retries by itself: a
    // warning, since nothing is lost until a call fails.
    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %chain(&error), reason, "Kafka client error.");
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self
                    .first_failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

type KafkaProducer = ThreadedProducer<Deliveries>;

/// What the loop pulls next.
enum Pull {
    Record(Record),
    /// The open batch's time is up before the next record is due.
    Deadline,
    /// The source is exhausted, or a stop was requested.
    Finished,
}

/// Spaces records at the configured rate.
#[derive(Debug)]
struct Pacer {
    interval: Option<Duration>,
    next: Instant,
}

impl Pacer {
    fn new(rate: u64, now: Instant) -> Self {
        let interval = (rate > 0)
            .then(|| Duration::from_nanos(1_000_000_000 / rate))
            .filter(|interval| !interval.is_zero());
        Pacer {
            interval,
            next: now,
        }
    }

    /// When the next record is due.
    fn next_slot(&mut self, now: Instant) -> Instant {
        if self.interval.is_none() {
            return now;
        }
        if let Some(floor) = now.checked_sub(CATCH_UP_MAX) {
            self.next = self.next.max(floor);
        }
        self.next
    }

    /// The due record was taken.
    fn advance(&mut self) {
        if let Some(interval) = self.interval {
            self.next += interval;
        }
    }
}

/// The sending loop's state.
pub struct Sender {
    settings: Settings,
    source: Source,
    stop: Arc<StopSignal>,
    progress: Arc<Progress>,
    /// Cuts off a call into librdkafka that overruns its bound: the
    /// process exits for a restart (`ledger::watchdog`).
    watchdog: Watchdog,
    /// Deliberate resubmissions sent so far (for `--no-transactions`, where
    /// records are counted when acknowledged rather than per transaction).
    resubmissions_sent: u64,
}

impl Sender {
    pub fn new(
        settings: Settings,
        source: Source,
        stop: Arc<StopSignal>,
        progress: Arc<Progress>,
    ) -> Result<Self, ProducerError> {
        let owner = settings.transactional_id.as_deref().unwrap_or("producer");
        let watchdog = Watchdog::exiting(owner).map_err(ProducerError::Watchdog)?;
        Ok(Sender {
            settings,
            source,
            stop,
            progress,
            watchdog,
            resubmissions_sent: 0,
        })
    }

    /// A call into librdkafka given `timeout`, cut off by the watchdog
    /// `kafka::CALL_CUTOFF_GRACE` after it.
    fn bounded<T>(&self, step: &'static str, timeout: Duration, call: impl FnOnce() -> T) -> T {
        self.watchdog
            .bounded(step, timeout + kafka::CALL_CUTOFF_GRACE, call)
    }

    /// Sends until the source is exhausted or a stop is requested; gives the
    /// source back for its report of invalid lines.
    pub fn run(mut self) -> Result<Source, ProducerError> {
        let producer: KafkaProducer = self
            .client_config()
            .create_with_context(Deliveries::default())
            .map_err(ProducerError::Client)?;
        let transactional = self.settings.transactional_id.is_some();
        if transactional {
            self.init_transactions(&producer)?;
        }
        self.send_batches(&producer, transactional)?;
        if !transactional {
            self.settle(&producer);
            // Bounded: message.timeout.ms is below the transaction timeout,
            // so by then every record is delivered or failed.
            let timeout = self.settings.transaction_timeout;
            self.bounded("flush", timeout, || producer.flush(timeout))
                .map_err(|error| self.failed("flush", error))?;
            self.check_deliveries(&producer)?;
        }
        Ok(self.source)
    }

    fn client_config(&self) -> ClientConfig {
        let id = self.settings.transactional_id.as_deref();
        let mut config = kafka::transactional_producer_config(
            &self.settings.bootstrap_servers,
            id.unwrap_or_default(),
            self.settings.transaction_timeout,
        );
        if id.is_none() {
            // The same settings as the transactional producer (idempotence,
            // acks=all, partitioner, timeouts) minus the transactional.id,
            // so that a benchmark compares like with like.
            config.remove("transactional.id");
        }
        config
    }

    /// Registers the transactional.id with the broker, which fences any
    /// earlier instance with the same id and aborts its open transaction.
    /// Retried until the connect timeout: a broker that is still starting
    /// answers with retriable errors.
    fn init_transactions(&self, producer: &KafkaProducer) -> Result<(), ProducerError> {
        let started = txn::starting(
            "init_transactions",
            self.settings.connect_timeout,
            || self.stop.is_set(),
            |left| {
                self.bounded("init_transactions", left, || {
                    txn::init_transactions(producer, &self.settings.topic, left)
                })
            },
            |error, attempt| {
                warn!(error = %chain(error), attempt, "Initializing transactions failed; retrying.");
            },
        )
        .map_err(|Failed { error, .. }| ProducerError::Connect {
            bootstrap: self.settings.bootstrap_servers.clone(),
            timeout: self.settings.connect_timeout,
            source: error,
        })?;
        if started.is_some() {
            info!(
                transactional_id = self.settings.transactional_id.as_deref(),
                "Transactions initialized; any earlier instance with this id is fenced."
            );
        }
        Ok(())
    }

    /// Fills and ends batches until the source is exhausted or a stop is
    /// requested. A batch is one transaction (or, without transactions, one
    /// delivery check); it starts with its first record, so no empty
    /// transaction is ever opened.
    fn send_batches(
        &mut self,
        producer: &KafkaProducer,
        transactional: bool,
    ) -> Result<(), ProducerError> {
        // Paced from now: the time spent reaching the broker is no backlog.
        let mut pacer = Pacer::new(self.settings.rate, Instant::now());
        let mut batch: Vec<Record> = Vec::with_capacity(self.settings.batch_records);
        let mut finished = false;
        while !finished {
            let mut next = match self.pull(&mut pacer, None)? {
                Pull::Record(record) => Some(record),
                Pull::Deadline | Pull::Finished => break,
            };
            if transactional {
                self.begin(producer)?;
            }
            let opened = Instant::now();
            let deadline = opened + self.settings.batch_duration;
            let mut failure = None;
            while let Some(record) = next.take() {
                self.progress.sent();
                self.resubmissions_sent += u64::from(record.resubmission);
                failure = self.produce(producer, &record).err();
                batch.push(record);
                if failure.is_some() || batch.len() >= self.settings.batch_records {
                    break;
                }
                match self.pull(&mut pacer, Some(deadline)) {
                    Ok(Pull::Record(record)) => next = Some(record),
                    Ok(Pull::Deadline) => {}
                    Ok(Pull::Finished) => finished = true,
                    Err(error) => {
                        if transactional {
                            // Best effort: the broker would abort it after
                            // the transaction timeout anyway.
                            let _ = self.abort(producer);
                        }
                        return Err(error);
                    }
                }
            }
            if transactional {
                self.commit(producer, &batch, failure, opened)?;
            } else {
                if let Some(error) = failure {
                    return Err(self.failed("produce", error));
                }
                self.check_deliveries(producer)?;
            }
            batch.clear();
        }
        Ok(())
    }

    /// The next record once it is due; `Deadline` if it would be due after
    /// `deadline`.
    fn pull(
        &mut self,
        pacer: &mut Pacer,
        deadline: Option<Instant>,
    ) -> Result<Pull, ProducerError> {
        let slot = pacer.next_slot(Instant::now());
        if deadline.is_some_and(|deadline| slot > deadline) {
            return Ok(Pull::Deadline);
        }
        if self.stop.wait_until(slot) {
            return Ok(Pull::Finished);
        }
        pacer.advance();
        Ok(match self.source.next_record()? {
            Some(record) => Pull::Record(record),
            None => Pull::Finished,
        })
    }

    /// Hands one record to librdkafka, keyed by the source account.
    fn produce(&self, producer: &KafkaProducer, record: &Record) -> Result<(), KafkaError> {
        let payload = encode_transfer(&record.transfer);
        let pending = BaseRecord::to(&self.settings.topic)
            .key(record.transfer.from.as_str())
            .payload(&payload);
        txn::send(producer, pending, self.settings.transaction_timeout)
    }

    /// Waits until librdkafka holds no undelivered record (`txn::settle`
    /// says why), at most the transaction timeout.
    fn settle(&self, producer: &KafkaProducer) {
        txn::settle(producer, self.settings.transaction_timeout);
    }

    fn begin(&self, producer: &KafkaProducer) -> Result<(), ProducerError> {
        self.bounded("begin_transaction", self.settings.call_timeout, || {
            producer.begin_transaction()
        })
        .map_err(|error| self.failed("begin_transaction", error))
    }

    /// Commits the open transaction. On an abortable error (or a record that
    /// could not be handed over: `failure`), aborts and resends the same
    /// batch in a new transaction, up to `BATCH_ATTEMPTS_MAX` times. When a
    /// stop is requested, an aborted batch is not resent: the shutdown must
    /// end within its grace period, and nothing of the batch is visible.
    fn commit(
        &self,
        producer: &KafkaProducer,
        batch: &[Record],
        mut failure: Option<KafkaError>,
        mut opened: Instant,
    ) -> Result<(), ProducerError> {
        let records = batch.len() as u64;
        let resubmissions = batch.iter().filter(|record| record.resubmission).count() as u64;
        for attempt in 1..=BATCH_ATTEMPTS_MAX {
            let outcome = match failure.take() {
                Some(error) => Err(error),
                // Every record is acknowledged (or failed) after `settle`, so
                // the commit's own flush has nothing to wait for and its
                // timeout is the coordinator's round trip: a retriable
                // timeout while a coordinator fails over is retried.
                None => {
                    self.settle(producer);
                    self.retrying("commit_transaction", || {
                        producer.commit_transaction(self.settings.call_timeout)
                    })
                    .map_err(|failed| failed.error)
                }
            };
            let error = match outcome {
                Ok(()) => {
                    self.progress
                        .committed(records, resubmissions, opened.elapsed());
                    return Ok(());
                }
                Err(error) if classify(&error) == ErrorClass::Abortable => error,
                Err(error) => return Err(self.failed("commit_transaction", error)),
            };
            warn!(error = %chain(&error), attempt, records, "Transaction failed; aborting it.");
            self.abort(producer)?;
            if self.stop.is_set() {
                warn!(records, "Stopping: the aborted batch is not resent.");
                return Ok(());
            }
            if attempt == BATCH_ATTEMPTS_MAX {
                return Err(ProducerError::GaveUp {
                    operation: "commit_transaction",
                    attempts: BATCH_ATTEMPTS_MAX,
                    source: error,
                });
            }
            std::thread::sleep(txn::backoff(attempt));
            info!(
                records,
                attempt, "Resending the aborted batch with the same transfer ids."
            );
            self.begin(producer)?;
            opened = Instant::now();
            failure = batch
                .iter()
                .find_map(|record| self.produce(producer, record).err());
        }
        unreachable!("the last attempt returns")
    }

    fn abort(&self, producer: &KafkaProducer) -> Result<(), ProducerError> {
        // Bounded: aborting waits for outstanding records, which are
        // delivered or failed within message.timeout.ms.
        self.retrying("abort_transaction", || {
            producer.abort_transaction(self.settings.call_timeout)
        })
        .map_err(|failed| self.failed(failed.step, failed.error))?;
        self.progress.aborted();
        Ok(())
    }

    /// Without transactions: fails if the broker refused any record so far,
    /// and publishes how many it acknowledged.
    fn check_deliveries(&self, producer: &KafkaProducer) -> Result<(), ProducerError> {
        let deliveries = producer.context();
        let failed = deliveries.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let reason = deliveries
                .first_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .unwrap_or_default();
            error!(failed, reason = %reason, "Records were not delivered.");
            return Err(ProducerError::Undelivered {
                count: failed,
                reason,
            });
        }
        let delivered = deliveries.delivered.load(Ordering::Relaxed);
        self.progress
            .delivered(delivered, self.resubmissions_sent.min(delivered));
        Ok(())
    }

    /// Calls `call` again while it fails with a retriable error
    /// (`txn::retrying`), each try bounded by the watchdog.
    fn retrying(
        &self,
        step: &'static str,
        mut call: impl FnMut() -> KafkaResult<()>,
    ) -> Result<(), Failed> {
        txn::retrying(
            step,
            || self.bounded(step, self.settings.call_timeout, &mut call),
            |error, attempt| {
                warn!(error = %chain(error), attempt, "Retriable Kafka error; retrying.");
            },
        )
    }

    /// The error that ends the run after `operation` failed for good; logged
    /// here, once, at ERROR since the operator must look.
    fn failed(&self, operation: &'static str, source: KafkaError) -> ProducerError {
        let class = classify(&source);
        error!(
            operation,
            class = class.name(),
            transactional_id = self.settings.transactional_id.as_deref(),
            error = %chain(&source),
            "Kafka call failed; the producer stops."
        );
        match class {
            ErrorClass::Retriable => ProducerError::GaveUp {
                operation,
                attempts: txn::RETRIES_MAX,
                source,
            },
            ErrorClass::Abortable => ProducerError::Abortable {
                operation,
                transactional_id: self.settings.transactional_id.clone(),
                source,
            },
            ErrorClass::Fatal => ProducerError::Fatal {
                operation,
                transactional_id: self.settings.transactional_id.clone(),
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_spaces_records_and_bounds_catching_up() {
        let start = Instant::now();
        let mut pacer = Pacer::new(10, start);
        assert_eq!(pacer.next_slot(start), start);
        pacer.advance();
        assert_eq!(pacer.next_slot(start), start + Duration::from_millis(100));
        let late = start + Duration::from_secs(10);
        assert_eq!(pacer.next_slot(late), late - CATCH_UP_MAX);

        let mut unlimited = Pacer::new(0, start);
        unlimited.advance();
        assert_eq!(unlimited.next_slot(late), late);
    }
}
