//! The recovery rule: after a crash, did the last batch happen?
//!
//! sled is outside Kafka's transaction, so a shard can die with a batch
//! written to sled but not committed to Kafka, or committed but with its
//! pending record not yet cleared. Kafka's committed offsets are the truth;
//! this pure function compares them with what sled recorded and says what to
//! do. It runs after `init_transactions`, which has already fenced the
//! previous incarnation and finished its open transaction, so the committed
//! offsets can no longer move under it.

use std::fmt::Write as _;

use crate::machine::Offsets;

/// What the shard does before it starts consuming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No batch in flight and sled agrees with Kafka.
    Normal,
    /// The pending batch committed: keep its effects, clear the record.
    KeepPending,
    /// The pending batch aborted: apply its undo, clear the record.
    UndoPending,
    /// sled and Kafka disagree in a way no single batch explains: stop,
    /// because any choice could silently corrupt balances.
    Refuse(String),
}

/// The two offset sets of a pending record.
#[derive(Debug, Clone, Copy)]
pub struct PendingOffsets<'a> {
    pub before: &'a Offsets,
    pub after: &'a Offsets,
}

/// Decides, from the pending record (if any), sled's offsets and Kafka's
/// committed offsets (absent partitions have no committed offset).
pub fn decide(pending: Option<PendingOffsets<'_>>, sled: &Offsets, kafka: &Offsets) -> Recovery {
    match pending {
        None if sled == kafka => Recovery::Normal,
        None => Recovery::Refuse(format!(
            "sled and Kafka disagree and no batch is pending: sled has {}, Kafka has {}. \
             The sled directory belongs to another shard or deployment, or was restored \
             from an old copy; give this shard its own directory or reset the group's offsets",
            show(sled),
            show(kafka)
        )),
        Some(pending) if kafka == pending.after => Recovery::KeepPending,
        Some(pending) if kafka == pending.before => Recovery::UndoPending,
        Some(pending) => Recovery::Refuse(format!(
            "a batch is pending in sled but Kafka's committed offsets match neither side of it: \
             before the batch {}, after it {}, Kafka has {}",
            show(pending.before),
            show(pending.after),
            show(kafka)
        )),
    }
}

/// `{transfers/0: 12, credits/0: 3}`; `{}` when empty.
pub fn show(offsets: &Offsets) -> String {
    let mut text = String::from("{");
    for (index, (at, offset)) in offsets.iter().enumerate() {
        if index > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "{at}: {offset}");
    }
    text.push('}');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{InputPartition, Source};

    fn offsets(entries: &[(Source, i32, i64)]) -> Offsets {
        entries
            .iter()
            .map(|(source, partition, offset)| {
                (
                    InputPartition {
                        source: *source,
                        partition: *partition,
                    },
                    *offset,
                )
            })
            .collect()
    }

    /// Every combination of pending (absent / present) and Kafka's offsets
    /// (empty, equal to sled, to before, to after, to something else).
    #[test]
    fn the_decision_table_is_exhaustive() {
        let before = offsets(&[(Source::Transfers, 0, 10), (Source::Credits, 0, 4)]);
        let after = offsets(&[(Source::Transfers, 0, 15), (Source::Credits, 0, 4)]);
        let other = offsets(&[(Source::Transfers, 0, 12), (Source::Credits, 0, 4)]);
        let empty = Offsets::new();
        let pending = PendingOffsets {
            before: &before,
            after: &after,
        };

        // No pending record: sled's offsets must equal Kafka's.
        assert_eq!(decide(None, &empty, &empty), Recovery::Normal);
        assert_eq!(decide(None, &before, &before), Recovery::Normal);
        for (sled, kafka) in [(&before, &after), (&empty, &before), (&before, &empty)] {
            let Recovery::Refuse(message) = decide(None, sled, kafka) else {
                panic!("{sled:?} vs {kafka:?} must refuse");
            };
            assert!(message.contains(&show(sled)) && message.contains(&show(kafka)));
        }

        // A pending record: sled holds `after` (the batch was written).
        assert_eq!(decide(Some(pending), &after, &after), Recovery::KeepPending);
        assert_eq!(
            decide(Some(pending), &after, &before),
            Recovery::UndoPending
        );
        for kafka in [&other, &empty] {
            let Recovery::Refuse(message) = decide(Some(pending), &after, kafka) else {
                panic!("{kafka:?} must refuse");
            };
            assert!(message.contains(&show(&before)));
            assert!(message.contains(&show(&after)));
            assert!(message.contains(&show(kafka)));
        }

        // The first batch of a fresh shard: before is empty, and so is Kafka
        // if that batch aborted.
        let first = PendingOffsets {
            before: &empty,
            after: &after,
        };
        assert_eq!(decide(Some(first), &after, &empty), Recovery::UndoPending);
        assert_eq!(decide(Some(first), &after, &after), Recovery::KeepPending);
    }

    #[test]
    fn offsets_print_compactly() {
        assert_eq!(show(&Offsets::new()), "{}");
        assert_eq!(
            show(&offsets(&[
                (Source::Transfers, 1, 5),
                (Source::Credits, 1, 2)
            ])),
            "{transfers/1: 5, credits/1: 2}"
        );
    }
}
