//! What a batch's transaction produces: outcomes, credits, dead letters,
//! marks, and the batch's sled writes to the changelog.

use std::time::Duration;

use ledger::store::{self, Change};
use ledger::txn::{self, Failed};
use ledger_core::machine::{BatchEffects, DeadLetter, Output};
use ledger_core::wire;
use rdkafka::message::{Header, OwnedHeaders, ToBytes};
use rdkafka::producer::BaseRecord;

use super::Shard;

impl Shard {
    /// The batch's outcomes, credits and dead letters, in the order decided,
    /// then its marks.
    pub(super) fn produce(&self, effects: &BatchEffects) -> Result<(), Failed> {
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
                Output::DeadLetter(letter) => self.send_dead_letter(letter)?,
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

    /// An undecodable record to `ledger-dlq`, as it came (its key and
    /// bytes), with why and where from in headers.
    fn send_dead_letter(&self, letter: &DeadLetter) -> Result<(), Failed> {
        let settings = &self.settings;
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
        self.send(record)
    }

    /// The batch's sled writes, each on the changelog partition of the
    /// state it changes (a removal as a tombstone), so that the changelog
    /// commits with the batch. The commit-before-write mutant writes sled
    /// after the commit, too late for the transaction: its batch has none.
    pub(super) fn produce_changes(&self, changes: &[Change]) -> Result<(), Failed> {
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
}
