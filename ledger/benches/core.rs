//! The ledger core's throughput: the pure state machine alone (baseline)
//! and the state machine plus the durable sled write of every batch, on
//! batches of 8,190 transfers over 10,000 accounts.
//!
//! `cargo bench -p ledger --bench core`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ledger::domain::{AccountId, Amount, Currency, Transfer, TransferId};
use ledger::machine::{process_batch, InputPartition, InputRecord, MemoryLedger, Rules, Source};
use ledger::store::{Store, StoreOptions};
use ledger::wire;
use time::OffsetDateTime;

const BATCH: usize = 8_190;
const ACCOUNTS: u64 = 10_000;
const PARTITIONS: i32 = 6;

/// A cheap deterministic generator, so every run measures the same stream.
struct Stream {
    state: u64,
    offset: i64,
}

impl Stream {
    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// One batch of encoded transfers: a deposit from `world` for every
    /// tenth record, transfers between accounts otherwise.
    fn batch(&mut self) -> Vec<(InputPartition, i64, Vec<u8>)> {
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
                let at = InputPartition {
                    source: Source::Transfers,
                    partition: (index as i32) % PARTITIONS,
                };
                self.offset += 1;
                (at, self.offset, wire::encode_transfer(&transfer))
            })
            .collect()
    }
}

fn inputs(batch: &[(InputPartition, i64, Vec<u8>)]) -> Vec<InputRecord<'_>> {
    batch
        .iter()
        .map(|(at, offset, bytes)| InputRecord {
            at: *at,
            offset: *offset,
            key: None,
            payload: Some(bytes),
        })
        .collect()
}

fn core(c: &mut Criterion) {
    let rules = Rules::default();
    let mut group = c.benchmark_group("ledger_core");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(20));

    group.bench_function("process_batch_in_memory", |b| {
        let mut stream = Stream {
            state: 42,
            offset: 0,
        };
        let mut ledger = MemoryLedger::default();
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let batch = stream.batch();
                let started = Instant::now();
                let effects = process_batch(&ledger, &rules, &inputs(&batch));
                ledger.apply(&effects);
                spent += started.elapsed();
            }
            spent
        })
    });

    group.bench_function("process_batch_and_durable_sled_write", |b| {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut stream = Stream {
            state: 42,
            offset: 0,
        };
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let batch = stream.batch();
                let started = Instant::now();
                let effects = process_batch(&store, &rules, &inputs(&batch));
                store.write_batch(&effects).unwrap();
                store.mark_committed();
                spent += started.elapsed();
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, core);
criterion_main!(benches);
