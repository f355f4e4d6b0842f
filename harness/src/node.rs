//! One Kafka node: a combined broker and KRaft controller in a JVM of its
//! own. A [`crate::Broker`] is a cluster of one node, a [`crate::Cluster`] of
//! several; what differs between the nodes of a cluster is their
//! [`NodeSpec`], everything else (how Kafka is run, the configuration, the
//! process, the readiness probes) is this code.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, Producer};
use rustix::process::Signal;
use uuid::Uuid;

use crate::classpath::{self, arg_with_path};
use crate::error::HarnessError;
use crate::process::{self, Lifetime};

/// The log4j 2 configuration, written next to `server.properties` at every
/// start; it sends the node's log to `broker.log` in the node directory.
const LOG4J_CONFIG: &str = include_str!("../kafka/log4j2.xml");

/// Name of the log inside a node directory.
pub(crate) const LOG_FILE: &str = "broker.log";

/// Name of the Kafka configuration inside a node directory.
pub(crate) const SERVER_PROPERTIES: &str = "server.properties";

/// Name of the file holding a detached node's pid inside its directory.
pub(crate) const PID_FILE: &str = "broker.pid";

/// How many log lines an error message carries per node.
pub(crate) const ERROR_LOG_LINES: usize = 60;

/// Bound on a graceful stop before SIGKILL. A controlled shutdown hands the
/// node's partition leaderships over (or, alone, has nobody to hand them
/// to), which takes a few seconds.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// How long one readiness probe may block, so that a node that died is
/// noticed between probes rather than at the overall deadline.
const PROBE_SLICE: Duration = Duration::from_secs(5);

/// How to run Kafka's programs. Resolved once, so that restarting a node
/// does not depend on Maven or on the network.
#[derive(Debug)]
pub(crate) struct Jvm {
    java: PathBuf,
    classpath: String,
    max_heap_mib: u32,
}

impl Jvm {
    /// Finds `java` and the cached (or freshly resolved) Maven classpath.
    pub(crate) fn resolve(
        cache_dir: Option<&Path>,
        max_heap_mib: u32,
    ) -> Result<Jvm, HarnessError> {
        let java = classpath::find_java()?;
        let cache_dir = cache_dir.map_or_else(classpath::default_cache_dir, Path::to_path_buf);
        let classpath = classpath::resolve(&cache_dir)?;
        Ok(Jvm {
            java,
            classpath,
            max_heap_mib,
        })
    }

    pub(crate) fn max_heap_mib(&self) -> u32 {
        self.max_heap_mib
    }

    pub(crate) fn java(&self) -> &Path {
        &self.java
    }

    /// JVM options and main class. `log_dir`: where the program's log4j log
    /// goes (`broker.log` there); `None` leaves log4j unconfigured, so that
    /// it prints errors only, on stderr.
    pub(crate) fn args(&self, log_dir: Option<&Path>, main_class: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            format!("-Xmx{}m", self.max_heap_mib).into(),
            // Without a bound on the minimum, the JVM reserves 1/64 of the
            // machine's memory up front.
            format!("-Xms{}m", self.max_heap_mib.min(128)).into(),
            // A broker out of memory is broken; exit so the harness sees it.
            "-XX:+ExitOnOutOfMemoryError".into(),
            "-Djava.awt.headless=true".into(),
        ];
        if let Some(dir) = log_dir {
            args.push(arg_with_path(
                "-Dlog4j2.configurationFile=",
                &dir.join("log4j2.xml"),
            ));
            args.push(arg_with_path("-Dkafka.logs.dir=", dir));
        }
        args.extend([
            "-cp".into(),
            self.classpath.clone().into(),
            main_class.into(),
        ]);
        args
    }
}

/// What tells the nodes of a cluster apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeSpec {
    /// `node.id`, 1 to N.
    pub(crate) id: u32,
    /// Client port on 127.0.0.1.
    pub(crate) port: u16,
    /// KRaft controller port on 127.0.0.1.
    pub(crate) controller_port: u16,
}

impl NodeSpec {
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn socket_address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

/// Client and controller ports for nodes 1 to `count`: `first` (if given)
/// for node 1's clients, the others from [`crate::ports`]. Those never repeat
/// within a process and lie below the ephemeral range, so that no outgoing
/// connection takes the port of a node that is down for a while. A given
/// port is bound for a moment, so that one that is taken fails here with a
/// clear message; the node binds it a moment later (a race with other
/// programs, accepted for a test harness).
pub(crate) fn choose_ports(
    count: usize,
    first: Option<u16>,
) -> Result<Vec<NodeSpec>, HarnessError> {
    // Held while the other ports are chosen, so that none of them is `first`.
    let _first_listener = first
        .map(|port| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .map_err(HarnessError::io(format!("binding 127.0.0.1:{port}")))
        })
        .transpose()?;
    let free = || crate::ports::free_local_port().map_err(HarnessError::io("choosing a free port"));
    (1..=count)
        .map(|index| {
            let port = match first {
                Some(port) if index == 1 => port,
                _ => free()?,
            };
            Ok(NodeSpec {
                id: u32::try_from(index).expect("a node count fits in u32"),
                port,
                controller_port: free()?,
            })
        })
        .collect()
}

/// The node's process, as far as this process knows it.
enum Process {
    Stopped,
    /// Spawned by this process: the leader of the node's process group (the
    /// JVM when detached, its watchdog shell otherwise).
    Spawned(Child),
    /// A detached node's JVM, spawned by another process and found through
    /// its pid file.
    Adopted(u32),
}

/// One node: its directory, its process, its log.
pub(crate) struct Node {
    spec: NodeSpec,
    /// How messages name it: "the broker" alone, "node N" in a cluster.
    label: String,
    /// Absolute: the node's working directory and every path in its
    /// configuration are derived from it.
    dir: PathBuf,
    log_path: PathBuf,
    process: Process,
}

impl Node {
    pub(crate) fn new(spec: NodeSpec, dir: PathBuf, label: String) -> Node {
        Node {
            spec,
            label,
            log_path: dir.join(LOG_FILE),
            dir,
            process: Process::Stopped,
        }
    }

    /// Takes over the detached node running in this node's directory, if
    /// its pid file names one.
    pub(crate) fn adopt(&mut self) {
        let pid = fs::read_to_string(self.dir.join(PID_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        // A pid file may outlive its process, and the number may now belong
        // to anything.
        if let Some(pid) = pid.filter(|pid| process::is_broker(*pid, &self.server_properties())) {
            self.process = Process::Adopted(pid);
        }
    }

    pub(crate) fn spec(&self) -> NodeSpec {
        self.spec
    }

    pub(crate) fn id(&self) -> u32 {
        self.spec.id
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        process::tail_file(&self.log_path, lines)
    }

    fn server_properties(&self) -> PathBuf {
        self.dir.join(SERVER_PROPERTIES)
    }

    /// The pid of the node's process-group leader; `None` once stopped or
    /// killed through this handle.
    pub(crate) fn pid(&self) -> Option<u32> {
        match &self.process {
            Process::Stopped => None,
            Process::Spawned(child) => Some(child.id()),
            Process::Adopted(pid) => Some(*pid),
        }
    }

    /// Whether the node's process is alive (paused counts as alive).
    pub(crate) fn is_running(&mut self) -> bool {
        match &mut self.process {
            Process::Stopped => false,
            Process::Spawned(child) => matches!(child.try_wait(), Ok(None)),
            Process::Adopted(pid) => process::is_broker(*pid, &self.dir.join(SERVER_PROPERTIES)),
        }
    }

    /// Writes `server.properties` and the log4j configuration for this node
    /// of the cluster made of `nodes`. Rewritten at every start so that they
    /// always match this version of the harness.
    pub(crate) fn write_config(&self, nodes: &[NodeSpec]) -> Result<(), HarnessError> {
        let voters: Vec<String> = nodes
            .iter()
            .map(|node| format!("{}@127.0.0.1:{}", node.id, node.controller_port))
            .collect();
        let properties = format!(
            "# Written by the txledger harness at every start: change harness/src/node.rs.
process.roles=broker,controller
node.id={id}
controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
{replication}# Few partitions for the internal topics, because each one costs files and
# start-up time and a test broker needs no parallelism.
offsets.topic.num.partitions=6
transaction.state.log.num.partitions=6
# Topics are created explicitly; a misspelt name must fail, not create a topic.
auto.create.topics.enable=false
num.partitions=6
# Nobody else is going to join a test's consumer group: do not wait for them.
group.initial.rebalance.delay.ms=0
",
            id = self.spec.id,
            voters = voters.join(","),
            port = self.spec.port,
            controller_port = self.spec.controller_port,
            data = self.dir.join("data").display(),
            replication = replication_config(nodes.len()),
        );
        let path = self.server_properties();
        fs::write(&path, properties)
            .map_err(HarnessError::io(format!("writing {}", path.display())))?;
        let path = self.dir.join("log4j2.xml");
        fs::write(&path, LOG4J_CONFIG)
            .map_err(HarnessError::io(format!("writing {}", path.display())))
    }

    /// The cluster id the node's storage was formatted with, if it was.
    pub(crate) fn formatted_cluster_id(&self) -> Option<String> {
        let text = fs::read_to_string(self.dir.join("data").join("meta.properties")).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("cluster.id="))
            .map(|id| id.trim().to_owned())
    }

    /// Formats the storage with `cluster_id` unless a previous run already
    /// did.
    pub(crate) fn format_if_new(&self, jvm: &Jvm, cluster_id: &str) -> Result<(), HarnessError> {
        if self.formatted_cluster_id().is_some() {
            return Ok(());
        }
        let output = Command::new(jvm.java())
            .args(jvm.args(Some(&self.dir), "kafka.tools.StorageTool"))
            // `--cluster-id=ID`, not `--cluster-id ID`: an id may start with
            // `-`, which the argument parser would take for an option.
            .arg("format")
            .arg(format!("--cluster-id={cluster_id}"))
            .arg(arg_with_path("--config=", &self.server_properties()))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(HarnessError::io(format!(
                "running {}",
                jvm.java().display()
            )))?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        text.push_str(&format!("\n(log {}:)\n", self.log_path.display()));
        text.push_str(&self.log_tail(20));
        Err(HarnessError::Format {
            dir: self.dir.clone(),
            status: output.status,
            output: process::last_lines(&text, ERROR_LOG_LINES),
        })
    }

    /// Starts the node's JVM (without waiting for it). A detached node's pid
    /// goes to its pid file, for the commands that control it later.
    pub(crate) fn spawn(&mut self, jvm: &Jvm, lifetime: Lifetime<'_>) -> Result<(), HarnessError> {
        let detached = matches!(lifetime, Lifetime::Detached);
        let mut args = jvm.args(Some(&self.dir), "kafka.Kafka");
        args.push(self.server_properties().into_os_string());
        let child = process::spawn(jvm.java(), &args, &self.log_path, lifetime)?;
        let pid = child.id();
        self.process = Process::Spawned(child);
        if detached {
            let path = self.dir.join(PID_FILE);
            fs::write(&path, format!("{pid}\n"))
                .map_err(HarnessError::io(format!("writing {}", path.display())))?;
        }
        Ok(())
    }

    /// Stops the node: SIGTERM (a controlled shutdown), SIGKILL if it still
    /// runs after [`STOP_GRACE`]. Stopping a stopped node does nothing.
    pub(crate) fn stop(&mut self) -> Result<(), HarnessError> {
        stop_all(std::slice::from_mut(self))
    }

    /// SIGKILL to the node's process group, then wait until it is gone.
    pub(crate) fn kill(&mut self) -> Result<(), HarnessError> {
        let result = match &mut self.process {
            Process::Stopped => return Ok(()),
            Process::Spawned(child) => process::kill_group(child.id(), Some(child)),
            Process::Adopted(pid) => process::kill_group(*pid, None),
        };
        self.stopped();
        result
    }

    /// Sends `signal` to the node's process group (pause and resume).
    pub(crate) fn signal(&mut self, signal: Signal) -> Result<(), HarnessError> {
        match self.pid() {
            Some(pid) if self.is_running() => process::signal_group(pid, signal),
            _ => Err(HarnessError::NodeNotRunning { node: self.id() }),
        }
    }

    /// Forgets the process and its pid file.
    fn stopped(&mut self) {
        self.process = Process::Stopped;
        // Only detached nodes have one; a missing file is the common case.
        let _ = fs::remove_file(self.dir.join(PID_FILE));
    }

    /// Fails with the log tail if the node's process has exited since this
    /// process spawned it.
    fn check_running(&mut self) -> Result<(), HarnessError> {
        let Process::Spawned(child) = &mut self.process else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.process = Process::Stopped;
                Err(HarnessError::Exited {
                    broker: self.label.clone(),
                    status,
                    log_path: self.log_path.clone(),
                    log_tail: self.log_tail(ERROR_LOG_LINES),
                })
            }
            Err(error) => Err(HarnessError::Io {
                context: format!("checking the process of {}", self.label),
                source: error,
            }),
        }
    }

    /// Waits, within `timeout`, until the node (started with [`Node::spawn`])
    /// answers a metadata request itself and the answer names it, which it
    /// does once it has caught up with the metadata log and the controller
    /// has unfenced it.
    pub(crate) fn wait_serving(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let mut wait = Wait::new(&self.label, timeout);
        wait.accepting(std::slice::from_mut(self))?;
        let id = i32::try_from(self.id()).expect("node ids are small");
        loop {
            self.check_running()?;
            // A new client each time: its first request goes to its only
            // bootstrap server, this node; a longer-lived client would ask
            // whichever node it likes best.
            let problem = match probe_client(&self.spec.address(), None).and_then(|client| {
                client
                    .client()
                    .fetch_metadata(None, wait.slice())
                    .map_err(HarnessError::kafka("metadata request"))
            }) {
                Ok(metadata) if metadata.orig_broker_id() == id && names(&metadata, [id]) => {
                    return Ok(())
                }
                Ok(metadata) => format!(
                    "broker {} answered, naming brokers {:?}",
                    metadata.orig_broker_id(),
                    broker_ids(&metadata)
                ),
                Err(error) => format!("{error:?}"),
            };
            wait.check(std::slice::from_ref(self), problem)?;
        }
    }
}

/// Stops the running ones of `nodes` at once (see [`process::stop_groups`]).
pub(crate) fn stop_all(nodes: &mut [Node]) -> Result<(), HarnessError> {
    let mut groups: Vec<(u32, Option<&mut Child>)> = nodes
        .iter_mut()
        .filter_map(|node| match &mut node.process {
            Process::Stopped => None,
            Process::Spawned(child) => Some((child.id(), Some(child))),
            Process::Adopted(pid) => Some((*pid, None)),
        })
        .collect();
    let result = process::stop_groups(&mut groups, STOP_GRACE);
    for node in nodes {
        node.stopped();
    }
    result
}

/// The replication settings of a cluster of `nodes`. From three nodes on, a
/// partition keeps accepting `acks=all` writes with one node down (3
/// replicas, 2 in sync), and a replica that fell behind never becomes leader.
/// With fewer nodes every internal topic must fit; on one node the values
/// are Kafka's defaults for ordinary topics.
fn replication_config(nodes: usize) -> String {
    let factor = nodes.min(3);
    let min_isr = if nodes >= 3 { 2 } else { 1 };
    format!(
        "default.replication.factor={factor}
min.insync.replicas={min_isr}
unclean.leader.election.enable=false
offsets.topic.replication.factor={factor}
transaction.state.log.replication.factor={factor}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.replication.factor={factor}
share.coordinator.state.topic.min.isr={min_isr}
"
    )
}

/// A new cluster id: Kafka's are 16 random bytes in URL-safe base64.
pub(crate) fn new_cluster_id() -> String {
    base64url_no_pad(Uuid::new_v4().as_bytes())
}

/// Waits, within `timeout`, until every node of `nodes` (just spawned)
/// accepts connections, a metadata response names all of them, and a
/// transactional producer can `init_transactions`, which proves that the
/// transaction coordinator is up (on a cluster: that its log has enough
/// replicas in sync). Fails early if a node's process exits.
pub(crate) fn wait_ready(
    nodes: &mut [Node],
    bootstrap: &str,
    what: &str,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let mut wait = Wait::new(what, timeout);
    wait.accepting(nodes)?;
    let producer = probe_client(
        bootstrap,
        Some(&crate::unique_name("txledger-harness-ready")),
    )?;
    let ids: Vec<i32> = nodes
        .iter()
        .map(|node| i32::try_from(node.id()).expect("node ids are small"))
        .collect();
    loop {
        check_running(nodes)?;
        let problem = match producer.client().fetch_metadata(None, wait.slice()) {
            Ok(metadata) if names(&metadata, ids.iter().copied()) => break,
            Ok(metadata) => format!(
                "metadata named brokers {:?}, not all of {ids:?}",
                broker_ids(&metadata)
            ),
            Err(error) => format!("metadata request: {error}"),
        };
        wait.check(nodes, problem)?;
    }
    loop {
        check_running(nodes)?;
        let error = match producer.init_transactions(wait.slice()) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(error)) if error.is_fatal() => {
                return Err(HarnessError::Kafka {
                    context: "readiness probe: init_transactions".to_owned(),
                    source: KafkaError::Transaction(error),
                })
            }
            Err(error) => error,
        };
        wait.check(nodes, format!("init_transactions: {error}"))?;
    }
}

fn check_running(nodes: &mut [Node]) -> Result<(), HarnessError> {
    nodes.iter_mut().try_for_each(Node::check_running)
}

/// A producer for readiness probes, transactional when `transactional_id`
/// is given.
fn probe_client(
    bootstrap: &str,
    transactional_id: Option<&str>,
) -> Result<BaseProducer, HarnessError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
    }
    config
        .create()
        .map_err(HarnessError::kafka("creating a readiness probe client"))
}

pub(crate) fn broker_ids(metadata: &Metadata) -> BTreeSet<i32> {
    metadata
        .brokers()
        .iter()
        .map(|broker| broker.id())
        .collect()
}

fn names(metadata: &Metadata, ids: impl IntoIterator<Item = i32>) -> bool {
    let named = broker_ids(metadata);
    ids.into_iter().all(|id| named.contains(&id))
}

/// The paths and tails of the logs of `nodes`, for error messages: one
/// node's plainly, several labelled.
pub(crate) fn render_logs<'a>(nodes: impl IntoIterator<Item = &'a Node>, lines: usize) -> String {
    let nodes: Vec<&Node> = nodes.into_iter().collect();
    if let [node] = nodes.as_slice() {
        return format!(
            "log {}, last lines:\n{}",
            node.log_path.display(),
            node.log_tail(lines)
        );
    }
    let mut text = String::from("logs:");
    for node in nodes {
        text.push_str(&format!(
            "\n---- {}: {} (last {lines} lines) ----\n{}",
            node.label,
            node.log_path.display(),
            node.log_tail(lines)
        ));
    }
    text
}

/// A readiness wait: its deadline and what a timeout reports.
struct Wait {
    what: String,
    timeout: Duration,
    deadline: Instant,
}

impl Wait {
    fn new(what: &str, timeout: Duration) -> Wait {
        Wait {
            what: what.to_owned(),
            timeout,
            deadline: Instant::now() + timeout,
        }
    }

    /// A probe timeout: the time left, capped at [`PROBE_SLICE`], at least
    /// 100 ms.
    fn slice(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(100), PROBE_SLICE)
    }

    /// After a failed probe: a timeout error naming `problem` once the
    /// deadline has passed, otherwise a pause before the next probe (a
    /// probe may fail at once, and a tight loop would take the CPU the
    /// nodes need to start).
    fn check(&mut self, nodes: &[Node], problem: String) -> Result<(), HarnessError> {
        if Instant::now() < self.deadline {
            thread::sleep(Duration::from_millis(100));
            return Ok(());
        }
        Err(HarnessError::NotReady {
            what: self.what.clone(),
            timeout: self.timeout,
            last_problem: problem,
            logs: render_logs(nodes, ERROR_LOG_LINES),
        })
    }

    /// Waits until every node accepts TCP connections. A plain connect
    /// first: librdkafka would retry just the same, but log a refused
    /// connection every time.
    fn accepting(&mut self, nodes: &mut [Node]) -> Result<(), HarnessError> {
        let mut waiting: Vec<SocketAddr> = nodes
            .iter()
            .map(|node| node.spec.socket_address())
            .collect();
        loop {
            check_running(nodes)?;
            let mut problem = None;
            waiting.retain(|address| {
                match TcpStream::connect_timeout(address, Duration::from_secs(1)) {
                    Ok(_) => false,
                    Err(error) => {
                        problem = Some(format!("connecting to {address}: {error}"));
                        true
                    }
                }
            });
            let Some(problem) = problem else {
                return Ok(());
            };
            self.check(nodes, problem)?;
        }
    }
}

/// Removes `path`; a missing file is fine.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), HarnessError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != ErrorKind::NotFound => Err(HarnessError::Io {
            context: format!("removing {}", path.display()),
            source: error,
        }),
        _ => Ok(()),
    }
}

/// Kafka cluster ids are 16 bytes in URL-safe base64 without padding.
fn base64url_no_pad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // 1 input byte gives 2 characters, 2 give 3, 3 give 4.
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        assert_eq!(base64url_no_pad(b""), "");
        assert_eq!(base64url_no_pad(b"f"), "Zg");
        assert_eq!(base64url_no_pad(b"fo"), "Zm8");
        assert_eq!(base64url_no_pad(b"foo"), "Zm9v");
        assert_eq!(base64url_no_pad(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url_no_pad(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url_no_pad(&[0u8; 16]).len(), 22);
    }

    #[test]
    fn replication_grows_with_the_cluster_up_to_three() {
        let one = replication_config(1);
        assert!(one.contains("transaction.state.log.replication.factor=1\n"));
        assert!(one.contains("min.insync.replicas=1\n"));
        let two = replication_config(2);
        assert!(two.contains("default.replication.factor=2\n"));
        assert!(two.contains("transaction.state.log.min.isr=1\n"));
        let five = replication_config(5);
        assert!(five.contains("offsets.topic.replication.factor=3\n"));
        assert!(five.contains("min.insync.replicas=2\n"));
        assert!(five.contains("share.coordinator.state.topic.min.isr=2\n"));
    }

    #[test]
    fn chosen_ports_are_distinct_and_keep_the_given_one() {
        let given = crate::ports::free_local_port().expect("a free port");
        let specs = choose_ports(3, Some(given)).expect("ports");
        assert_eq!(specs[0].port, given);
        assert_eq!(
            specs.iter().map(|spec| spec.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let ports: BTreeSet<u16> = specs
            .iter()
            .flat_map(|spec| [spec.port, spec.controller_port])
            .collect();
        assert_eq!(ports.len(), 6, "{specs:?}");
    }
}
