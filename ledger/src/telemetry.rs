//! Logging and metrics setup shared by every long-running binary, and the
//! one way an error is printed with its causes.

use std::error::Error;
use std::fmt;
use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Readable lines for a terminal.
    Human,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`),
/// logs go to stderr so stdout stays free for a command's output.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests run several pipelines in one process) keeps the
    // first subscriber, which is what they want.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// An error and its causes on one line, `outer: cause: root cause`, each
/// once: the form of every error a binary prints or logs.
///
/// The project's errors leave their cause out of their own message (it is
/// their `source()`), so printing an error without its chain would drop the
/// reason. Some libraries' errors do both (rdkafka's `KafkaError` names its
/// code in its message and returns it as its source), so a cause whose text
/// the line already ends with is not repeated.
pub fn chain<'a>(error: &'a (dyn Error + 'static)) -> ErrorChain<'a> {
    ErrorChain(error)
}

/// See [`chain`].
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            if !line.ends_with(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = error.source();
        }
        f.write_str(&line)
    }
}

/// Installs the global Prometheus recorder once per process and returns the
/// handle that renders `/metrics`.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms are durations in seconds, except counts of records
            // (named `..._records`), which need buckets of their own: in
            // seconds' buckets every batch would fall past the last one.
            let seconds = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let records = [
                1.0, 10.0, 100.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&seconds)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_records".to_owned()), &records)
                })
                .map(|builder| builder.build_recorder());
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    // Fails only if another recorder was installed first, in
                    // which case our handle renders nothing but nothing breaks.
                    let _ = metrics::set_global_recorder(recorder);
                    handle
                }
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Serves `/metrics` (and `/healthz`) on `address` until `shutdown`
/// resolves; for binaries without an HTTP API of their own.
pub async fn serve_metrics(
    address: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = metrics_handle();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(address).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::{chain, metrics_handle};

    /// A caller's context around a library error, as `anyhow` adds it.
    #[derive(Debug, thiserror::Error)]
    #[error("starting shard 0")]
    struct Context(#[source] crate::kafka::TopicError);

    #[test]
    fn a_chain_names_every_cause_once_outermost_first() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};

        let code = RDKafkaErrorCode::BrokerTransportFailure;
        // rdkafka's error both names its code and returns it as its source.
        let kafka = KafkaError::MetadataFetch(code);
        assert_eq!(
            std::error::Error::source(&kafka).map(ToString::to_string),
            Some(code.to_string())
        );
        let error = Context(crate::kafka::TopicError::Unreachable {
            bootstrap: "127.0.0.1:1".to_owned(),
            timeout: std::time::Duration::from_secs(2),
            source: kafka,
        });
        let line = chain(&error).to_string();
        assert_eq!(
            line,
            format!(
                "starting shard 0: the broker at 127.0.0.1:1 did not answer within 2s: \
                 Meta data fetch error: {code}"
            )
        );
        assert_eq!(line.matches(&code.to_string()).count(), 1, "{line}");

        let error = crate::store::StoreError::Sled {
            path: "/data/shard-0".into(),
            source: sled::Error::Io(std::io::Error::other("disk full")),
        };
        assert_eq!(
            chain(&error).to_string(),
            "sled error on /data/shard-0: IO error: disk full"
        );
    }

    /// The `le` bucket line of `metric` in a rendering, as (bound, count).
    fn buckets(rendered: &str, metric: &str) -> Vec<(String, u64)> {
        let prefix = format!("{metric}_bucket{{le=\"");
        rendered
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .map(|rest| {
                let (bound, count) = rest.split_once("\"} ").expect("a bucket line");
                (bound.to_owned(), count.parse().expect("a count"))
            })
            .collect()
    }

    #[test]
    fn record_counts_and_durations_get_buckets_of_their_own() {
        let handle = metrics_handle();
        metrics::histogram!("telemetry_test_batch_records").record(3_000.0);
        metrics::histogram!("telemetry_test_batch_seconds").record(0.2);
        let rendered = handle.render();

        let records = buckets(&rendered, "telemetry_test_batch_records");
        let count_at = |bound: &str| {
            records
                .iter()
                .find(|(b, _)| b == bound)
                .unwrap_or_else(|| panic!("no bucket {bound} in {records:?}"))
                .1
        };
        assert_eq!(count_at("2500"), 0, "{rendered}");
        assert_eq!(count_at("5000"), 1, "{rendered}");

        let seconds = buckets(&rendered, "telemetry_test_batch_seconds");
        assert!(
            seconds
                .iter()
                .any(|(bound, count)| bound == "0.25" && *count == 1),
            "{rendered}"
        );
        assert!(
            seconds
                .iter()
                .any(|(bound, count)| bound == "0.1" && *count == 0),
            "{rendered}"
        );
    }
}
