//! One local single-node Kafka broker (KRaft, combined broker and controller):
//! the one-node case of [`crate::Cluster`], with its files in the broker
//! directory itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::{Cluster, ClusterOptions, Layout};
use crate::error::HarnessError;

/// The id of a broker's one node.
const NODE: u32 = 1;

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
/// local broker: a [`Cluster`] of one node that lives in the broker
/// directory itself. Dropping it kills the broker unless it is detached.
pub struct Broker {
    cluster: Cluster,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("bootstrap", &self.bootstrap_servers())
            .field("dir", &self.cluster.dir())
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
        let cluster = Cluster::launch(
            ClusterOptions {
                nodes: 1,
                dir: options.dir,
                ready_timeout: options.ready_timeout,
                max_heap_mib: options.max_heap_mib,
                cache_dir: options.cache_dir,
                detached: options.detached,
            },
            Layout::Flat { port: options.port },
        )?;
        Ok(Broker { cluster })
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`. Stable across restarts.
    pub fn bootstrap_servers(&self) -> &str {
        self.cluster.bootstrap_servers()
    }

    /// The broker log (log4j output and the JVM's own stdout/stderr).
    pub fn log_path(&self) -> &Path {
        self.cluster.log_path(NODE)
    }

    /// The last `lines` lines of the broker log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.cluster.log_tail(NODE, lines)
    }

    /// The process id of the broker's process-group leader (the JVM when
    /// detached, its watchdog shell otherwise); `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.cluster.pid(NODE)
    }

    /// Stops the broker: SIGTERM (a controlled shutdown), SIGKILL if it is
    /// still running after 20 s. The data and ports are kept for
    /// [`Broker::restart`]. Stopping a stopped broker does nothing.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        self.cluster.stop(NODE)
    }

    /// Stops the broker if it runs, then starts it again on the same
    /// directory and ports, and waits until it is ready like
    /// [`Broker::start`]. Clients keep their bootstrap address and reconnect.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.cluster.restart(NODE)
    }

    /// From now on, any panic in this process (a failing test) prints the
    /// broker log's tail and keeps a temporary broker directory after exit.
    pub(crate) fn print_log_on_panic(&self) {
        self.cluster.print_logs_on_panic();
    }
}
