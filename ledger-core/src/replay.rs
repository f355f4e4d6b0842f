//! Input for running the core without Kafka (benchmarks): records encoded
//! as the topics hold them, and the credits a batch emits turned into the
//! next batch's input, as one shard owning every partition reads them back
//! from `ledger-credits`. Without that loop no account is ever funded, all
//! but the deposits are rejected and a batch writes almost nothing, which
//! is not the work a shard does.

use crate::machine::{BatchEffects, InputPartition, InputRecord, Source};
use crate::{routing, wire};

/// Records encoded as the topics hold them: where, at which offset, bytes.
pub type Encoded = Vec<(InputPartition, i64, Vec<u8>)>;

/// The machine's view of encoded records (no keys: the machine does not
/// read them).
pub fn inputs(records: &Encoded) -> Vec<InputRecord<'_>> {
    records
        .iter()
        .map(|(at, offset, bytes)| InputRecord {
            at: *at,
            offset: *offset,
            key: None,
            payload: Some(bytes),
        })
        .collect()
}

/// `ledger-credits` of a single shard: each credit in the partition its
/// destination hashes to, at consecutive offsets per partition.
#[derive(Debug, Clone)]
pub struct CreditLoop {
    next_offsets: Vec<i64>,
}

impl CreditLoop {
    pub fn new(partitions: i32) -> Self {
        assert!(partitions > 0, "a topic has at least one partition");
        CreditLoop {
            next_offsets: vec![0; partitions as usize],
        }
    }

    /// The credits `effects` emitted, as the next batch reads them.
    pub fn credits(&mut self, effects: &BatchEffects) -> Encoded {
        let partitions = self.next_offsets.len() as i32;
        effects
            .credits_emitted()
            .map(|credit| {
                let partition = routing::partition_for(credit.to.as_str().as_bytes(), partitions);
                let offset = &mut self.next_offsets[partition as usize];
                *offset += 1;
                let at = InputPartition {
                    source: Source::Credits,
                    partition,
                };
                (at, *offset - 1, wire::encode_credit(credit))
            })
            .collect()
    }
}
