//! Broker faults on the topology production runs: three Kafka nodes
//! (replication factor 3, `min.insync.replicas=2`, the transaction state
//! log likewise), two shards with group assignment and the producer, as
//! child processes. While transfers flow, faults are aimed at roles, not at
//! node numbers: the group coordinator's node is killed in the middle of a
//! shard's transaction, then the transaction coordinator of a shard's
//! `transactional.id`, the leader of a `transactions` partition, a node
//! paused past the shards' session timeout, and the active controller.
//! Each killed node is started again and the cluster is back in sync before
//! the next fault, as in a rolling restart.
//!
//! The test is the supervisor (as Kubernetes would be): it restarts a shard
//! or the producer that exits, and counts those that exited with
//! `EXIT_STUCK` (a call into librdkafka cut off by the watchdog).
//!
//! After each fault every partition must commit again (within
//! `HEAL_TIMEOUT`) before the next one, and afterwards the audit must pass:
//! every committed transfer decided exactly once, decisions in the ledger's
//! order, money conserved. The run measures what the faults cost, printed
//! with its summary: the time until every partition committed again after
//! each fault, the longest pause between outcomes per partition, and the
//! `hold_expired` rejections (the audit allows them: they depend on
//! timing). A partition still for longer than `STILL_MAX` fails the test:
//! a shard stuck for good, which the watchdog exists to prevent. The
//! targets (no pause over 30 s, no `hold_expired`) are not met on this
//! machine: a SIGKILLed or paused node leaves its partitions and
//! coordinators without a leader for the broker session (9 s), and
//! librdkafka's hangs then cost a cut-off and a restart (docs/DESIGN.md).

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::OpenTransactions;
use harness::testkit::{Isolation, TopicReader};
use harness::{Cluster, ClusterOptions};
use ledger::kafka;
use ledger::watchdog::EXIT_STUCK;
use ledger_cli::pipeline::{Binaries, Pipeline, PipelineConfig, ProducerRun};
use ledger_core::wire;

const SHARDS: u32 = 2;
const PARTITIONS: i32 = 6;
const RATE: u64 = 1_000;
/// How long a killed node stays down before it is started again.
const DOWN: Duration = Duration::from_secs(8);
/// Longer than the shards' session timeout (10 s, the default).
const PAUSED: Duration = Duration::from_secs(15);
/// The longest a partition's outcomes may stop while transfers arrive:
/// two holds (`--hold-max-ms`, 60 s). Measured on this machine: 15-45 s.
const STILL_MAX: Duration = Duration::from_secs(120);
/// Bound on the cluster's healing after a fault (the node back, every
/// replica in sync).
const HEAL_TIMEOUT: Duration = Duration::from_secs(180);

/// A fault that happened: what was done, to which node, in which role.
struct Fault {
    action: &'static str,
    node: u32,
    role: String,
    /// Since the producer started.
    at: Duration,
    /// From the fault until every partition's shard committed again.
    flowing_after: Duration,
}

/// The pipeline's processes, restarted when they exit, as a platform
/// restarts a container.
struct Supervisor {
    pipeline: Pipeline,
    producer: ProducerRun,
    started: Instant,
    /// Exit statuses of shards and producers that ended on their own.
    exits: Vec<String>,
    stuck_exits: u32,
    /// Shards restarted and not ready yet, since when.
    restarting: BTreeMap<usize, Instant>,
    /// How long each restarted shard took to be ready again.
    recoveries: Vec<Duration>,
}

impl Supervisor {
    /// Restarts whatever exited on its own.
    fn supervise(&mut self) {
        for shard in self.pipeline.active_shards() {
            if let Some(status) = self.pipeline.shard_exit(shard) {
                if status.code() == Some(i32::from(EXIT_STUCK)) {
                    self.stuck_exits += 1;
                }
                self.exits.push(format!(
                    "shard {shard} at {:?}: {status}",
                    self.started.elapsed()
                ));
                self.pipeline.start_shard(shard).expect("restart a shard");
                self.restarting.insert(shard, Instant::now());
            }
        }
        let pipeline = &self.pipeline;
        let ready: Vec<usize> = self
            .restarting
            .keys()
            .copied()
            .filter(|shard| pipeline.shard_ready(*shard))
            .collect();
        for shard in ready {
            if let Some(since) = self.restarting.remove(&shard) {
                self.recoveries.push(since.elapsed());
            }
        }
        if let Some(status) = self.pipeline.producer_exit() {
            self.exits.push(format!(
                "producer at {:?}: {status}",
                self.started.elapsed()
            ));
            self.pipeline
                .start_producer(&self.producer)
                .expect("restart the producer");
        }
    }
}

/// The cluster, the supervised pipeline, and the faults done so far.
struct Run {
    cluster: Cluster,
    supervisor: Supervisor,
    faults: Vec<Fault>,
}

impl Run {
    /// Supervises for `period` while transfers flow.
    fn run_for(&mut self, period: Duration) {
        self.on_cluster(|_| std::thread::sleep(period));
    }

    /// Runs `operation` on the cluster (starting a node waits until it
    /// serves, which takes seconds) while the pipeline stays supervised: a
    /// shard that exits meanwhile is restarted at once, as by a platform.
    fn on_cluster<T: Send>(&mut self, operation: impl FnOnce(&mut Cluster) -> T + Send) -> T {
        let cluster = &mut self.cluster;
        let supervisor = &mut self.supervisor;
        std::thread::scope(|scope| {
            let done = scope.spawn(|| operation(cluster));
            while !done.is_finished() {
                supervisor.supervise();
                std::thread::sleep(Duration::from_millis(100));
            }
            supervisor.supervise();
            done.join().expect("the cluster operation panicked")
        })
    }

    /// Waits, supervising, until every shard is ready and has decided all
    /// it read: a shard's call may still be cut off after the last fault.
    fn settle(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.supervisor.supervise();
            let pipeline = &self.supervisor.pipeline;
            let ready = pipeline
                .active_shards()
                .into_iter()
                .all(|shard| pipeline.shard_ready(shard));
            if ready && pipeline.caught_up().unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not caught up within {timeout:?} (lag {:?})",
                    pipeline.lag()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn record(&mut self, action: &'static str, node: u32, role: String) {
        let at = self.supervisor.started.elapsed();
        let _ = writeln!(
            std::io::stderr(),
            "cluster fault at {at:?}: {action} node {node}, {role}"
        );
        self.faults.push(Fault {
            action,
            node,
            role,
            at,
            flowing_after: Duration::ZERO,
        });
    }

    /// The next offset of each `transactions` partition that its shard
    /// has committed, as the shards that answer report it.
    fn committed_transfers(&self) -> BTreeMap<i32, i64> {
        self.supervisor
            .pipeline
            .stats()
            .into_iter()
            .flatten()
            .flat_map(|stats| stats.offsets)
            .filter(|offset| offset.source == ledger_core::machine::Source::Transfers)
            .map(|offset| (offset.partition, offset.next_offset))
            .collect()
    }

    /// Waits, supervising, until every partition of `transactions` has
    /// moved on since the cluster healed: the pipeline is whole again
    /// before the next fault, so that each fault's pause is its own.
    fn wait_flowing(&mut self) {
        let before = self.committed_transfers();
        let deadline = Instant::now() + HEAL_TIMEOUT;
        loop {
            self.supervisor.supervise();
            let now = self.committed_transfers();
            let moved = (0..PARTITIONS).all(|partition| {
                now.get(&partition).copied().unwrap_or(-1)
                    > before.get(&partition).copied().unwrap_or(-1)
            });
            if moved {
                break;
            }
            if Instant::now() >= deadline {
                self.print_logs();
                panic!("the pipeline did not flow again within {HEAL_TIMEOUT:?}: {now:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let started = self.supervisor.started;
        if let Some(fault) = self.faults.last_mut() {
            fault.flowing_after = started.elapsed().saturating_sub(fault.at);
        }
    }

    /// Kills `node`, keeps the traffic going for `DOWN`, starts it again
    /// and waits until every replica is back in sync and the pipeline
    /// flows again.
    fn kill_and_restart(&mut self, node: u32, role: String) {
        self.cluster.kill(node).expect("kill a node");
        self.record("killed", node, role);
        self.run_for(DOWN);
        self.on_cluster(|cluster| cluster.start_node(node))
            .expect("start the node again");
        self.heal();
        self.wait_flowing();
    }

    /// Waits, supervising, until the cluster is whole again.
    fn heal(&mut self) {
        if let Err(error) = self.on_cluster(|cluster| cluster.wait_in_sync(HEAL_TIMEOUT)) {
            self.print_logs();
            panic!("the cluster did not heal within {HEAL_TIMEOUT:?}: {error}");
        }
    }

    fn print_logs(&self) {
        let pipeline = &self.supervisor.pipeline;
        for shard in 0..SHARDS as usize {
            let log = std::fs::read_to_string(pipeline.shard_log(shard)).unwrap_or_default();
            eprintln!(
                "--- shard {shard} log tail ---\n{}",
                harness::testkit::tail(&log, 40)
            );
        }
        let log = std::fs::read_to_string(pipeline.producer_log()).unwrap_or_default();
        eprintln!(
            "--- producer log tail ---\n{}",
            harness::testkit::tail(&log, 20)
        );
        eprintln!("{}", self.cluster.logs_tail(40));
    }
}

/// Milliseconds since the epoch, the clock of the records' timestamps.
fn epoch_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The longest pause between two consecutive outcomes of transfers, per
/// input partition, among the outcomes written in `[from_ms, to_ms]`.
fn longest_pauses(records: &[harness::testkit::Record], from_ms: i64, to_ms: i64) -> Vec<i64> {
    let mut times: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for record in records {
        let Some(at) = record
            .timestamp_ms
            .filter(|at| (from_ms..=to_ms).contains(at))
        else {
            continue;
        };
        let payload = record.payload.as_deref().expect("an outcome has a payload");
        let outcome = wire::decode_outcome(payload).expect("an outcome decodes");
        times.entry(outcome.partition).or_default().push(at);
    }
    (0..PARTITIONS)
        .map(|partition| {
            let mut times = times.remove(&partition).unwrap_or_default();
            times.sort_unstable();
            // From the window's start and to its end too: a partition that
            // stopped for good shows its whole silence.
            let mut edges = vec![from_ms];
            edges.extend(times);
            edges.push(to_ms);
            edges
                .windows(2)
                .map(|pair| pair[1] - pair[0])
                .max()
                .unwrap_or(0)
        })
        .collect()
}

#[test]
fn shards_ride_through_broker_faults_on_a_three_node_cluster() {
    let binaries = Binaries::locate().expect("the producer and consumer binaries");
    let cluster = Cluster::start(ClusterOptions::default())
        .unwrap_or_else(|error| panic!("starting a three-node cluster: {error}"));
    cluster.print_logs_on_panic();
    let prefix = harness::unique_name("cluster") + "-";
    let work = tempfile::tempdir().expect("work dir");
    let config = PipelineConfig {
        // The production default (the pipeline's 10 s is for quick
        // scale-ins): a shard held in a call keeps its partitions until its
        // watchdog ends it, and its restart takes them back as the same
        // static member, with no rebalance.
        shard_env: vec![(
            ledger::names::TXLEDGER_MAX_POLL_INTERVAL_MS.to_owned(),
            "300000".to_owned(),
        )],
        group_assignment: true,
        ..PipelineConfig::prefixed(
            cluster.bootstrap_servers().to_owned(),
            &prefix,
            PARTITIONS,
            SHARDS,
            work.path().to_owned(),
        )
    };
    let group_id = config.group_id.clone();
    let shard_ids: Vec<String> = (0..SHARDS)
        .map(|shard| kafka::shard_transactional_id(&config.transactional_id_prefix, shard))
        .collect();
    let topics = config.topics.clone();
    let mut pipeline = Pipeline::new(config, binaries).expect("pipeline");
    pipeline.create_topics().expect("topics");
    pipeline.start_shards().expect("shards");
    if let Err(error) = pipeline.wait_ready(Duration::from_secs(300)) {
        eprintln!("{}", cluster.logs_tail(40));
        panic!("{error}");
    }
    let producer = ProducerRun {
        // More than the run needs: it is stopped once the faults are done.
        count: 10_000_000,
        rate: RATE,
        seed: 24,
        accounts: 500,
        batch_ms: 100,
    };
    pipeline.start_producer(&producer).expect("producer");
    let producing_from = epoch_ms();
    let open_outcomes =
        OpenTransactions::new(cluster.bootstrap_servers(), &topics.results, PARTITIONS);
    let mut run = Run {
        cluster,
        supervisor: Supervisor {
            pipeline,
            producer,
            started: Instant::now(),
            exits: Vec::new(),
            stuck_exits: 0,
            restarting: BTreeMap::new(),
            recoveries: Vec::new(),
        },
        faults: Vec::new(),
    };
    // Traffic settles before the first fault.
    run.run_for(Duration::from_secs(10));

    // 1. The group coordinator, while a shard's transaction has outcomes
    //    in it (its offsets go to that coordinator at the commit).
    let mid_transaction = open_outcomes.wait_for_records(Duration::from_secs(10));
    let node = run
        .cluster
        .group_coordinator(&group_id)
        .expect("group coordinator");
    run.kill_and_restart(
        node,
        format!(
            "group coordinator of {group_id} ({} a shard's transaction)",
            if mid_transaction {
                "in the middle of"
            } else {
                "between two of"
            }
        ),
    );
    assert!(
        mid_transaction,
        "no shard transaction with outcomes was open in 10 s of traffic"
    );

    // 2. The transaction coordinator of shard 0's transactional.id.
    let node = run
        .cluster
        .transaction_coordinator(&shard_ids[0])
        .expect("transaction coordinator");
    run.kill_and_restart(node, format!("transaction coordinator of {}", shard_ids[0]));

    // 3. The leader of a partition of `transactions`.
    let node = run
        .cluster
        .partition_leader(&topics.transactions, 0)
        .expect("partition leader");
    run.kill_and_restart(node, format!("leader of {}/0", topics.transactions));

    // 4. A node paused for longer than the shards' session timeout: the
    //    transaction coordinator of shard 1.
    let node = run
        .cluster
        .transaction_coordinator(&shard_ids[1])
        .expect("transaction coordinator");
    run.cluster.pause(node).expect("pause a node");
    run.record(
        "paused",
        node,
        format!("transaction coordinator of {} for {PAUSED:?}", shard_ids[1]),
    );
    run.run_for(PAUSED);
    run.cluster.resume(node).expect("resume the node");
    run.heal();
    run.wait_flowing();

    // 5. The active KRaft controller.
    let node = run.cluster.active_controller().expect("active controller");
    run.kill_and_restart(node, "active controller".to_owned());

    run.run_for(Duration::from_secs(10));
    let producing_to = epoch_ms();
    let stopped = run.supervisor.pipeline.stop_producer();
    assert!(
        stopped.is_some(),
        "the producer did not stop within its grace"
    );
    if let Err(error) = run.settle(Duration::from_secs(300)) {
        run.print_logs();
        panic!("the shards did not settle: {error}");
    }
    let report = match run.supervisor.pipeline.audit() {
        Ok(report) => report,
        Err(error) => {
            run.print_logs();
            panic!("the audit could not run: {error}");
        }
    };

    let mut outcomes = TopicReader::new(
        run.cluster.bootstrap_servers(),
        &topics.results,
        PARTITIONS,
        Isolation::ReadCommitted,
    );
    let outcomes = outcomes.read_at_least_then_end(report.totals.outcomes as usize);
    let pauses = longest_pauses(outcomes, producing_from, producing_to);
    let faults: Vec<String> = run
        .faults
        .iter()
        .map(|fault| {
            format!(
                "{:?}: {} node {}, {}; every partition committed again {:?} later",
                fault.at, fault.action, fault.node, fault.role, fault.flowing_after
            )
        })
        .collect();
    let _ = writeln!(
        std::io::stderr(),
        "cluster run over {:?}: {} transfers committed, faults:\n  {}\nexits (restarted): \
         {:?} ({} cut off by the watchdog), ready again after {:?}\nlongest pause between outcomes per partition \
         (ms): {pauses:?}\nhold_expired: {}\n{report}",
        run.supervisor.started.elapsed(),
        report.totals.inputs_committed,
        faults.join("\n  "),
        run.supervisor.exits,
        run.supervisor.stuck_exits,
        run.supervisor.recoveries,
        report.totals.hold_expired,
    );
    let longest = pauses.iter().copied().max().unwrap_or(0);
    let failed = !report.passed() || longest > STILL_MAX.as_millis() as i64;
    if failed {
        run.print_logs();
        // The shards' logs and directories are the evidence: kept.
        let kept = work.keep();
        eprintln!("shard logs and data kept in {}", kept.display());
    }
    assert!(report.passed(), "the audit failed after the cluster faults");
    assert_eq!(run.faults.len(), 5, "every fault happened");
    assert!(
        longest <= STILL_MAX.as_millis() as i64,
        "a partition's outcomes paused {longest} ms (per partition: {pauses:?}), bound {STILL_MAX:?}"
    );
}
