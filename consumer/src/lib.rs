//! A txledger consumer shard: exactly-once read-process-write from the
//! `transactions` and `ledger-credits` partitions it owns to `ledger-results`,
//! `ledger-credits` and `ledger-dlq`, with its balances in a local sled
//! ledger kept in step with Kafka's committed offsets.
//!
//! # Guarantees
//!
//! Every committed input record gets exactly one committed outcome; every
//! accepted transfer is debited and credited exactly once; balances never
//! include a batch whose Kafka transaction aborted. This holds across
//! crashes at any point, because sled holds a pending record of the batch in
//! flight and Kafka's committed offsets decide at start whether it happened.
//! It ends where Kafka's does: output read with `read_uncommitted` includes
//! aborted batches, and a transfer id decided longer ago than the
//! idempotency window is decided again.
//!
//! # Layout
//!
//! - [`config`]: flags with environment fallbacks, and what is derived from
//!   them (ordinal, owned partitions).
//! - `shard`: the protocol loop and recovery, on a dedicated thread; a
//!   folder with one file per concern (start-up and recovery, the batch's
//!   transaction, what it produces, the heartbeat, rebalances), listed in
//!   its own Layout.
//! - `restore`: rebuilding partitions' state from the changelog.
//! - `http`: health, readiness, metrics and queries (axum, on tokio).
//!   Its JSON bodies are `ledger::api`'s views, shared with `ledger query`.
//! - `measure`: the Prometheus metrics.
//! - [`faults`]: test-only failure injection and protocol mutants, handed
//!   to [`run`] or [`serve`] (the binary reads them from the environment);
//!   the loop calls them at fixed points, and they do nothing unless set.

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
pub mod config;
pub mod faults;
mod http;
mod measure;
mod restore;
mod shard;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ledger::kafka::{self, TopicError, TopicSpec};
use ledger::store::StoreError;
pub use ledger::watchdog::EXIT_STUCK;
use rdkafka::error::KafkaError;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub use config::{Config, ConfigError};
pub use faults::{FaultError, Faults};

/// Bound on creating or checking the topics at start.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the shard stopped. A message leaves its cause out (it is the
/// `source()`): print it with `ledger::telemetry::chain`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    #[error("the topics are not usable")]
    Topics(#[from] TopicError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stopping before the batch is written")]
    MisroutedCredit(#[from] ledger_core::machine::MisroutedCredit),
    #[error("recovery refused to start the shard: {0}")]
    RecoveryRefused(String),
    #[error(
        "the group assigned partitions {transfers:?} of the transfers but {credits:?} of the \
         credits: a shard must own partition p of both. Give both topics the same partition \
         count, and every member of the group the range assignor"
    )]
    SplitAssignment {
        transfers: Vec<i32>,
        credits: Vec<i32>,
    },
    #[error(
        "restoring from {topic} stalled: nothing read for {stalled:?} after {read} records; \
         is the broker reachable and the topic readable?"
    )]
    RestoreStalled {
        topic: String,
        read: u64,
        stalled: std::time::Duration,
    },
    #[error("fatal Kafka error at {step}")]
    Kafka {
        step: &'static str,
        #[source]
        error: KafkaError,
    },
    #[error("the HTTP API on {address} failed")]
    Http {
        address: SocketAddr,
        #[source]
        error: std::io::Error,
    },
    #[error("could not start the shard thread")]
    Thread(#[source] std::io::Error),
    #[error("the shard loop panicked (an invariant was violated; see the panic message)")]
    LoopPanicked,
    #[error(
        "the shard loop did not stop within {0:?} of the shutdown request: a call into \
         librdkafka is blocked; exiting with the open batch left to recovery"
    )]
    StopTimedOut(Duration),
}

impl Error {
    /// The process's exit status for this error: [`EXIT_STUCK`] where a
    /// restart heals (a blocked call), 1 otherwise.
    pub fn exit_status(&self) -> u8 {
        match self {
            Error::StopTimedOut(_) => EXIT_STUCK,
            _ => 1,
        }
    }
}

/// Binds `config.http_addr` and runs the shard until `shutdown` resolves
/// (then finishes the open batch and returns `Ok`) or a fatal error.
/// `faults`: test-only failure injection, `Faults::default()` for none.
pub async fn run(
    config: Config,
    faults: Faults,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|error| Error::Http {
            address: config.http_addr,
            error,
        })?;
    serve(config, faults, listener, shutdown).await
}

/// [`run`] on a listener bound by the caller (tests bind `127.0.0.1:0`).
pub async fn serve(
    config: Config,
    faults: Faults,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let settings = config::Settings::resolve(&config)?;
    if faults.is_active() {
        warn!(message = "Test-only failure injection is on.", faults = ?faults);
    }
    let address = listener.local_addr().map_err(|error| Error::Http {
        address: config.http_addr,
        error,
    })?;
    measure::describe();
    measure::ready(false);
    let shared = Arc::new(shard::Shared::default());
    let app = http::router(http::AppState {
        shared: Arc::clone(&shared),
        name: settings.transactional_id.as_str().into(),
        metrics: ledger::telemetry::metrics_handle(),
        stall_bound: stall_bound(&settings),
    });
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });
    info!(message = "HTTP API listening.", %address);

    let result = drive(&config, settings, faults, &shared, shutdown).await;
    let _ = http_stop.send(());
    let served = match server.await {
        Ok(served) => served.map_err(|error| Error::Http { address, error }),
        Err(join) => Err(Error::Http {
            address,
            error: std::io::Error::other(join),
        }),
    };
    result.and(served)
}

/// How long the loop may show no progress before `/healthz` fails, and how
/// long a stop may take: the transaction timeout, since an iteration that
/// takes longer cannot commit its batch anyway (the broker aborts it).
fn stall_bound(settings: &config::Settings) -> Duration {
    settings.transaction_timeout
}

/// Topics, then the loop thread; returns its result.
async fn drive(
    config: &Config,
    settings: config::Settings,
    faults: Faults,
    shared: &Arc<shard::Shared>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    tokio::pin!(shutdown);
    let stop_bound = stall_bound(&settings);
    let client = kafka::client_config(&settings.bootstrap_servers);
    let topics = topics(config, &settings);
    tokio::select! {
        created = kafka::ensure_topics(&client, &topics, TOPIC_TIMEOUT) => created?,
        () = &mut shutdown => return Ok(()),
    }

    let (done, finished) = oneshot::channel();
    let loop_shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name(settings.transactional_id.clone())
        .spawn(move || {
            let _ = done.send(shard::run(settings, faults, loop_shared));
        })
        .map_err(Error::Thread)?;
    tokio::pin!(finished);
    let result = tokio::select! {
        result = &mut finished => result,
        () = &mut shutdown => {
            info!(message = "Shutdown requested: finishing the open batch.");
            shared.stop.store(true, Ordering::Release);
            // Bounded: a loop blocked in librdkafka would never see the
            // flag, and a shard that ignores SIGTERM is only ever killed.
            match tokio::time::timeout(stop_bound, finished).await {
                Ok(result) => result,
                Err(_) => return Err(Error::StopTimedOut(stop_bound)),
            }
        }
    };
    // The sender is dropped without a result only if the thread panicked.
    result.unwrap_or(Err(Error::LoopPanicked))
}

/// The topics the shard reads and writes, as created or checked at start.
fn topics<'a>(config: &Config, settings: &'a config::Settings) -> Vec<TopicSpec<'a>> {
    let mut topics = vec![
        TopicSpec {
            name: &settings.transfers_topic,
            partitions: config.partitions,
            exact: true,
            compacted: false,
        },
        TopicSpec {
            name: &settings.credits_topic,
            partitions: config.partitions,
            exact: true,
            compacted: false,
        },
        TopicSpec {
            name: &settings.results_topic,
            partitions: config.partitions,
            exact: false,
            compacted: false,
        },
        TopicSpec {
            name: &settings.dlq_topic,
            partitions: config.partitions,
            exact: false,
            compacted: false,
        },
    ];
    if let Some(changelog) = &settings.changelog_topic {
        // Partition p carries the state of partition p.
        topics.push(TopicSpec {
            name: changelog,
            partitions: config.partitions,
            exact: true,
            compacted: true,
        });
    }
    topics
}
