//! Row 5: restart-to-ready of a shard after SIGKILL, with 10^4, 10^5 and
//! 10^6 accounts in its sled ledger, against the same with an empty ledger.
//!
//! The ledger is written directly with `ledger::store::Store`, as the shard
//! would have written it: one deposit from `world` per account, decided by
//! the state machine and its credit applied, in batches, each durable; so
//! the ledger holds N balances and 2N remembered ids (as many as the
//! idempotency window keeps). Recovery only starts if Kafka's committed
//! offsets for the shard's group equal sled's, so the input partitions get
//! as many (filler) records as the ledger consumed and the group commits
//! the same next offsets. The shard is then started, killed with SIGKILL
//! once ready, and restarted: the figure is the median time from spawning
//! the restarted process to its first `/readyz` 200. The median, over nine
//! restarts: librdkafka sometimes (one restart in five or so) waits out a
//! 500 ms timer before `init_transactions` reaches the coordinator, at any
//! ledger size, and with fewer restarts that wait decided the median.
//!
//! Rows 5e-5g: the same ledgers, their sled directory deleted, restored
//! from the changelog. Building the ledger keeps every batch's sled writes
//! (`WriteReport::changes`, what a shard's transaction would have carried)
//! and writes them to the changelog topic, each on its partition. The
//! figure is the median of three restores' own time
//! (`txledger_consumer_restore_seconds`: reading the changelog to its end
//! into sled), against the target of
//! 100,000 accounts per second; the baseline is the same ledger's restart
//! on its intact directory (rows 5a-5c).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use ledger::kafka;
use ledger::store::{self, Change, Store, StoreOptions};
use ledger_cli::pipeline::Pipeline;
use ledger_core::domain::{AccountId, Amount, Currency, Transfer, TransferId};
use ledger_core::machine::{process_batch_at, InputPartition, Offsets, Rules, Source, Tick};
use ledger_core::replay::Encoded;
use ledger_core::routing;
use ledger_core::wire;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use time::OffsetDateTime;

use crate::core_rows::drive;
use crate::passthrough::Deliveries;
use crate::report::{median_by, Row, Target, Unit, Value};
use crate::shards::{self, Setup};
use crate::{say, Bench, PARTITIONS};

/// The bound on restart-to-ready.
const READY_TARGET_SECONDS: f64 = 1.0;
/// "Flat as the ledger grows", made a number: the largest ledger restarts
/// within 25% of the time of the smallest.
const FLAT_RATIO: f64 = 1.25;
/// Deposits per sled batch while building: large batches build faster,
/// and the shape of the ledger on disk does not depend on them.
const BUILD_BATCH: usize = 50_000;
/// Bound on writing the filler records (and the changelog).
const FILL_TIMEOUT: Duration = Duration::from_secs(120);
/// The restore rate.
const RESTORE_TARGET_ACCOUNTS_PER_SECOND: f64 = 100_000.0;
/// Restores per ledger size; the row gives their median.
const RESTORE_ROUNDS: usize = 3;

/// One ledger size's restarts.
#[derive(Debug)]
struct Restarts {
    accounts: u64,
    /// Median spawn-to-ready after SIGKILL.
    median: Duration,
    rounds: Vec<Duration>,
    /// The first start of the shard on the freshly built ledger.
    first_start: Duration,
    build: Duration,
    /// The directory deleted, restored from the changelog: the restore's
    /// own seconds and spawn-to-ready. `None` for the empty ledger.
    restore: Option<(f64, Duration)>,
}

impl Restarts {
    fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "accounts": self.accounts,
            "restart_seconds": self.rounds.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            "first_start_seconds": self.first_start.as_secs_f64(),
            "build_seconds": self.build.as_secs_f64(),
            "restore_seconds": self.restore.map(|(seconds, _)| seconds),
            "restore_to_ready_seconds": self.restore.map(|(_, ready)| ready.as_secs_f64()),
        })
    }
}

pub fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let empty = measure(bench, 0)?;
    let mut measured = Vec::new();
    for accounts in bench.sizes.recovery_accounts.clone() {
        measured.push(measure(bench, accounts)?);
    }
    let mut rows: Vec<Row> = measured
        .iter()
        .enumerate()
        .map(|(index, restarts)| {
            Row::new(
                format!("5{}", char::from(b'a' + index as u8)),
                format!(
                    "recovery: restart -> ready after SIGKILL, {} accounts",
                    restarts.accounts
                ),
                Value::new(restarts.median.as_secs_f64(), Unit::Seconds),
                "empty ledger",
                Value::new(empty.median.as_secs_f64(), Unit::Seconds),
                Some(Target::AtMost {
                    value: READY_TARGET_SECONDS,
                }),
            )
            .with_details(serde_json::json!({
                "measured": restarts.details(),
                "baseline": empty.details(),
            }))
        })
        .collect();
    if let (Some(smallest), Some(largest)) = (measured.first(), measured.last()) {
        rows.push(Row::new(
            format!("5{}", char::from(b'a' + measured.len() as u8)),
            format!(
                "recovery flatness: {} vs {} accounts",
                largest.accounts, smallest.accounts
            ),
            Value::new(largest.median.as_secs_f64(), Unit::Seconds),
            format!("{} accounts", smallest.accounts),
            Value::new(smallest.median.as_secs_f64(), Unit::Seconds),
            Some(Target::RatioAtMost { ratio: FLAT_RATIO }),
        ));
    }
    let first_restore = rows.len();
    for (index, restarts) in measured.iter().enumerate() {
        let Some((seconds, ready)) = restarts.restore else {
            continue;
        };
        let accounts = restarts.accounts as f64;
        rows.push(
            Row::new(
                format!("5{}", char::from(b'a' + (first_restore + index) as u8)),
                format!(
                    "restore from the changelog, sled directory lost, {} accounts",
                    restarts.accounts
                ),
                Value::new(seconds, Unit::Seconds),
                "restart on the intact directory",
                Value::new(restarts.median.as_secs_f64(), Unit::Seconds),
                Some(Target::AtMost {
                    value: accounts / RESTORE_TARGET_ACCOUNTS_PER_SECOND,
                }),
            )
            .with_details(serde_json::json!({
                "accounts_per_second": accounts / seconds,
                "lost_directory_to_ready_seconds": ready.as_secs_f64(),
            })),
        );
    }
    Ok(rows)
}

/// Builds a ledger of `accounts` accounts (none: an empty ledger), then
/// kills and restarts its shard `recovery_rounds` times.
fn measure(bench: &Bench, accounts: u64) -> anyhow::Result<Restarts> {
    let label = format!("recovery-{accounts}");
    let topics = shards::topics(bench, &label, None);
    let mut pipeline = shards::pipeline(bench, &label, topics.clone(), 1, Setup::InOrder)?;
    say(format!(
        "row 5: building a ledger of {accounts} accounts..."
    ));
    let built = Instant::now();
    if accounts > 0 {
        let (consumed, changes) = build_ledger(bench, &pipeline.shard_data_dirs()[0], accounts)?;
        let next: Vec<(&str, i32, i64)> = consumed
            .iter()
            .map(|(at, next)| (topics.of(at.source), at.partition, *next))
            .collect();
        fill(bench, &next)?;
        write_changelog(bench, &pipeline.changelog_topic(), &changes)?;
        let config = pipeline.config();
        let shard_zero = kafka::shard_transactional_id(&config.transactional_id_prefix, 0);
        commit_offsets(bench, &config.group_id, &shard_zero, &next)?;
    }
    let build = built.elapsed();

    let first_start = shards::start_ready(&mut pipeline)?;
    let mut rounds = Vec::new();
    for _ in 0..bench.sizes.recovery_rounds {
        pipeline.kill_shard(0);
        let restarted = Instant::now();
        pipeline.start_shard(0)?;
        shards::wait_ready(&mut pipeline, 0)?;
        rounds.push(restarted.elapsed());
    }
    let restore = if accounts > 0 && !bench.no_changelog {
        let mut restores = Vec::new();
        for _ in 0..RESTORE_ROUNDS {
            restores.push(restore_once(&mut pipeline)?);
        }
        let (restore, _) = median_by(restores, |(seconds, _)| *seconds).context("no restore")?;
        say(format!(
            "row 5: {accounts} accounts: restored from the changelog in {:.3} s (median of \
             {RESTORE_ROUNDS}, {:.0} accounts/s), lost directory -> ready {:.3} s",
            restore.0,
            accounts as f64 / restore.0,
            restore.1.as_secs_f64()
        ));
        Some(restore)
    } else {
        None
    };
    pipeline.stop();
    let (median, _) = median_by(rounds.clone(), Duration::as_secs_f64).context("no restart")?;
    say(format!(
        "row 5: {accounts} accounts: restart -> ready {:.3} s (median of {}), built in {:.1} s",
        median.as_secs_f64(),
        rounds.len(),
        build.as_secs_f64()
    ));
    Ok(Restarts {
        accounts,
        median,
        rounds,
        first_start,
        build,
        restore,
    })
}

/// Kills the shard, deletes its directory and restarts it: the restore's
/// own seconds (from its metric) and spawn-to-ready.
fn restore_once(pipeline: &mut Pipeline) -> anyhow::Result<(f64, Duration)> {
    pipeline.lose_shard_data(0)?;
    let restarted = Instant::now();
    pipeline.start_shard(0)?;
    shards::wait_ready(pipeline, 0)?;
    let ready = restarted.elapsed();
    let seconds = shards::metric(pipeline, "txledger_consumer_restore_seconds", "");
    anyhow::ensure!(
        seconds > 0.0,
        "the shard on a deleted directory did not restore; its log: {}",
        pipeline.shard_log(0).display()
    );
    Ok((seconds, ready))
}

/// Writes one opening deposit per account into a fresh store at `dir`, as
/// one shard owning every partition would: the deposits (keyed by `world`,
/// so all in its partition) decided batch by batch, each batch's credits
/// applied in the next, every batch durable and committed. Returns the next
/// offset of every input partition consumed (offsets start at 0, dense),
/// and the batches' changes, for the changelog.
fn build_ledger(
    bench: &Bench,
    dir: &std::path::Path,
    accounts: u64,
) -> anyhow::Result<(Offsets, Vec<Change>)> {
    let mut store = Store::open(dir, StoreOptions::default())?;
    let amount = Amount::from_minor(10_000)?;
    let now = OffsetDateTime::now_utc();
    let world = AccountId::world();
    let at = InputPartition {
        source: Source::Transfers,
        partition: routing::partition_for(world.as_str().as_bytes(), PARTITIONS),
    };
    let deposits = (0..accounts).step_by(BUILD_BATCH).map(|first| -> Encoded {
        (first..(first + BUILD_BATCH as u64).min(accounts))
            .map(|index| {
                // Valid by construction: a short id, a positive amount,
                // two distinct accounts.
                let account = AccountId::parse(&format!("acc-{index:07}"))
                    .unwrap_or_else(|error| panic!("account id: {error}"));
                let transfer = Transfer::new(
                    TransferId(uuid::Uuid::from_u64_pair(bench.seed, index)),
                    world.clone(),
                    account,
                    amount,
                    Currency::EUR,
                    now,
                )
                .unwrap_or_else(|error| panic!("deposit: {error}"));
                (at, index as i64, wire::encode_transfer(&transfer))
            })
            .collect()
    });
    // One empty batch more, to apply the last batch's credits.
    let batches = deposits.chain(std::iter::once(Vec::new()));
    let mut changes = Vec::new();
    // After every batch, as a shard's heartbeat does when its input is read
    // to the end: the floors of the partitions that only received credits
    // move up to the newest one, which lets it forget the credits it kept
    // for transfers that never came (one per account here).
    let partitions: Vec<i32> = (0..PARTITIONS).collect();
    let idle = Tick {
        now_ms: u64::MAX,
        idle: &partitions,
        local: &partitions,
        ..Tick::default()
    };
    let rules = Rules::new(PARTITIONS);
    let done = drive(batches, &mut store, true, |store, effects| {
        changes.extend(store.write_batch(effects)?.changes);
        store.mark_committed();
        let idle = process_batch_at(store, &rules, &[], idle)?;
        changes.extend(store.write_batch(&idle)?.changes);
        store.mark_committed();
        Ok(())
    })?;
    anyhow::ensure!(
        (done.accepted, done.credits_applied) == (accounts, accounts),
        "{} deposits accepted and {} credited, of {accounts}",
        done.accepted,
        done.credits_applied
    );
    store.clear_pending()?;
    Ok((store.offsets().clone(), changes))
}

/// Writes `changes` to the changelog, each on its partition, in order.
/// Plain (idempotent) writes: a `read_committed` reader reads them as it
/// reads a shard's committed ones.
fn write_changelog(bench: &Bench, topic: &str, changes: &[Change]) -> anyhow::Result<()> {
    let rules = Rules::new(PARTITIONS);
    let records = changes.iter().filter_map(|(key, value)| {
        let partition = store::key_partition(key, |account| rules.partition_of(account))?;
        let record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .key(key.as_slice());
        Some(match value {
            Some(value) => record.payload(value.as_slice()),
            None => record,
        })
    });
    produce_all(bench, records, "the changelog")
}

/// Writes `next` filler records into each `(topic, partition, next)`, so
/// that the offsets the ledger consumed exist in Kafka. The shard starts
/// past them and never reads them.
fn fill(bench: &Bench, next: &[(&str, i32, i64)]) -> anyhow::Result<()> {
    let records = next.iter().flat_map(|&(topic, partition, count)| {
        (0..count).map(move |_| {
            BaseRecord::<[u8], [u8]>::to(topic)
                .partition(partition)
                .payload(b"filler".as_slice())
        })
    });
    produce_all(bench, records, "the filler")
}

/// Writes every record with an idempotent producer and waits until each is
/// delivered, within `FILL_TIMEOUT`.
fn produce_all<'a>(
    bench: &Bench,
    records: impl Iterator<Item = BaseRecord<'a, [u8], [u8]>>,
    what: &str,
) -> anyhow::Result<()> {
    let mut config =
        kafka::transactional_producer_config(&bench.bootstrap, "", Duration::from_secs(60));
    config.remove("transactional.id");
    let producer: BaseProducer<Deliveries> = config.create_with_context(Deliveries::default())?;
    let deadline = Instant::now() + FILL_TIMEOUT;
    let mut sent = 0u64;
    for mut record in records {
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "writing {what} took more than {FILL_TIMEOUT:?}"
                    );
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => return Err(error).with_context(|| format!("writing {what}")),
            }
        }
        sent += 1;
    }
    producer
        .flush(FILL_TIMEOUT)
        .with_context(|| format!("flushing {what}"))?;
    let delivered = producer.context().delivered.load(Ordering::Relaxed);
    anyhow::ensure!(
        delivered == sent,
        "{delivered} of {sent} records of {what} delivered"
    );
    Ok(())
}

/// Commits each `(topic, partition, next)` as `group`'s offset, as the
/// transactions of the shard with `transactional_id` would have, naming it.
fn commit_offsets(
    bench: &Bench,
    group: &str,
    transactional_id: &str,
    next: &[(&str, i32, i64)],
) -> anyhow::Result<()> {
    let consumer: BaseConsumer =
        kafka::read_committed_consumer_config(&bench.bootstrap, group).create()?;
    let mut offsets = TopicPartitionList::new();
    for (topic, partition, next) in next {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
    }
    for mut element in offsets.elements() {
        element.set_metadata(kafka::committer_tag(transactional_id, None));
    }
    consumer
        .commit(&offsets, CommitMode::Sync)
        .context("committing the group's offsets")?;
    Ok(())
}
