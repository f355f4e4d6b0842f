//! The exactly-once protocol of one shard (DESIGN.md, "The exactly-once
//! protocol"), run on a dedicated thread because every transactional call of
//! rdkafka blocks.
//!
//! Per batch: poll (bounded) -> `process_batch` (pure) -> begin -> produce
//! outcomes, credits, dead letters -> ONE durable sled write with the
//! pending record -> offsets into the transaction -> commit -> the batch is
//! visible to queries. The pending record stays on disk until the next write
//! replaces it or an idle round clears it; recovery resolves it after a crash.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ledger::kafka;
use ledger::store::{self, Change, Stamp, Store, StoreError, StoreReader, WriteReport};
use ledger::telemetry::chain;
use ledger::txn::{self, ErrorClass, Failed};
use ledger::watchdog::Watchdog;
use ledger_core::domain::{Decision, Money, OutcomeKind, RejectReason, TransferId};
use ledger_core::machine::{
    process_batch_at, BatchEffects, InputPartition, InputRecord, LedgerView, Offsets, Output,
    Source, Tick,
};
use ledger_core::order::Mark;
use ledger_core::recovery::{self, PendingOffsets, Recovery};
use ledger_core::wire;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Message, OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::config::{Ownership, Settings};
use crate::faults::{Mutant, Step};
use crate::measure::{self, ErrorEvent};
use crate::{restore, Error};

/// Start-up waits longer than a call in a transaction: the broker may
/// still be starting. A start gives up after `STARTUP_TIMEOUT` and the
/// supervisor restarts it; one call of it waits at most
/// `STARTUP_CALL_TIMEOUT`, so that a stop is seen in between.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
const STARTUP_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The stop flag is looked at least this often while polling.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// A batch that has records ends when nothing more arrives for this long.
const IDLE_END: Duration = Duration::from_millis(5);
/// A shard looks this often, between batches, whether the floors of its
/// idle partitions may jump and its marks need publishing (see
/// `ledger_core::order`): about what a shortage elsewhere waits for, beyond
/// a credits round trip, when input stops.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// A held transfer older than this is reported, with the partitions that
/// hold it back, at most every `STUCK_REPORT_EVERY`.
const STUCK_AFTER: Duration = Duration::from_secs(5);
const STUCK_REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long the heartbeat waits for a partition's end; a partition whose
/// end cannot be read in time counts as not idle until the next beat.
const END_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

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

/// What a rebalance did to the shard's partitions.
#[derive(Debug)]
enum GroupChange {
    /// Everything was taken away (the eager protocol, before every
    /// assignment).
    Revoked,
    /// The new assignment: (topic, partition) of both input topics.
    Assigned(Vec<(String, i32)>),
}

impl KafkaContext {
    fn group_change(&self) -> std::sync::MutexGuard<'_, Option<GroupChange>> {
        // A panic while holding it is a panic of the loop, which stops.
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
    }
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

impl ConsumerContext for KafkaContext {
    /// Runs inside `poll`, on the loop's thread, between transactions or
    /// while a batch settles (reading ahead): librdkafka has (un)assigned
    /// the partitions; the loop acts on the change once no transaction is
    /// open.
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let change = match rebalance {
            Rebalance::Assign(list) => GroupChange::Assigned(
                list.elements()
                    .iter()
                    .map(|element| (element.topic().to_owned(), element.partition()))
                    .collect(),
            ),
            Rebalance::Revoke(_) => GroupChange::Revoked,
            Rebalance::Error(error) => {
                report(
                    ErrorEvent::Consumer,
                    "rebalance",
                    error,
                    "The group failed to rebalance; it tries again.",
                );
                return;
            }
        };
        *self.group_change() = Some(change);
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

/// Why a transaction did not commit.
enum Interrupted {
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

/// One consumed record, copied out of the consumer's buffers so that the
/// batch does not borrow the consumer while the loop uses it.
struct Polled {
    at: InputPartition,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// What a committed batch cost, for metrics.
struct BatchCost {
    flush: Duration,
    /// Change of this shard's sum of balances.
    delta: Money,
}

/// The shard's thread body: start (with recovery), then batches until the
/// stop flag is set or a fatal error.
pub(crate) fn run(settings: Settings, shared: Arc<Shared>) -> Result<(), Error> {
    let Some(mut shard) = Shard::start(settings, Arc::clone(&shared))? else {
        return Ok(());
    };
    let result = shard.serve();
    shared.ready.store(false, Ordering::Release);
    measure::ready(false);
    result
}

struct Shard {
    settings: Settings,
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
    /// Caught up since the last heartbeat: the shard's marks to its own
    /// partitions, read back, are the batch that decides what waited.
    wake_own: bool,
}

impl Shard {
    /// Opens the store, fences the previous incarnation, recovers and
    /// assigns the partitions. `None`: stopped before it was done.
    fn start(settings: Settings, shared: Arc<Shared>) -> Result<Option<Shard>, Error> {
        let mut store = Store::open(&settings.data_dir, settings.store)?;
        info!(
            message = "Ledger opened.",
            path = %settings.data_dir.display(),
            shard = %settings.transactional_id,
            ownership = ?settings.ownership,
            offsets = %recovery::show(store.offsets()),
            pending = store.pending().is_some(),
        );
        let watchdog = Watchdog::exiting(&settings.transactional_id).map_err(Error::Thread)?;
        let Some(producer) = fenced_producer(&settings, &shared, &watchdog)? else {
            return Ok(None);
        };
        let consumer = shard_consumer(&settings)?;
        let owned = match &settings.ownership {
            Ownership::Ordinal(owned) => {
                let Some(committed) = fetch_committed(&consumer, &settings, owned, &shared)? else {
                    return Ok(None);
                };
                recover(&mut store, &committed, &settings, owned, &shared.beat)?;
                owned.clone()
            }
            Ownership::Group { .. } => {
                if !settle_leftovers(&mut store, &consumer, &settings, &shared)? {
                    return Ok(None);
                }
                // Nothing until the group assigns partitions.
                Vec::new()
            }
        };
        let group = group_metadata(&consumer)?;
        let reader = store.reader();
        let watcher = kafka::client_config(&settings.bootstrap_servers)
            .set("isolation.level", "read_uncommitted")
            .create()
            .map_err(|error| Error::Kafka {
                step: "creating the end-of-input watcher",
                error,
            })?;
        let mut shard = Shard {
            settings,
            shared,
            watchdog,
            store,
            consumer,
            producer,
            group,
            batches: 0,
            transactions: 0,
            balance_sum: Money::ZERO,
            watcher,
            published: BTreeMap::new(),
            owned: Vec::new(),
            held: None,
            last_heartbeat: Instant::now(),
            last_stuck_report: Instant::now(),
            ahead: Vec::new(),
            ahead_failed: None,
            credits_due: BTreeMap::new(),
            wake_own: false,
        };
        shard.set_owned(owned);
        shard.assign_and_open(reader)?;
        // After the shard is ready: the sum only feeds a gauge, and scanning
        // a million balances would double the restart time.
        shard.sum_balances()?;
        Ok(Some(shard))
    }

    /// The sum of the committed balances, for the gauge, from scratch.
    fn sum_balances(&mut self) -> Result<(), Error> {
        let balances = self.store.reader().balances().map_err(|error| {
            Error::Store(StoreError::Sled {
                path: self.settings.data_dir.clone(),
                source: error,
            })
        })?;
        self.balance_sum = balances.into_iter().map(|(_, balance)| balance).sum();
        measure::balance_sum(self.balance_sum);
        Ok(())
    }

    /// Assigns the owned partitions at sled's offsets (or, with group
    /// assignment, joins the group), then opens the HTTP API's queries and,
    /// once partitions are owned, readiness: recovery is done.
    fn assign_and_open(&mut self, reader: StoreReader) -> Result<(), Error> {
        // An optimisation only: without the metadata, assign finds the
        // leaders itself, later. Here and not in seek_to_store, which an
        // abort also calls, maybe with the broker gone.
        let topics = [
            self.settings.transfers_topic.as_str(),
            self.settings.credits_topic.as_str(),
        ];
        if let Err(error) = kafka::prefetch_metadata(&self.consumer, &topics, STARTUP_CALL_TIMEOUT)
        {
            warn!(
                message = "Fetching the input topics' metadata failed; assigning anyway.",
                error = %chain(&error),
            );
        }
        // A reader set twice (impossible: one start per Shared) keeps the first.
        let _ = self.shared.reader.set(reader);
        if let Ownership::Group { .. } = self.settings.ownership {
            // Partitions, and readiness, come with the first assignment.
            return self
                .consumer
                .subscribe(&topics)
                .map_err(|error| Error::Kafka {
                    step: "subscribing to the input topics",
                    error,
                });
        }
        self.seek_to_store()?;
        self.set_ready();
        Ok(())
    }

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
        let faults = self.settings.faults;
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
                    faults.check(Step::BeforeClearPending, self.batches);
                    self.store.clear_pending()?;
                }
                self.heartbeat()?;
                continue;
            }
            self.batches += 1;
            faults.check(Step::AfterPoll, self.batches);
            self.process(&polled)?;
            // Also when busy: a partition without input on a busy shard
            // must not hold back the others' shortages.
            self.heartbeat()?;
        }
        if self.store.pending().is_some() {
            faults.check(Step::BeforeClearPending, self.batches);
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

    /// Between batches: lets the floors of partitions with nothing left to read
    /// jump, and publishes marks that changed since this incarnation last
    /// published them (all of them after a restart), or whose held
    /// transfers' time is up: reading the mark back is the batch that
    /// rejects them. A transaction only when there is a mark to send.
    fn heartbeat(&mut self) -> Result<(), Error> {
        if self.last_heartbeat.elapsed() < HEARTBEAT_EVERY {
            return Ok(());
        }
        self.last_heartbeat = Instant::now();
        let now_ms = now_ms();
        let hold_max_ms = self.settings.rules.hold_max_ms;
        if self.last_stuck_report.elapsed() >= STUCK_REPORT_EVERY {
            self.last_stuck_report = Instant::now();
            self.report_stuck(now_ms);
        }
        let idle = self.idle_partitions();
        let wake_own = std::mem::take(&mut self.wake_own);
        let publish: Vec<i32> = self
            .owned
            .iter()
            .copied()
            .filter(|partition| {
                if wake_own {
                    return true;
                }
                let order = self.store.order_state(*partition);
                let marks = self.settings.rules.marks(*partition, &order);
                // Marks for this shard's own partitions are never sent.
                let unpublished = marks.is_some_and(|marks| {
                    (0..).zip(marks).any(|(destination, mark)| {
                        !self.owned.contains(&destination)
                            && self.published.get(&(*partition, destination)) != Some(&mark)
                    })
                });
                unpublished
                    || order
                        .held
                        .iter()
                        .any(|held| now_ms.saturating_sub(held.since_ms) >= hold_max_ms)
            })
            .collect();
        if idle.is_empty() && publish.is_empty() {
            return Ok(());
        }
        let tick = Tick {
            now_ms,
            idle: &idle,
            publish: &publish,
            local: &self.owned,
            catching_up: !self.credits_due.is_empty(),
        };
        let mut effects = process_batch_at(&self.store, &self.settings.rules, &[], tick)
            .expect("a batch without records refuses nothing");
        self.cover(&mut effects);
        if effects.marks.is_empty() {
            return Ok(());
        }
        self.run(&[], &effects, Instant::now())
    }

    /// Names, for each owned partition whose first held transfer has waited
    /// longer than `STUCK_AFTER`, the partitions whose marks have not yet
    /// passed it (their floor is behind it, or one of their own held
    /// transfers would pay its account): what an operator looks at when
    /// transfers expire.
    fn report_stuck(&self, now_ms: u64) {
        let rules = &self.settings.rules;
        let owned = &self.owned;
        for partition in owned {
            let order = self.store.order_state(*partition);
            let Some(first) = order.held.first() else {
                continue;
            };
            let waited_ms = now_ms.saturating_sub(first.since_ms);
            if waited_ms < STUCK_AFTER.as_millis() as u64 {
                continue;
            }
            let account = &first.transfer.from;
            let blocking: Vec<String> = (0..rules.partitions)
                .filter_map(|source| {
                    let mark = if owned.contains(&source) {
                        let state = self.store.order_state(source);
                        rules
                            .marks(source, &state)
                            .and_then(|marks| marks.into_iter().nth(*partition as usize))
                    } else {
                        order.marks.get(&source).cloned()
                    };
                    match mark {
                        Some(mark) if mark.passed(account, first.key) => None,
                        Some(mark) => Some(format!("{source} (floor {})", mark.floor.at)),
                        None => Some(format!("{source} (no mark yet)")),
                    }
                })
                .collect();
            warn!(
                message = "Transfers are held for funds until these partitions pass the first of them.",
                account = %account,
                partition = *partition,
                held = order.held.len(),
                first_held = %first.key.at,
                waited_ms,
                blocking = ?blocking,
            );
        }
    }

    /// Whether the batch `polled` must be decided as catching up: some
    /// credit that reached an owned partition of `ledger-credits` before
    /// the last assignment is not processed yet (it is neither behind the
    /// consumer's position nor done: in this batch or read ahead counts as
    /// not done, since the batch decides transfers as it reads them).
    fn catching_up(&mut self, polled: &[Polled]) -> bool {
        if self.credits_due.is_empty() {
            return false;
        }
        let topic = self.settings.credits_topic.as_str();
        let mut unprocessed: BTreeMap<i32, i64> = BTreeMap::new();
        for record in polled.iter().chain(&self.ahead) {
            if record.at.source == Source::Credits {
                let first = unprocessed.entry(record.at.partition).or_insert(i64::MAX);
                *first = (*first).min(record.offset);
            }
        }
        let positions = self.consumer.position().unwrap_or_default();
        let (watcher, store) = (&self.watcher, &self.store);
        self.credits_due.retain(|partition, end| {
            if end.is_none() {
                *end = watcher
                    .fetch_watermarks(topic, *partition, END_QUERY_TIMEOUT)
                    .ok()
                    .map(|(_, high)| high);
            }
            let Some(end) = *end else {
                return true;
            };
            let position = match positions
                .find_partition(topic, *partition)
                .map(|element| element.offset())
            {
                Some(Offset::Offset(next)) => next,
                // Nothing consumed since the assignment: where it began.
                _ => store
                    .offsets()
                    .get(&InputPartition {
                        source: Source::Credits,
                        partition: *partition,
                    })
                    .copied()
                    .unwrap_or(0),
            };
            position < end || unprocessed.get(partition).is_some_and(|first| *first < end)
        });
        if self.credits_due.is_empty() {
            info!(
                message = "Caught up with the credits sent to the owned partitions before the assignment; their own state decides shortages again.",
                partitions = ?self.owned,
            );
            self.wake_own = true;
            return false;
        }
        true
    }

    /// Owned partitions of `transactions` read to their very end: no record
    /// left, and none in an open transaction. A partition whose end cannot
    /// be read now is not idle, nor one with records read ahead.
    fn idle_partitions(&self) -> Vec<i32> {
        let positions = self.consumer.position().unwrap_or_default();
        let topic = self.settings.transfers_topic.as_str();
        let read_ahead: HashSet<i32> = self
            .ahead
            .iter()
            .filter(|polled| polled.at.source == Source::Transfers)
            .map(|polled| polled.at.partition)
            .collect();
        self.owned
            .iter()
            .copied()
            .filter(|partition| !read_ahead.contains(partition))
            .filter(|partition| {
                let Ok((low, high)) =
                    self.watcher
                        .fetch_watermarks(topic, *partition, END_QUERY_TIMEOUT)
                else {
                    return false;
                };
                let position = match positions
                    .find_partition(topic, *partition)
                    .map(|element| element.offset())
                {
                    Some(Offset::Offset(next)) => next,
                    // Nothing consumed since the assignment: where it began.
                    _ => self
                        .store
                        .offsets()
                        .get(&InputPartition {
                            source: Source::Transfers,
                            partition: *partition,
                        })
                        .copied()
                        .unwrap_or(low),
                };
                position >= high
            })
            .collect()
    }

    fn process(&mut self, polled: &[Polled]) -> Result<(), Error> {
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
        if self.settings.faults.mutant == Some(Mutant::RefuseFunded) {
            refuse_first_funded(&mut effects);
        }
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
    fn cover(&self, effects: &mut BatchEffects) {
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
    fn run(
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
        let faults = self.settings.faults;
        self.transactions += 1;
        self.attempt("begin_transaction", || self.producer.begin_transaction())?;
        self.produce(effects)?;
        faults.check(Step::AfterProduce, self.batches);
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
        // aborts on purpose).
        let write_first = faults.mutant != Some(Mutant::CommitBeforeSledWrite);
        let mut report = None;
        if write_first {
            let written_report = self.write(effects, stamp)?;
            *written = true;
            self.produce_changes(&written_report.changes)?;
            report = Some(written_report);
        }
        let offsets = self.offsets_to_commit(effects)?;
        self.send_offsets(&offsets)?;
        faults.check(Step::AfterSendOffsets, self.batches);
        if write_first && faults.abort_transaction(self.transactions) {
            return Err(Interrupted::Deliberate);
        }
        // Every record is acknowledged (or failed) here, so the commit's own
        // flush has nothing to wait for and its timeout is the coordinator's
        // round trip: a retriable timeout while a coordinator fails over is
        // retried by `attempt`. (A flush timeout would carry no
        // retriable/abortable/fatal flag: fatal, and recovery decides.)
        self.settle();
        self.attempt("commit_transaction", || {
            faults.hang("commit_transaction", self.batches);
            self.producer.commit_transaction(self.settings.call_timeout)
        })?;
        faults.check(Step::AfterCommit, self.batches);
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
        self.settings
            .faults
            .check(Step::AfterSledWrite, self.batches);
        Ok(report)
    }

    fn produce(&self, effects: &BatchEffects) -> Result<(), Failed> {
        let settings = &self.settings;
        for output in &effects.outputs {
            match output {
                Output::Outcome(outcome) => {
                    let key = match outcome.transfer_id {
                        Some(id) => id.to_string(),
                        None => format!("{}-{}", outcome.partition, outcome.offset),
                    };
                    let payload = wire::encode_outcome(outcome);
                    self.send(
                        BaseRecord::to(&settings.results_topic)
                            .key(key.as_bytes())
                            .payload(payload.as_slice()),
                    )?;
                }
                Output::Credit(credit) => {
                    // Keyed by the destination account and partitioned with
                    // the transfer producer's partitioner, the credit lands
                    // in the partition number that owns that account.
                    let payload = wire::encode_credit(credit);
                    self.send(
                        BaseRecord::to(&settings.credits_topic)
                            .key(credit.to.as_str().as_bytes())
                            .payload(payload.as_slice()),
                    )?;
                }
                Output::DeadLetter(letter) => {
                    let source = wire::record_location(
                        settings.topic(letter.at.source),
                        letter.at.partition,
                        letter.offset,
                    );
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: wire::DLQ_HEADER_REASON,
                            value: Some(letter.reason.code()),
                        })
                        .insert(Header {
                            key: wire::DLQ_HEADER_DETAIL,
                            value: Some(letter.detail.as_str()),
                        })
                        .insert(Header {
                            key: wire::DLQ_HEADER_SOURCE,
                            value: Some(source.as_str()),
                        });
                    let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&settings.dlq_topic)
                        .payload(letter.payload.as_slice())
                        .headers(headers);
                    let record = match &letter.key {
                        Some(key) => record.key(key.as_slice()),
                        None => record,
                    };
                    self.send(record)?;
                }
            }
        }
        // After the batch's credits, each on its partition: a shard that
        // reads a mark has read the credits it speaks for.
        for (destination, mark) in &effects.marks {
            let payload = wire::encode_mark(mark);
            let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&settings.credits_topic)
                .partition(*destination)
                .payload(payload.as_slice());
            self.send(record)?;
        }
        // Serve delivery reports so that the queue does not grow unbounded.
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// The batch's sled writes, each on the changelog partition of the
    /// state it changes (a removal as a tombstone), so that the changelog
    /// commits with the batch. The commit-before-write mutant writes sled
    /// after the commit, too late for the transaction: its batch has none.
    fn produce_changes(&self, changes: &[Change]) -> Result<(), Failed> {
        let Some(topic) = &self.settings.changelog_topic else {
            return Ok(());
        };
        let rules = &self.settings.rules;
        for (key, value) in changes {
            let Some(partition) = store::key_partition(key, |account| rules.partition_of(account))
            else {
                continue;
            };
            let record = BaseRecord::<[u8], [u8]>::to(topic)
                .partition(partition)
                .key(key.as_slice());
            let record = match value {
                Some(value) => record.payload(value.as_slice()),
                None => record,
            };
            self.send(record)?;
        }
        Ok(())
    }

    /// Enqueues one record, waiting (bounded) for room in a full queue.
    fn send<K, P>(&self, record: BaseRecord<'_, K, P>) -> Result<(), Failed>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        txn::send(&self.producer, record, self.settings.transaction_timeout).map_err(|error| {
            Failed {
                step: "produce",
                class: txn::classify(&error),
                error,
            }
        })
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
            self.settings
                .faults
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
        if written && self.settings.faults.mutant == Some(Mutant::SkipUndo) {
            warn!(message = "Mutant skip_undo: keeping the aborted batch in sled.");
            self.store.mark_committed();
        } else if written {
            self.store.undo_pending()?;
        }
        // Read past the batch, so read again after the seek.
        self.ahead.clear();
        if self.settings.faults.mutant == Some(Mutant::SkipSeekBack) {
            warn!(message = "Mutant skip_seek_back: not seeking back after an abort.");
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

    /// (Re)assigns every owned partition of both input topics at sled's next
    /// offsets, from the beginning where sled has none. Assigning anew also
    /// discards whatever the consumer had fetched past those offsets. With
    /// group assignment the group assigns: the partitions are sought there
    /// instead, which discards the same.
    fn seek_to_store(&self) -> Result<(), Error> {
        let mut list = TopicPartitionList::new();
        for source in [Source::Transfers, Source::Credits] {
            for partition in &self.owned {
                let at = InputPartition {
                    source,
                    partition: *partition,
                };
                let offset = match self.store.offsets().get(&at) {
                    Some(next) => Offset::Offset(*next),
                    None => Offset::Beginning,
                };
                list.add_partition_offset(self.settings.topic(source), *partition, offset)
                    .map_err(|error| Error::Kafka {
                        step: "assign",
                        error,
                    })?;
            }
        }
        if let Ownership::Ordinal(_) = self.settings.ownership {
            return self.consumer.assign(&list).map_err(|error| Error::Kafka {
                step: "assign",
                error,
            });
        }
        let kafka_error = |error| Error::Kafka {
            step: "seeking to sled's offsets",
            error,
        };
        let sought = self
            .consumer
            .seek_partitions(list, STARTUP_CALL_TIMEOUT)
            .map_err(kafka_error)?;
        for element in sought.elements() {
            element.error().map_err(kafka_error)?;
        }
        Ok(())
    }

    /// Acts on a rebalance (group assignment). The loop acts on one only
    /// between transactions, so the last batch is committed, or aborted and
    /// undone: its pending record is history. Partitions given away are
    /// dropped from sled; partitions taken whose state in sled is not the
    /// committed one (new here, or changed by another shard since) are
    /// restored from the changelog; then sled's offsets equal the group's
    /// for every owned partition, as at any start. Queries answer 503
    /// meanwhile. A shard of an older generation cannot commit: the group
    /// metadata the transactions send is this generation's (KIP-447).
    fn regroup(&mut self, change: GroupChange) -> Result<(), Error> {
        self.shared.ready.store(false, Ordering::Release);
        measure::ready(false);
        self.store.clear_pending()?;
        let assigned = match change {
            GroupChange::Revoked => {
                info!(message = "Partitions revoked by the group.", partitions = ?self.owned);
                self.set_owned(Vec::new());
                return Ok(());
            }
            GroupChange::Assigned(assigned) => assigned,
        };
        let started = Instant::now();
        let of = |source: Source| -> BTreeSet<i32> {
            assigned
                .iter()
                .filter(|(topic, _)| self.settings.source_of(topic) == source)
                .map(|(_, partition)| *partition)
                .collect()
        };
        let (transfers, credits) = (of(Source::Transfers), of(Source::Credits));
        if transfers != credits {
            return Err(Error::SplitAssignment {
                transfers: transfers.into_iter().collect(),
                credits: credits.into_iter().collect(),
            });
        }
        let owned: Vec<i32> = transfers.iter().copied().collect();
        let rules = &self.settings.rules;
        let partition_of = |account: &_| rules.partition_of(account);
        // Until this incarnation knows, sled may hold any partition.
        let dropped: Vec<i32> = match &self.held {
            Some(held) => held.difference(&transfers).copied().collect(),
            None => (0..rules.partitions)
                .filter(|partition| !transfers.contains(partition))
                .collect(),
        };
        self.store.drop_partitions(&dropped, partition_of)?;
        self.held = Some(transfers);
        let Some(committed) =
            fetch_committed(&self.consumer, &self.settings, &owned, &self.shared)?
        else {
            return Ok(());
        };
        let of_partition = |offsets: &Offsets, partition: i32| -> Vec<(InputPartition, i64)> {
            offsets
                .iter()
                .filter(|(at, _)| at.partition == partition)
                .map(|(at, next)| (*at, *next))
                .collect()
        };
        // A partition's copy here is the committed one if its offsets and
        // its stamp are: offsets alone do not tell, as a batch elsewhere can
        // change the partition without consuming from it (a credit applied
        // locally, order state).
        let mut stale = Vec::new();
        for partition in &owned {
            if of_partition(self.store.offsets(), *partition)
                != of_partition(&committed.offsets, *partition)
                || self.store.stamp(*partition)? != committed.stamp(*partition)
            {
                stale.push(*partition);
            }
        }
        if !stale.is_empty() {
            let Some(topic) = &self.settings.changelog_topic else {
                return Err(Error::RecoveryRefused(format!(
                    "partitions {stale:?} were assigned to this shard, which does not hold their \
                     committed state, and the changelog is off (--changelog-topic is empty): \
                     group assignment needs the changelog"
                )));
            };
            info!(
                message = "Restoring assigned partitions from the changelog.",
                partitions = ?stale,
            );
            let restore = self.store.restore_partitions(&stale, partition_of)?;
            restore::restore(restore, &self.settings, topic, &stale, &self.shared.beat)?;
        }
        let held: Offsets = self
            .store
            .offsets()
            .iter()
            .filter(|(at, _)| owned.contains(&at.partition))
            .map(|(at, next)| (*at, *next))
            .collect();
        if held != committed.offsets {
            return Err(Error::RecoveryRefused(format!(
                "restored partitions {stale:?} from the changelog, sled has {}, still not Kafka's \
                 {}: the changelog does not hold the committed state",
                recovery::show(&held),
                recovery::show(&committed.offsets)
            )));
        }
        // What was sent to these partitions before the assignment is read
        // before their own state proves a shortage (see `catching_up`).
        self.credits_due = owned.iter().map(|partition| (*partition, None)).collect();
        self.set_owned(owned);
        self.published.clear();
        self.group = group_metadata(&self.consumer)?;
        self.seek_to_store()?;
        self.sum_balances()?;
        info!(
            message = "Partitions assigned by the group.",
            partitions = ?self.owned,
            restored = ?stale,
            dropped = ?dropped,
            seconds = started.elapsed().as_secs_f64(),
        );
        if !self.owned.is_empty() {
            self.set_ready();
        }
        Ok(())
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

/// The shard's transactional producer, once `init_transactions` has fenced
/// any older incarnation with the same transactional.id and completed or
/// aborted its open transaction, so that the committed offsets read next
/// can no longer move. `None`: stopped first.
fn fenced_producer(
    settings: &Settings,
    shared: &Shared,
    watchdog: &Watchdog,
) -> Result<Option<BaseProducer<KafkaContext>>, Error> {
    let producer: BaseProducer<KafkaContext> = kafka::transactional_producer_config(
        &settings.bootstrap_servers,
        &settings.transactional_id,
        settings.transaction_timeout,
    )
    .create_with_context(KafkaContext::default())
    .map_err(|error| Error::Kafka {
        step: "creating the producer",
        error,
    })?;
    let init = startup_retry(shared, "init_transactions", |left| {
        let timeout = settings.transaction_timeout.min(left);
        watchdog.bounded(
            "init_transactions",
            timeout + kafka::CALL_CUTOFF_GRACE,
            || txn::init_transactions(&producer, &settings.results_topic, timeout),
        )
    })?;
    Ok(init.map(|()| producer))
}

/// The shard's consumer. With group assignment it joins the group with
/// the range assignor: for two topics of equal partition counts, it gives
/// partition p of both to the same member, which `regroup` checks.
fn shard_consumer(settings: &Settings) -> Result<BaseConsumer<KafkaContext>, Error> {
    let mut config =
        kafka::read_committed_consumer_config(&settings.bootstrap_servers, &settings.group_id);
    if let Ownership::Group {
        max_poll_interval,
        session_timeout,
    } = settings.ownership
    {
        config
            .set("partition.assignment.strategy", "range")
            // Static membership: a restarted shard takes its member's place
            // and partitions back at once, with no rebalance, instead of the
            // group waiting out the dead incarnation's session; the group
            // fences the old one (FENCED_INSTANCE_ID) like a new generation.
            .set("group.instance.id", &settings.transactional_id)
            .set(
                "max.poll.interval.ms",
                max_poll_interval.as_millis().to_string(),
            )
            .set(
                "session.timeout.ms",
                session_timeout.as_millis().to_string(),
            );
    }
    config
        .create_with_context(KafkaContext::default())
        .map_err(|error| Error::Kafka {
            step: "creating the consumer",
            error,
        })
}

/// The group's committed offsets of `partitions`, retried like a start-up
/// call. `None`: stopped first.
fn fetch_committed(
    consumer: &BaseConsumer<KafkaContext>,
    settings: &Settings,
    partitions: &[i32],
    shared: &Shared,
) -> Result<Option<Committed>, Error> {
    startup_retry(shared, "fetching committed offsets", |left| {
        committed_offsets(consumer, settings, partitions, left)
    })
}

/// The consumer's group metadata, sent with each transaction's offsets: with
/// group assignment it carries the generation, which fences a shard that
/// the group has moved on from.
fn group_metadata(consumer: &BaseConsumer<KafkaContext>) -> Result<ConsumerGroupMetadata, Error> {
    consumer.group_metadata().ok_or(Error::Kafka {
        step: "reading the consumer group metadata",
        error: KafkaError::Subscription("no group metadata".to_owned()),
    })
}

/// Group assignment, at start: what this incarnation finds in sled before it
/// knows its partitions. A pending batch is resolved against the committed
/// offsets of the partitions sled holds; if they match neither side of it
/// (another shard has moved them on since), it is undone and those
/// partitions are dropped, to be restored if assigned. A restore cut short
/// leaves nothing worth keeping. `false`: stopped first.
fn settle_leftovers(
    store: &mut Store,
    consumer: &BaseConsumer<KafkaContext>,
    settings: &Settings,
    shared: &Shared,
) -> Result<bool, Error> {
    if store.restore_unfinished() {
        warn!(message = "A restore from the changelog was cut short; emptying the store.");
        store.restore()?.finish()?;
        return Ok(true);
    }
    let Some(pending) = store.pending() else {
        return Ok(true);
    };
    let partitions: Vec<i32> = pending
        .offsets_after
        .keys()
        .map(|at| at.partition)
        .collect::<BTreeSet<i32>>()
        .into_iter()
        .collect();
    let Some(committed) = fetch_committed(consumer, settings, &partitions, shared)? else {
        return Ok(false);
    };
    let decision = recovery::decide(
        Some(PendingOffsets {
            before: &pending.offsets_before,
            after: &pending.offsets_after,
        }),
        store.offsets(),
        &committed.offsets,
    );
    log_decision(&decision, store, &committed);
    match decision {
        Recovery::Normal | Recovery::KeepPending => store.clear_pending()?,
        Recovery::UndoPending => store.undo_pending()?,
        Recovery::Refuse(_) => {
            store.undo_pending()?;
            let rules = &settings.rules;
            store.drop_partitions(&partitions, |account| rules.partition_of(account))?;
        }
    }
    Ok(true)
}

/// The recovery rule's decision, with the offsets it was taken on.
fn log_decision(decision: &Recovery, store: &Store, committed: &Committed) {
    info!(
        message = "Recovery decided.",
        decision = ?decision,
        sled = %recovery::show(store.offsets()),
        kafka = %recovery::show(&committed.offsets),
    );
}

/// Acts on the recovery rule: sled's pending record against Kafka's
/// committed offsets. What no single batch explains (an empty or stale
/// directory, another deployment's, a restore cut short) is restored from
/// the changelog, and refused if the changelog does not explain it either.
fn recover(
    store: &mut Store,
    committed: &Committed,
    settings: &Settings,
    owned: &[i32],
    beat: &Beat,
) -> Result<(), Error> {
    let pending = store.pending().map(|pending| PendingOffsets {
        before: &pending.offsets_before,
        after: &pending.offsets_after,
    });
    let decision = if store.restore_unfinished() {
        Recovery::Refuse("a restore from the changelog was cut short".to_owned())
    } else {
        recovery::decide(pending, store.offsets(), &committed.offsets)
    };
    log_decision(&decision, store, committed);
    match decision {
        Recovery::Normal => {}
        Recovery::KeepPending => store.clear_pending()?,
        Recovery::UndoPending => store.undo_pending()?,
        Recovery::Refuse(reason) => {
            let Some(topic) = &settings.changelog_topic else {
                return Err(Error::RecoveryRefused(format!(
                    "{reason}; the changelog is off (--changelog-topic is empty), so nothing \
                     can restore this directory"
                )));
            };
            check_committers(committed, &settings.transactional_id)
                .map_err(|why| Error::RecoveryRefused(format!("{reason}; {why}")))?;
            warn!(
                message = "sled does not hold the committed state; restoring the owned partitions from the changelog.",
                reason = %reason,
                topic = %topic,
            );
            restore::restore(store.restore()?, settings, topic, owned, beat)?;
            if *store.offsets() != committed.offsets {
                return Err(Error::RecoveryRefused(format!(
                    "{reason}; restored from {topic}, sled has {}, still not Kafka's {}: the \
                     changelog does not hold the committed state (it was created after the \
                     ledger, or lost records); give the shard a directory that does, or reset \
                     the group's offsets",
                    recovery::show(store.offsets()),
                    recovery::show(&committed.offsets)
                )));
            }
        }
    }
    // Invariant 5, checked after acting on the decision.
    assert_eq!(
        *store.offsets(),
        committed.offsets,
        "invariant violated: after recovery sled's offsets must equal Kafka's"
    );
    Ok(())
}

/// Start-up calls (`txn::starting`), each given the time left, at most
/// `STARTUP_CALL_TIMEOUT`. `None`: the stop flag was set.
fn startup_retry<T>(
    shared: &Shared,
    step: &'static str,
    mut call: impl FnMut(Duration) -> KafkaResult<T>,
) -> Result<Option<T>, Error> {
    txn::starting(
        step,
        STARTUP_TIMEOUT,
        || shared.stop.load(Ordering::Acquire),
        |left| call(left.min(STARTUP_CALL_TIMEOUT)),
        |error, _| {
            report(
                ErrorEvent::Kafka(ErrorClass::Retriable),
                step,
                error,
                "Start-up call failed; retrying.",
            )
        },
    )
    .map_err(|Failed { step, error, .. }| {
        report(
            ErrorEvent::Kafka(ErrorClass::Fatal),
            step,
            &error,
            "Kafka refused to start the shard.",
        );
        Error::Kafka { step, error }
    })
}

/// The group's committed offsets of the owned partitions, and who
/// committed each.
struct Committed {
    /// A partition without a committed offset has no entry, as recovery
    /// expects.
    offsets: Offsets,
    /// The metadata of each committed offset: `kafka::committer_tag` of
    /// the shard whose transaction committed it, empty from anything else.
    committers: BTreeMap<InputPartition, String>,
}

impl Committed {
    /// The stamp committed with `partition`'s offsets: the version of its
    /// state that goes with them.
    fn stamp(&self, partition: i32) -> Option<Stamp> {
        self.committers
            .iter()
            .filter(|(at, _)| at.partition == partition)
            .find_map(|(_, tag)| kafka::parse_committer_tag(tag).and_then(|(_, stamp)| stamp))
    }
}

/// A restore rebuilds the committed state of partitions that another
/// process may still be processing. That is safe only when this shard's
/// `init_transactions` has fenced whoever committed them last, that is when
/// it was an incarnation of the same transactional id. A partition last
/// committed under another id is refused: its shard may still run, with a
/// shard count that gives it the partition too, and nothing would stop the
/// two from applying the same transfers.
fn check_committers(committed: &Committed, transactional_id: &str) -> Result<(), String> {
    let others: Vec<String> = committed
        .committers
        .iter()
        .filter_map(|(at, tag)| match kafka::parse_committer_tag(tag) {
            Some((id, _)) if id == transactional_id => None,
            Some((id, _)) => Some(format!("{at} by {id}")),
            None => Some(format!("{at} by something other than a shard ({tag:?})")),
        })
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(format!(
        "partitions last committed by another shard ({}); this shard is {transactional_id}: \
         restoring them could apply their transfers twice if that shard still runs. The shard \
         count (--shards) must not change while shards run, and two deployments must not share \
         the group; restore the previous --shards, or stop every shard before changing it",
        others.join(", ")
    ))
}

/// The group's committed offsets of the owned partitions, with their
/// committers.
fn committed_offsets(
    consumer: &BaseConsumer<KafkaContext>,
    settings: &Settings,
    partitions: &[i32],
    timeout: Duration,
) -> KafkaResult<Committed> {
    let mut list = TopicPartitionList::new();
    for source in [Source::Transfers, Source::Credits] {
        for partition in partitions {
            list.add_partition(settings.topic(source), *partition);
        }
    }
    let list = consumer.committed_offsets(list, timeout)?;
    let mut committed = Committed {
        offsets: Offsets::new(),
        committers: BTreeMap::new(),
    };
    for element in list.elements() {
        element.error()?;
        let at = InputPartition {
            source: settings.source_of(element.topic()),
            partition: element.partition(),
        };
        if let Offset::Offset(next) = element.offset() {
            committed.offsets.insert(at, next);
            committed
                .committers
                .insert(at, element.metadata().to_owned());
        }
    }
    Ok(committed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::domain::{AccountId, Amount, Currency, Transfer};
    use ledger_core::machine::{InputPartition, MemoryLedger, Rules, Source};
    use time::OffsetDateTime;

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
