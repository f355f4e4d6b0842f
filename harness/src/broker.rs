//! One local single-node Kafka broker (KRaft, combined broker and controller).

use std::ffi::OsString;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use tempfile::TempDir;
use uuid::Uuid;

use crate::classpath::{self, arg_with_path};
use crate::error::HarnessError;
use crate::process::{self, Lifetime};

/// The log4j 2 configuration, written next to `server.properties` at every
/// start; it sends the broker log to `broker.log` in the broker directory.
const LOG4J_CONFIG: &str = include_str!("../kafka/log4j2.xml");

/// Name of the broker log inside the broker directory.
pub(crate) const LOG_FILE: &str = "broker.log";

/// Name of the broker configuration inside the broker directory.
pub(crate) const SERVER_PROPERTIES: &str = "server.properties";

/// How many log lines an error message carries.
const ERROR_LOG_LINES: usize = 60;

/// Bound on a graceful stop before SIGKILL. A single node has nobody to hand
/// partitions to, so its controlled shutdown takes a second or two.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// How long one readiness probe may block, so that a broker that died is
/// noticed between probes rather than at the overall deadline.
const PROBE_SLICE: Duration = Duration::from_secs(5);

/// How to start a [`Broker`]. `BrokerOptions::default()` is what tests want.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// The broker directory (configuration, data, log). `None`: a fresh
    /// temporary directory, deleted when the `Broker` is dropped (or, if this
    /// process dies first, by the watchdog). An existing, already formatted
    /// directory is reused with its data.
    pub dir: Option<PathBuf>,
    /// Client port on 127.0.0.1. `None`: a free port, chosen at start and
    /// kept by [`Broker::restart`].
    pub port: Option<u16>,
    /// Upper bound on the wait for readiness, at start and at every restart.
    /// Generous by default: CI machines are small and loaded.
    pub ready_timeout: Duration,
    /// JVM heap ceiling (`-Xmx`), in MiB.
    pub max_heap_mib: u32,
    /// Where the Maven classpath is cached. `None`: `$CARGO_TARGET_DIR` or the
    /// workspace's `target/`.
    pub cache_dir: Option<PathBuf>,
    /// `true`: the broker outlives this process (no watchdog) and dropping the
    /// `Broker` leaves it running; only [`Broker::stop`] or a signal stops it.
    pub detached: bool,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            dir: None,
            port: None,
            ready_timeout: Duration::from_secs(120),
            max_heap_mib: 768,
            cache_dir: None,
            detached: false,
        }
    }
}

/// A running (or stopped, between [`Broker::stop`] and [`Broker::restart`])
/// local broker. Dropping it kills the broker unless it is detached.
pub struct Broker {
    /// Kept so that `restart` starts the broker exactly the same way.
    options: BrokerOptions,
    /// Owns the directory when the harness created it; dropping it deletes
    /// the data, after `Drop` has killed the broker.
    temp_dir: Option<TempDir>,
    /// Absolute: the broker's working directory and every path in its
    /// configuration are derived from it.
    dir: PathBuf,
    log_path: PathBuf,
    bootstrap: String,
    /// Resolved once: a restart must not depend on Maven or on the network.
    java: PathBuf,
    classpath: String,
    /// The leader of the broker's process group; `None` while stopped.
    child: Option<Child>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("bootstrap", &self.bootstrap)
            .field("dir", &self.dir)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts a broker and returns once it serves metadata and a
    /// transactional producer can `init_transactions` (which proves the
    /// transaction coordinator is up).
    ///
    /// Needs `java` (17+) and `mvn`; the first start downloads the broker jars
    /// from Maven Central into `~/.m2`. On failure the broker is killed, and a
    /// temporary directory is kept so that the log named in the error exists.
    pub fn start(options: BrokerOptions) -> Result<Broker, HarnessError> {
        let java = classpath::find_java()?;
        let cache_dir = options
            .cache_dir
            .clone()
            .unwrap_or_else(classpath::default_cache_dir);
        let classpath = classpath::resolve(&cache_dir)?;

        let (temp_dir, dir) = match &options.dir {
            Some(dir) => {
                fs::create_dir_all(dir)
                    .map_err(HarnessError::io(format!("creating {}", dir.display())))?;
                let dir = fs::canonicalize(dir)
                    .map_err(HarnessError::io(format!("resolving {}", dir.display())))?;
                (None, dir)
            }
            None => {
                let temp_dir = tempfile::Builder::new()
                    .prefix("txledger-kafka-")
                    .tempdir()
                    .map_err(HarnessError::io("creating a temporary broker directory"))?;
                let dir = temp_dir.path().to_path_buf();
                (Some(temp_dir), dir)
            }
        };

        let (port, controller_port) = free_ports(options.port)?;
        write_config(&dir, port, controller_port)?;
        let mut broker = Broker {
            log_path: dir.join(LOG_FILE),
            bootstrap: format!("127.0.0.1:{port}"),
            options,
            temp_dir,
            dir,
            java,
            classpath,
            child: None,
        };
        if let Err(error) = broker.format_if_new().and_then(|()| broker.launch()) {
            broker.abandon();
            return Err(error);
        }
        Ok(broker)
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`. Stable across restarts.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The broker log (log4j output and the JVM's own stdout/stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the broker log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        process::tail_file(&self.log_path, lines)
    }

    /// The process id of the broker's process-group leader (the JVM when
    /// detached, its watchdog shell otherwise); `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the broker: SIGTERM (a controlled shutdown), SIGKILL if it is
    /// still running after 20 s. The data and ports are kept for
    /// [`Broker::restart`]. Stopping a stopped broker does nothing.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        match self.child.as_mut() {
            Some(child) => {
                let leader = child.id();
                process::stop_group(leader, Some(child), STOP_GRACE)?;
                self.child = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Stops the broker if it runs, then starts it again on the same
    /// directory and ports, and waits until it is ready like
    /// [`Broker::start`]. Clients keep their bootstrap address and reconnect.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop()?;
        let result = self.launch();
        if result.is_err() {
            // Same rule as `start`: never leave a half-started broker behind.
            self.kill();
        }
        result
    }

    /// Formats the storage unless a previous run already did.
    fn format_if_new(&self) -> Result<(), HarnessError> {
        if self.dir.join("data").join("meta.properties").is_file() {
            return Ok(());
        }
        let cluster_id = base64url_no_pad(Uuid::new_v4().as_bytes());
        let output = Command::new(&self.java)
            .args(self.jvm_args("kafka.tools.StorageTool"))
            // `--cluster-id=ID`, not `--cluster-id ID`: an id may start with
            // `-`, which the argument parser would take for an option.
            .arg("format")
            .arg(format!("--cluster-id={cluster_id}"))
            .arg(arg_with_path(
                "--config=",
                &self.dir.join(SERVER_PROPERTIES),
            ))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(HarnessError::io(format!("running {}", self.java.display())))?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        text.push_str(&format!("\n(broker log {}:)\n", self.log_path.display()));
        text.push_str(&self.log_tail(20));
        Err(HarnessError::Format {
            dir: self.dir.clone(),
            status: output.status,
            output: process::last_lines(&text, ERROR_LOG_LINES),
        })
    }

    /// Spawns the JVM and waits until the broker is ready.
    fn launch(&mut self) -> Result<(), HarnessError> {
        let lifetime = if self.options.detached {
            Lifetime::Detached
        } else {
            let cleanup_dir = self.temp_dir.as_ref().map(TempDir::path);
            Lifetime::Watched {
                cleanup_dir,
                // Temporary data is deleted right after: no point in a
                // graceful shutdown. A named directory deserves one.
                grace_seconds: if cleanup_dir.is_some() { 0 } else { 20 },
            }
        };
        let mut args = self.jvm_args("kafka.Kafka");
        args.push(self.dir.join(SERVER_PROPERTIES).into_os_string());
        let child = process::spawn(&self.java, &args, &self.log_path, lifetime)?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// JVM options and main class, shared by the storage tool and the broker.
    fn jvm_args(&self, main_class: &str) -> Vec<OsString> {
        vec![
            format!("-Xmx{}m", self.options.max_heap_mib).into(),
            // Without a bound on the minimum, the JVM reserves 1/64 of the
            // machine's memory up front.
            format!("-Xms{}m", self.options.max_heap_mib.min(128)).into(),
            // A broker out of memory is broken; exit so the harness sees it.
            "-XX:+ExitOnOutOfMemoryError".into(),
            "-Djava.awt.headless=true".into(),
            arg_with_path("-Dlog4j2.configurationFile=", &self.dir.join("log4j2.xml")),
            arg_with_path("-Dkafka.logs.dir=", &self.dir),
            "-cp".into(),
            self.classpath.clone().into(),
            main_class.into(),
        ]
    }

    /// Waits, within `ready_timeout`, for: the port to accept connections,
    /// a metadata response naming a broker, and a successful
    /// `init_transactions`. Fails early if the process exits.
    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let timeout = self.options.ready_timeout;
        let deadline = Instant::now() + timeout;
        let not_ready = |broker: &Broker, last_problem: String| HarnessError::NotReady {
            timeout,
            last_problem,
            log_path: broker.log_path.clone(),
            log_tail: broker.log_tail(ERROR_LOG_LINES),
        };
        let address: SocketAddr = self
            .bootstrap
            .parse()
            .map_err(|_| not_ready(self, format!("bad address {}", self.bootstrap)))?;

        // A plain TCP connect first: librdkafka would retry just the same,
        // but log a refused connection every time.
        loop {
            self.check_running()?;
            match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
                Ok(_) => break,
                Err(error) if Instant::now() >= deadline => {
                    return Err(not_ready(self, format!("connecting to {address}: {error}")))
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }

        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set(
                "transactional.id",
                crate::unique_name("txledger-harness-ready"),
            )
            .create()
            .map_err(HarnessError::kafka("creating the readiness probe producer"))?;
        loop {
            self.check_running()?;
            let problem = match producer
                .client()
                .fetch_metadata(None, slice_until(deadline))
            {
                Ok(metadata) if !metadata.brokers().is_empty() => break,
                Ok(_) => "metadata named no broker".to_owned(),
                Err(error) => format!("metadata request: {error}"),
            };
            if Instant::now() >= deadline {
                return Err(not_ready(self, problem));
            }
        }
        loop {
            self.check_running()?;
            let error = match producer.init_transactions(slice_until(deadline)) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(error)) if error.is_fatal() => {
                    return Err(HarnessError::Kafka {
                        context: "readiness probe: init_transactions".to_owned(),
                        source: KafkaError::Transaction(error),
                    })
                }
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                return Err(not_ready(self, format!("init_transactions: {error}")));
            }
        }
    }

    /// Fails with the log tail if the broker process has exited.
    fn check_running(&mut self) -> Result<(), HarnessError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.child = None;
                Err(HarnessError::Exited {
                    status,
                    log_path: self.log_path.clone(),
                    log_tail: self.log_tail(ERROR_LOG_LINES),
                })
            }
            Err(error) => Err(HarnessError::Io {
                context: "checking the broker process".to_owned(),
                source: error,
            }),
        }
    }

    /// Kills the broker at once. Errors are ignored: this runs on paths that
    /// already fail or in `Drop`, and the process group is gone in every case
    /// but a kernel bug.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let leader = child.id();
            let _ = process::kill_group(leader, Some(&mut child));
        }
    }

    /// After a failed start: kill, and keep a temporary directory so that the
    /// log path in the error still exists.
    fn abandon(&mut self) {
        self.kill();
        if let Some(temp_dir) = self.temp_dir.take() {
            let _ = temp_dir.keep();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if !self.options.detached {
            self.kill();
        }
    }
}

/// A probe timeout: the time left, capped at [`PROBE_SLICE`], at least 100 ms.
fn slice_until(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(100), PROBE_SLICE)
}

/// The client port (given, or free) and a free controller port. Both
/// listeners are held together so the two differ, and a given port that is
/// taken fails here with a clear message; the broker binds them a moment
/// later (a race with other programs, accepted for a test harness).
fn free_ports(port: Option<u16>) -> Result<(u16, u16), HarnessError> {
    let bind = |port: u16| {
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .and_then(|listener| Ok((listener.local_addr()?.port(), listener)))
            .map_err(HarnessError::io(format!("binding 127.0.0.1:{port}")))
    };
    let (client, _client_listener) = bind(port.unwrap_or(0))?;
    let (controller, _controller_listener) = bind(0)?;
    Ok((client, controller))
}

/// Writes `server.properties` and the log4j configuration. Rewritten at every
/// start so that they always match this version of the harness.
fn write_config(dir: &Path, port: u16, controller_port: u16) -> Result<(), HarnessError> {
    let data = dir.join("data");
    let properties = format!(
        "# Written by the txledger harness at every start: change harness/src/broker.rs.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
# One node: every internal topic must fit on it. Few partitions, because each
# one costs files and start-up time and a test broker needs no parallelism.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Topics are created explicitly; a misspelt name must fail, not create a topic.
auto.create.topics.enable=false
num.partitions=6
# Nobody else is going to join a test's consumer group: do not wait for them.
group.initial.rebalance.delay.ms=0
",
        data = data.display(),
    );
    let path = dir.join(SERVER_PROPERTIES);
    fs::write(&path, properties)
        .map_err(HarnessError::io(format!("writing {}", path.display())))?;
    let path = dir.join("log4j2.xml");
    fs::write(&path, LOG4J_CONFIG).map_err(HarnessError::io(format!("writing {}", path.display())))
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
}
