//! Between batches: idle partitions' floors, marks to publish, reports of
//! transfers held too long, and whether a new assignment is still catching
//! up on the credits sent to it before.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use ledger_core::machine::{process_batch_at, InputPartition, Source, Tick};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Offset;
use tracing::{info, warn};

use crate::Error;

use super::{now_ms, Polled, Shard};

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
/// While catching up, how often the shard sends its own partitions its
/// marks: a record past each end, so that an idle partition is read past it
/// too (nothing else may arrive there: the other shards' marks wait for
/// this one's held transfers).
const BARRIER_EVERY: Duration = Duration::from_secs(1);

impl Shard {
    /// Between batches: lets the floors of partitions with nothing left to read
    /// jump, and publishes marks that changed since this incarnation last
    /// published them (all of them after a restart), or whose held
    /// transfers' time is up: reading the mark back is the batch that
    /// rejects them. A transaction only when there is a mark to send.
    pub(super) fn heartbeat(&mut self) -> Result<(), Error> {
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
        let wake_own = std::mem::take(&mut self.wake_own) || self.barrier_due();
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
    pub(super) fn catching_up(&mut self, polled: &[Polled]) -> bool {
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
                *end = credits_end(watcher, topic, *partition);
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

    /// Whether to send the shard's marks to its own partitions now, as the
    /// catch-up's barrier: catching up, every end known (so the barrier
    /// lands after them), and none sent for `BARRIER_EVERY`.
    fn barrier_due(&mut self) -> bool {
        let due = !self.credits_due.is_empty()
            && self.credits_due.values().all(Option::is_some)
            && self
                .last_barrier
                .is_none_or(|sent| sent.elapsed() >= BARRIER_EVERY);
        if due {
            self.last_barrier = Some(Instant::now());
        }
        due
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
}

/// The end of `ledger-credits` partition `partition` now, including open
/// transactions (`watcher` reads `read_uncommitted`: its high watermark);
/// `None` when it cannot be read in time.
pub(super) fn credits_end(watcher: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    watcher
        .fetch_watermarks(topic, partition, END_QUERY_TIMEOUT)
        .ok()
        .map(|(_, high)| high)
}
