//! A real, local Apache Kafka (KRaft) for tests, demos and benchmarks: a
//! single-node broker, or a cluster of N nodes for failover tests, started
//! from the jars Maven resolves for `harness/kafka/pom.xml` (Java 17+ and
//! Maven needed); or an existing broker named by `KAFKA_BOOTSTRAP_SERVERS`.
//!
//! Why a real broker: librdkafka's mock cluster accepts transactional calls
//! without enforcing them (aborted records stay visible, transactional
//! offsets are not stored, nobody is fenced), so it cannot prove an
//! exactly-once property. `tests/transactions.rs` shows this broker does.
//!
//! ```no_run
//! let bootstrap = harness::shared_bootstrap();
//! let topic = harness::unique_name("transfers");
//! harness::create_topics(&bootstrap, &[(&topic, 3)]).expect("create topic");
//! ```
//!
//! A fault aimed at a role rather than at a node number:
//!
//! ```no_run
//! # use std::time::Duration;
//! let mut cluster = harness::Cluster::start(harness::ClusterOptions::default())?;
//! cluster.print_logs_on_panic();
//! let topic = harness::unique_name("transfers");
//! harness::create_topics(cluster.bootstrap_servers(), &[(&topic, 3)])?;
//! let leader = cluster.partition_leader(&topic, 0)?;
//! cluster.kill(leader)?;
//! // ... the pipeline carries on with a new leader ...
//! cluster.start_node(leader)?;
//! cluster.wait_in_sync(Duration::from_secs(120))?;
//! # Ok::<(), harness::HarnessError>(())
//! ```
//!
//! # Layout
//!
//! - [`broker`]: [`Broker`] and [`BrokerOptions`]: one broker, started,
//!   stopped and restarted on the same directory and ports; the one-node
//!   case of a cluster.
//! - [`cluster`]: [`Cluster`] and [`ClusterOptions`]: N nodes, each a broker
//!   and a KRaft controller; per-node kill, stop, start, pause and resume;
//!   the wait for every replica to be in sync.
//! - `node` (private): what every node shares: how Kafka's JVM is run, the
//!   configuration (replication settings by cluster size), storage
//!   formatting, the node's process, readiness probes.
//! - `roles` (private): who holds a role, from fresh metadata: partition
//!   leaders, transaction and group coordinators (Kafka's partitioning of
//!   ids over its internal topics), and the active controller (from
//!   Kafka's `kafka-metadata-quorum` tool).
//! - [`shared`]: [`shared_bootstrap`], the one broker of a test process, and
//!   the panic hook that prints its log (or a cluster's) when a test fails.
//! - [`topics`]: [`unique_name`] and [`create_topics`], what tests need to
//!   stay out of each other's way.
//! - [`testkit`]: what the Kafka-backed tests share: topics read back to
//!   their end, waits for open transactions to settle, bounded waits.
//! - [`daemon`]: a broker or cluster that outlives its starter, behind the
//!   `txledger-kafka` binary (`src/main.rs`).
//! - [`ports`]: local ports for the servers of child processes, chosen
//!   so that two pipelines or an outgoing connection never take the same.
//! - [`error`]: the error type, [`HarnessError`].
//! - `classpath` (private): finding `java` and `mvn`, and the cached Maven
//!   classpath.
//! - `process` (private): process groups, the watchdog that kills a node
//!   when the test process is gone, log tails.
//!
//! A node directory holds `server.properties`, `log4j2.xml`, `broker.log`
//! (everything the node and its JVM print) and `data/` (log segments and
//! the KRaft metadata log). A broker's node directory is the broker
//! directory; a cluster's nodes are in `node-1/`, `node-2/`, ... of the
//! cluster directory. Either top directory also holds `nodes` (every node's
//! ports), which lets another process [`Cluster::attach`] to it.

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
pub mod broker;
mod classpath;
pub mod cluster;
pub mod daemon;
pub mod error;
mod node;
pub mod ports;
mod process;
mod roles;
pub mod shared;
pub mod testkit;
pub mod topics;

pub use broker::{Broker, BrokerOptions};
pub use cluster::{Cluster, ClusterOptions};
pub use error::HarnessError;
pub use shared::{shared_bootstrap, BOOTSTRAP_ENV};
pub use topics::{create_topics, unique_name};
