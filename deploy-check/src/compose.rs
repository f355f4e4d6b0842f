//! docker-compose.yml: its keys checked against the Compose Specification's,
//! its services and their environments as the containers receive them.
//!
//! `docker compose config -q` is the authority where the compose plugin is
//! installed (the `compose` test runs it); this module catches what it would
//! catch offline and more: a misspelt key at any level the file uses, and
//! the txledger-specific rules (env vars read, ports served) the tests add.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::source::Binary;
use crate::{repo, yaml};

/// Keys of the Compose Specification at the levels this repository uses
/// (`x-` extension keys are allowed everywhere).
const TOP_LEVEL: &[&str] = &[
    "version", "name", "include", "services", "networks", "volumes", "secrets", "configs", "models",
];
const SERVICE: &[&str] = &[
    "annotations",
    "attach",
    "build",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "label_file",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
];
const BUILD: &[&str] = &[
    "context",
    "dockerfile",
    "dockerfile_inline",
    "args",
    "ssh",
    "cache_from",
    "cache_to",
    "additional_contexts",
    "entitlements",
    "extra_hosts",
    "isolation",
    "labels",
    "network",
    "no_cache",
    "platforms",
    "privileged",
    "pull",
    "secrets",
    "shm_size",
    "tags",
    "target",
    "ulimits",
];
const HEALTHCHECK: &[&str] = &[
    "disable",
    "interval",
    "retries",
    "test",
    "timeout",
    "start_period",
    "start_interval",
];
const DEPENDS_ON: &[&str] = &["condition", "restart", "required"];
const DEPENDS_ON_CONDITIONS: &[&str] = &[
    "service_started",
    "service_healthy",
    "service_completed_successfully",
];
const VOLUME: &[&str] = &["driver", "driver_opts", "external", "labels", "name"];

/// The compose file, merge keys applied.
#[derive(Debug, Clone)]
pub struct Compose {
    pub root: Value,
}

pub fn load() -> Compose {
    let text = repo::read("docker-compose.yml");
    Compose {
        root: yaml::document(&text).unwrap_or_else(|error| panic!("docker-compose.yml: {error}")),
    }
}

impl Compose {
    pub fn services(&self) -> BTreeMap<String, &Value> {
        self.root["services"]
            .as_object()
            .map(|services| {
                services
                    .iter()
                    .map(|(name, value)| (name.clone(), value))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Keys the Compose Specification does not have, as paths.
    pub fn unknown_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        check_keys(&self.root, TOP_LEVEL, "", &mut out);
        for (name, service) in self.services() {
            let at = format!("services.{name}");
            check_keys(service, SERVICE, &at, &mut out);
            if service["build"].is_object() {
                check_keys(&service["build"], BUILD, &format!("{at}.build"), &mut out);
            }
            if service["healthcheck"].is_object() {
                check_keys(
                    &service["healthcheck"],
                    HEALTHCHECK,
                    &format!("{at}.healthcheck"),
                    &mut out,
                );
            }
            if let Some(dependencies) = service["depends_on"].as_object() {
                for (dependency, condition) in dependencies {
                    let here = format!("{at}.depends_on.{dependency}");
                    check_keys(condition, DEPENDS_ON, &here, &mut out);
                    if let Some(value) = condition["condition"].as_str() {
                        if !DEPENDS_ON_CONDITIONS.contains(&value) {
                            out.push(format!("{here}.condition: {value:?} is not a condition"));
                        }
                    }
                }
            }
        }
        if let Some(volumes) = self.root["volumes"].as_object() {
            for (name, volume) in volumes {
                if volume.is_object() {
                    check_keys(volume, VOLUME, &format!("volumes.{name}"), &mut out);
                }
            }
        }
        out
    }
}

fn check_keys(value: &Value, allowed: &[&str], at: &str, out: &mut Vec<String>) {
    let Some(object) = value.as_object() else {
        return;
    };
    for key in object.keys() {
        if !key.starts_with("x-") && !allowed.contains(&key.as_str()) {
            out.push(if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            });
        }
    }
}

/// A service's environment (map or `KEY=VALUE` list form), values as text.
pub fn environment(service: &Value) -> BTreeMap<String, String> {
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| (key.clone(), text(value)))
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((key, value)) => (key.to_owned(), value.to_owned()),
                None => (item.to_owned(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The txledger binaries a service's image carries, if it is one of ours:
/// from `build.target`, else from the image name (`.../producer:TAG`).
pub fn image_binaries(service: &Value) -> Vec<Binary> {
    let target = service["build"]["target"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            let image = service["image"].as_str()?;
            let without_tag = image.rsplit_once(':').map_or(image, |(name, _)| name);
            without_tag
                .strip_prefix("localhost/txledger/")
                .map(str::to_owned)
        });
    image_target_binaries(target.as_deref())
}

/// What each image target of docker/Dockerfile carries.
pub fn image_target_binaries(target: Option<&str>) -> Vec<Binary> {
    match target {
        Some("producer") => vec![Binary::Producer],
        Some("consumer") => vec![Binary::Consumer, Binary::Ledger],
        _ => Vec::new(),
    }
}
