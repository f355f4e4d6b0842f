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
//! The restored offsets are then checked against Kafka's like any others:
//! a changelog that does not hold the committed state (a topic created
//! after the ledger, records lost to a retention setting) is refused, not
//! served.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ledger::kafka::{self, EofReader, EofReaderContext};
use ledger::store::{Change, Store};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::info;

use crate::config::Settings;
use crate::Error;

/// Changes applied to sled at once: bounds the memory a restore takes.
const CHUNK: usize = 10_000;
/// A changelog that yields nothing for this long is unreachable.
const STALL: Duration = Duration::from_secs(60);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Replaces the store's content with the owned partitions' state read from
/// `topic`, the changelog.
pub fn restore(store: &mut Store, settings: &Settings, topic: &str) -> Result<(), Error> {
    let kafka_error = |step: &'static str| move |error| Error::Kafka { step, error };
    let mut config = kafka::read_committed_consumer_config(
        &settings.bootstrap_servers,
        &format!("{}-restore", settings.group_id),
    );
    config.set("enable.partition.eof", "true");
    let reader: EofReader = config
        .create_with_context(EofReaderContext)
        .map_err(kafka_error("creating the changelog reader"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in &settings.owned {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(kafka_error("assigning the changelog"))?;
    }
    reader
        .assign(&assignment)
        .map_err(kafka_error("assigning the changelog"))?;

    let started = Instant::now();
    let mut restore = store.restore()?;
    let mut chunk: Vec<Change> = Vec::with_capacity(CHUNK);
    let mut read = 0u64;
    let mut at_end = BTreeSet::new();
    let mut last_progress = Instant::now();
    let mut last_report = Instant::now();
    while at_end.len() < settings.owned.len() {
        match reader.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                read += 1;
                let Some(key) = message.key() else {
                    // Not a store write: nothing of this version writes one.
                    continue;
                };
                chunk.push((key.to_vec(), message.payload().map(<[u8]>::to_vec)));
                if chunk.len() >= CHUNK {
                    restore.apply(&chunk)?;
                    chunk.clear();
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => return Err(kafka_error("reading the changelog")(error)),
            None if last_progress.elapsed() > STALL => {
                return Err(Error::RestoreStalled {
                    topic: topic.to_owned(),
                    read,
                    stalled: STALL,
                });
            }
            None => {}
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            info!(
                message = "Restoring from the changelog.",
                records = read,
                seconds = started.elapsed().as_secs_f64(),
            );
        }
    }
    restore.apply(&chunk)?;
    restore.finish()?;
    crate::measure::restored(read, started.elapsed());
    info!(
        message = "Restored from the changelog.",
        topic,
        partitions = ?settings.owned,
        records = read,
        seconds = started.elapsed().as_secs_f64(),
    );
    Ok(())
}
