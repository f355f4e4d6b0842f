//! What the whole-pipeline fault tests share.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Records in open transactions on a topic: the end a `read_uncommitted`
/// reader sees minus the last stable offset, the end of `read_committed`
/// (librdkafka asks for the watermarks with the client's isolation level).
pub struct OpenTransactions {
    uncommitted: BaseConsumer,
    committed: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl OpenTransactions {
    pub fn new(bootstrap: &str, topic: &str, partitions: i32) -> Self {
        let client = |isolation: &str| {
            ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("isolation.level", isolation)
                .create()
                .expect("a watermark reader")
        };
        OpenTransactions {
            uncommitted: client("read_uncommitted"),
            committed: client("read_committed"),
            topic: topic.to_owned(),
            partitions,
        }
    }

    /// `None` while the broker does not answer (it is restarted on purpose).
    pub fn records(&self) -> Option<i64> {
        let timeout = Duration::from_secs(5);
        let mut open = 0;
        for partition in 0..self.partitions {
            let (_, end) = self
                .uncommitted
                .fetch_watermarks(&self.topic, partition, timeout)
                .ok()?;
            let (_, stable) = self
                .committed
                .fetch_watermarks(&self.topic, partition, timeout)
                .ok()?;
            open += end - stable;
        }
        Some(open)
    }

    /// Waits up to `within` for a transaction with records in it.
    pub fn wait_for_records(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.records().is_some_and(|open| open > 0) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}
