//! Kubernetes manifests parsed into the API types of `k8s-openapi`.
//!
//! Those types ignore unknown fields when deserializing (as the API server
//! does without strict validation), so a misspelt `readinesProbe` would
//! pass unnoticed. Each document is therefore deserialized into its typed
//! form, serialized back, and compared with the original: a key of the
//! original that did not survive the round trip is a field the type does not
//! have, i.e. unknown or misplaced. Type mismatches (a string where a number
//! belongs) fail the typed deserialization itself, with the field's path.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvFromSource, EnvVar, Namespace, PodTemplateSpec, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::{repo, yaml};

/// One Kubernetes object of a manifest file, in its API type.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Service(Service),
    StatefulSet(StatefulSet),
    Deployment(Deployment),
    Job(Job),
    PodDisruptionBudget(PodDisruptionBudget),
    NetworkPolicy(NetworkPolicy),
}

/// An object with where it came from, for messages.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `deploy/03-consumer.yaml#2`: file and document index.
    pub origin: String,
    pub object: Object,
}

impl Manifest {
    pub fn kind(&self) -> &'static str {
        match self.object {
            Object::Namespace(_) => "Namespace",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Service(_) => "Service",
            Object::StatefulSet(_) => "StatefulSet",
            Object::Deployment(_) => "Deployment",
            Object::Job(_) => "Job",
            Object::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Object::NetworkPolicy(_) => "NetworkPolicy",
        }
    }

    pub fn name(&self) -> &str {
        let metadata = match &self.object {
            Object::Namespace(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::StatefulSet(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::Job(o) => &o.metadata,
            Object::PodDisruptionBudget(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
        };
        metadata.name.as_deref().unwrap_or("")
    }
}

/// Parses one document into its API type, rejecting unknown fields.
pub fn parse(value: &Value) -> Result<Object, String> {
    let api_version = value["apiVersion"].as_str().unwrap_or("");
    let kind = value["kind"].as_str().unwrap_or("");
    Ok(match (api_version, kind) {
        ("v1", "Namespace") => Object::Namespace(typed(value)?),
        ("v1", "ConfigMap") => Object::ConfigMap(typed(value)?),
        ("v1", "Secret") => Object::Secret(typed(value)?),
        ("v1", "Service") => Object::Service(typed(value)?),
        ("apps/v1", "StatefulSet") => Object::StatefulSet(typed(value)?),
        ("apps/v1", "Deployment") => Object::Deployment(typed(value)?),
        ("batch/v1", "Job") => Object::Job(typed(value)?),
        ("policy/v1", "PodDisruptionBudget") => Object::PodDisruptionBudget(typed(value)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(typed(value)?),
        _ => {
            return Err(format!(
                "apiVersion {api_version:?} kind {kind:?} is not one deploy-check knows: add it to kube::parse"
            ))
        }
    })
}

/// Deserializes into `T` (type errors name the field's path), then reports
/// every field the round trip dropped.
pub fn typed<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let object: T = serde_path_to_error::deserialize(value.clone())
        .map_err(|error| format!("at {}: {}", error.path(), error.inner()))?;
    let round_trip = serde_json::to_value(&object).map_err(|error| error.to_string())?;
    let mut unknown = Vec::new();
    dropped_fields(value, &round_trip, "", &mut unknown);
    if unknown.is_empty() {
        Ok(object)
    } else {
        Err(format!("unknown field(s): {}", unknown.join(", ")))
    }
}

/// Paths of the keys of `original` missing from `round_trip`.
pub fn dropped_fields(original: &Value, round_trip: &Value, path: &str, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(original), Value::Object(round_trip)) => {
            for (key, value) in original {
                let here = format!("{path}.{key}");
                match round_trip.get(key) {
                    Some(kept) => dropped_fields(value, kept, &here, out),
                    None => out.push(here),
                }
            }
        }
        (Value::Array(original), Value::Array(round_trip)) => {
            for (index, value) in original.iter().enumerate() {
                if let Some(kept) = round_trip.get(index) {
                    dropped_fields(value, kept, &format!("{path}[{index}]"), out);
                }
            }
        }
        // An object where the type has a scalar (or the reverse) fails the
        // typed deserialization; scalars have no fields to lose.
        _ => {}
    }
}

/// Every document of the `*.yaml` files directly in `dir` (relative to the
/// workspace root), parsed; and the problems, one per document.
pub fn load_dir(dir: &str) -> (Vec<Manifest>, Vec<String>) {
    let mut manifests = Vec::new();
    let mut problems = Vec::new();
    for file in repo::files_in(dir, &[".yaml", ".yml"]) {
        let relative = format!("{dir}/{file}");
        let text = repo::read(&relative);
        let documents = match yaml::documents(&text) {
            Ok(documents) => documents,
            Err(error) => {
                problems.push(format!("{relative}: {error}"));
                continue;
            }
        };
        for (index, document) in documents.iter().enumerate() {
            let origin = format!("{relative}#{index}");
            match parse(document) {
                Ok(object) => manifests.push(Manifest { origin, object }),
                Err(error) => problems.push(format!("{origin}: {error}")),
            }
        }
    }
    (manifests, problems)
}

/// `deploy/*.yaml` and `deploy/jobs/*.yaml`, which must all parse.
pub fn load_all() -> Vec<Manifest> {
    let (mut manifests, mut problems) = load_dir("deploy");
    let (jobs, job_problems) = load_dir("deploy/jobs");
    manifests.extend(jobs);
    problems.extend(job_problems);
    crate::assert_no_problems("parsing the manifests", &problems);
    manifests
}

/// A pod-creating object.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    pub kind: &'static str,
    pub name: &'a str,
    pub origin: &'a str,
    pub selector: Option<&'a LabelSelector>,
    pub replicas: Option<i32>,
    pub template: &'a PodTemplateSpec,
}

impl Workload<'_> {
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.template
            .metadata
            .as_ref()
            .and_then(|metadata| metadata.labels.clone())
            .unwrap_or_default()
    }

    /// Containers and init containers.
    pub fn containers(&self) -> Vec<&Container> {
        let Some(spec) = self.template.spec.as_ref() else {
            return Vec::new();
        };
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .collect()
    }
}

pub fn workloads(manifests: &[Manifest]) -> Vec<Workload<'_>> {
    let mut out = Vec::new();
    for manifest in manifests {
        let name = manifest.name();
        let origin = manifest.origin.as_str();
        match &manifest.object {
            Object::StatefulSet(o) => {
                if let Some(spec) = &o.spec {
                    out.push(Workload {
                        kind: "StatefulSet",
                        name,
                        origin,
                        selector: Some(&spec.selector),
                        replicas: spec.replicas,
                        template: &spec.template,
                    });
                }
            }
            Object::Deployment(o) => {
                if let Some(spec) = &o.spec {
                    out.push(Workload {
                        kind: "Deployment",
                        name,
                        origin,
                        selector: Some(&spec.selector),
                        replicas: spec.replicas,
                        template: &spec.template,
                    });
                }
            }
            Object::Job(o) => {
                if let Some(spec) = &o.spec {
                    out.push(Workload {
                        kind: "Job",
                        name,
                        origin,
                        selector: spec.selector.as_ref(),
                        replicas: None,
                        template: &spec.template,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// Whether a label selector selects a pod with these labels (matchLabels
/// and matchExpressions, as the API server evaluates them). An empty
/// selector selects everything.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions_match = selector
        .match_expressions
        .iter()
        .flatten()
        .all(|requirement| {
            let values = requirement.values.clone().unwrap_or_default();
            let actual = labels.get(&requirement.key);
            match requirement.operator.as_str() {
                "In" => actual.is_some_and(|value| values.contains(value)),
                "NotIn" => actual.is_none_or(|value| !values.contains(value)),
                "Exists" => actual.is_some(),
                "DoesNotExist" => actual.is_none(),
                _ => false,
            }
        });
    labels_match && expressions_match
}

/// A Service's plain map selector, as a label selector.
pub fn map_selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// The container port a probe, Service or policy names: a number, or the
/// name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Option<i32> {
    match port {
        IntOrString::Int(number) => Some(*number),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|candidate| candidate.name.as_deref() == Some(name.as_str()))
            .map(|candidate| candidate.container_port),
    }
}

/// Where a container's environment variables come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// `env: [{name, value}]` in the container itself.
    Literal,
    /// `env` with `valueFrom` or `envFrom` of a ConfigMap in the manifests.
    ConfigMap(String),
    /// `envFrom` of a Secret, which is never in git: its keys are the
    /// ones deploy/README.md tells operators to create.
    Secret(String),
}

/// One environment variable a container receives: its name, its value
/// (when known from git) and its source.
pub type ReceivedEnv = (String, Option<String>, EnvSource);

/// Every environment variable a container receives, with its value (when
/// known from git) and source. A ConfigMap named but not found is a problem.
pub fn container_env(
    container: &Container,
    manifests: &[Manifest],
    secret_keys: &BTreeMap<String, Vec<String>>,
    problems: &mut Vec<String>,
) -> Vec<ReceivedEnv> {
    let mut out = Vec::new();
    for source in container.env_from.iter().flatten() {
        out.extend(env_from(
            &container.name,
            source,
            manifests,
            secret_keys,
            problems,
        ));
    }
    for variable in container.env.iter().flatten() {
        out.push(env_variable(&container.name, variable, manifests, problems));
    }
    out
}

/// The data of the ConfigMap the manifests define under `name`.
fn config_map_data(manifests: &[Manifest], name: &str) -> Option<BTreeMap<String, String>> {
    manifests
        .iter()
        .find_map(|manifest| match &manifest.object {
            Object::ConfigMap(map) if manifest.name() == name => {
                Some(map.data.clone().unwrap_or_default())
            }
            _ => None,
        })
}

/// The variables one `envFrom` entry brings: every key of its ConfigMap and
/// of its Secret (as deploy/README.md documents the Secret's keys), each
/// under the entry's prefix.
fn env_from(
    container: &str,
    source: &EnvFromSource,
    manifests: &[Manifest],
    secret_keys: &BTreeMap<String, Vec<String>>,
    problems: &mut Vec<String>,
) -> Vec<ReceivedEnv> {
    let prefix = source.prefix.clone().unwrap_or_default();
    let mut out = Vec::new();
    if let Some(reference) = &source.config_map_ref {
        match config_map_data(manifests, &reference.name) {
            Some(data) => out.extend(data.into_iter().map(|(key, value)| {
                (
                    format!("{prefix}{key}"),
                    Some(value),
                    EnvSource::ConfigMap(reference.name.clone()),
                )
            })),
            None => problems.push(format!(
                "container {container}: envFrom names ConfigMap {} which no manifest defines",
                reference.name
            )),
        }
    }
    if let Some(reference) = &source.secret_ref {
        match secret_keys.get(&reference.name) {
            Some(keys) => out.extend(keys.iter().map(|key| {
                (
                    format!("{prefix}{key}"),
                    None,
                    EnvSource::Secret(reference.name.clone()),
                )
            })),
            None => problems.push(format!(
                "container {container}: envFrom names Secret {} whose creation deploy/README.md does not document",
                reference.name
            )),
        }
    }
    out
}

/// One `env` entry: its literal value, or where its `valueFrom` takes the
/// value from. A ConfigMap key that does not exist (and is not optional) is
/// a problem.
fn env_variable(
    container: &str,
    variable: &EnvVar,
    manifests: &[Manifest],
    problems: &mut Vec<String>,
) -> ReceivedEnv {
    let Some(from) = &variable.value_from else {
        return (
            variable.name.clone(),
            variable.value.clone(),
            EnvSource::Literal,
        );
    };
    if let Some(key) = &from.config_map_key_ref {
        let value =
            config_map_data(manifests, &key.name).and_then(|data| data.get(&key.key).cloned());
        if value.is_none() && key.optional != Some(true) {
            problems.push(format!(
                "container {container}: {} refers to {}/{} which does not exist",
                variable.name, key.name, key.key
            ));
        }
        (
            variable.name.clone(),
            value,
            EnvSource::ConfigMap(key.name.clone()),
        )
    } else if let Some(key) = &from.secret_key_ref {
        (
            variable.name.clone(),
            None,
            EnvSource::Secret(key.name.clone()),
        )
    } else {
        // fieldRef / resourceFieldRef: values from the pod itself.
        (variable.name.clone(), None, EnvSource::Literal)
    }
}

/// The Secrets deploy/README.md documents with `kubectl ... create secret
/// generic NAME --from-literal=KEY=...`: name -> keys. These are the only
/// keys an operator is told to put there.
pub fn documented_secret_keys() -> BTreeMap<String, Vec<String>> {
    let readme = repo::read("deploy/README.md");
    // Join continuation lines so one command is one line.
    let joined = readme.replace("\\\n", " ");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in joined.lines() {
        let Some(at) = line.find("create secret generic ") else {
            continue;
        };
        let rest = &line[at + "create secret generic ".len()..];
        let Some(name) = rest.split_whitespace().next() else {
            continue;
        };
        let keys = out.entry(name.to_owned()).or_default();
        for word in rest.split_whitespace() {
            if let Some(literal) = word.strip_prefix("--from-literal=") {
                if let Some((key, _)) = literal.split_once('=') {
                    keys.push(key.to_owned());
                }
            }
        }
    }
    out
}
