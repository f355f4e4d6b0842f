//! A broker or a cluster that outlives the command that started it: what
//! `txledger-kafka start|stop|status` does (and `node`/`roles`, through
//! [`crate::Cluster::attach`]). Its directory holds, besides each node's own
//! files, `nodes` (the nodes' ports, for `attach`) and `bootstrap` (the
//! addresses, one line); each node's directory (a single broker's is the
//! directory itself, a cluster's `node-N/`) holds `broker.pid`, the JVM's
//! pid, which also leads its process group.

use std::path::Path;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

use crate::broker::{Broker, BrokerOptions};
use crate::cluster::{self, Cluster, ClusterOptions};
use crate::error::HarnessError;
use crate::node::{self, Node};

const BOOTSTRAP_FILE: &str = "bootstrap";

/// A daemon broker or cluster found running (at least one node of it).
#[derive(Debug, Clone)]
pub struct Running {
    pub bootstrap: String,
    /// Every node, running or not, in node id order.
    pub nodes: Vec<NodeState>,
}

/// One node of a [`Running`] daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    pub node: u32,
    /// `None`: not running.
    pub pid: Option<u32>,
}

impl Running {
    /// The pids, for messages: `pid 123` for a single broker, `node 1 pid
    /// 123, node 2 stopped, ...` for a cluster.
    pub fn pids(&self) -> String {
        let describe = |state: &NodeState| match state.pid {
            Some(pid) => format!("pid {pid}"),
            None => "stopped".to_owned(),
        };
        match self.nodes.as_slice() {
            [only] => describe(only),
            nodes => nodes
                .iter()
                .map(|state| format!("node {} {}", state.node, describe(state)))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Starts a detached single-node broker in `dir`, waits until it is ready,
/// records its pid and address, and returns the address. Call [`status`]
/// first: this does not check for a broker already running there.
pub fn start(
    dir: &Path,
    port: Option<u16>,
    ready_timeout: Duration,
) -> Result<String, HarnessError> {
    let broker = Broker::start(BrokerOptions {
        dir: Some(dir.to_path_buf()),
        port,
        ready_timeout,
        detached: true,
        ..BrokerOptions::default()
    })?;
    record_bootstrap(dir, broker.bootstrap_servers())
}

/// Starts a detached cluster of `nodes` nodes in `dir` (node N in
/// `node-N/`), waits until it is ready, records the pids and addresses, and
/// returns the addresses, comma-separated. Call [`status`] first.
pub fn start_cluster(
    dir: &Path,
    nodes: usize,
    ready_timeout: Duration,
) -> Result<String, HarnessError> {
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        dir: Some(dir.to_path_buf()),
        ready_timeout,
        detached: true,
        ..ClusterOptions::default()
    })?;
    record_bootstrap(dir, cluster.bootstrap_servers())
}

fn record_bootstrap(dir: &Path, bootstrap: &str) -> Result<String, HarnessError> {
    let path = dir.join(BOOTSTRAP_FILE);
    std::fs::write(&path, format!("{bootstrap}\n"))
        .map_err(HarnessError::io(format!("writing {}", path.display())))?;
    Ok(bootstrap.to_owned())
}

/// The broker or cluster running in `dir`, if any node of it runs.
/// Leftover files of one that is gone are removed.
pub fn status(dir: &Path) -> Result<Option<Running>, HarnessError> {
    let Some(mut nodes) = daemon_nodes(dir)? else {
        return Ok(None);
    };
    let states: Vec<NodeState> = nodes
        .iter_mut()
        .map(|node| NodeState {
            node: node.id(),
            pid: node.pid().filter(|_| node.is_running()),
        })
        .collect();
    if states.iter().all(|state| state.pid.is_none()) {
        remove_files(dir, &mut nodes)?;
        return Ok(None);
    }
    let bootstrap = nodes
        .iter()
        .map(|node| node.spec().address())
        .collect::<Vec<_>>()
        .join(",");
    Ok(Some(Running {
        bootstrap,
        nodes: states,
    }))
}

/// Whether the broker at `bootstrap` answers a metadata request within 5 s.
pub fn answers(bootstrap: &str) -> bool {
    let producer: Result<BaseProducer, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create();
    producer.is_ok_and(|producer| {
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(5))
            .is_ok_and(|metadata| !metadata.brokers().is_empty())
    })
}

/// Stops every node running in `dir` (SIGTERM to all at once, SIGKILL after
/// 20 s) and removes the pid and address files. Returns what was running,
/// if anything.
pub fn stop(dir: &Path) -> Result<Option<Running>, HarnessError> {
    let running = status(dir)?;
    if running.is_some() {
        if let Some(mut nodes) = daemon_nodes(dir)? {
            node::stop_all(&mut nodes)?;
            remove_files(dir, &mut nodes)?;
        }
    }
    Ok(running)
}

/// The nodes of the daemon in `dir`, each with its process if it runs;
/// `None` if nothing was ever started there.
fn daemon_nodes(dir: &Path) -> Result<Option<Vec<Node>>, HarnessError> {
    if !cluster::has_nodes_file(dir) {
        return Ok(None);
    }
    let dir = std::fs::canonicalize(dir)
        .map_err(HarnessError::io(format!("resolving {}", dir.display())))?;
    Ok(Some(cluster::attached_nodes(&dir)?.1))
}

fn remove_files(dir: &Path, nodes: &mut [Node]) -> Result<(), HarnessError> {
    for node in nodes {
        node::remove_if_present(&node.dir().join(node::PID_FILE))?;
    }
    node::remove_if_present(&dir.join(BOOTSTRAP_FILE))
}
