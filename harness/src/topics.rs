//! Names and topics for tests: each test gets its own, so tests sharing one
//! broker never see each other's records, offsets or transactions.

use std::thread;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use uuid::Uuid;

use crate::error::HarnessError;

/// Bound on the CreateTopics round trip and on the wait for leaders.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(30);

/// `prefix` followed by a random suffix, for topics, groups and
/// transactional ids.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// Creates `(name, partitions)` topics with the brokers' default replication
/// factor (1 on a single broker, 3 on a cluster of three or more) and returns
/// once every partition has a leader in the metadata, so that the next
/// produce or assign does not race the broker. A topic that already exists
/// with the same partition count is fine.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<(), HarnessError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(HarnessError::kafka("creating an admin client"))?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        // -1: the brokers' `default.replication.factor`, so that one call
        // suits a single broker and a cluster alike.
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(TOPIC_TIMEOUT))
        .operation_timeout(Some(TOPIC_TIMEOUT));
    let results = block_on(admin.create_topics(&new_topics, &options))
        .map_err(HarnessError::kafka("CreateTopics request"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(HarnessError::CreateTopic { topic, code }),
        }
    }

    let deadline = Instant::now() + TOPIC_TIMEOUT;
    for (name, partitions) in topics {
        loop {
            let problem = match admin
                .inner()
                .fetch_metadata(Some(name), Duration::from_secs(5))
            {
                Ok(metadata) => match metadata.topics().first() {
                    Some(topic) if topic.error().is_some() => {
                        format!("metadata error {:?}", topic.error())
                    }
                    Some(topic) => {
                        let led = topic
                            .partitions()
                            .iter()
                            .filter(|partition| partition.leader() >= 0)
                            .count();
                        if led == topic.partitions().len()
                            && i32::try_from(led).ok() == Some(*partitions)
                        {
                            break;
                        }
                        format!(
                            "{led} of {} partitions with a leader, {partitions} wanted",
                            topic.partitions().len()
                        )
                    }
                    None => "not in the metadata yet".to_owned(),
                },
                Err(error) => format!("metadata request: {error}"),
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::TopicNotReady {
                    topic: (*name).to_owned(),
                    timeout: TOPIC_TIMEOUT,
                    detail: problem,
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}
