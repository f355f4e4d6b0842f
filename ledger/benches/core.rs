//! The ledger core's throughput: the pure state machine alone (baseline)
//! and the state machine plus the durable sled write of every batch, on
//! batches of 8,190 transfers over 10,000 accounts. Each batch also carries
//! the credits the previous one emitted, as a shard owning every partition
//! reads them back, so accounts get funded and transfers between them are
//! applied, as in a shard.
//!
//! Then the decoding of the same messages (`wire`), against a generic
//! parse of each transfer into a `serde_json::Value`.
//!
//! `cargo bench -p ledger --bench core`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ledger::store::{Store, StoreOptions};
use ledger_core::domain::{AccountId, Amount, Currency, Transfer, TransferId};
use ledger_core::machine::{
    process_batch, BatchEffects, InputPartition, LedgerView, MemoryLedger, Rules, Source,
};
use ledger_core::replay::{inputs, CreditLoop, Encoded};
use ledger_core::wire;
use time::OffsetDateTime;

const BATCH: usize = 8_190;
const ACCOUNTS: u64 = 10_000;
const PARTITIONS: i32 = 6;

/// A cheap deterministic generator, so every run measures the same stream,
/// with the credits of the batch before.
struct Stream {
    state: u64,
    offset: i64,
    credits: Encoded,
    credit_loop: CreditLoop,
}

impl Stream {
    fn new() -> Self {
        Stream {
            state: 42,
            offset: 0,
            credits: Vec::new(),
            credit_loop: CreditLoop::new(PARTITIONS),
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// One batch of encoded transfers: a deposit from `world` for every
    /// tenth record, transfers between accounts otherwise.
    fn transfers(&mut self) -> Encoded {
        (0..BATCH)
            .map(|index| {
                let to = AccountId::parse(&format!("acc-{}", self.next_u64() % ACCOUNTS)).unwrap();
                let from = if index % 10 == 0 {
                    AccountId::world()
                } else {
                    AccountId::parse(&format!("acc-{}", self.next_u64() % ACCOUNTS)).unwrap()
                };
                let from = if from == to { AccountId::world() } else { from };
                let amount = Amount::from_minor(1 + (self.next_u64() % 20_000) as i64).unwrap();
                let transfer = Transfer::new(
                    TransferId(uuid::Uuid::from_u64_pair(self.next_u64(), self.next_u64())),
                    from,
                    to,
                    amount,
                    Currency::EUR,
                    OffsetDateTime::UNIX_EPOCH,
                )
                .unwrap();
                // Where the shards expect it: anywhere else it is misrouted.
                let at = InputPartition {
                    source: Source::Transfers,
                    partition: Rules::new(PARTITIONS).partition_of(&transfer.from),
                };
                self.offset += 1;
                (at, self.offset, wire::encode_transfer(&transfer))
            })
            .collect()
    }

    /// The next batch: the previous batch's credits, then new transfers.
    fn batch(&mut self) -> Encoded {
        let mut batch = std::mem::take(&mut self.credits);
        batch.extend(self.transfers());
        batch
    }

    /// Feeds the credits `effects` emitted into the next batch.
    fn emitted(&mut self, effects: &BatchEffects) {
        self.credits = self.credit_loop.credits(effects);
    }
}

/// Runs `iterations` batches against `ledger`, timing the state machine
/// and `commit` only (not the generation of the batch).
fn run<L: LedgerView>(
    stream: &mut Stream,
    ledger: &mut L,
    iterations: u64,
    commit: impl Fn(&mut L, &BatchEffects),
) -> Duration {
    let rules = Rules::new(PARTITIONS);
    let mut spent = Duration::ZERO;
    for _ in 0..iterations {
        let batch = stream.batch();
        let started = Instant::now();
        let effects = process_batch(ledger, &rules, &inputs(&batch))
            .expect("credits come back to their owner's partition");
        commit(ledger, &effects);
        spent += started.elapsed();
        stream.emitted(&effects);
    }
    spent
}

fn core(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger_core");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(20));

    group.bench_function("process_batch_in_memory", |b| {
        let mut stream = Stream::new();
        let mut ledger = MemoryLedger::default();
        b.iter_custom(|iterations| {
            run(&mut stream, &mut ledger, iterations, |ledger, effects| {
                ledger.apply(effects)
            })
        })
    });

    group.bench_function("process_batch_and_durable_sled_write", |b| {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut stream = Stream::new();
        b.iter_custom(|iterations| {
            run(&mut stream, &mut store, iterations, |store, effects| {
                store.write_batch(effects).unwrap();
                store.mark_committed();
            })
        })
    });
    group.finish();
}

/// Decoding one batch's messages as the machine does, with a generic
/// parse of the same transfers into a `serde_json::Value` as the baseline:
/// what reading any JSON at all costs.
fn wire_decoding(c: &mut Criterion) {
    let mut stream = Stream::new();
    let transfers = stream.transfers();
    let effects = process_batch(
        &MemoryLedger::default(),
        &Rules::new(PARTITIONS),
        &inputs(&transfers),
    )
    .expect("a batch of transfers refuses nothing");
    let credits = stream.credit_loop.credits(&effects);

    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(transfers.len() as u64));
    group.bench_function("serde_json_value_of_each_transfer", |b| {
        b.iter(|| {
            for (_, _, bytes) in &transfers {
                black_box(serde_json::from_slice::<serde_json::Value>(bytes).unwrap());
            }
        })
    });
    group.bench_function("decode_transfer", |b| {
        b.iter(|| {
            for (_, _, bytes) in &transfers {
                black_box(wire::decode_transfer(bytes).unwrap());
            }
        })
    });
    group.throughput(Throughput::Elements(credits.len() as u64));
    group.bench_function("decode_credits_record", |b| {
        b.iter(|| {
            for (_, _, bytes) in &credits {
                black_box(wire::decode_credits_record(bytes).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, core, wire_decoding);
criterion_main!(benches);
