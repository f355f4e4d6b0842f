//! Group assignment: the rebalance callback that records what the group
//! did, and `regroup`, which acts on it between transactions (partitions
//! dropped, restored from the changelog, sought to sled's offsets).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::Instant;

use ledger_core::machine::{InputPartition, Offsets, Source};
use ledger_core::recovery;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{Offset, TopicPartitionList};
use tracing::info;

use crate::config::Ownership;
use crate::measure::{self, ErrorEvent};
use crate::{restore, Error};

use super::start::{fetch_committed, group_metadata, Committed, STARTUP_CALL_TIMEOUT};
use super::{heartbeat, report, KafkaContext, Shard};

/// What a rebalance did to the shard's partitions.
#[derive(Debug)]
pub(super) enum GroupChange {
    /// Everything was taken away (the eager protocol, before every
    /// assignment).
    Revoked,
    /// The new assignment: (topic, partition) of both input topics.
    Assigned(Vec<(String, i32)>),
}

impl KafkaContext {
    pub(super) fn group_change(&self) -> std::sync::MutexGuard<'_, Option<GroupChange>> {
        // A panic while holding it is a panic of the loop, which stops.
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
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

impl Shard {
    /// (Re)assigns every owned partition of both input topics at sled's next
    /// offsets, from the beginning where sled has none. Assigning anew also
    /// discards whatever the consumer had fetched past those offsets. With
    /// group assignment the group assigns: the partitions are sought there
    /// instead, which discards the same.
    pub(super) fn seek_to_store(&self) -> Result<(), Error> {
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
    pub(super) fn regroup(&mut self, change: GroupChange) -> Result<(), Error> {
        self.shared.ready.store(false, Ordering::Release);
        measure::ready(false);
        self.store.clear_pending()?;
        match change {
            GroupChange::Revoked => {
                info!(message = "Partitions revoked by the group.", partitions = ?self.owned);
                self.set_owned(Vec::new());
                Ok(())
            }
            GroupChange::Assigned(assigned) => self.take_assignment(&assigned),
        }
    }

    /// A new assignment, in the order that keeps sled honest: drop what was
    /// given away, learn the committed offsets, restore what sled does not
    /// hold as committed, check, and only then own and read the partitions.
    fn take_assignment(&mut self, assigned: &[(String, i32)]) -> Result<(), Error> {
        let started = Instant::now();
        let transfers = self.assigned_partitions(assigned)?;
        let owned: Vec<i32> = transfers.iter().copied().collect();
        let dropped = self.drop_given_away(transfers)?;
        let Some(committed) =
            fetch_committed(&self.consumer, &self.settings, &owned, &self.shared)?
        else {
            return Ok(());
        };
        let stale = self.stale_partitions(&owned, &committed)?;
        if !stale.is_empty() {
            self.restore_stale(&stale)?;
        }
        self.check_restored(&owned, &committed, &stale)?;
        self.own_assigned(owned)?;
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

    /// The assigned partitions, which must be the same of both input
    /// topics: a shard applies a credit only on the partition that owns its
    /// account, so it owns partition p of both or of neither.
    fn assigned_partitions(&self, assigned: &[(String, i32)]) -> Result<BTreeSet<i32>, Error> {
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
        Ok(transfers)
    }

    /// Drops from sled the partitions it holds that are not `assigned`, so
    /// that a later assignment of them restores their state afresh rather
    /// than trust a copy other shards have moved on from; returns them.
    fn drop_given_away(&mut self, assigned: BTreeSet<i32>) -> Result<Vec<i32>, Error> {
        let rules = &self.settings.rules;
        // Until this incarnation knows, sled may hold any partition.
        let dropped: Vec<i32> = match &self.held {
            Some(held) => held.difference(&assigned).copied().collect(),
            None => (0..rules.partitions)
                .filter(|partition| !assigned.contains(partition))
                .collect(),
        };
        self.store
            .drop_partitions(&dropped, |account| rules.partition_of(account))?;
        self.held = Some(assigned);
        Ok(dropped)
    }

    /// The owned partitions whose copy in sled is not the committed one.
    fn stale_partitions(&self, owned: &[i32], committed: &Committed) -> Result<Vec<i32>, Error> {
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
        for partition in owned {
            if of_partition(self.store.offsets(), *partition)
                != of_partition(&committed.offsets, *partition)
                || self.store.stamp(*partition)? != committed.stamp(*partition)
            {
                stale.push(*partition);
            }
        }
        Ok(stale)
    }

    /// Rebuilds `stale` partitions from the changelog, which group
    /// assignment cannot do without.
    fn restore_stale(&mut self, stale: &[i32]) -> Result<(), Error> {
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
        let rules = &self.settings.rules;
        let restore = self
            .store
            .restore_partitions(stale, |account| rules.partition_of(account))?;
        restore::restore(restore, &self.settings, topic, stale, &self.shared.beat)
    }

    /// Sled's offsets of the owned partitions must now be the group's, as
    /// after any recovery; a changelog that did not bring them there does
    /// not hold the committed state, and serving it would be wrong.
    fn check_restored(
        &self,
        owned: &[i32],
        committed: &Committed,
        stale: &[i32],
    ) -> Result<(), Error> {
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
        Ok(())
    }

    /// Owns `owned`, checked: this generation's group metadata for the
    /// transactions, the consumer at sled's offsets, the balance gauge
    /// summed again.
    fn own_assigned(&mut self, owned: Vec<i32>) -> Result<(), Error> {
        // What was sent to these partitions before the assignment is read
        // before their own state proves a shortage (see `catching_up`).
        // Their ends are taken now, before any barrier (`heartbeat`) lands
        // after them; an end that cannot be read now is read later, which
        // only asks for more.
        self.credits_due = owned
            .iter()
            .map(|partition| {
                let end =
                    heartbeat::credits_end(&self.watcher, &self.settings.credits_topic, *partition);
                (*partition, end)
            })
            .collect();
        self.last_barrier = None;
        self.set_owned(owned);
        self.published.clear();
        self.group = group_metadata(&self.consumer)?;
        self.seek_to_store()?;
        self.sum_balances()
    }
}
