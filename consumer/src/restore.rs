//! Rebuilding a shard's sled store from `ledger-changelog`.
//!
//! Every batch's transaction carries, next to its outcomes and consumed
//! offsets, the batch's writes to partition state (balances, remembered
//! ids, offsets, order state), each on the changelog partition of the
//! state it belongs to (`ledger::store::key_partition`). Committed in the
//! same transaction, the changelog read `read_committed` to its end is
//! exactly the state at the group's committed offsets, once
//! `init_transactions` has settled the previous incarnation's transaction:
//! the shard restores only after that, and only the partitions it owns
//! (their state is written by their owner alone).
//!
//! Records are applied in the order read, the last write of a key winning,
//! through a window of distinct keys in memory that spares sled the writes
//! compaction would have removed.
//!
//! The restored offsets are then checked against Kafka's like any others:
//! a changelog that does not hold the committed state (a topic created
//! after the ledger, records lost to a retention setting) is refused, not
//! served.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ledger::kafka::{self, EofReader, EofReaderContext};
use ledger::store::Restore;
use ledger_core::hash::HashMap;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::info;

use crate::config::Settings;
use crate::shard::Beat;
use crate::Error;

/// Distinct keys held in memory before they go to sled (some 60 MB at
/// most). The last write of a key wins, so within this window a key
/// written and removed again (a held transfer decided, credits kept and
/// then forgotten) costs no sled write at all: the changelog's records
/// outnumber the state they leave until compaction catches up.
const WINDOW_KEYS: usize = 500_000;
/// A changelog that yields nothing for this long is unreachable.
const STALL: Duration = Duration::from_secs(60);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Rebuilds `partitions`' state from `topic`, the changelog, into
/// `restore` (begun by [`Store::restore`], which empties the store, or
/// [`Store::restore_partitions`], which empties those partitions only).
pub fn restore(
    mut restore: Restore<'_>,
    settings: &Settings,
    topic: &str,
    partitions: &[i32],
    beat: &Beat,
) -> Result<(), Error> {
    let started = Instant::now();
    let reader = changelog_reader(settings, topic, partitions)?;
    let mut tally = read_to_end(&reader, &mut restore, topic, partitions, beat, started)?;
    let finishing = Instant::now();
    restore.finish()?;
    tally.writing += finishing.elapsed();
    crate::measure::restored(tally.read, started.elapsed());
    info!(
        message = "Restored from the changelog.",
        topic,
        partitions = ?partitions,
        records = tally.read,
        seconds = started.elapsed().as_secs_f64(),
        writing_seconds = tally.writing.as_secs_f64(),
    );
    Ok(())
}

/// What a restore read, and where its time went, for the log: applying to
/// sled, the rest reading.
struct Tally {
    read: u64,
    writing: Duration,
}

fn kafka_error(step: &'static str) -> impl Fn(KafkaError) -> Error {
    move |error| Error::Kafka { step, error }
}

/// A `read_committed` reader of `partitions` of the changelog from their
/// beginning, which reports each partition's end.
fn changelog_reader(
    settings: &Settings,
    topic: &str,
    partitions: &[i32],
) -> Result<EofReader, Error> {
    let mut config = kafka::read_committed_consumer_config(
        &settings.bootstrap_servers,
        &format!("{}-restore", settings.group_id),
    );
    // The end of a partition is known from a fetch that found nothing, which
    // the broker holds this long: the last one of a restore is all waiting.
    config
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10");
    let reader: EofReader = config
        .create_with_context(EofReaderContext)
        .map_err(kafka_error("creating the changelog reader"))?;
    // Without the leaders known, assign finds them on 500 ms timers.
    kafka::prefetch_metadata(&reader, &[topic], STALL)
        .map_err(kafka_error("fetching the changelog's metadata"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(kafka_error("assigning the changelog"))?;
    }
    reader
        .assign(&assignment)
        .map_err(kafka_error("assigning the changelog"))?;
    Ok(reader)
}

/// Applies every record up to the end of each of `partitions`, through
/// the window; an unreachable changelog is an error after `STALL`.
fn read_to_end(
    reader: &EofReader,
    restore: &mut Restore<'_>,
    topic: &str,
    partitions: &[i32],
    beat: &Beat,
    started: Instant,
) -> Result<Tally, Error> {
    let mut window: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::default();
    let mut tally = Tally {
        read: 0,
        writing: Duration::ZERO,
    };
    let mut at_end = BTreeSet::new();
    let mut last_progress = Instant::now();
    let mut last_report = Instant::now();
    while at_end.len() < partitions.len() {
        // A long restore is progress, not a stuck loop (`/healthz`).
        beat.now();
        match reader.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                tally.read += 1;
                let Some(key) = message.key() else {
                    // Not a store write: nothing of this version writes one.
                    continue;
                };
                window.insert(key.to_vec(), message.payload().map(<[u8]>::to_vec));
                if window.len() >= WINDOW_KEYS {
                    let applying = Instant::now();
                    restore.apply(std::mem::take(&mut window))?;
                    tally.writing += applying.elapsed();
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => return Err(kafka_error("reading the changelog")(error)),
            None if last_progress.elapsed() > STALL => {
                return Err(Error::RestoreStalled {
                    topic: topic.to_owned(),
                    read: tally.read,
                    stalled: STALL,
                });
            }
            None => {}
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            info!(
                message = "Restoring from the changelog.",
                records = tally.read,
                seconds = started.elapsed().as_secs_f64(),
            );
        }
    }
    let applying = Instant::now();
    restore.apply(window)?;
    tally.writing += applying.elapsed();
    Ok(tally)
}
