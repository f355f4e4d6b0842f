//! `ledger demo`: the whole pipeline on this machine, no container engine
//! needed: a local broker or cluster (or `KAFKA_BOOTSTRAP_SERVERS`), the
//! topics, a producer and N shards as child processes, a live status line,
//! optional chaos that follows a fault plan, and the audit's verdict at the
//! end.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use harness::{Cluster, ClusterOptions, HarnessError};
use ledger::kafka;
use ledger::watchdog::EXIT_STUCK;
use ledger_cli::pipeline::{self, Binaries, Pipeline, PipelineConfig, ProducerRun};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Transfers to generate; 0 runs until Ctrl-C or --duration.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Stop producing after this many seconds.
    #[arg(long)]
    duration: Option<u64>,
    /// Transfers per second (0: as fast as possible).
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Consumer shards.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=6))]
    shards: u32,
    /// Partitions of `transactions` and `ledger-credits`.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=64))]
    partitions: i32,
    /// Accounts in the generated population.
    #[arg(long, default_value_t = 1_000)]
    accounts: u32,
    /// Seed of the generated stream.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Who assigns the shards' partitions: `ordinal` (shard i owns
    /// `p mod shards == i`) or `group` (the consumer group; shards can be
    /// retired and added while the demo runs).
    #[arg(long, value_enum, default_value_t = Assignment::Ordinal)]
    assignment: Assignment,
    /// Kafka nodes. 1: a single local broker. More: a local cluster, each
    /// node a broker and a KRaft controller (replication factor 3 and
    /// `min.insync.replicas=2` from three nodes on), which --chaos faults
    /// from three nodes on. An error with KAFKA_BOOTSTRAP_SERVERS set: the
    /// demo cannot fault the nodes of a broker it did not start.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    nodes: u32,
    /// Go through a fault plan, one fault every --chaos-interval seconds,
    /// printed at the start: kill a shard (SIGKILL) and restart it; kill
    /// one and delete its sled directory (it restores it from the
    /// changelog); kill the producer mid-transaction (at most three times;
    /// the new one resends the stream from its start). With `--assignment
    /// group` and two shards or more: scale in (a shard stopped and left
    /// stopped) and out (started again). With --nodes 3 or more: kill the
    /// broker node holding a role (the group coordinator, a shard's
    /// transaction coordinator, a partition leader, the active controller;
    /// started again 8 s later) and pause one (SIGSTOP for 15 s, past the
    /// shards' session timeout); a broker fault waits until every replica
    /// is in sync again after the previous one. After the last fault the
    /// plan starts again. Every fault happens at least once: until then, a
    /// producer that finishes is started again with the same seed (its
    /// transfers are answered `duplicate`). A producer or shard that exits
    /// is restarted. At the end, what happened is listed.
    #[arg(long)]
    chaos: bool,
    /// Seconds between chaos events.
    #[arg(long, default_value_t = 4)]
    chaos_interval: u64,
    /// Where shard data and process logs go (default: a temporary
    /// directory, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Give up waiting for the shards to catch up after this many seconds.
    #[arg(long, default_value_t = 300)]
    settle_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Assignment {
    Ordinal,
    Group,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    ledger::telemetry::init_logging(ledger::telemetry::LogFormat::Human);
    let binaries = Binaries::locate()?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(Arc::clone(&stop));
    let (bootstrap, _broker, cluster) = start_kafka(args.nodes)?;
    eprintln!("broker: {bootstrap}");
    let temporary = match &args.work_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("creating a work directory")?),
    };
    let work_dir = args
        .work_dir
        .clone()
        .or_else(|| temporary.as_ref().map(|t| t.path().to_owned()))
        .context("no work directory")?;
    let mut pipeline = Pipeline::new(pipeline_config(&args, bootstrap, &work_dir), binaries)?;
    pipeline.create_topics()?;
    pipeline.start_shards()?;
    pipeline.wait_ready(Duration::from_secs(120))?;
    eprintln!(
        "{} shards ready: {}; logs in {}",
        args.shards,
        pipeline.shard_urls().join(" "),
        work_dir.display()
    );
    let mut faults = Faults::new(&args, cluster);
    if !faults.plan.is_empty() {
        eprintln!("{}", faults.plan_line());
    }
    let mut status = StatusLine::new();
    drive(&args, &mut pipeline, &mut faults, &stop, &mut status)?;
    pipeline.stop_producer();
    faults.settle()?;
    restart_exited(&mut pipeline, &mut faults)?;
    // A shard retired by the chaos comes back for the end, as a scale-out.
    for index in 0..args.shards as usize {
        if !pipeline.active_shards().contains(&index) {
            eprintln!("starting shard {index} again (scale-out) for the audit");
            pipeline.start_shard(index)?;
        }
    }
    pipeline.wait_ready(Duration::from_secs(120))?;
    pipeline.wait_caught_up(Duration::from_secs(args.settle_timeout))?;
    status.render(&pipeline, &faults);
    eprintln!();
    audit_and_stop(pipeline, &faults, temporary)
}

/// The run's Kafka: the broker named by `KAFKA_BOOTSTRAP_SERVERS`, a local
/// broker, or a local cluster of `nodes`; local nodes stop when the
/// returned handles drop.
fn start_kafka(nodes: u32) -> anyhow::Result<(String, Option<harness::Broker>, Option<Cluster>)> {
    if nodes == 1 {
        let (bootstrap, broker) = pipeline::broker().context("starting the local broker")?;
        return Ok((bootstrap, broker, None));
    }
    if let Some(external) = pipeline::external_bootstrap() {
        anyhow::bail!(
            "--nodes {nodes} starts a local cluster, but KAFKA_BOOTSTRAP_SERVERS names a broker \
             already ({external}): unset it, or leave --nodes out"
        );
    }
    eprintln!(
        "starting a local Kafka cluster of {nodes} nodes (the first run fetches its jars with \
         Maven)..."
    );
    let cluster = Cluster::start(ClusterOptions {
        nodes: nodes as usize,
        ..ClusterOptions::default()
    })
    .context("starting the local cluster")?;
    Ok((cluster.bootstrap_servers().to_owned(), None, Some(cluster)))
}

/// A run-specific prefix keeps this run's topics, group and transactional
/// ids apart from anything else on the broker.
fn pipeline_config(args: &Args, bootstrap: String, work_dir: &Path) -> PipelineConfig {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("demo-{run_id}-");
    PipelineConfig {
        group_assignment: args.assignment == Assignment::Group,
        ..PipelineConfig::prefixed(
            bootstrap,
            &prefix,
            args.partitions,
            args.shards,
            work_dir.to_owned(),
        )
    }
}

/// Runs the producer, with chaos if asked, until it finishes (and the
/// fault plan has gone through), the duration is reached or Ctrl-C;
/// restarts any shard that exits, and with chaos the producer too.
fn drive(
    args: &Args,
    pipeline: &mut Pipeline,
    faults: &mut Faults,
    stop: &AtomicBool,
    status: &mut StatusLine,
) -> anyhow::Result<()> {
    let run = ProducerRun {
        count: args.count,
        rate: args.rate,
        seed: args.seed,
        accounts: args.accounts,
        batch_ms: 100,
    };
    pipeline.start_producer(&run)?;
    loop {
        std::thread::sleep(Duration::from_millis(1000));
        status.render(pipeline, faults);
        if stop.load(Ordering::SeqCst) {
            eprintln!("\nstopping (Ctrl-C)...");
            return Ok(());
        }
        if args
            .duration
            .is_some_and(|limit| faults.started.elapsed() >= Duration::from_secs(limit))
        {
            eprintln!("\n--duration reached, stopping the producer...");
            return Ok(());
        }
        if let Some(exit) = pipeline.producer_exit() {
            if exit.success() && !faults.wants_traffic() {
                eprintln!("\nthe producer finished; waiting for the shards to catch up...");
                return Ok(());
            }
            if exit.success() {
                faults.reruns += 1;
                eprintln!(
                    "\nthe producer finished before every fault of the plan happened: it starts \
                     again with the same seed (its transfers are answered `duplicate`)"
                );
            } else if args.chaos {
                // A broker fault may make it give up, or its watchdog cut
                // off a call (status 75): restarted as a supervisor would.
                // Without chaos nothing excuses a failure.
                faults.exited("the producer".to_owned(), exit, pipeline.producer_log());
            } else {
                anyhow::bail!(
                    "the producer failed ({exit}); its log: {}",
                    pipeline.producer_log().display()
                );
            }
            pipeline.start_producer(&run)?;
        }
        faults.step(pipeline, &run)?;
        restart_exited(pipeline, faults)?;
    }
}

/// Producer kills in one demo: each restarts the stream from its start, so
/// a stream longer than the time between them would never end.
const PRODUCER_KILLS_MAX: u32 = 3;

/// How long a killed broker node stays down before it is started again.
const NODE_DOWN: Duration = Duration::from_secs(8);

/// How long a paused broker node stays paused: past the shards' session
/// timeout (10 s), as a long GC pause or a frozen VM would.
const NODE_PAUSED: Duration = Duration::from_secs(15);

/// Bound on the cluster's return to sync after a broker fault, node
/// restart included (JVMs start slowly on a small loaded machine).
const HEAL_TIMEOUT: Duration = Duration::from_secs(180);

/// How many times the plan is gone through, at most, for every fault to
/// happen: one that cannot happen (no node found in a role) must not keep
/// the producer resending forever.
const PLAN_LAPS_MAX: u32 = 3;

/// Restarts every shard that exited on its own, saying so. Also after
/// Ctrl-C: a terminal sends SIGINT to the shards too, and they stop
/// cleanly; the demo still needs them to catch up and to audit.
fn restart_exited(pipeline: &mut Pipeline, faults: &mut Faults) -> anyhow::Result<()> {
    // A retired shard has no process: it is not restarted here.
    for index in 0..pipeline.config().shards as usize {
        if let Some(exit) = pipeline.shard_exit(index) {
            faults.exited(format!("shard {index}"), exit, pipeline.shard_log(index));
            pipeline.start_shard(index)?;
        }
    }
    Ok(())
}

/// The role of the broker node a broker fault aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    GroupCoordinator,
    TransactionCoordinator,
    PartitionLeader,
    ActiveController,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::GroupCoordinator => "the group coordinator",
            Role::TransactionCoordinator => "a shard's transaction coordinator",
            Role::PartitionLeader => "a leader of a `transactions` partition",
            Role::ActiveController => "the active controller",
        })
    }
}

impl Role {
    /// The node in this role now, and the role named in full. Where the
    /// role has several holders, `turn` (how many faults aimed at it
    /// before) chooses the shard or partition, so that they take turns.
    fn find(
        self,
        cluster: &Cluster,
        config: &PipelineConfig,
        turn: usize,
    ) -> Result<(u32, String), HarnessError> {
        Ok(match self {
            Role::GroupCoordinator => (
                cluster.group_coordinator(&config.group_id)?,
                format!("the group coordinator of {}", config.group_id),
            ),
            Role::TransactionCoordinator => {
                let shard = (turn % config.shards as usize) as u32;
                let id = kafka::shard_transactional_id(&config.transactional_id_prefix, shard);
                (
                    cluster.transaction_coordinator(&id)?,
                    format!("the transaction coordinator of shard {shard} ({id})"),
                )
            }
            Role::PartitionLeader => {
                let partition = (turn % config.partitions as usize) as i32;
                let topic = &config.topics.transactions;
                (
                    cluster.partition_leader(topic, partition)?,
                    format!("the leader of {topic}/{partition}"),
                )
            }
            Role::ActiveController => (
                cluster.active_controller()?,
                "the active controller".to_owned(),
            ),
        })
    }
}

/// What a broker fault does to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeFault {
    /// SIGKILL; started again after `NODE_DOWN`.
    Kill,
    /// SIGSTOP; SIGCONT after `NODE_PAUSED`.
    Pause,
}

/// One entry of the fault plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    ShardKill,
    /// The shard's disk is lost: it restores from the changelog.
    ShardDataLoss,
    ProducerKill,
    ScaleIn,
    ScaleOut,
    Node(NodeFault, Role),
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::ShardKill => "shard kill",
            Fault::ShardDataLoss => "shard kill with its sled directory deleted",
            Fault::ProducerKill => "producer kill",
            Fault::ScaleIn => "scale-in",
            Fault::ScaleOut => "scale-out",
            Fault::Node(NodeFault::Kill, _) => "broker node kill",
            Fault::Node(NodeFault::Pause, _) => "broker node pause",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Node(_, role) => write!(f, "{} ({role})", self.name()),
            _ => f.write_str(self.name()),
        }
    }
}

/// The fault plan: every fault the run's setup allows, in the order the
/// chaos goes through them. Scaling needs group assignment and two shards;
/// broker faults need three nodes (one down leaves a majority of the
/// controllers and `min.insync.replicas`). Broker faults alternate with the
/// others where they can, so that a shard or the producer is hit while a
/// node is down, and the cluster has time to heal before the next.
fn fault_plan(scaling: bool, broker_faults: bool) -> Vec<Fault> {
    use Fault::*;
    use NodeFault::*;
    [
        (ShardKill, true),
        (Node(Kill, Role::GroupCoordinator), broker_faults),
        (ScaleIn, scaling),
        (Node(Kill, Role::TransactionCoordinator), broker_faults),
        (ShardDataLoss, true),
        (Node(Pause, Role::TransactionCoordinator), broker_faults),
        (ScaleOut, scaling),
        (Node(Kill, Role::PartitionLeader), broker_faults),
        (ProducerKill, true),
        (Node(Kill, Role::ActiveController), broker_faults),
    ]
    .into_iter()
    .filter_map(|(fault, allowed)| allowed.then_some(fault))
    .collect()
}

/// The local cluster, for broker faults. The aftermath of a fault (the
/// node down or paused for a while, started or resumed, every replica back
/// in sync) runs on a thread that holds the cluster meanwhile, so that the
/// demo goes on supervising the processes and inflicting the other faults.
struct Brokers {
    /// `None` while an aftermath holds it.
    idle: Option<Cluster>,
    healing: Option<Healing>,
}

/// A broker fault's aftermath in progress.
struct Healing {
    /// The fault's index in `Faults::happened`.
    entry: usize,
    since: Instant,
    thread: JoinHandle<(Cluster, Result<(), HarnessError>)>,
}

impl Brokers {
    /// Aims `fault` at the node in `role`: the node and its role, or
    /// `None` if no node could be found in it. The cluster must be idle.
    fn inflict(
        &mut self,
        fault: NodeFault,
        role: Role,
        config: &PipelineConfig,
        turn: usize,
        entry: usize,
    ) -> anyhow::Result<Option<String>> {
        let mut cluster = self
            .idle
            .take()
            .context("a broker fault while the previous one heals")?;
        let (node, holder) = match role.find(&cluster, config, turn) {
            Ok(found) => found,
            Err(error) => {
                self.idle = Some(cluster);
                eprintln!("\nno node found as {role}, no broker fault this time: {error}");
                return Ok(None);
            }
        };
        let (done, aftermath) = match fault {
            NodeFault::Kill => (cluster.kill(node), NODE_DOWN),
            NodeFault::Pause => (cluster.pause(node), NODE_PAUSED),
        };
        if let Err(error) = done {
            self.idle = Some(cluster);
            return Err(error).with_context(|| format!("{fault:?} node {node}"));
        }
        let thread = std::thread::spawn(move || {
            std::thread::sleep(aftermath);
            let result = match fault {
                NodeFault::Kill => cluster.start_node(node),
                NodeFault::Pause => cluster.resume(node),
            }
            .and_then(|()| cluster.wait_in_sync(HEAL_TIMEOUT));
            (cluster, result)
        });
        self.healing = Some(Healing {
            entry,
            since: Instant::now(),
            thread,
        });
        Ok(Some(format!("node {node}, {holder}")))
    }

    /// The end of the aftermath, if it has ended: the fault's entry and how
    /// long after the fault the cluster was whole again.
    fn poll(&mut self) -> anyhow::Result<Option<(usize, Duration)>> {
        match &self.healing {
            Some(healing) if healing.thread.is_finished() => self.join(),
            _ => Ok(None),
        }
    }

    /// Waits for the aftermath in progress, if any, to end.
    fn join(&mut self) -> anyhow::Result<Option<(usize, Duration)>> {
        let Some(healing) = self.healing.take() else {
            return Ok(None);
        };
        let (cluster, result) = healing
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the thread restoring a broker node panicked"))?;
        self.idle = Some(cluster);
        result.context("a broker node did not come back after its fault")?;
        Ok(Some((healing.entry, healing.since.elapsed())))
    }

    /// Ends the fault in progress, then makes sure that every node runs and
    /// every replica is in sync: the audit reads every partition.
    fn settle(&mut self) -> anyhow::Result<Option<(usize, Duration)>> {
        if self.healing.is_some() {
            eprintln!("waiting for the broker node of the last fault to come back...");
        }
        let healed = self.join()?;
        let cluster = self
            .idle
            .as_mut()
            .context("the cluster is held elsewhere")?;
        for node in cluster.node_ids() {
            if !cluster.is_running(node) {
                eprintln!("node {node} is down; starting it for the audit");
                cluster.start_node(node)?;
            }
        }
        cluster
            .wait_in_sync(HEAL_TIMEOUT)
            .context("the cluster before the audit")?;
        Ok(healed)
    }
}

/// A fault that happened.
struct Happened {
    /// Since the start of the producer.
    at: Duration,
    fault: Fault,
    /// The shard, or the node and its role, it hit.
    target: String,
    /// For a broker fault: how long after it the cluster was whole again.
    healed: Option<Duration>,
}

/// A producer or shard that exited on its own and was restarted.
struct Exit {
    at: Duration,
    process: String,
    status: ExitStatus,
}

/// The faults of a run: the plan (empty without --chaos), how far it has
/// gone, and what happened, planned or not, for the summary at the end.
struct Faults {
    plan: Vec<Fault>,
    /// The plan entry due next.
    next: usize,
    /// How many times each plan entry happened.
    done: Vec<u32>,
    /// Times the plan was gone through to its end.
    laps: u32,
    interval: Duration,
    due: Instant,
    /// Rotates the shard a shard fault aims at.
    turn: usize,
    brokers: Option<Brokers>,
    started: Instant,
    happened: Vec<Happened>,
    exits: Vec<Exit>,
    /// Times the producer was started again after finishing, for the plan
    /// to go through.
    reruns: u32,
}

impl Faults {
    fn new(args: &Args, cluster: Option<Cluster>) -> Faults {
        let plan = if args.chaos {
            fault_plan(
                args.assignment == Assignment::Group && args.shards > 1,
                args.nodes >= 3,
            )
        } else {
            Vec::new()
        };
        let interval = Duration::from_secs(args.chaos_interval);
        Faults {
            done: vec![0; plan.len()],
            plan,
            next: 0,
            laps: 0,
            interval,
            due: Instant::now() + interval,
            turn: 0,
            brokers: cluster.map(|cluster| Brokers {
                idle: Some(cluster),
                healing: None,
            }),
            started: Instant::now(),
            happened: Vec::new(),
            exits: Vec::new(),
            reruns: 0,
        }
    }

    fn plan_line(&self) -> String {
        let entries: Vec<String> = self
            .plan
            .iter()
            .enumerate()
            .map(|(index, fault)| format!("{}. {fault}", index + 1))
            .collect();
        format!("fault plan: {}; then from 1. again", entries.join(", "))
    }

    /// Whether the producer should go on after its stream: the plan has not
    /// gone through yet (within `PLAN_LAPS_MAX`).
    fn wants_traffic(&self) -> bool {
        self.done.contains(&0) && self.laps < PLAN_LAPS_MAX
    }

    /// Inflicts the plan's next fault if it is due, and notes the end of a
    /// broker fault's aftermath.
    fn step(&mut self, pipeline: &mut Pipeline, run: &ProducerRun) -> anyhow::Result<()> {
        if let Some(brokers) = self.brokers.as_mut() {
            if let Some(healed) = brokers.poll()? {
                self.healed(healed);
            }
        }
        let Some(&fault) = self.plan.get(self.next) else {
            return Ok(());
        };
        // Never two nodes down at once: a broker fault waits for the
        // cluster to be whole again after the previous one.
        let healing = self
            .brokers
            .as_ref()
            .is_some_and(|brokers| brokers.healing.is_some());
        if Instant::now() < self.due || matches!(fault, Fault::Node(..)) && healing {
            return Ok(());
        }
        let entry = self.next;
        self.next = (self.next + 1) % self.plan.len();
        if self.next == 0 {
            self.laps += 1;
        }
        self.due = Instant::now() + self.interval;
        self.turn += 1;
        let at = self.started.elapsed();
        if let Some(target) = self.inflict(fault, pipeline, run)? {
            eprintln!("\n{}: {target}", fault.name());
            self.done[entry] += 1;
            self.happened.push(Happened {
                at,
                fault,
                target,
                healed: None,
            });
        }
        Ok(())
    }

    /// Inflicts `fault`: the shard or node it hit, or `None` if it cannot
    /// happen now (the plan's next lap may bring it).
    fn inflict(
        &mut self,
        fault: Fault,
        pipeline: &mut Pipeline,
        run: &ProducerRun,
    ) -> anyhow::Result<Option<String>> {
        let active = pipeline.active_shards();
        let shard = active[self.turn % active.len()];
        Ok(match fault {
            Fault::ShardKill => {
                pipeline.kill_shard(shard);
                pipeline.start_shard(shard)?;
                Some(format!("shard {shard}"))
            }
            Fault::ShardDataLoss => {
                pipeline.lose_shard_data(shard)?;
                pipeline.start_shard(shard)?;
                Some(format!("shard {shard}, restoring from the changelog"))
            }
            // The new producer, with the same seed and transactional id,
            // fences its predecessor and resends the stream from the start;
            // the shards answer the already-decided ids with `duplicate`.
            Fault::ProducerKill if pipeline.disruptions.producer_kills < PRODUCER_KILLS_MAX => {
                pipeline.kill_producer();
                pipeline.start_producer(run)?;
                Some("the producer, started again".to_owned())
            }
            Fault::ProducerKill => None,
            // Its partitions go to the others once its session expires.
            Fault::ScaleIn if active.len() > 1 => {
                pipeline.retire_shard(shard);
                Some(format!(
                    "shard {shard} stopped, its partitions to the others"
                ))
            }
            Fault::ScaleIn => None,
            Fault::ScaleOut => {
                match (0..pipeline.config().shards as usize).find(|index| !active.contains(index)) {
                    Some(retired) => {
                        pipeline.start_shard(retired)?;
                        Some(format!("shard {retired} started again"))
                    }
                    None => None,
                }
            }
            Fault::Node(node_fault, role) => {
                let entry = self.happened.len();
                let turn =
                    self.count(|fault| matches!(fault, Fault::Node(_, aimed) if aimed == role));
                self.brokers
                    .as_mut()
                    .context("broker faults need the local cluster")?
                    .inflict(node_fault, role, pipeline.config(), turn, entry)?
            }
        })
    }

    /// Notes the end of a broker fault's aftermath.
    fn healed(&mut self, (entry, after): (usize, Duration)) {
        let happened = &mut self.happened[entry];
        happened.healed = Some(after);
        eprintln!(
            "\n{}: node back, every replica in sync {}s after the fault",
            happened.target,
            after.as_secs()
        );
    }

    /// Ends the broker fault in progress and makes the cluster whole.
    fn settle(&mut self) -> anyhow::Result<()> {
        if let Some(brokers) = self.brokers.as_mut() {
            if let Some(healed) = brokers.settle()? {
                self.healed(healed);
            }
        }
        Ok(())
    }

    /// Notes a producer or shard that exited on its own, before its restart.
    fn exited(&mut self, process: String, status: ExitStatus, log: &Path) {
        eprintln!(
            "\n{process} exited ({status}{}); restarting it. Its log: {}",
            stuck_note(status),
            log.display()
        );
        self.exits.push(Exit {
            at: self.started.elapsed(),
            process,
            status,
        });
    }

    fn count(&self, fault: impl Fn(Fault) -> bool) -> usize {
        self.happened
            .iter()
            .filter(|happened| fault(happened.fault))
            .count()
    }
}

/// `status` explained if it is the watchdog's.
fn stuck_note(status: ExitStatus) -> &'static str {
    if status.code() == Some(i32::from(EXIT_STUCK)) {
        ", a Kafka call overran its bound"
    } else {
        ""
    }
}

/// The summary: the faults in order, the plan's entries that did not
/// happen, the restarts after exits.
impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.plan.is_empty() {
            writeln!(f, "faults:")?;
            for happened in &self.happened {
                write!(
                    f,
                    "  {:>5}s  {}: {}",
                    happened.at.as_secs(),
                    happened.fault.name(),
                    happened.target
                )?;
                match happened.healed {
                    Some(after) => writeln!(f, "; whole again {}s later", after.as_secs())?,
                    None => writeln!(f)?,
                }
            }
            let missing: Vec<String> = self
                .plan
                .iter()
                .zip(&self.done)
                .filter(|(_, done)| **done == 0)
                .map(|(fault, _)| fault.to_string())
                .collect();
            if missing.is_empty() {
                writeln!(f, "every fault of the plan happened")?;
            } else {
                writeln!(f, "did not happen: {}", missing.join(", "))?;
            }
            if self.reruns > 0 {
                writeln!(
                    f,
                    "the producer's stream was sent {} more time(s) for the plan to go through",
                    self.reruns
                )?;
            }
        }
        if !self.exits.is_empty() {
            let stuck = self
                .exits
                .iter()
                .filter(|exit| !stuck_note(exit.status).is_empty())
                .count();
            let exits: Vec<String> = self
                .exits
                .iter()
                .map(|exit| {
                    format!(
                        "{} at {}s ({}{})",
                        exit.process,
                        exit.at.as_secs(),
                        exit.status,
                        stuck_note(exit.status)
                    )
                })
                .collect();
            writeln!(
                f,
                "restarted after exiting ({stuck} with status {EXIT_STUCK}): {}",
                exits.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The audit's verdict is the demo's: exit 1 if it fails, keeping the
/// evidence.
fn audit_and_stop(
    mut pipeline: Pipeline,
    faults: &Faults,
    temporary: Option<tempfile::TempDir>,
) -> anyhow::Result<ExitCode> {
    eprintln!("auditing...");
    let report = pipeline.audit()?;
    print!("{report}{faults}");
    let disruptions = pipeline.disruptions;
    let brokers = match faults.brokers {
        Some(_) => format!(
            ", {} broker node kills, {} broker node pauses",
            faults.count(|fault| matches!(fault, Fault::Node(NodeFault::Kill, _))),
            faults.count(|fault| matches!(fault, Fault::Node(NodeFault::Pause, _)))
        ),
        None => String::new(),
    };
    println!(
        "survived: {} shard kills ({} with their sled directory deleted), {} producer kills \
         ({} producer runs), {} scale-ins, {} scale-outs{brokers}, {} restarts after an exit",
        disruptions.shard_kills,
        disruptions.data_losses,
        disruptions.producer_kills,
        disruptions.producer_starts,
        disruptions.scale_ins,
        disruptions.scale_outs,
        faults.exits.len()
    );
    let statuses = pipeline.stop();
    if statuses.iter().any(|s| !s.is_some_and(|s| s.success())) {
        eprintln!("warning: a shard did not stop cleanly: {statuses:?}");
    }
    if let (Some(temporary), true) = (temporary, !report.passed()) {
        let kept = temporary.keep();
        eprintln!("shard data and logs kept in {}", kept.display());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Sets `stop` on Ctrl-C (SIGINT) or SIGTERM.
fn watch_ctrl_c(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let signalled = runtime.block_on(async {
            let shutdown = ledger::signal::shutdown_signal()?;
            shutdown.await;
            std::io::Result::Ok(())
        });
        // Handlers that could not be installed leave the signals their
        // default action, which ends the demo without its clean-up.
        if signalled.is_ok() {
            stop.store(true, Ordering::SeqCst);
        }
    });
}

/// One line, rewritten in place on a terminal (a line every 5 s otherwise).
struct StatusLine {
    terminal: bool,
    last_outcomes: f64,
    last_at: Instant,
    last_printed: Option<Instant>,
}

impl StatusLine {
    fn new() -> Self {
        StatusLine {
            terminal: std::io::stderr().is_terminal(),
            last_outcomes: 0.0,
            last_at: Instant::now(),
            last_printed: None,
        }
    }

    fn render(&mut self, pipeline: &Pipeline, faults: &Faults) {
        if !self.terminal
            && self
                .last_printed
                .is_some_and(|at| at.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        let outcomes = pipeline.metric_totals("txledger_consumer_outcomes_total");
        let by_status = |status: &str| -> f64 {
            outcomes
                .iter()
                .filter(|(labels, _)| labels.contains(&format!("status=\"{status}\"")))
                .map(|(_, value)| value)
                // fold from +0.0: an empty f64 sum is -0.0, printed "-0".
                .fold(0.0, |total, value| total + value)
        };
        let (accepted, rejected, duplicate) = (
            by_status("accepted"),
            by_status("rejected"),
            by_status("duplicate"),
        );
        let total = accepted + rejected + duplicate;
        let elapsed = self.last_at.elapsed().as_secs_f64().max(0.001);
        // Counters restart with a killed shard; never show a negative rate.
        let rate = ((total - self.last_outcomes) / elapsed).max(0.0);
        self.last_outcomes = total;
        self.last_at = Instant::now();
        let stats = pipeline.stats();
        let up = stats.iter().filter(|s| s.is_some()).count();
        let sum: rust_decimal::Decimal = stats
            .iter()
            .flatten()
            .filter_map(|s| s.sum.parse::<rust_decimal::Decimal>().ok())
            .sum();
        let in_flight = credits_in_flight(sum);
        let lag = pipeline.lag().map_or("?".to_owned(), |lag| lag.to_string());
        let d = pipeline.disruptions;
        let plan = match faults.plan.len() {
            0 => String::new(),
            len => format!(
                " | faults {} (plan {}/{len})",
                faults.happened.len(),
                faults.next
            ),
        };
        let line = format!(
            "{:>4}s | {:>7.0} outcomes/s | accepted {:.0} rejected {:.0} duplicate {:.0} | lag {lag} | shards up {up}/{} | sum of balances {sum} (credits in flight: {in_flight}) | kills: shards {} producer {}{plan}",
            faults.started.elapsed().as_secs(),
            rate,
            accepted,
            rejected,
            duplicate,
            stats.len(),
            d.shard_kills,
            d.producer_kills,
        );
        let mut stderr = std::io::stderr();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(stderr, "{line}");
        }
        let _ = stderr.flush();
        self.last_printed = Some(Instant::now());
    }
}

/// The credits emitted but not yet applied, from the sum of the shards'
/// balances: its opposite (it returns to exactly zero once they land).
/// Negating a zero Decimal keeps a sign that prints as "-0.00".
fn credits_in_flight(balance_sum: rust_decimal::Decimal) -> rust_decimal::Decimal {
    let in_flight = -balance_sum;
    if in_flight.is_zero() {
        in_flight.abs()
    } else {
        in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use rust_decimal::Decimal;

    #[derive(Debug, Parser)]
    struct Demo {
        #[command(flatten)]
        args: Args,
    }

    fn plan(command_line: &str) -> Vec<Fault> {
        let demo = Demo::try_parse_from(command_line.split_whitespace()).unwrap();
        Faults::new(&demo.args, None).plan
    }

    fn names(plan: &[Fault]) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = plan.iter().map(|fault| fault.name()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    #[test]
    fn the_plan_holds_every_fault_the_setup_allows() {
        assert!(plan("demo").is_empty(), "no plan without --chaos");
        let shard_and_producer = [Fault::ShardKill, Fault::ShardDataLoss, Fault::ProducerKill];
        assert_eq!(plan("demo --chaos"), shard_and_producer);
        // Scaling needs the group and two shards; broker faults three nodes.
        assert_eq!(
            plan("demo --chaos --assignment group --shards 1"),
            shard_and_producer
        );
        assert_eq!(plan("demo --chaos --nodes 2"), shard_and_producer);
        let scaling = plan("demo --chaos --assignment group");
        assert_eq!(
            names(&scaling),
            [
                "producer kill",
                "scale-in",
                "scale-out",
                "shard kill",
                "shard kill with its sled directory deleted"
            ]
        );
        let position = |plan: &[Fault], fault| plan.iter().position(|f| *f == fault).unwrap();
        assert!(position(&scaling, Fault::ScaleIn) < position(&scaling, Fault::ScaleOut));

        let full = plan("demo --chaos --assignment group --nodes 3");
        assert_eq!(names(&full).len(), 7, "{full:?}");
        let killed: Vec<Role> = full
            .iter()
            .filter_map(|fault| match fault {
                Fault::Node(NodeFault::Kill, role) => Some(*role),
                _ => None,
            })
            .collect();
        for role in [
            Role::GroupCoordinator,
            Role::TransactionCoordinator,
            Role::PartitionLeader,
            Role::ActiveController,
        ] {
            assert!(killed.contains(&role), "{role} is never killed: {full:?}");
        }
        assert_eq!(
            plan("demo --chaos --nodes 5")
                .iter()
                .filter(|fault| matches!(fault, Fault::Node(..)))
                .count(),
            5
        );
    }

    #[test]
    fn nodes_are_one_to_five() {
        for nodes in ["0", "6"] {
            assert!(Demo::try_parse_from(["demo", "--nodes", nodes]).is_err());
        }
        assert_eq!(Demo::try_parse_from(["demo"]).unwrap().args.nodes, 1);
    }

    #[test]
    fn the_plan_line_numbers_the_faults() {
        let demo = Demo::try_parse_from(["demo", "--chaos", "--nodes", "3"]).unwrap();
        assert_eq!(
            Faults::new(&demo.args, None).plan_line(),
            "fault plan: 1. shard kill, 2. broker node kill (the group coordinator), \
             3. broker node kill (a shard's transaction coordinator), \
             4. shard kill with its sled directory deleted, \
             5. broker node pause (a shard's transaction coordinator), \
             6. broker node kill (a leader of a `transactions` partition), 7. producer kill, \
             8. broker node kill (the active controller); then from 1. again"
        );
    }

    #[test]
    fn credits_in_flight_are_the_opposite_of_the_sum_and_zero_is_unsigned() {
        let parse = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(credits_in_flight(parse("0.00")).to_string(), "0.00");
        assert_eq!(credits_in_flight(parse("-127.50")).to_string(), "127.50");
        assert_eq!(credits_in_flight(parse("3.25")).to_string(), "-3.25");
    }
}
