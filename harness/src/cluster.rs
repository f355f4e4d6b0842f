//! A local Kafka cluster of N nodes, each a combined broker and KRaft
//! controller with its own JVM, directory and ports, for tests that need
//! failover: per-node kill, stop, start, pause and resume, and lookups of
//! who holds a role (partition leader, coordinator, active controller).

use std::fs;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::Signal;
use tempfile::TempDir;

use crate::error::HarnessError;
use crate::node::{self, Jvm, Node, NodeSpec, SERVER_PROPERTIES};
use crate::process::Lifetime;
use crate::roles;

/// Name of the file, in a cluster's directory, that records its nodes'
/// ports and heap, so that another process can [`Cluster::attach`] to it.
const NODES_FILE: &str = "nodes";

/// How to start a [`Cluster`]. `ClusterOptions::default()` is three nodes.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// How many nodes (each a broker and a KRaft voter). At least 1.
    pub nodes: usize,
    /// The cluster directory; node N lives in `node-N/` inside it. `None`: a
    /// fresh temporary directory, deleted when the `Cluster` is dropped (or,
    /// if this process dies first, by the watchdogs). An existing, already
    /// formatted directory is reused with its data.
    pub dir: Option<PathBuf>,
    /// Upper bound on the wait for readiness: of the whole cluster at start,
    /// of one node at [`Cluster::start_node`]. Generous by default: several
    /// JVMs starting on a small loaded CI machine take a minute or more.
    pub ready_timeout: Duration,
    /// JVM heap ceiling (`-Xmx`) of each node, in MiB.
    pub max_heap_mib: u32,
    /// Where the Maven classpath is cached. `None`: `$CARGO_TARGET_DIR` or the
    /// workspace's `target/`.
    pub cache_dir: Option<PathBuf>,
    /// `true`: the nodes outlive this process (no watchdog) and dropping the
    /// `Cluster` leaves them running; each node's pid is written to
    /// `broker.pid` in its directory.
    pub detached: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            dir: None,
            ready_timeout: Duration::from_secs(180),
            max_heap_mib: 448,
            cache_dir: None,
            detached: false,
        }
    }
}

/// Where the nodes' files are.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Layout {
    /// The single node of a [`crate::Broker`], in the directory itself, on
    /// the given client port if any.
    Flat { port: Option<u16> },
    /// Node N in `node-N/`.
    PerNode,
}

/// A running local cluster. Nodes are addressed by their `node.id`, 1 to N.
/// Dropping it kills every node unless it is detached.
pub struct Cluster {
    /// Kept so that restarted nodes start exactly the same way.
    options: ClusterOptions,
    /// Owns the directory when the harness created it; dropping it deletes
    /// the data, after `Drop` has killed the nodes.
    temp_dir: Option<TempDir>,
    /// Absolute.
    dir: PathBuf,
    jvm: Jvm,
    /// Node N at index N - 1.
    nodes: Vec<Node>,
    bootstrap: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("bootstrap", &self.bootstrap)
            .field("dir", &self.dir)
            .field(
                "pids",
                &self.nodes.iter().map(Node::pid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Formats and starts every node, then waits until the metadata names
    /// all of them and a transactional producer can `init_transactions`.
    /// All JVMs start before any wait: a node cannot become ready before a
    /// majority of the controllers runs.
    ///
    /// Needs `java` (17+) and `mvn`, like [`crate::Broker::start`]. On
    /// failure every node is killed, and a temporary directory is kept so
    /// that the logs named in the error exist.
    ///
    /// # Panics
    ///
    /// If `options.nodes` is 0.
    pub fn start(options: ClusterOptions) -> Result<Cluster, HarnessError> {
        Cluster::launch(options, Layout::PerNode)
    }

    pub(crate) fn launch(options: ClusterOptions, layout: Layout) -> Result<Cluster, HarnessError> {
        assert!(options.nodes > 0, "a cluster needs at least one node");
        let jvm = Jvm::resolve(options.cache_dir.as_deref(), options.max_heap_mib)?;
        let (temp_dir, dir) = match &options.dir {
            Some(dir) => {
                fs::create_dir_all(dir)
                    .map_err(HarnessError::io(format!("creating {}", dir.display())))?;
                (None, absolute(dir)?)
            }
            None => {
                let temp_dir = tempfile::Builder::new()
                    .prefix("txledger-kafka-")
                    .tempdir()
                    .map_err(HarnessError::io("creating a temporary Kafka directory"))?;
                let dir = temp_dir.path().to_path_buf();
                (Some(temp_dir), dir)
            }
        };
        let first_port = match layout {
            Layout::Flat { port } => port,
            Layout::PerNode => None,
        };
        let specs = node::choose_ports(options.nodes, first_port)?;
        let mut cluster = Cluster {
            nodes: nodes_of(&dir, &specs, matches!(layout, Layout::Flat { .. })),
            bootstrap: bootstrap_of(&specs),
            options,
            temp_dir,
            dir,
            jvm,
        };
        let result = cluster.prepare().and_then(|()| cluster.launch_all());
        if let Err(error) = result {
            cluster.abandon();
            return Err(error);
        }
        Ok(cluster)
    }

    /// A handle on the detached cluster (or single broker) that
    /// `txledger-kafka start` or [`ClusterOptions::detached`] started in
    /// `dir`, so that another process can control its nodes. Nodes started
    /// through it are detached too; dropping it leaves them running.
    pub fn attach(dir: &Path, ready_timeout: Duration) -> Result<Cluster, HarnessError> {
        let dir = absolute(dir)?;
        let (max_heap_mib, nodes) = attached_nodes(&dir)?;
        let jvm = Jvm::resolve(None, max_heap_mib)?;
        let specs: Vec<NodeSpec> = nodes.iter().map(Node::spec).collect();
        Ok(Cluster {
            options: ClusterOptions {
                nodes: nodes.len(),
                dir: Some(dir.clone()),
                ready_timeout,
                max_heap_mib,
                cache_dir: None,
                detached: true,
            },
            temp_dir: None,
            dir,
            jvm,
            nodes,
            bootstrap: bootstrap_of(&specs),
        })
    }

    /// Every node's `127.0.0.1:PORT`, comma-separated, for
    /// `bootstrap.servers`. Stable across node restarts.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node ids, `1..=N`.
    pub fn node_ids(&self) -> RangeInclusive<u32> {
        1..=u32::try_from(self.nodes.len()).expect("a node count fits in u32")
    }

    /// Kills node `node` at once (SIGKILL to its process group), as a crash
    /// would. Killing a stopped node does nothing.
    pub fn kill(&mut self, node: u32) -> Result<(), HarnessError> {
        self.node_mut(node)?.kill()
    }

    /// Stops node `node`: SIGTERM (a controlled shutdown, which moves its
    /// leaderships away first), SIGKILL if it still runs after 20 s. Stopping
    /// a stopped node does nothing.
    pub fn stop(&mut self, node: u32) -> Result<(), HarnessError> {
        self.node_mut(node)?.stop()
    }

    /// Starts a stopped or killed node again, on the same directory and
    /// ports, and waits (within the ready timeout) until it answers metadata
    /// requests naming itself, that is until it has caught up with the
    /// metadata log and is unfenced. Its replicas may still be catching up:
    /// see [`Cluster::wait_in_sync`]. A running node is left alone.
    pub fn start_node(&mut self, node: u32) -> Result<(), HarnessError> {
        let specs = self.specs();
        let lifetime = lifetime(&self.options, self.temp_dir.as_ref());
        let timeout = self.options.ready_timeout;
        let index = self.index(node)?;
        let target = &mut self.nodes[index];
        if target.is_running() {
            return Ok(());
        }
        let result = target
            .write_config(&specs)
            .and_then(|()| target.spawn(&self.jvm, lifetime))
            .and_then(|()| target.wait_serving(timeout));
        if result.is_err() {
            // Never leave a half-started node behind.
            let _ = target.kill();
        }
        result
    }

    /// Pauses node `node` (SIGSTOP to its process group): it keeps its
    /// sockets but answers nothing, as a node stuck in a long GC pause or on
    /// a frozen VM would.
    pub fn pause(&mut self, node: u32) -> Result<(), HarnessError> {
        self.node_mut(node)?.signal(Signal::STOP)
    }

    /// Resumes a paused node (SIGCONT to its process group).
    pub fn resume(&mut self, node: u32) -> Result<(), HarnessError> {
        self.node_mut(node)?.signal(Signal::CONT)
    }

    /// Whether node `node`'s process is alive; a paused node is.
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn is_running(&mut self, node: u32) -> bool {
        let index = self.expect_index(node);
        self.nodes[index].is_running()
    }

    /// The pid of node `node`'s process-group leader (the JVM when detached,
    /// its watchdog shell otherwise; the whole group gets every signal);
    /// `None` once stopped or killed.
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn pid(&self, node: u32) -> Option<u32> {
        self.nodes[self.expect_index(node)].pid()
    }

    /// Node `node`'s log (log4j output and the JVM's own stdout/stderr).
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn log_path(&self, node: u32) -> &Path {
        self.nodes[self.expect_index(node)].log_path()
    }

    /// The last `lines` lines of node `node`'s log.
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn log_tail(&self, node: u32, lines: usize) -> String {
        self.nodes[self.expect_index(node)].log_tail(lines)
    }

    /// The last `lines` lines of every node's log, each headed by the node
    /// and the log's path, for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        node::render_logs(&self.nodes, lines)
    }

    /// From now on, any panic in this process (a failing test) prints every
    /// node's log tail and keeps a temporary cluster directory after exit.
    pub fn print_logs_on_panic(&self) {
        let logs = self
            .nodes
            .iter()
            .map(|node| (node.label().to_owned(), node.log_path().to_path_buf()))
            .collect();
        crate::shared::print_logs_on_panic(self.dir.clone(), logs);
    }

    /// Waits until every partition of every topic (internal ones included)
    /// has a leader and all its replicas in sync, so that the next fault
    /// does not take away a quorum or the minimum in-sync replicas that the
    /// previous one left short. On timeout the error names the partitions
    /// and carries the logs of the nodes missing from their in-sync sets.
    pub fn wait_in_sync(&self, timeout: Duration) -> Result<(), HarnessError> {
        roles::wait_in_sync(&self.bootstrap, timeout).map_err(|(detail, lagging)| {
            HarnessError::NotInSync {
                timeout,
                detail,
                logs: node::render_logs(
                    self.nodes
                        .iter()
                        .filter(|node| lagging.contains(&node.id())),
                    node::ERROR_LOG_LINES,
                ),
            }
        })
    }

    /// The node leading `partition` of `topic`, from fresh metadata.
    pub fn partition_leader(&self, topic: &str, partition: i32) -> Result<u32, HarnessError> {
        roles::partition_leader(&self.bootstrap, topic, partition)
    }

    /// The node that coordinates `transactional_id`'s transactions: the
    /// leader of its partition of `__transaction_state` (which exists from
    /// the first `init_transactions` on), from fresh metadata.
    pub fn transaction_coordinator(&self, transactional_id: &str) -> Result<u32, HarnessError> {
        roles::coordinator(&self.bootstrap, roles::TRANSACTIONS, transactional_id)
    }

    /// The node that coordinates consumer group `group_id`: the leader of
    /// its partition of `__consumer_offsets` (which exists from the first
    /// group coordinator request on), from fresh metadata.
    pub fn group_coordinator(&self, group_id: &str) -> Result<u32, HarnessError> {
        roles::coordinator(&self.bootstrap, roles::GROUPS, group_id)
    }

    /// The active controller (the KRaft quorum leader), as Kafka's
    /// `kafka-metadata-quorum describe --status` reports it now.
    pub fn active_controller(&self) -> Result<u32, HarnessError> {
        roles::active_controller(&self.jvm, &self.bootstrap)
    }

    /// Stops the given node (1 for a [`crate::Broker`]) if it runs, then
    /// starts every stopped node and waits for the whole cluster.
    pub(crate) fn restart(&mut self, node: u32) -> Result<(), HarnessError> {
        self.stop(node)?;
        self.launch_all()
    }

    /// Writes every node's configuration, formats new storage with one
    /// cluster id, and records the layout for [`Cluster::attach`].
    fn prepare(&self) -> Result<(), HarnessError> {
        let specs = self.specs();
        // A node formatted by an earlier run fixes the id for the others.
        let cluster_id = self
            .nodes
            .iter()
            .find_map(Node::formatted_cluster_id)
            .unwrap_or_else(node::new_cluster_id);
        for node in &self.nodes {
            fs::create_dir_all(node.dir()).map_err(HarnessError::io(format!(
                "creating {}",
                node.dir().display()
            )))?;
            node.write_config(&specs)?;
            node.format_if_new(&self.jvm, &cluster_id)?;
        }
        write_nodes_file(&self.dir, self.jvm.max_heap_mib(), &specs)
    }

    /// Starts every stopped node, then waits for the cluster to be ready;
    /// on failure kills them all, so that no half-started node is left.
    fn launch_all(&mut self) -> Result<(), HarnessError> {
        let lifetime = lifetime(&self.options, self.temp_dir.as_ref());
        let mut result = Ok(());
        for node in &mut self.nodes {
            if !node.is_running() {
                result = node.spawn(&self.jvm, lifetime);
                if result.is_err() {
                    break;
                }
            }
        }
        let what = match self.nodes.as_slice() {
            [node] => node.label().to_owned(),
            _ => "the cluster".to_owned(),
        };
        let result = result.and_then(|()| {
            node::wait_ready(
                &mut self.nodes,
                &self.bootstrap,
                &what,
                self.options.ready_timeout,
            )
        });
        if result.is_err() {
            self.kill_all();
        }
        result
    }

    fn specs(&self) -> Vec<NodeSpec> {
        self.nodes.iter().map(Node::spec).collect()
    }

    fn index(&self, node: u32) -> Result<usize, HarnessError> {
        usize::try_from(node)
            .ok()
            .filter(|id| (1..=self.nodes.len()).contains(id))
            .map(|id| id - 1)
            .ok_or(HarnessError::UnknownNode {
                node,
                nodes: self.nodes.len(),
            })
    }

    fn expect_index(&self, node: u32) -> usize {
        self.index(node).unwrap_or_else(|error| panic!("{error}"))
    }

    fn node_mut(&mut self, node: u32) -> Result<&mut Node, HarnessError> {
        let index = self.index(node)?;
        Ok(&mut self.nodes[index])
    }

    /// Kills every node. Errors are ignored: this runs on paths that already
    /// fail or in `Drop`, and a process group is gone in every case but a
    /// kernel bug.
    fn kill_all(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
        }
    }

    /// After a failed start: kill, and keep a temporary directory so that the
    /// logs named in the error still exist.
    fn abandon(&mut self) {
        self.kill_all();
        if let Some(temp_dir) = self.temp_dir.take() {
            let _ = temp_dir.keep();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.options.detached {
            self.kill_all();
        }
    }
}

/// The nodes recorded in `dir`'s nodes file, each adopting its running
/// detached process if any, and the heap they were started with.
pub(crate) fn attached_nodes(dir: &Path) -> Result<(u32, Vec<Node>), HarnessError> {
    let (max_heap_mib, specs) = read_nodes_file(dir)?;
    let mut nodes = nodes_of(dir, &specs, dir.join(SERVER_PROPERTIES).is_file());
    for node in &mut nodes {
        node.adopt();
    }
    Ok((max_heap_mib, nodes))
}

/// Whether `dir` holds a nodes file, that is a broker or cluster started by
/// this harness.
pub(crate) fn has_nodes_file(dir: &Path) -> bool {
    dir.join(NODES_FILE).is_file()
}

/// How the nodes' processes relate to this one.
fn lifetime<'a>(options: &ClusterOptions, temp_dir: Option<&'a TempDir>) -> Lifetime<'a> {
    if options.detached {
        return Lifetime::Detached;
    }
    let cleanup_dir = temp_dir.map(TempDir::path);
    Lifetime::Watched {
        cleanup_dir,
        // Temporary data is deleted right after: no point in a graceful
        // shutdown. A named directory deserves one.
        grace_seconds: if cleanup_dir.is_some() { 0 } else { 20 },
    }
}

fn nodes_of(dir: &Path, specs: &[NodeSpec], flat: bool) -> Vec<Node> {
    specs
        .iter()
        .map(|spec| {
            if flat {
                Node::new(*spec, dir.to_path_buf(), "the broker".to_owned())
            } else {
                Node::new(
                    *spec,
                    dir.join(format!("node-{}", spec.id)),
                    format!("node {}", spec.id),
                )
            }
        })
        .collect()
}

fn bootstrap_of(specs: &[NodeSpec]) -> String {
    specs
        .iter()
        .map(NodeSpec::address)
        .collect::<Vec<_>>()
        .join(",")
}

fn absolute(dir: &Path) -> Result<PathBuf, HarnessError> {
    fs::canonicalize(dir).map_err(HarnessError::io(format!("resolving {}", dir.display())))
}

/// Writes the nodes file: `max.heap.mib=N`, then `node.ID=PORT,CONTROLLER_PORT`
/// per node.
fn write_nodes_file(dir: &Path, max_heap_mib: u32, specs: &[NodeSpec]) -> Result<(), HarnessError> {
    let mut text = String::from(
        "# Written by the txledger harness at every start; read by `txledger-kafka node` and `roles`.\n",
    );
    text.push_str(&format!("max.heap.mib={max_heap_mib}\n"));
    for spec in specs {
        text.push_str(&format!(
            "node.{}={},{}\n",
            spec.id, spec.port, spec.controller_port
        ));
    }
    let path = dir.join(NODES_FILE);
    fs::write(&path, text).map_err(HarnessError::io(format!("writing {}", path.display())))
}

fn read_nodes_file(dir: &Path) -> Result<(u32, Vec<NodeSpec>), HarnessError> {
    let path = dir.join(NODES_FILE);
    let text = fs::read_to_string(&path).map_err(HarnessError::io(format!(
        "reading {} (is {} a directory of `txledger-kafka start`?)",
        path.display(),
        dir.display()
    )))?;
    parse_nodes_file(&text).map_err(|detail| HarnessError::BadFile { path, detail })
}

fn parse_nodes_file(text: &str) -> Result<(u32, Vec<NodeSpec>), String> {
    let mut max_heap_mib = None;
    let mut specs = Vec::new();
    for line in text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
    {
        let bad = || format!("unreadable line {line:?}");
        let (key, value) = line.split_once('=').ok_or_else(bad)?;
        if key == "max.heap.mib" {
            max_heap_mib = Some(value.parse().map_err(|_| bad())?);
        } else {
            let id = key.strip_prefix("node.").ok_or_else(bad)?;
            let (port, controller_port) = value.split_once(',').ok_or_else(bad)?;
            specs.push(NodeSpec {
                id: id.parse().map_err(|_| bad())?,
                port: port.parse().map_err(|_| bad())?,
                controller_port: controller_port.parse().map_err(|_| bad())?,
            });
        }
    }
    let expected: Vec<u32> = (1..=specs.len())
        .map(|id| u32::try_from(id).expect("a node count fits in u32"))
        .collect();
    if specs.iter().map(|spec| spec.id).collect::<Vec<_>>() != expected {
        return Err("nodes must be numbered 1 to N in order".to_owned());
    }
    Ok((max_heap_mib.ok_or("no max.heap.mib line")?, specs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_file_reads_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let specs = node::choose_ports(3, None).expect("ports");
        write_nodes_file(dir.path(), 448, &specs).expect("write");
        assert_eq!(read_nodes_file(dir.path()).expect("read"), (448, specs));
        assert!(parse_nodes_file("max.heap.mib=1\nnode.2=1,2\n").is_err());
        assert!(parse_nodes_file("node.1=1,2\n").is_err());
    }
}
