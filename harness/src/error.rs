//! The one error type of the harness.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What the install hint says, in one place: every "missing tool" message and
/// `.ci/run` name the same packages.
pub const INSTALL_HINT: &str = "install Java 17+ and Maven (Debian/Ubuntu, as root: \
     `apt-get install openjdk-17-jre-headless maven`), or set KAFKA_BOOTSTRAP_SERVERS \
     to use an existing broker";

/// Everything that can go wrong while starting, probing or stopping a broker
/// or a cluster.
///
/// Broker failures carry the broker log's path and tail, so that the message
/// of a failed test is enough to see why.
///
/// `Display` leaves the cause out (it is the `source()`); `Debug` shows the
/// message and its cause as text: tests `expect` these errors, and a log tail
/// is only readable with its line breaks.
#[derive(thiserror::Error)]
pub enum HarnessError {
    /// A program the local broker needs is not installed.
    #[error("`{program}` was not found (looked in {looked_in}): {hint}", hint = INSTALL_HINT)]
    MissingTool {
        program: &'static str,
        looked_in: String,
    },

    /// A file-system or process operation failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Maven could not produce the broker's classpath.
    #[error(
        "Maven could not resolve the broker's jars ({status}); is Maven Central reachable? \
         Output of `{command}`:\n{output}"
    )]
    Maven {
        command: String,
        status: ExitStatus,
        output: String,
    },

    /// `kafka.tools.StorageTool format` failed.
    #[error("formatting the broker storage in {dir} failed ({status}):\n{output}")]
    Format {
        dir: PathBuf,
        status: ExitStatus,
        output: String,
    },

    /// A broker process ended while we were waiting for it.
    #[error(
        "{broker} exited ({status}) before it was ready; log {log_path}, last lines:\n{log_tail}"
    )]
    Exited {
        /// "the broker", or "node N" of a cluster.
        broker: String,
        status: ExitStatus,
        log_path: PathBuf,
        log_tail: String,
    },

    /// A broker, a node or a whole cluster did not become ready in time.
    #[error("{what} was not ready within {timeout:?} (last problem: {last_problem}); {logs}")]
    NotReady {
        /// "the broker", "node N" or "the cluster".
        what: String,
        timeout: Duration,
        last_problem: String,
        /// The log path and tail of every node concerned.
        logs: String,
    },

    /// The broker did not stop even after SIGKILL (should not happen).
    #[error("the broker process group {pid} was still alive {waited:?} after SIGKILL")]
    StopTimeout { pid: u32, waited: Duration },

    /// A Kafka client call failed.
    #[error("{context}")]
    Kafka {
        context: String,
        #[source]
        source: KafkaError,
    },

    /// The broker refused to create a topic.
    #[error("creating topic {topic} failed: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },

    /// A topic did not show all its partitions with a leader in time.
    #[error("topic {topic} was not usable within {timeout:?}: {detail}")]
    TopicNotReady {
        topic: String,
        timeout: Duration,
        detail: String,
    },

    /// A node id outside the cluster.
    #[error("there is no node {node}: the cluster has nodes 1 to {nodes}")]
    UnknownNode { node: u32, nodes: usize },

    /// An operation that needs a running node (pause, resume) found it
    /// stopped.
    #[error("node {node} is not running")]
    NodeNotRunning { node: u32 },

    /// A role lookup (partition leader, coordinator, active controller)
    /// found no answer.
    #[error("finding {what}: {detail}")]
    Lookup { what: String, detail: String },

    /// Some partition's replicas were not all in sync in time.
    #[error("replicas were not all in sync within {timeout:?}: {detail}; {logs}")]
    NotInSync {
        timeout: Duration,
        detail: String,
        /// The log tails of the nodes missing from an in-sync replica set.
        logs: String,
    },

    /// A file the harness wrote earlier does not read back.
    #[error("{path}: {detail}")]
    BadFile { path: PathBuf, detail: String },
}

impl std::fmt::Debug for HarnessError {
    /// One level of cause is the whole chain: the causes are `io::Error` and
    /// `KafkaError`, whose messages name their own causes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)?;
        match std::error::Error::source(self) {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl HarnessError {
    /// Wraps an I/O error with what was being done, including the path.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| HarnessError::Io { context, source }
    }

    /// Wraps a Kafka client error with what was being done.
    pub(crate) fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> Self {
        let context = context.into();
        move |source| HarnessError::Kafka { context, source }
    }
}
