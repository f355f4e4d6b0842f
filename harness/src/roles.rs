//! Who holds a role in a cluster, asked afresh at every call: partition
//! leaders, the coordinators of transactional ids and consumer groups, and
//! the active controller; and whether every replica is in sync.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, Producer};

use crate::error::HarnessError;
use crate::node::{broker_ids, Jvm};
use crate::process;

/// Bound on one metadata request of a lookup. With a node just killed, the
/// client may try it first and needs a while to move on.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on `kafka-metadata-quorum`: a JVM start on a loaded machine, then
/// one admin request.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// How many partitions a "not in sync" message lists.
const LISTED_PARTITIONS: usize = 5;

/// An internal topic whose partitions' leaders are coordinators.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoordinatorTopic {
    name: &'static str,
    /// What first creates the topic, for the error when it does not exist.
    created_by: &'static str,
}

pub(crate) const TRANSACTIONS: CoordinatorTopic = CoordinatorTopic {
    name: "__transaction_state",
    created_by: "the first init_transactions",
};

pub(crate) const GROUPS: CoordinatorTopic = CoordinatorTopic {
    name: "__consumer_offsets",
    created_by: "the first lookup of a consumer group's coordinator",
};

/// Java's `String.hashCode`: `s[0]*31^(n-1) + ... + s[n-1]` over UTF-16 code
/// units, in wrapping 32-bit arithmetic.
fn java_string_hash(text: &str) -> i32 {
    text.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// The partition of a coordinator topic that owns `key`, as the broker
/// computes it: `Utils.abs(key.hashCode()) % partitions`, where Kafka's
/// `Utils.abs` maps `i32::MIN` to 0. (Not `hash & 0x7fffffff`: for negative
/// hashes the two differ.)
fn coordinator_partition(key: &str, partitions: i32) -> i32 {
    java_string_hash(key).checked_abs().unwrap_or(0) % partitions
}

/// Fresh metadata of every topic (internal ones included), from whichever
/// node answers first.
fn metadata(bootstrap: &str, what: &str) -> Result<Metadata, HarnessError> {
    metadata_client(bootstrap)?
        .client()
        .fetch_metadata(None, LOOKUP_TIMEOUT)
        .map_err(|error| HarnessError::Lookup {
            what: what.to_owned(),
            detail: format!("metadata request: {error}"),
        })
}

fn metadata_client(bootstrap: &str) -> Result<BaseProducer, HarnessError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(HarnessError::kafka("creating a metadata client"))
}

pub(crate) fn partition_leader(
    bootstrap: &str,
    topic: &str,
    partition: i32,
) -> Result<u32, HarnessError> {
    let what = format!("the leader of {topic}-{partition}");
    let metadata = metadata(bootstrap, &what)?;
    leader(&metadata, topic, partition).map_err(|detail| HarnessError::Lookup { what, detail })
}

pub(crate) fn coordinator(
    bootstrap: &str,
    topic: CoordinatorTopic,
    key: &str,
) -> Result<u32, HarnessError> {
    let what = format!("the coordinator of {key:?} (a leader of {})", topic.name);
    let metadata = metadata(bootstrap, &what)?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|candidate| candidate.name() == topic.name)
        .map(|found| found.partitions().len())
        .filter(|count| *count > 0)
        .ok_or_else(|| HarnessError::Lookup {
            what: what.clone(),
            detail: format!(
                "{} does not exist yet; {} creates it",
                topic.name, topic.created_by
            ),
        })?;
    let partitions = i32::try_from(partitions).expect("partition counts fit in i32");
    leader(
        &metadata,
        topic.name,
        coordinator_partition(key, partitions),
    )
    .map_err(|detail| HarnessError::Lookup { what, detail })
}

fn leader(metadata: &Metadata, topic: &str, partition: i32) -> Result<u32, String> {
    let found = metadata
        .topics()
        .iter()
        .find(|candidate| candidate.name() == topic)
        .ok_or_else(|| format!("topic {topic} does not exist"))?;
    if let Some(error) = found.error() {
        return Err(format!("metadata error for {topic}: {error:?}"));
    }
    let found = found
        .partitions()
        .iter()
        .find(|candidate| candidate.id() == partition)
        .ok_or_else(|| format!("{topic} has {} partitions", found.partitions().len()))?;
    u32::try_from(found.leader()).map_err(|_| {
        format!(
            "{topic}-{partition} has no leader (replicas {:?}, in sync {:?})",
            found.replicas(),
            found.isr()
        )
    })
}

/// Runs Kafka's `kafka-metadata-quorum --bootstrap-server ... describe
/// --status` and reads its `LeaderId:` line.
pub(crate) fn active_controller(jvm: &Jvm, bootstrap: &str) -> Result<u32, HarnessError> {
    let what = "the active controller";
    let fail = |detail: String| HarnessError::Lookup {
        what: what.to_owned(),
        detail,
    };
    // One file for stdout and stderr: read after the tool is done, so
    // neither pipe can fill up and block it meanwhile.
    let mut output = tempfile::tempfile().map_err(HarnessError::io("creating a temporary file"))?;
    let stdout = output
        .try_clone()
        .map_err(HarnessError::io("duplicating a file"))?;
    let stderr = output
        .try_clone()
        .map_err(HarnessError::io("duplicating a file"))?;
    let mut child = Command::new(jvm.java())
        .args(jvm.args(None, "org.apache.kafka.tools.MetadataQuorumCommand"))
        .args(["--bootstrap-server", bootstrap, "describe", "--status"])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(HarnessError::io(format!(
            "running {}",
            jvm.java().display()
        )))?;
    let status = wait_bounded(&mut child, TOOL_TIMEOUT)?;
    let mut text = String::new();
    output
        .seek(SeekFrom::Start(0))
        .and_then(|_| output.read_to_string(&mut text))
        .map_err(HarnessError::io("reading kafka-metadata-quorum's output"))?;
    let outcome = match status {
        Some(status) if status.success() => match parse_leader_id(&text) {
            Some(id) => return Ok(id),
            None => "printed no LeaderId".to_owned(),
        },
        Some(status) => format!("failed ({status})"),
        None => format!("did not finish within {TOOL_TIMEOUT:?} and was killed"),
    };
    Err(fail(format!(
        "`kafka-metadata-quorum describe --status` {outcome}; its output:\n{}",
        process::last_lines(&text, 40)
    )))
}

/// The child's exit status, or `None` if it ran longer than `timeout` (it is
/// killed then).
fn wait_bounded(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<Option<ExitStatus>, HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(HarnessError::io("waiting for kafka-metadata-quorum"))?
        {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            // Already gone is fine; what matters is that it is reaped.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn parse_leader_id(output: &str) -> Option<u32> {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix("LeaderId:"))
        .and_then(|id| id.trim().parse().ok())
}

/// Waits until every partition has a leader and every replica is both in
/// the in-sync set and on a live (unfenced) broker; a node killed a moment
/// ago stays in the in-sync sets until the controller notices. On timeout:
/// the last problem, and the nodes of the replicas found lagging.
pub(crate) fn wait_in_sync(
    bootstrap: &str,
    timeout: Duration,
) -> Result<(), (String, BTreeSet<u32>)> {
    let deadline = Instant::now() + timeout;
    let client =
        metadata_client(bootstrap).map_err(|error| (format!("{error:?}"), BTreeSet::new()))?;
    loop {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let (problem, lagging) = match client.client().fetch_metadata(None, slice) {
            Ok(metadata) => match out_of_sync(&metadata) {
                None => return Ok(()),
                Some(found) => found,
            },
            Err(error) => (format!("metadata request: {error}"), BTreeSet::new()),
        };
        if Instant::now() >= deadline {
            return Err((problem, lagging));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The partitions not fully in sync, described, and the nodes of their
/// lagging replicas; `None` if there are none.
fn out_of_sync(metadata: &Metadata) -> Option<(String, BTreeSet<u32>)> {
    let live = broker_ids(metadata);
    let mut partitions = Vec::new();
    let mut lagging = BTreeSet::new();
    for topic in metadata.topics() {
        for partition in topic.partitions() {
            let isr: BTreeSet<i32> = partition.isr().iter().copied().collect();
            let behind: Vec<i32> = partition
                .replicas()
                .iter()
                .copied()
                .filter(|replica| !isr.contains(replica) || !live.contains(replica))
                .collect();
            if partition.leader() < 0 || !behind.is_empty() {
                partitions.push(format!(
                    "{}-{}: leader {}, replicas {:?}, in sync {:?}",
                    topic.name(),
                    partition.id(),
                    partition.leader(),
                    partition.replicas(),
                    partition.isr()
                ));
                lagging.extend(behind.into_iter().filter_map(|id| u32::try_from(id).ok()));
            }
        }
    }
    if partitions.is_empty() {
        return None;
    }
    let count = partitions.len();
    let mut detail = partitions
        .into_iter()
        .take(LISTED_PARTITIONS)
        .collect::<Vec<_>>()
        .join("; ");
    if count > LISTED_PARTITIONS {
        detail.push_str(&format!(" (and {} more)", count - LISTED_PARTITIONS));
    }
    detail.push_str(&format!("; live brokers {live:?}"));
    Some((detail, lagging))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_string_hash_matches_java() {
        // Values printed by Java 17's String.hashCode.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("txledger-shard-0"), -971_619_039);
        assert_eq!(java_string_hash("grüße"), 98_768_023);
        assert_eq!(java_string_hash("日本"), 835_047);
        // Outside the BMP: two UTF-16 code units.
        assert_eq!(java_string_hash("😀"), 1_772_899);
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
    }

    #[test]
    fn coordinator_partition_follows_kafkas_utils_abs() {
        // Java: Utils.abs(id.hashCode()) % 6.
        assert_eq!(coordinator_partition("", 6), 0);
        assert_eq!(coordinator_partition("hello", 6), 4);
        // A negative hash: the `& 0x7fffffff` rule would give 5.
        assert_eq!(coordinator_partition("txledger-shard-0", 6), 3);
        assert_eq!(coordinator_partition("txledger-shard-1", 6), 2);
        assert_eq!(coordinator_partition("txledger-shard-0", 50), 39);
        assert_eq!(coordinator_partition("polygenelubricants", 6), 0);
    }

    #[test]
    fn the_leader_id_is_read_from_the_quorum_status() {
        let output =
            "ClusterId:              abc\nLeaderId:               2\nLeaderEpoch:            7\n";
        assert_eq!(parse_leader_id(output), Some(2));
        assert_eq!(parse_leader_id("LeaderId: -1\n"), None);
        assert_eq!(parse_leader_id("error\n"), None);
    }
}
