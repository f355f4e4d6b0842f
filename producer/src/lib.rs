//! txledger's transactional producer: writes money transfers, generated or
//! imported, to the `transactions` topic with idempotent, transactional
//! writes.
//!
//! # Layout
//!
//! - [`config`]: the command line and its environment fallbacks.
//! - [`generate`]: the seeded, pure generator of realistic transfers.
//! - [`import`]: JSON-lines and CSV files, decoded line by line with the
//!   shards' own decoder; invalid lines reported with their numbers.
//! - [`source`]: the generator or the importer behind one interface, with
//!   `--count` and the invalid-line policy applied.
//! - [`send`]: the sending loop on its own thread: batches, transactions,
//!   abort-and-resend, retries, rate limiting.
//! - [`progress`]: the counters behind the progress line, the progress bar,
//!   the metrics and the summary; the stop signal.
//! - [`run`] (here): ties them together for one run, from topic creation to
//!   the summary.
//!
//! # Guarantee
//!
//! A transfer read by a `read_committed` consumer was committed exactly once
//! by this producer, in a transaction of at most `--batch-records` records
//! kept open at most `--batch-ms`. A crash, a kill or a fatal error leaves
//! the open transaction uncommitted; the next instance with the same
//! `transactional.id` fences the old one and the broker aborts it. The
//! guarantee ends at Kafka: a record the consumer reads twice (the deliberate
//! resubmissions) is kept from applying twice by the ledger's idempotency
//! by transfer id.

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
pub mod config;
pub mod generate;
pub mod import;
pub mod progress;
pub mod send;
pub mod source;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::kafka::{self, TopicError, TopicSpec};
use rdkafka::error::KafkaError;
use tracing::{error, info};

pub use crate::config::{Config, ConfigError};
use crate::import::{ImportError, InvalidLine};
use crate::progress::{per_second, Progress, StopSignal};
use crate::send::{Sender, Settings};
use crate::source::Source;

/// Why a run failed. Each message names what to check and leaves its cause
/// out (it is the `source()`): print it with `ledger::telemetry::chain`.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("could not create the Kafka producer")]
    Client(#[source] KafkaError),
    #[error("could not initialize transactions with the broker at {bootstrap} within {timeout:?}")]
    Connect {
        bootstrap: String,
        timeout: Duration,
        #[source]
        source: KafkaError,
    },
    #[error(
        "the producer stopped rather than risk writing a batch twice after a fatal Kafka \
         error in {operation} (transactional.id {})",
        transactional_id.as_deref().unwrap_or("none")
    )]
    Fatal {
        operation: &'static str,
        transactional_id: Option<String>,
        #[source]
        source: KafkaError,
    },
    #[error(
        "the producer stopped, since nothing here redoes {operation}, after an abortable \
         error in it (transactional.id {})",
        transactional_id.as_deref().unwrap_or("none")
    )]
    Abortable {
        operation: &'static str,
        transactional_id: Option<String>,
        #[source]
        source: KafkaError,
    },
    #[error("{operation} still failed after {attempts} attempts")]
    GaveUp {
        operation: &'static str,
        attempts: u32,
        #[source]
        source: KafkaError,
    },
    #[error("could not start the watchdog thread")]
    Watchdog(#[source] std::io::Error),
    #[error(
        "the sending loop did not stop within {0:?} of the shutdown request: a call into \
         librdkafka is blocked; its open transaction is aborted by the broker"
    )]
    StopTimedOut(Duration),
    #[error("{count} record(s) were not delivered; the first failed with: {reason}")]
    Undelivered { count: u64, reason: String },
    #[error("the metrics server on {address} failed")]
    Metrics {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Records handed to Kafka, each counted once however often its batch
    /// was resent.
    pub records_sent: u64,
    /// Records in committed transactions (acknowledged by the broker with
    /// `--no-transactions`): what `read_committed` readers see.
    pub records_committed: u64,
    pub transactions_committed: u64,
    pub transactions_aborted: u64,
    /// Deliberate same-id resubmissions among the committed records.
    pub resubmissions_committed: u64,
    /// Invalid lines of an import file skipped (`--on-invalid skip`).
    pub invalid_lines: u64,
    /// The first of them, with their line numbers and reasons.
    pub invalid_listed: Vec<InvalidLine>,
    /// The generator's seed, to reproduce the stream; `None` for an import.
    pub seed: Option<u64>,
    /// `None` with `--no-transactions`.
    pub transactional_id: Option<String>,
    pub elapsed: Duration,
}

impl Summary {
    /// Committed records per second over the whole run.
    pub fn records_per_second(&self) -> f64 {
        per_second(self.records_committed, self.elapsed)
    }
}

/// Runs the producer until the source is exhausted, `shutdown` resolves
/// (then the open transaction is committed, or aborted if that fails), or a
/// fatal error occurs.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Summary, ProducerError> {
    let started = Instant::now();
    config.validate()?;
    let transactional_id = config.resolved_transactional_id()?;
    let seed = config
        .from_file
        .is_none()
        .then(|| config.seed.unwrap_or_else(rand::random));
    tokio::pin!(shutdown);

    // A bad import file is reported before the broker is touched.
    let (source, expected_records) = {
        let config = config.clone();
        let open = move || Source::open(&config, seed.unwrap_or_default());
        join(tokio::task::spawn_blocking(open).await)?
    };
    log_start(&config, transactional_id.as_deref(), seed);

    let topic = TopicSpec {
        name: config.transfers_topic(),
        partitions: config.partitions,
        exact: true,
        compacted: false,
    };
    let admin_config = kafka::client_config(&config.bootstrap_servers);
    let topics = [topic];
    let ensure = kafka::ensure_topics(&admin_config, &topics, config.connect_timeout());
    let progress = Arc::new(Progress::new(expected_records));
    tokio::select! {
        ensured = ensure => ensured?,
        () = &mut shutdown => {
            info!("Shutdown requested before the first record; nothing was sent.");
            return Ok(summary(&progress, None, seed, transactional_id, started));
        }
    }

    let settings = sender_settings(&config, transactional_id.clone());
    let source = send(settings, source, &config, &progress, shutdown).await?;
    let summary = summary(&progress, Some(&source), seed, transactional_id, started);
    info!(
        records_sent = summary.records_sent,
        records_committed = summary.records_committed,
        transactions_committed = summary.transactions_committed,
        transactions_aborted = summary.transactions_aborted,
        resubmissions = summary.resubmissions_committed,
        invalid_lines = summary.invalid_lines,
        elapsed_ms = summary.elapsed.as_millis() as u64,
        rate = summary.records_per_second().round() as u64,
        "Producer finished."
    );
    Ok(summary)
}

/// Runs the sending loop on a blocking thread, with progress reports and
/// the metrics server alongside, until it ends or `shutdown` resolves (then
/// it ends the open transaction first).
async fn send(
    settings: Settings,
    source: Source,
    config: &Config,
    progress: &Arc<Progress>,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Source, ProducerError> {
    progress::describe_metrics();
    let (metrics_stop, metrics) = start_metrics(config.metrics_addr);
    let stop = Arc::new(StopSignal::default());
    // The transaction's whole time, then the cut-off of a call blocked in it.
    let stop_bound = settings.transaction_timeout + kafka::CALL_CUTOFF_GRACE;
    let sender = Sender::new(settings, source, Arc::clone(&stop), Arc::clone(progress))?;
    let mut sending = tokio::task::spawn_blocking(move || sender.run());
    let reporter = {
        let progress = Arc::clone(progress);
        let every = Duration::from_secs(config.progress_secs);
        tokio::spawn(async move { progress.report(every).await })
    };
    let mut metrics_failure = None;
    let sent = tokio::select! {
        sent = &mut sending => sent,
        () = shutdown => {
            info!("Shutdown requested; ending the open transaction.");
            stop.set();
            // Bounded: a loop blocked in librdkafka would never see the stop.
            match tokio::time::timeout(stop_bound, &mut sending).await {
                Ok(sent) => sent,
                Err(_) => return Err(ProducerError::StopTimedOut(stop_bound)),
            }
        }
        failure = metrics => {
            stop.set();
            metrics_failure = Some(failure);
            sending.await
        }
    };
    reporter.abort();
    // The server may already have stopped on its own (that is a failure).
    let _ = metrics_stop.send(true);
    progress.finish();
    let source = join(sent)?;
    match metrics_failure {
        Some(failure) => Err(failure),
        None => Ok(source),
    }
}

fn log_start(config: &Config, transactional_id: Option<&str>, seed: Option<u64>) {
    info!(
        bootstrap_servers = %config.bootstrap_servers,
        topic = %config.transfers_topic(),
        transactional_id = transactional_id.unwrap_or("none (--no-transactions)"),
        from_file = config.from_file.as_ref().map(|path| path.display().to_string()),
        seed,
        batch_records = config.batch_records,
        batch_ms = config.batch_ms,
        rate = config.rate,
        count = config.count,
        "Producer starting."
    );
}

/// What the sending loop needs of the configuration.
fn sender_settings(config: &Config, transactional_id: Option<String>) -> Settings {
    Settings {
        bootstrap_servers: config.bootstrap_servers.clone(),
        topic: config.transfers_topic().to_owned(),
        transactional_id,
        batch_records: config.batch_records,
        batch_duration: config.batch_duration(),
        transaction_timeout: config.transaction_timeout(),
        call_timeout: config.call_timeout(),
        connect_timeout: config.connect_timeout(),
        rate: config.rate,
    }
}

/// Serves `/metrics` when an address is given. Returns the sender that stops
/// the server and a future that resolves only if the server fails (never
/// when no address is given), so that a port already in use ends the run
/// with a clear error instead of a silent lack of metrics.
fn start_metrics(
    address: Option<SocketAddr>,
) -> (
    tokio::sync::watch::Sender<bool>,
    impl Future<Output = ProducerError>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let server = address.map(|address| {
        info!(%address, "Serving Prometheus metrics on /metrics.");
        let shutdown = async move {
            // An error means the sender is gone: stop as well.
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        tokio::spawn(async move {
            let result = ledger::telemetry::serve_metrics(address, shutdown).await;
            (address, result)
        })
    });
    let failure = async move {
        if let Some(server) = server {
            if let Ok((address, Err(source))) = server.await {
                error!(%address, error = %ledger::telemetry::chain(&source), "The metrics server failed.");
                return ProducerError::Metrics { address, source };
            }
        }
        std::future::pending().await
    };
    (stop, failure)
}

fn summary(
    progress: &Progress,
    source: Option<&Source>,
    seed: Option<u64>,
    transactional_id: Option<String>,
    started: Instant,
) -> Summary {
    let counts = progress.counts();
    let invalid = source
        .map(|source| source.invalid().clone())
        .unwrap_or_default();
    Summary {
        records_sent: counts.records_sent,
        records_committed: counts.records_committed,
        transactions_committed: counts.transactions_committed,
        transactions_aborted: counts.transactions_aborted,
        resubmissions_committed: counts.resubmissions_committed,
        invalid_lines: invalid.total,
        invalid_listed: invalid.listed,
        seed,
        transactional_id,
        elapsed: started.elapsed(),
    }
}

/// The result of a blocking task; its panic, if any, goes on unwinding here.
fn join<T, E>(joined: Result<Result<T, E>, tokio::task::JoinError>) -> Result<T, ProducerError>
where
    ProducerError: From<E>,
{
    match joined {
        Ok(result) => result.map_err(ProducerError::from),
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}
