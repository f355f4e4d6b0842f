//! A real three-node cluster: replication by default, role lookups, and
//! faults aimed at roles (a partition leader killed while a transactional
//! producer commits, a node paused, a node stopped), each healed before the
//! next. The CLI's cluster commands run against a second, detached cluster.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use common::{payloads, read_all, transactional_producer, wait_settled, DEADLINE};
use harness::testkit::{wait_until, DaemonCli, Isolation};
use harness::{create_topics, unique_name, Cluster, ClusterOptions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;

#[test]
fn a_three_node_cluster_survives_faults_aimed_at_roles() {
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterOptions::default()).expect("start a 3-node cluster");
    cluster.print_logs_on_panic();
    eprintln!("cluster ready after {:?}", started.elapsed());
    let bootstrap = cluster.bootstrap_servers().to_owned();
    assert_eq!(bootstrap.split(',').count(), 3, "{bootstrap}");
    let nodes: Vec<u32> = cluster.node_ids().collect();
    assert_eq!(nodes, [1, 2, 3]);

    // Topics take the cluster's replication factor.
    let topic = unique_name("cluster");
    create_topics(&bootstrap, &[(&topic, PARTITIONS)]).expect("create topic");
    for partition in metadata_partitions(&bootstrap, &topic) {
        assert_eq!(partition.len(), 3, "{topic}: replicas {partition:?}");
    }

    // Roles.
    let transactional_id = unique_name("tx-cluster");
    let producer = transactional_producer(&bootstrap, &transactional_id);
    let coordinator = cluster
        .transaction_coordinator(&transactional_id)
        .expect("transaction coordinator");
    assert!(cluster.is_running(coordinator), "coordinator {coordinator}");
    let controller = cluster.active_controller().expect("active controller");
    assert!(nodes.contains(&controller), "controller {controller}");
    let group = unique_name("group-cluster");
    let error = cluster
        .group_coordinator(&group)
        .expect_err("no group yet, so no __consumer_offsets");
    assert!(format!("{error}").contains("does not exist yet"), "{error}");
    commit_group_offset(&bootstrap, &group, &topic);
    let group_coordinator = cluster
        .group_coordinator(&group)
        .expect("group coordinator");
    assert!(nodes.contains(&group_coordinator));

    // Kill the leader of partition 0 while transactions keep committing
    // with acks=all.
    let committer = Committer::start(producer, &topic);
    committer.wait_for_commits(3);
    let leader = cluster.partition_leader(&topic, 0).expect("leader");
    cluster.kill(leader).expect("kill the leader");
    let killed = Instant::now();
    assert!(!cluster.is_running(leader));
    assert_eq!(cluster.pid(leader), None);
    let mut new_leader = leader;
    wait_until("a new leader of partition 0", || {
        new_leader = cluster.partition_leader(&topic, 0).expect("leader");
        new_leader != leader
    });
    eprintln!(
        "partition 0: leader {leader} killed, {new_leader} leads after {:?}",
        killed.elapsed()
    );
    let before = committer.commits();
    committer.wait_for_commits(before + 3);
    eprintln!(
        "{} transactions committed {:?} after the kill",
        committer.commits() - before,
        killed.elapsed()
    );
    let restarted = Instant::now();
    cluster.start_node(leader).expect("start the killed node");
    eprintln!(
        "node {leader} serving again after {:?}",
        restarted.elapsed()
    );
    assert!(cluster.is_running(leader));
    cluster
        .wait_in_sync(DEADLINE)
        .expect("in sync after the restart");
    eprintln!("in sync {:?} after the restart", restarted.elapsed());

    // Every committed record, and nothing else, is visible.
    let (producer, committed) = committer.stop();
    drop(producer);
    wait_settled(&bootstrap, &topic, PARTITIONS);
    assert_eq!(
        read_all(&bootstrap, &topic, PARTITIONS, Isolation::ReadCommitted),
        committed
    );

    // Pause a node: its whole process group stops, then runs again.
    let paused = cluster.partition_leader(&topic, 1).expect("leader");
    let group_leader = cluster.pid(paused).expect("a running node");
    cluster.pause(paused).expect("pause");
    wait_until("every process of the paused node stopped", || {
        group_states(group_leader).iter().all(|state| *state == 'T')
    });
    assert!(cluster.is_running(paused), "paused is not dead");
    cluster.resume(paused).expect("resume");
    wait_until("every process of the resumed node running", || {
        group_states(group_leader).iter().all(|state| *state != 'T')
    });
    cluster
        .wait_in_sync(DEADLINE)
        .expect("in sync after resume");

    // A controlled shutdown, then a start on the same ports.
    let stopped = cluster.active_controller().expect("active controller");
    let stopping = Instant::now();
    cluster.stop(stopped).expect("stop a node");
    eprintln!(
        "node {stopped} (the controller) stopped in {:?}",
        stopping.elapsed()
    );
    assert_eq!(cluster.pid(stopped), None);
    let controller = cluster.active_controller().expect("a new controller");
    assert_ne!(controller, stopped);
    cluster.start_node(stopped).expect("start the stopped node");
    assert_eq!(cluster.bootstrap_servers(), bootstrap);
    cluster.wait_in_sync(DEADLINE).expect("in sync at the end");
    eprintln!("whole test: {:?}", started.elapsed());
}

#[test]
fn the_cli_controls_a_detached_cluster() {
    let daemon = DaemonCli::new(env!("CARGO_BIN_EXE_txledger-kafka"));
    let dir = daemon.dir();
    let cli = |args: &[&str]| daemon.ok(args);
    let stdout = cli(&["start", "--nodes", "3"]);
    let bootstrap = stdout.lines().last().expect("addresses").to_owned();
    assert_eq!(bootstrap.split(',').count(), 3, "{stdout}");
    Cluster::attach(&dir, DEADLINE)
        .expect("attach")
        .print_logs_on_panic();
    assert!(cli(&["status"]).contains(&bootstrap));

    cli(&["node", "kill", "--node", "2"]);
    assert!(
        cli(&["status"]).contains("node 2 stopped"),
        "status after the kill"
    );
    cli(&["node", "start", "--node", "2"]);
    assert!(!cli(&["status"]).contains("stopped"));
    cli(&["node", "pause", "--node", "3"]);
    cli(&["node", "resume", "--node", "3"]);

    let id = unique_name("tx-cli");
    drop(transactional_producer(&bootstrap, &id));
    let roles = cli(&["roles", "--transactional-id", &id]);
    let named = |prefix: &str| {
        roles
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|node| node.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{roles}"))
    };
    assert!((1..=3).contains(&named("active-controller ")));
    let coordinator = named(&format!("transaction-coordinator {id} "));
    let attached = Cluster::attach(&dir, DEADLINE).expect("attach");
    assert_eq!(
        attached.transaction_coordinator(&id).expect("coordinator"),
        coordinator
    );

    cli(&["stop"]);
    let output = Command::new(env!("CARGO_BIN_EXE_txledger-kafka"))
        .args(["status", "--dir"])
        .arg(&dir)
        .output()
        .expect("run txledger-kafka");
    assert!(!output.status.success(), "status after stop");
}

/// Commits transactions of one record per partition in a loop, on its own
/// thread, and remembers the payloads of those committed.
struct Committer {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicUsize>,
    committed: Arc<Mutex<Vec<String>>>,
    thread: thread::JoinHandle<BaseProducer>,
}

impl Committer {
    fn start(producer: BaseProducer, topic: &str) -> Committer {
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicUsize::new(0));
        let committed = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, commits, committed) = (stop.clone(), commits.clone(), committed.clone());
            let topic = topic.to_owned();
            thread::spawn(move || {
                for attempt in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // `t{attempt}-{partition}`, in partition order.
                    let payloads = payloads(&format!("t{attempt}"), PARTITIONS as usize);
                    producer.begin_transaction().expect("begin");
                    for (partition, payload) in payloads.iter().enumerate() {
                        common::send(&producer, &topic, partition as i32, payload);
                    }
                    match producer.commit_transaction(DEADLINE) {
                        Ok(()) => {
                            committed.lock().unwrap().extend(payloads);
                            commits.fetch_add(1, Ordering::Relaxed);
                        }
                        // A transaction that cannot commit is aborted; its
                        // payloads are never expected.
                        Err(rdkafka::error::KafkaError::Transaction(error))
                            if error.txn_requires_abort() =>
                        {
                            producer.abort_transaction(DEADLINE).expect("abort");
                        }
                        Err(error) => panic!("commit: {error}"),
                    }
                }
                producer
            })
        };
        Committer {
            stop,
            commits,
            committed,
            thread,
        }
    }

    fn commits(&self) -> usize {
        self.commits.load(Ordering::Relaxed)
    }

    fn wait_for_commits(&self, count: usize) {
        wait_until(&format!("{count} committed transactions"), || {
            assert!(!self.thread.is_finished(), "the committer thread died");
            self.commits() >= count
        });
    }

    /// Stops the loop; returns the producer and the committed payloads,
    /// sorted like `read_all`'s.
    fn stop(self) -> (BaseProducer, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let producer = self.thread.join().expect("the committer thread");
        let mut committed = self.committed.lock().unwrap().clone();
        committed.sort();
        (producer, committed)
    }
}

/// Each partition's replica node ids.
fn metadata_partitions(bootstrap: &str, topic: &str) -> Vec<Vec<i32>> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), DEADLINE)
        .expect("metadata");
    let partitions: Vec<Vec<i32>> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|partition| partition.replicas().to_vec())
        .collect();
    assert_eq!(partitions.len(), PARTITIONS as usize);
    partitions
}

/// Commits offset 0 of `topic`'s partition 0 for `group`, which makes the
/// group (and `__consumer_offsets`) exist.
fn commit_group_offset(bootstrap: &str, group: &str, topic: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, Offset::Offset(0))
        .expect("offset");
    consumer
        .commit(&offsets, CommitMode::Sync)
        .expect("commit an offset");
}

/// The states (`R`, `S`, `T`, ...) of the processes of the group led by
/// `leader`, from `/proc/PID/stat`.
fn group_states(leader: u32) -> Vec<char> {
    let mut states = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("list /proc").flatten() {
        // A process may exit between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parens.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|pgrp| pgrp.parse::<u32>().ok()) == Some(leader) {
            states.extend(fields[0].chars().next());
        }
    }
    assert!(!states.is_empty(), "no process in group {leader}");
    states
}
