//! The exactly-once protocol of one shard (DESIGN.md, "The exactly-once
//! protocol"), run on a dedicated thread because every transactional call of
//! rdkafka blocks.
//!
//! Per batch: poll (bounded) -> `process_batch` (pure) -> begin -> produce
//! outcomes, credits, dead letters -> ONE durable sled write with the
//! pending record -> offsets into the transaction -> commit -> the batch is
//! visible to queries. The pending record stays on disk until the next write
//! replaces it or an idle round clears it; recovery resolves it after a crash.
//!
//! # Layout
//!
//! One `Shard`, its `impl` spread over one file per concern:
//!
//! - `mod.rs`: the `Shard` and the state it shares with the HTTP API
//!   (`Shared`, `Beat`), the thread body `run`, the loop `serve` (poll,
//!   settle, the clients' fatal state) and the Kafka clients' context.
//! - `start`: start-up and recovery: the store opened, the fenced
//!   producer, the committed offsets and their committers, the recovery
//!   rule acted on.
//! - `batch`: a batch processed, and its transaction: `transact`, what
//!   follows a commit, an interruption, an abort; every transactional call
//!   of the loop goes through `attempt`, bounded by the watchdog.
//! - `emit`: the records a transaction produces: outcomes, credits, dead
//!   letters, marks, the changelog.
//! - `heartbeat`: between batches: idle partitions, marks, stuck reports,
//!   catching up on credits after an assignment.
//! - `group`: rebalances: the context's callback, `regroup`, and
//!   `seek_to_store`, which an abort also uses.
//!
//! Test-only faults and mutants are `crate::faults`'s; the loop calls them
//! at fixed points.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ledger::store::{Store, StoreReader};
use ledger::telemetry::chain;
use ledger::txn::{self, ErrorClass};
use ledger::watchdog::Watchdog;
use ledger_core::domain::Money;
use ledger_core::machine::InputPartition;
use ledger_core::order::Mark;
use ledger_core::recovery;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use tracing::{debug, error, info, warn};

use crate::config::Settings;
use crate::faults::{Faults, Step};
use crate::measure::{self, ErrorEvent};
use crate::Error;

mod batch;
mod emit;
mod group;
mod heartbeat;
mod start;

use group::GroupChange;

/// The stop flag is looked at least this often while polling.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// A batch that has records ends when nothing more arrives for this long.
const IDLE_END: Duration = Duration::from_millis(5);
/// State shared between the loop thread and the HTTP API.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Recovery is done and the loop consumes.
    pub ready: AtomicBool,
    /// Set on SIGTERM: finish the open batch, then stop.
    pub stop: AtomicBool,
    /// Set once recovery is done; queries before that get 503.
    pub reader: OnceLock<StoreReader>,
    /// The input partitions the shard owns now (`Shard::owned`), which
    /// `/v1/stats` reports so that clients route by ownership, not by an
    /// ordinal: with group assignment each rebalance changes them.
    owned: Mutex<Vec<i32>>,
    /// When the loop last showed progress, for `/healthz`.
    pub beat: Beat,
}

/// When the shard's loop last completed an iteration (or, restoring
/// partitions from the changelog, read some), as milliseconds since the
/// process's first beat plus one; 0 before the loop has begun. An atomic,
/// not a lock: the loop beats every iteration and restores on every read.
#[derive(Debug, Default)]
pub(crate) struct Beat(AtomicU64);

impl Beat {
    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    pub fn now(&self) {
        let since = Beat::epoch().elapsed().as_millis();
        self.0.store(
            u64::try_from(since).unwrap_or(u64::MAX - 1) + 1,
            Ordering::Release,
        );
    }

    /// How long ago the last beat was; `None` before the first.
    pub fn since(&self) -> Option<Duration> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            at => Some(
                Beat::epoch()
                    .elapsed()
                    .saturating_sub(Duration::from_millis(at - 1)),
            ),
        }
    }
}

impl Shared {
    /// The partitions the shard owns now, ascending.
    pub fn owned(&self) -> Vec<i32> {
        // A panic while holding it is a panic of the loop, which stops.
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Routes librdkafka's logs and errors into `tracing`. librdkafka calls a
/// lost connection an error; here ERROR means "possible data loss or
/// operator action", which the protocol's own checks decide, so client-level
/// events are WARN at most.
#[derive(Default)]
struct KafkaContext {
    /// The group's last change of this consumer's partitions (group
    /// assignment only), for the loop to act on once `poll` returns.
    group: Mutex<Option<GroupChange>>,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                warn!(target: "librdkafka", message = line, facility);
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", message = line, facility);
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", message = line, facility),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        report(ErrorEvent::Client, "client", &error, reason);
    }
}

impl ProducerContext for KafkaContext {
    type DeliveryOpaque = ();

    /// A failed delivery fails the transaction's commit, which is where it
    /// is handled (and logged); nothing to do per record.
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// Logs an error event and counts it, in one place.
fn report(
    event: ErrorEvent,
    step: &'static str,
    error: &(dyn std::error::Error + 'static),
    what: &str,
) {
    measure::error(event);
    let class = event.name();
    if event.needs_operator() {
        error!(message = what, class, step, error = %chain(error));
    } else {
        warn!(message = what, class, step, error = %chain(error));
    }
}

/// One consumed record, copied out of the consumer's buffers so that the
/// batch does not borrow the consumer while the loop uses it.
struct Polled {
    at: InputPartition,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// The shard's thread body: start (with recovery), then batches until the
/// stop flag is set or a fatal error.
pub(crate) fn run(settings: Settings, faults: Faults, shared: Arc<Shared>) -> Result<(), Error> {
    let Some(mut shard) = Shard::start(settings, faults, Arc::clone(&shared))? else {
        return Ok(());
    };
    let result = shard.serve();
    shared.ready.store(false, Ordering::Release);
    measure::ready(false);
    result
}

struct Shard {
    settings: Settings,
    /// Test-only faults, called at fixed points; all off in production.
    faults: Faults,
    shared: Arc<Shared>,
    /// Cuts off a transactional call that overruns its bound (see
    /// `ledger::watchdog`): the process exits for a restart.
    watchdog: Watchdog,
    store: Store,
    consumer: BaseConsumer<KafkaContext>,
    producer: BaseProducer<KafkaContext>,
    /// The group whose offsets the transactions commit.
    group: ConsumerGroupMetadata,
    /// Non-empty batches polled by this incarnation, for failure injection.
    batches: u64,
    /// Transactions begun by this incarnation, for deliberate aborts.
    transactions: u64,
    /// Sum of the committed balances, kept batch by batch for the gauge.
    balance_sum: Money,
    /// Reads the input's end including open transactions, which the
    /// read_committed consumer cannot see: a partition with an open
    /// transaction is not idle.
    watcher: BaseConsumer,
    /// The marks this incarnation published, by the partition they speak
    /// for and the `ledger-credits` partition they went to.
    published: BTreeMap<(i32, i32), Mark>,
    /// The partitions this shard owns now, of both input topics.
    owned: Vec<i32>,
    /// With group assignment: the partitions whose state sled holds, as
    /// far as this incarnation knows (`None` until its first assignment).
    held: Option<BTreeSet<i32>>,
    last_heartbeat: Instant,
    last_stuck_report: Instant,
    /// The next batch's first records, read while the last batch's records
    /// were being acknowledged (see `Shard::settle`), and what ended that
    /// reading if it was an error.
    ahead: Vec<Polled>,
    ahead_failed: Option<Error>,
    /// After a group assignment, each owned partition of `ledger-credits`
    /// and its end then (`None` until known): until every credit below it
    /// is processed, a credit between two of the shard's own partitions,
    /// sent when they had other owners, may still be on its way, and their
    /// live state proves no shortage (`Tick::catching_up`).
    credits_due: BTreeMap<i32, Option<i64>>,
    /// While catching up: when the shard last sent its own partitions its
    /// marks, the barrier whose reading back proves each of them read past
    /// its end (see `Shard::heartbeat`).
    last_barrier: Option<Instant>,
    /// Caught up since the last heartbeat: the shard's marks to its own
    /// partitions, read back, are the batch that decides what waited.
    wake_own: bool,
}

impl Shard {
    /// The only place `owned` changes, so that the HTTP API's copy in
    /// `Shared` never lags behind it.
    fn set_owned(&mut self, owned: Vec<i32>) {
        self.shared
            .owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&owned);
        self.owned = owned;
    }

    fn set_ready(&self) {
        self.shared.ready.store(true, Ordering::Release);
        measure::ready(true);
        info!(
            message = "Shard ready.",
            shard = %self.settings.transactional_id,
            partitions = ?self.owned,
            offsets = %recovery::show(self.store.offsets()),
        );
    }

    fn serve(&mut self) -> Result<(), Error> {
        while !self.shared.stop.load(Ordering::Acquire) {
            self.shared.beat.now();
            self.check_fatal()?;
            let polled = self.poll_batch()?;
            let change = self.consumer.context().group_change().take();
            if let Some(change) = change {
                // Whatever was polled may belong to partitions given away,
                // or start past where the new assignment is positioned:
                // dropped, and read again after the seek to sled's offsets.
                self.regroup(change)?;
                continue;
            }
            if polled.is_empty() {
                // Idle: the pending record's batch is committed; clearing it
                // now makes a later restart a plain Normal start.
                if self.store.pending().is_some() {
                    self.faults.check(Step::BeforeClearPending, self.batches);
                    self.store.clear_pending()?;
                }
                self.heartbeat()?;
                continue;
            }
            self.batches += 1;
            self.faults.check(Step::AfterPoll, self.batches);
            self.process(&polled)?;
            // Also when busy: a partition without input on a busy shard
            // must not hold back the others' shortages.
            self.heartbeat()?;
        }
        if self.store.pending().is_some() {
            self.faults.check(Step::BeforeClearPending, self.batches);
            self.store.clear_pending()?;
        }
        self.store.flush()?;
        info!(
            message = "Shard stopped cleanly.",
            shard = %self.settings.transactional_id,
            offsets = %recovery::show(self.store.offsets()),
        );
        Ok(())
    }

    /// Stops on librdkafka's fatal state of either client. librdkafka
    /// reports it once, through the error callback, and the client then
    /// does nothing more: a static consumer fenced by its own rejoin (seen
    /// when its group coordinator's node was paused) never joins again, and
    /// the shard would poll an empty assignment forever, its loop turning
    /// and `/healthz` green. A new incarnation joins afresh.
    fn check_fatal(&self) -> Result<(), Error> {
        let fatal = [
            ("consumer", self.consumer.client().fatal_error()),
            ("producer", self.producer.client().fatal_error()),
        ];
        for (client, fatal) in fatal {
            if let Some((code, reason)) = fatal {
                let error = KafkaError::Global(code);
                report(
                    ErrorEvent::Kafka(ErrorClass::Fatal),
                    client,
                    &error,
                    "A Kafka client is in its fatal state: exiting; the next incarnation starts a new one.",
                );
                error!(message = "librdkafka's reason.", client, reason = %reason);
                return Err(Error::Kafka {
                    step: "a client's fatal state",
                    error,
                });
            }
        }
        Ok(())
    }

    /// Polls until `batch_records` records or `batch_time`, or the stop flag,
    /// starting from the records read ahead.
    fn poll_batch(&mut self) -> Result<Vec<Polled>, Error> {
        if let Some(error) = self.ahead_failed.take() {
            return Err(error);
        }
        let deadline = Instant::now() + self.settings.batch_time;
        let mut batch = std::mem::take(&mut self.ahead);
        while batch.len() < self.settings.batch_records && !self.shared.stop.load(Ordering::Acquire)
        {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Once the batch has records, a fetch queue found empty for
            // IDLE_END ends it: waiting out the window only adds latency.
            let slice = if batch.is_empty() {
                POLL_SLICE
            } else {
                IDLE_END
            };
            let message = self.consumer.poll((deadline - now).min(slice));
            if self.consumer.context().group_change().is_some() {
                break;
            }
            match message {
                None if !batch.is_empty() => break,
                None => {}
                Some(message) => batch.extend(take(&self.settings, message)?),
            }
        }
        Ok(batch)
    }

    /// Serves delivery reports until nothing is in flight (`txn::settle`
    /// says why), bounded by the transaction timeout, and meanwhile reads
    /// the next batch's records, which the wait would otherwise leave for
    /// after the commit: what they will be does not depend on this
    /// transaction's outcome. A rebalance seen meanwhile stops the reading;
    /// the loop acts on it after the commit, as on any other.
    fn settle(&mut self) {
        let Shard {
            settings,
            consumer,
            producer,
            ahead,
            ahead_failed,
            ..
        } = self;
        txn::settle_while(producer, settings.transaction_timeout, || {
            if ahead.len() >= settings.batch_records
                || ahead_failed.is_some()
                || consumer.context().group_change().is_some()
            {
                return false;
            }
            match consumer
                .poll(Duration::ZERO)
                .map(|message| take(settings, message))
            {
                None => false,
                Some(Ok(polled)) => {
                    ahead.extend(polled);
                    true
                }
                Some(Err(error)) => {
                    *ahead_failed = Some(error);
                    false
                }
            }
        });
    }
}

/// A polled message as the batch keeps it; an error is logged, and ends
/// the loop only when fatal.
fn take(
    settings: &Settings,
    message: KafkaResult<BorrowedMessage<'_>>,
) -> Result<Option<Polled>, Error> {
    match message {
        Ok(message) => Ok(Some(Polled {
            at: InputPartition {
                source: settings.source_of(message.topic()),
                partition: message.partition(),
            },
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        })),
        Err(error @ KafkaError::MessageConsumptionFatal(_)) => {
            report(
                ErrorEvent::Kafka(ErrorClass::Fatal),
                "poll",
                &error,
                "The consumer failed fatally.",
            );
            Err(Error::Kafka {
                step: "poll",
                error,
            })
        }
        Err(error) => {
            report(
                ErrorEvent::Consumer,
                "poll",
                &error,
                "Consuming failed; polling on.",
            );
            Ok(None)
        }
    }
}

/// The shard's clock for held transfers, ms since the epoch.
fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
