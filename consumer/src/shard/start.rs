//! Start-up: the store opened, the previous incarnation fenced by
//! `init_transactions`, and the recovery rule acted on against the group's
//! committed offsets (restoring from the changelog what no batch explains),
//! before the partitions are assigned and the shard is ready.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::kafka;
use ledger::store::{Stamp, Store, StoreError, StoreReader};
use ledger::telemetry::chain;
use ledger::txn::{self, ErrorClass, Failed};
use ledger::watchdog::Watchdog;
use ledger_core::domain::Money;
use ledger_core::machine::{InputPartition, Offsets, Source};
use ledger_core::recovery::{self, PendingOffsets, Recovery};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::BaseProducer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::{Ownership, Settings};
use crate::faults::Faults;
use crate::measure::{self, ErrorEvent};
use crate::{restore, Error};

use super::{report, Beat, KafkaContext, Shard, Shared};

/// Start-up waits longer than a call in a transaction: the broker may
/// still be starting. A start gives up after `STARTUP_TIMEOUT` and the
/// supervisor restarts it; one call of it waits at most
/// `STARTUP_CALL_TIMEOUT`, so that a stop is seen in between.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
pub(super) const STARTUP_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Shard {
    /// Opens the store, fences the previous incarnation, recovers and
    /// assigns the partitions. `None`: stopped before it was done.
    pub(super) fn start(
        settings: Settings,
        faults: Faults,
        shared: Arc<Shared>,
    ) -> Result<Option<Shard>, Error> {
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
        let Some(owned) = recover_owned(&mut store, &consumer, &settings, &shared)? else {
            return Ok(None);
        };
        let group = group_metadata(&consumer)?;
        let reader = store.reader();
        let watcher = end_watcher(&settings)?;
        let mut shard = Shard {
            settings,
            faults,
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
            last_barrier: None,
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
    pub(super) fn sum_balances(&mut self) -> Result<(), Error> {
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
}

/// Recovery by ownership: with ordinals, the owned partitions recovered
/// against their committed offsets; with group assignment, what sled holds
/// settled, and nothing owned until the group assigns partitions. `None`:
/// stopped first.
fn recover_owned(
    store: &mut Store,
    consumer: &BaseConsumer<KafkaContext>,
    settings: &Settings,
    shared: &Shared,
) -> Result<Option<Vec<i32>>, Error> {
    match &settings.ownership {
        Ownership::Ordinal(owned) => {
            let Some(committed) = fetch_committed(consumer, settings, owned, shared)? else {
                return Ok(None);
            };
            recover(store, &committed, settings, owned, &shared.beat)?;
            Ok(Some(owned.clone()))
        }
        Ownership::Group { .. } => {
            if !settle_leftovers(store, consumer, settings, shared)? {
                return Ok(None);
            }
            // Nothing until the group assigns partitions.
            Ok(Some(Vec::new()))
        }
    }
}

/// The consumer that reads the input's end including open transactions
/// (`Shard::watcher`).
fn end_watcher(settings: &Settings) -> Result<BaseConsumer, Error> {
    kafka::client_config(&settings.bootstrap_servers)
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(|error| Error::Kafka {
            step: "creating the end-of-input watcher",
            error,
        })
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
pub(super) fn fetch_committed(
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
pub(super) fn group_metadata(
    consumer: &BaseConsumer<KafkaContext>,
) -> Result<ConsumerGroupMetadata, Error> {
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
pub(super) struct Committed {
    /// A partition without a committed offset has no entry, as recovery
    /// expects.
    pub(super) offsets: Offsets,
    /// The metadata of each committed offset: `kafka::committer_tag` of
    /// the shard whose transaction committed it, empty from anything else.
    committers: BTreeMap<InputPartition, String>,
}

impl Committed {
    /// The stamp committed with `partition`'s offsets: the version of its
    /// state that goes with them.
    pub(super) fn stamp(&self, partition: i32) -> Option<Stamp> {
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
