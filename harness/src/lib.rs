//! A real, local, single-node Apache Kafka broker (KRaft) for tests, demos
//! and benchmarks, started from the jars Maven resolves for
//! `harness/kafka/pom.xml` (Java 17+ and Maven needed), or an existing broker
//! named by `KAFKA_BOOTSTRAP_SERVERS`.
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
//! # Layout
//!
//! - [`broker`]: [`Broker`] and [`BrokerOptions`]: writes the configuration,
//!   formats the storage, runs the JVM, waits for readiness, stops and
//!   restarts on the same directory and ports.
//! - [`shared`]: [`shared_bootstrap`], the one broker of a test process, and
//!   the panic hook that prints its log when a test fails.
//! - [`topics`]: [`unique_name`] and [`create_topics`], what tests need to
//!   stay out of each other's way.
//! - [`testkit`]: what the Kafka-backed tests share: topics read back to
//!   their end, waits for open transactions to settle, bounded waits.
//! - [`daemon`]: a broker that outlives its starter, behind the
//!   `txledger-kafka` binary (`src/main.rs`).
//! - [`ports`]: local ports for the servers of child processes, chosen
//!   so that two pipelines or an outgoing connection never take the same.
//! - [`error`]: the error type, [`HarnessError`].
//! - `classpath` (private): finding `java` and `mvn`, and the cached Maven
//!   classpath.
//! - `process` (private): process groups, the watchdog that kills the broker
//!   when the test process is gone, log tails.
//!
//! A broker directory holds `server.properties`, `log4j2.xml`, `broker.log`
//! (everything the broker and its JVM print) and `data/` (log segments and
//! the KRaft metadata log).

pub mod broker;
mod classpath;
pub mod daemon;
pub mod error;
pub mod ports;
mod process;
pub mod shared;
pub mod testkit;
pub mod topics;

pub use broker::{Broker, BrokerOptions};
pub use error::HarnessError;
pub use shared::{shared_bootstrap, BOOTSTRAP_ENV};
pub use topics::{create_topics, unique_name};
