//! Row 4: the ledger core in this process, no Kafka: the pure state machine
//! plus the durable sled write of every batch (what a shard does between
//! polling and producing), against the state machine over an in-memory
//! ledger. Batches of 8,190 transfers from the producer's own generator
//! over 10,000 accounts, encoded as on the topic and decoded by the
//! machine. Only the time inside `process_batch` and the write is counted.
//!
//! Each batch also carries the credits the previous batch emitted, as one
//! shard owning every partition reads them back from `ledger-credits`.
//! Without them no account is ever funded: all but the deposits are
//! rejected for insufficient funds and a batch writes one balance
//! (`world`'s). Row 4b measures that shape, to show how far it is from a
//! shard's real work.

use std::borrow::Borrow;
use std::time::{Duration, Instant};

use ledger::store::{Store, StoreOptions};
use ledger_core::machine::{
    process_batch, BatchEffects, InputPartition, LedgerView, MemoryLedger, Rules, Source,
};
use ledger_core::replay::{inputs, CreditLoop, Encoded};
use ledger_core::routing;
use ledger_core::wire;
use producer::generate::{Generator, GeneratorConfig};
use time::OffsetDateTime;

use crate::report::{Row, Target, Unit, Value};
use crate::{say, Bench, PARTITIONS};

/// The batch size: the largest batch a shard forms, near 8 KiB of
/// records.
pub const BATCH: usize = 8_190;
/// The target, durable path.
const TARGET_PER_SECOND: f64 = 300_000.0;

/// Time spent in the timed sections of `drive`, and what it did.
#[derive(Debug, Default)]
pub struct Spent {
    /// `process_batch` plus the commit step.
    pub total: Duration,
    pub machine: Duration,
    pub accepted: u64,
    pub credits_applied: u64,
}

pub fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    say(format!(
        "row 4: ledger core, {} batches of {BATCH} transfers...",
        bench.sizes.core_batches
    ));
    let batches = generate(bench);
    let with_credits = measure(bench, &batches, true)?;
    let without_credits = measure(bench, &batches, false)?;
    Ok(vec![
        with_credits.row(
            "4",
            format!("ledger core: apply + durable sled flush, batches of {BATCH}"),
            Some(Target::AtLeast {
                value: TARGET_PER_SECOND,
            }),
        ),
        without_credits.row(
            "4b",
            "ledger core, credits never applied (nothing funded)".to_owned(),
            None,
        ),
    ])
}

/// Both ledgers over the same batches.
struct Measured {
    transfers: f64,
    batches: usize,
    durable: Spent,
    in_memory: Spent,
    flush: Duration,
    keys: usize,
}

impl Measured {
    fn row(&self, id: &str, figure: String, target: Option<Target>) -> Row {
        let rate = |spent: &Spent| self.transfers / spent.total.as_secs_f64();
        let per_batch_ms = |spent: Duration| spent.as_secs_f64() * 1000.0 / self.batches as f64;
        let durable = &self.durable;
        Row::new(
            id,
            figure,
            Value::new(rate(durable), Unit::TransfersPerSecond),
            "in-memory machine",
            Value::new(rate(&self.in_memory), Unit::TransfersPerSecond),
            target,
        )
        .with_details(serde_json::json!({
            "transfers": self.transfers,
            "accepted": durable.accepted,
            "credits_applied": durable.credits_applied,
            "batch_ms_durable": per_batch_ms(durable.total),
            "batch_ms_machine_over_sled": per_batch_ms(durable.machine),
            "batch_ms_sled_flush": per_batch_ms(self.flush),
            "batch_ms_sled_write_without_flush":
                per_batch_ms(durable.total - durable.machine - self.flush),
            "batch_ms_in_memory": per_batch_ms(self.in_memory.total),
            "sled_keys_per_batch": self.keys as f64 / self.batches as f64,
        }))
    }
}

fn measure(bench: &Bench, batches: &[Encoded], feed_credits: bool) -> anyhow::Result<Measured> {
    let mut memory = MemoryLedger::default();
    let in_memory = drive(batches, &mut memory, feed_credits, |ledger, effects| {
        ledger.apply(effects);
        Ok(())
    })?;

    let dir = tempfile::tempdir_in(&bench.work_dir)?;
    let mut store = Store::open(dir.path(), StoreOptions::default())?;
    let mut flush = Duration::ZERO;
    let mut keys = 0usize;
    let durable = drive(batches, &mut store, feed_credits, |store, effects| {
        let report = store.write_batch(effects)?;
        store.mark_committed();
        flush += report.flush;
        keys += report.keys_written;
        Ok(())
    })?;
    anyhow::ensure!(
        (durable.accepted, durable.credits_applied)
            == (in_memory.accepted, in_memory.credits_applied),
        "the durable and in-memory ledgers diverged"
    );
    let measured = Measured {
        transfers: (batches.len() * BATCH) as f64,
        batches: batches.len(),
        durable,
        in_memory,
        flush,
        keys,
    };
    say(format!(
        "row 4: credits {}: durable {:.0}/s, in memory {:.0}/s",
        if feed_credits {
            "applied"
        } else {
            "never applied"
        },
        measured.transfers / measured.durable.total.as_secs_f64(),
        measured.transfers / measured.in_memory.total.as_secs_f64(),
    ));
    Ok(measured)
}

/// Runs the batches against `ledger`, each with the credits the previous
/// one emitted when `feed_credits`, and `commit`s each batch's effects;
/// times the machine and the commit, not the encoding of the credits.
pub fn drive<L: LedgerView, B: Borrow<Encoded>>(
    batches: impl IntoIterator<Item = B>,
    ledger: &mut L,
    feed_credits: bool,
    mut commit: impl FnMut(&mut L, &BatchEffects) -> anyhow::Result<()>,
) -> anyhow::Result<Spent> {
    let mut spent = Spent::default();
    let mut credits: Encoded = Vec::new();
    let mut credit_loop = CreditLoop::new(PARTITIONS);
    for batch in batches {
        let mut records = inputs(&credits);
        records.extend(inputs(batch.borrow()));
        let started = Instant::now();
        let effects = process_batch(ledger, &Rules::new(PARTITIONS), &records)?;
        spent.machine += started.elapsed();
        commit(ledger, &effects)?;
        spent.total += started.elapsed();
        spent.accepted += effects.counts.accepted;
        spent.credits_applied += effects.counts.credits_applied;
        if feed_credits {
            credits = credit_loop.credits(&effects);
        }
    }
    Ok(spent)
}

/// The generated stream cut into batches, each record in the partition its
/// source account hashes to, at consecutive offsets per partition.
fn generate(bench: &Bench) -> Vec<Encoded> {
    // The producer's default shares of failing and resubmitted transfers.
    let mut generator = Generator::new(GeneratorConfig {
        accounts: bench.sizes.accounts,
        fail_share: 0.02,
        duplicate_share: 0.01,
        currency: ledger_core::domain::Currency::EUR,
        seed: bench.seed,
    });
    let mut next_offsets = [0i64; PARTITIONS as usize];
    let now = OffsetDateTime::now_utc();
    (0..bench.sizes.core_batches)
        .map(|_| {
            (0..BATCH)
                .map(|_| {
                    let transfer = generator.next(now).transfer;
                    let partition =
                        routing::partition_for(transfer.from.as_str().as_bytes(), PARTITIONS);
                    let offset = &mut next_offsets[partition as usize];
                    *offset += 1;
                    let at = InputPartition {
                        source: Source::Transfers,
                        partition,
                    };
                    (at, *offset - 1, wire::encode_transfer(&transfer))
                })
                .collect()
        })
        .collect()
}
