//! docker-compose.yml: Compose Specification keys, `docker compose config`,
//! env vars the binaries read, shards as one service that scales (group
//! assignment, a volume and a host port per replica), health-gated start
//! order, Kafka fit for transactions, hardening.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::collections::BTreeMap;

use deploy_check::compose::{self, Compose};
use deploy_check::source::{Binary, Facts};
use deploy_check::{assert_no_problems, note, repo, tools, yaml};
use serde_json::Value;

fn facts_of(binaries: &[Binary]) -> Facts {
    binaries.iter().fold(Facts::default(), |facts, binary| {
        facts.union(binary.facts())
    })
}

/// An env var's value for a service: set in the file, else the source's
/// clap default.
fn value(service: &Value, facts: &Facts, name: &str) -> Option<String> {
    compose::environment(service)
        .get(name)
        .cloned()
        .or_else(|| facts.env_defaults.get(name).cloned())
}

fn port_of_address(address: &str) -> Option<u16> {
    address.rsplit_once(':')?.1.parse().ok()
}

/// The consumer shard services, by name.
fn shards(compose: &Compose) -> BTreeMap<String, &Value> {
    compose
        .services()
        .into_iter()
        .filter(|(_, service)| compose::image_binaries(service).contains(&Binary::Consumer))
        .collect()
}

fn seconds(duration: &str) -> Option<u64> {
    if let Some(minutes) = duration.strip_suffix('m') {
        return minutes.parse::<u64>().ok().map(|m| m * 60);
    }
    duration.strip_suffix('s')?.parse().ok()
}

#[test]
fn every_key_is_one_of_the_compose_specification() {
    let compose = compose::load();
    assert_no_problems("unknown compose keys", &compose.unknown_keys());
    let found = yaml::yaml11_ambiguities(&repo::read("docker-compose.yml"));
    assert_no_problems("YAML 1.1 scalars (quote them)", &found);
}

#[test]
fn the_key_check_catches_a_misspelt_key() {
    let text = "
services:
  a:
    image: x:1
    depend_on: [b]
    healthcheck: {test: [CMD, true], intervall: 5s}
    depends_on:
      b: {condition: service_healty}
";
    let compose = Compose {
        root: yaml::document(text).unwrap(),
    };
    let unknown = compose.unknown_keys();
    assert_eq!(
        unknown,
        [
            "services.a.depend_on",
            "services.a.healthcheck.intervall",
            "services.a.depends_on.b.condition: \"service_healty\" is not a condition",
        ]
    );
}

#[test]
fn docker_compose_config_accepts_the_file() {
    let Some(command) = tools::compose_command() else {
        if tools::run("docker", &["--version"]).is_none() {
            note("SKIPPED `docker compose config -q`: no docker client here; the compose keys were checked against the Compose Specification instead");
        } else {
            note("SKIPPED `docker compose config -q`: this docker client has no Compose v2 plugin (a standalone docker-compose 1.x is not asked: it predates the Compose Specification); the compose keys were checked against the Compose Specification instead");
        }
        return;
    };
    let mut args: Vec<&str> = command[1..].to_vec();
    // Both profiles: the `logs` services are validated too.
    args.extend([
        "--profile",
        "logs",
        "-f",
        "docker-compose.yml",
        "config",
        "-q",
    ]);
    let output = tools::run(command[0], &args).expect("the compose command ran a moment ago");
    assert!(
        output.status.success(),
        "docker compose config -q: {}",
        tools::text(&output)
    );
}

#[test]
fn every_env_var_set_is_one_the_binaries_read() {
    let compose = compose::load();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (name, service) in compose.services() {
        let binaries = compose::image_binaries(service);
        if binaries.is_empty() {
            continue; // Kafka's, Grafana's... variables are their images' business.
        }
        let facts = facts_of(&binaries);
        for variable in compose::environment(service).keys() {
            checked += 1;
            if !facts.env.contains(variable) {
                let names: Vec<&str> = binaries.iter().map(|binary| binary.name()).collect();
                problems.push(format!(
                    "service {name}: {variable} is read by none of {names:?}"
                ));
            }
        }
        if service.get("env_file").is_some() {
            problems.push(format!(
                "service {name}: env_file hides variables from this check; set them in environment"
            ));
        }
    }
    assert!(checked > 15, "only {checked} variables checked");
    assert_no_problems("environment variables", &problems);
}

/// The replicas a service asks for (`deploy.replicas`, 1 without it).
fn replicas(service: &Value) -> u64 {
    service["deploy"]["replicas"].as_u64().unwrap_or(1)
}

/// How many host ports a `ports` entry's host side offers: `8080-8089` ten,
/// `8080` one, none (Docker picks) as many as needed.
fn host_ports(host: &str) -> Option<u64> {
    let port = host.rsplit(':').next().unwrap_or(host);
    if port.is_empty() {
        return Some(u64::MAX);
    }
    match port.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (first.parse::<u64>().ok()?, last.parse::<u64>().ok()?);
            last.checked_sub(first).map(|span| span + 1)
        }
        None => port.parse::<u64>().ok().map(|_| 1),
    }
}

#[test]
fn the_shards_are_one_service_that_scales_with_replicas_alone() {
    let compose = compose::load();
    let shards = shards(&compose);
    let mut problems = Vec::new();
    if shards.len() != 1 {
        problems.push(format!(
            "expected the shards as one service (scaled with --scale), found {:?}",
            shards.keys().collect::<Vec<_>>()
        ));
    }
    let facts = facts_of(&[Binary::Consumer, Binary::Ledger]);
    for (name, service) in &shards {
        let count = replicas(service);
        if count < 2 {
            problems.push(format!(
                "{name}: deploy.replicas is {count}, expected at least 2"
            ));
        }
        // The group, not a setting, decides what each replica owns: a fixed
        // ordinal or count would make every replica the same shard.
        if value(service, &facts, "TXLEDGER_ASSIGNMENT").as_deref() != Some("group") {
            problems.push(format!("{name}: TXLEDGER_ASSIGNMENT must be group"));
        }
        for fixed in ["TXLEDGER_SHARD", "TXLEDGER_SHARDS"] {
            if compose::environment(service).contains_key(fixed) {
                problems.push(format!(
                    "{name}: {fixed} is set, but every replica reads the same environment"
                ));
            }
        }
        let port = value(service, &facts, "TXLEDGER_HTTP_ADDR")
            .and_then(|address| port_of_address(&address));
        let Some(port) = port else {
            problems.push(format!("{name}: no HTTP port"));
            continue;
        };
        for mapping in service["ports"].as_array().into_iter().flatten() {
            let text = mapping.as_str().unwrap_or("");
            let (host, container) = text.rsplit_once(':').unwrap_or(("", text));
            if container.parse() != Ok(port) {
                problems.push(format!(
                    "{name}: publishes container port {container}, but the shard listens on {port}"
                ));
            }
            if host_ports(host).is_none_or(|offered| offered < count + 1) {
                problems.push(format!(
                    "{name}: host ports {host:?} leave no room for {count} replicas and one more"
                ));
            }
        }
        // sled on a volume of each replica's own: an anonymous one (a named
        // volume or a bind mount would be shared by every replica).
        let data_dir = value(service, &facts, "TXLEDGER_DATA_DIR").unwrap_or_default();
        let mut on_volume = false;
        for mount in service["volumes"].as_array().into_iter().flatten() {
            let text = mount.as_str().unwrap_or("");
            let target = text.split(':').next_back().unwrap_or("");
            if data_dir.starts_with(&format!("{}/", target.trim_end_matches('/'))) {
                if text.contains(':') {
                    problems.push(format!(
                        "{name}: {text} would be shared by every replica: mount an anonymous volume"
                    ));
                } else {
                    on_volume = true;
                }
            }
        }
        if !on_volume {
            problems.push(format!(
                "{name}: TXLEDGER_DATA_DIR {data_dir:?} is not on an anonymous volume"
            ));
        }
        // The service's name resolves to every replica.
        let expected = format!("http://{name}:{port}");
        let urls = value(service, &facts, "TXLEDGER_SHARD_URLS");
        if urls.as_deref() != Some(expected.as_str()) {
            problems.push(format!(
                "{name}: TXLEDGER_SHARD_URLS is {urls:?}, expected {expected:?}"
            ));
        }
        // SIGTERM finishes the open batch, bounded by the transaction timeout.
        let timeout_ms: u64 = value(service, &facts, "TXLEDGER_TRANSACTION_TIMEOUT_MS")
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let grace = service["stop_grace_period"]
            .as_str()
            .and_then(seconds)
            .unwrap_or(10);
        if grace * 1000 <= timeout_ms {
            problems.push(format!("{name}: stop_grace_period {grace} s is not longer than the transaction timeout {timeout_ms} ms"));
        }
        // `docker compose exec <shard> ledger query ...` needs the CLI.
        if !compose::image_binaries(service).contains(&Binary::Ledger) {
            problems.push(format!("{name}: the image does not carry the ledger CLI"));
        }
        let health = service["healthcheck"]["test"].to_string();
        // Ready (recovery done) and alive (the batch loop moves).
        for path in ["/readyz", "/healthz"] {
            if !health.contains(path) || !health.contains(&format!("/{port}")) {
                problems.push(format!(
                    "{name}: the healthcheck does not ask {path} on port {port}"
                ));
            }
        }
    }
    assert_no_problems("shards", &problems);
}

#[test]
fn host_port_ranges_are_counted() {
    assert_eq!(host_ports("8080-8089"), Some(10));
    assert_eq!(host_ports("127.0.0.1:8080-8081"), Some(2));
    assert_eq!(host_ports("8080"), Some(1));
    assert_eq!(host_ports(""), Some(u64::MAX));
    assert_eq!(host_ports("8089-8080"), None);
    assert_eq!(host_ports("http"), None);
}

#[test]
fn services_start_after_a_healthy_kafka_and_the_topics_and_restart() {
    let compose = compose::load();
    let services = compose.services();
    let mut problems = Vec::new();
    let kafka_test = services["kafka"]["healthcheck"]["test"].to_string();
    if !kafka_test.contains("kafka-broker-api-versions.sh") {
        problems.push(
            "kafka's healthcheck does not ask the broker (kafka-broker-api-versions.sh)".to_owned(),
        );
    }
    // The check is a JVM of its own, every interval: it must not inherit the
    // broker's heap.
    if !kafka_test.contains("KAFKA_HEAP_OPTS=") {
        problems.push(
            "kafka's healthcheck inherits the broker's KAFKA_HEAP_OPTS: give its JVM a heap of its own"
                .to_owned(),
        );
    }
    // `ledger audit` reads every topic from its first record, as the
    // Kubernetes broker keeps it (deploy-check's kubernetes tests).
    if services["kafka"]["environment"]["KAFKA_LOG_RETENTION_MS"] != "-1" {
        problems.push(
            "kafka must keep the whole history (KAFKA_LOG_RETENTION_MS: \"-1\"): the audit reads it all"
                .to_owned(),
        );
    }
    for (name, service) in &services {
        let restart = service["restart"].as_str().unwrap_or("");
        let valid = ["no", "always", "unless-stopped", "on-failure"].contains(&restart)
            || restart
                .strip_prefix("on-failure:")
                .is_some_and(|n| n.parse::<u32>().is_ok());
        if !valid {
            problems.push(format!(
                "{name}: restart {restart:?} is not a restart policy"
            ));
        }
        if compose::image_binaries(service).is_empty() {
            continue;
        }
        if restart == "no" {
            problems.push(format!("{name}: a long-running service must restart"));
        }
        for (dependency, condition) in [
            ("kafka", "service_healthy"),
            ("topics", "service_completed_successfully"),
        ] {
            if service["depends_on"][dependency]["condition"] != condition {
                problems.push(format!(
                    "{name}: depends_on {dependency} is not `condition: {condition}`"
                ));
            }
        }
    }
    if services["topics"]["restart"] != "no" {
        problems.push("topics is one-shot: restart must be \"no\"".to_owned());
    }
    if services["topics"]["depends_on"]["kafka"]["condition"] != "service_healthy" {
        problems.push("topics must wait for a healthy kafka".to_owned());
    }
    assert_no_problems("start order", &problems);
}

#[test]
fn kafka_is_a_single_kraft_node_fit_for_transactions() {
    let compose = compose::load();
    let services = compose.services();
    let version = repo::harness_kafka_version();
    let mut problems = Vec::new();
    for name in ["kafka", "topics"] {
        if services[name]["image"] != format!("apache/kafka:{version}").as_str() {
            problems.push(format!(
                "{name}: image {} is not apache/kafka:{version} (harness/kafka/pom.xml)",
                services[name]["image"]
            ));
        }
    }
    let env = compose::environment(services["kafka"]);
    for (key, expected) in [
        ("KAFKA_PROCESS_ROLES", "broker,controller"),
        ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1"),
        ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1"),
        ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"),
    ] {
        if env.get(key).map(String::as_str) != Some(expected) {
            problems.push(format!(
                "kafka: {key} is {:?}, expected {expected}",
                env.get(key)
            ));
        }
    }
    if env.get("CLUSTER_ID").is_none_or(String::is_empty) {
        problems.push("kafka: CLUSTER_ID is required in KRaft mode".to_owned());
    }
    // Every txledger client dials an address the broker advertises.
    let advertised = env
        .get("KAFKA_ADVERTISED_LISTENERS")
        .cloned()
        .unwrap_or_default();
    for (name, service) in &services {
        if compose::image_binaries(service).is_empty() {
            continue;
        }
        let bootstrap = compose::environment(service)
            .get("KAFKA_BOOTSTRAP_SERVERS")
            .cloned()
            .unwrap_or_default();
        if bootstrap.is_empty() || !advertised.contains(&format!("//{bootstrap}")) {
            problems.push(format!("{name}: KAFKA_BOOTSTRAP_SERVERS {bootstrap:?} is not advertised by kafka ({advertised})"));
        }
    }
    assert_no_problems("kafka", &problems);
}

#[test]
fn the_topics_are_the_ones_the_binaries_use_with_matching_partitions() {
    let compose = compose::load();
    let services = compose.services();
    let command = services["topics"]["command"].to_string();
    let consumer = facts_of(&[Binary::Consumer]);
    let producer = facts_of(&[Binary::Producer]);
    let shard = shards(&compose).into_values().next().expect("a shard");
    let mut problems = Vec::new();
    for variable in [
        "TXLEDGER_TRANSFERS_TOPIC",
        "TXLEDGER_CREDITS_TOPIC",
        "TXLEDGER_RESULTS_TOPIC",
        "TXLEDGER_DLQ_TOPIC",
    ] {
        let topic = value(shard, &consumer, variable).unwrap_or_default();
        if topic.is_empty() || !command.contains(&topic) {
            problems.push(format!("topics does not create {topic:?} ({variable})"));
        }
    }
    let written = value(services["producer"], &producer, "TXLEDGER_TRANSFERS_TOPIC");
    let read = value(shard, &consumer, "TXLEDGER_TRANSFERS_TOPIC");
    if written != read {
        problems.push(format!(
            "the producer writes {written:?} but the shards read {read:?}"
        ));
    }
    let partitions = value(shard, &consumer, "TXLEDGER_PARTITIONS").unwrap_or_default();
    if value(services["producer"], &producer, "TXLEDGER_PARTITIONS").as_deref()
        != Some(partitions.as_str())
    {
        problems.push("the producer's TXLEDGER_PARTITIONS differs from the shards'".to_owned());
    }
    if !command.contains(&format!("--partitions {partitions}")) {
        problems.push(format!(
            "topics does not create them with {partitions} partitions"
        ));
    }
    assert_no_problems("topics", &problems);
}

#[test]
fn every_container_is_pinned_non_root_and_stripped() {
    let compose = compose::load();
    let version = repo::workspace_version();
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        let image = service["image"].as_str().unwrap_or("");
        let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
        if tag.is_empty() || tag == "latest" || !tag.chars().any(|c| c.is_ascii_digit()) {
            problems.push(format!(
                "{name}: image {image:?} is not pinned to a version"
            ));
        }
        let user = service["user"].as_str().unwrap_or("");
        let user_id = user.split(':').next().unwrap_or("");
        if user_id == "0" || user_id == "root" {
            problems.push(format!("{name}: runs as root"));
        }
        // Third-party images without `user:` must be ones whose image runs
        // as a non-root user by itself.
        let ours = !compose::image_binaries(service).is_empty();
        let non_root_image = image.starts_with("apache/kafka:");
        if user.is_empty() && !ours && !non_root_image {
            problems.push(format!(
                "{name}: no `user:`; give the image's non-root user explicitly"
            ));
        }
        if !service["cap_drop"]
            .as_array()
            .is_some_and(|drop| drop.iter().any(|c| c == "ALL"))
        {
            problems.push(format!("{name}: cap_drop does not include ALL"));
        }
        if !service["security_opt"]
            .to_string()
            .contains("no-new-privileges:true")
        {
            problems.push(format!("{name}: no-new-privileges is not set"));
        }
        if ours {
            if service["read_only"] != true {
                problems.push(format!("{name}: the root filesystem is not read-only"));
            }
            if !service["tmpfs"].to_string().contains("/tmp") {
                problems.push(format!("{name}: /tmp is not a tmpfs"));
            }
            let target = service["build"]["target"].as_str().unwrap_or("");
            if image != format!("localhost/txledger/{target}:{version}") {
                problems.push(format!(
                    "{name}: image {image:?} is not localhost/txledger/{target}:{version}"
                ));
            }
            if service["build"]["dockerfile"] != "docker/Dockerfile"
                || service["build"]["context"] != "."
            {
                problems.push(format!(
                    "{name}: not built from docker/Dockerfile in the workspace root"
                ));
            }
        }
    }
    assert_no_problems("hardening", &problems);
}
