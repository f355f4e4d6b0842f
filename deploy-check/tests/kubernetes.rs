//! deploy/: every manifest in the real Kubernetes API types with unknown
//! fields rejected, selectors that select, env vars the binaries read, ports
//! and probe paths they serve, hardened pods, and the design's invariants
//! (one shard per ordinal, shard count in one agreement everywhere).

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::collections::{BTreeMap, BTreeSet};

use deploy_check::kube::{self, Manifest, Object, Workload};
use deploy_check::source::{Binary, Facts};
use deploy_check::{assert_no_problems, compose, note, repo, tools, yaml};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const NAMESPACE: &str = "txledger";
const SHARDS: &str = "ledger-consumer";
const KAFKA: &str = "kafka";

fn manifests() -> Vec<Manifest> {
    kube::load_all()
}

fn config_map<'a>(manifests: &'a [Manifest], name: &str) -> &'a ConfigMap {
    manifests
        .iter()
        .find_map(|manifest| match &manifest.object {
            Object::ConfigMap(map) if manifest.name() == name => Some(map),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no ConfigMap {name}"))
}

fn statefulset<'a>(manifests: &'a [Manifest], name: &str) -> &'a StatefulSet {
    manifests
        .iter()
        .find_map(|manifest| match &manifest.object {
            Object::StatefulSet(set) if manifest.name() == name => Some(set),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no StatefulSet {name}"))
}

/// The binaries a txledger container runs: `ledger` when its command says
/// so, else what its image carries. Empty for third-party images.
fn binaries_of(container: &Container) -> Vec<Binary> {
    let image = container.image.as_deref().unwrap_or("");
    let Some(rest) = image.strip_prefix("localhost/txledger/") else {
        return Vec::new();
    };
    if let Some(binary) = container
        .command
        .as_ref()
        .and_then(|command| command.first())
        .and_then(|program| Binary::from_name(program.rsplit('/').next().unwrap_or(program)))
    {
        return vec![binary];
    }
    let target = rest.split(':').next();
    compose::image_target_binaries(target)
}

fn facts_of(binaries: &[Binary]) -> Facts {
    binaries.iter().fold(Facts::default(), |facts, binary| {
        facts.union(binary.facts())
    })
}

/// The effective value of an env var for a container: set in git, or the
/// clap default from the source.
fn env_value(
    container: &Container,
    manifests: &[Manifest],
    facts: &Facts,
    name: &str,
) -> Option<String> {
    let mut problems = Vec::new();
    let env = kube::container_env(container, manifests, &BTreeMap::new(), &mut problems);
    env.into_iter()
        .rev()
        .find(|(key, value, _)| key == name && value.is_some())
        .and_then(|(_, value, _)| value)
        .or_else(|| facts.env_defaults.get(name).cloned())
}

fn port_of_address(address: &str) -> Option<i32> {
    address.rsplit_once(':')?.1.parse().ok()
}

#[test]
fn every_manifest_parses_into_the_kubernetes_types_with_no_unknown_field() {
    let manifests = manifests();
    let kinds: BTreeSet<&str> = manifests.iter().map(Manifest::kind).collect();
    for kind in [
        "Namespace",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Job",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/");
    }
    let mut problems = Vec::new();
    for manifest in &manifests {
        let namespace = match &manifest.object {
            Object::Namespace(_) => continue,
            Object::ConfigMap(o) => &o.metadata.namespace,
            Object::Secret(o) => &o.metadata.namespace,
            Object::Service(o) => &o.metadata.namespace,
            Object::StatefulSet(o) => &o.metadata.namespace,
            Object::Deployment(o) => &o.metadata.namespace,
            Object::Job(o) => &o.metadata.namespace,
            Object::PodDisruptionBudget(o) => &o.metadata.namespace,
            Object::NetworkPolicy(o) => &o.metadata.namespace,
        };
        if namespace.as_deref() != Some(NAMESPACE) {
            problems.push(format!(
                "{}: namespace is {namespace:?}, not {NAMESPACE}",
                manifest.origin
            ));
        }
    }
    assert_no_problems("namespaces", &problems);
}

#[test]
fn the_unknown_field_check_catches_a_misspelt_field() {
    // The detector itself: a typo two levels deep, and a field in the wrong
    // place, must both be reported; the same document spelt right passes.
    let text = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
        - name: c
          image: i
          readinesProbe: {httpGet: {path: /readyz, port: 8080}}
      replicas: 2
";
    let value = yaml::document(text).unwrap();
    let error = kube::parse(&value).unwrap_err();
    assert!(
        error.contains(".spec.template.spec.containers[0].readinesProbe"),
        "{error}"
    );
    assert!(error.contains(".spec.template.spec.replicas"), "{error}");
    let fixed = text
        .replace("readinesProbe", "readinessProbe")
        .replace("      replicas: 2\n", "");
    kube::parse(&yaml::document(&fixed).unwrap()).unwrap();
    // A wrong type names its path.
    let wrong_type = fixed.replace("port: 8080", "port: [8080]");
    let error = kube::parse(&yaml::document(&wrong_type).unwrap()).unwrap_err();
    assert!(error.contains("readinessProbe.httpGet.port"), "{error}");
}

#[test]
fn kubectl_apply_f_and_kustomize_see_the_same_files() {
    // `kubectl apply -f deploy/` applies every .yaml/.yml/.json directly in
    // deploy/, in name order; a kustomization.yaml there would be applied
    // too, and fail. The kustomization is therefore named `Kustomization`.
    let applied = repo::files_in("deploy", &[".yaml", ".yml", ".json"]);
    for forbidden in ["kustomization.yaml", "kustomization.yml"] {
        assert!(
            !applied.iter().any(|name| name == forbidden),
            "deploy/{forbidden} breaks `kubectl apply -f deploy/`: name it deploy/Kustomization"
        );
    }
    assert_eq!(
        applied.first().map(String::as_str),
        Some("00-namespace.yaml"),
        "the Namespace must be applied first"
    );
    let kustomization = yaml::document(&repo::read("deploy/Kustomization")).unwrap();
    assert_eq!(kustomization["kind"], "Kustomization");
    let resources: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|resource| resource.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        resources, applied,
        "deploy/Kustomization resources != deploy/*.yaml"
    );

    let (documents, _) = kube::load_dir("deploy");
    match tools::run("kubectl", &["kustomize", "deploy"]) {
        Some(output) => {
            assert!(output.status.success(), "kubectl kustomize deploy: {}", tools::text(&output));
            let built = yaml::documents(&String::from_utf8_lossy(&output.stdout)).unwrap();
            assert_eq!(built.len(), documents.len(), "kustomize built another set of objects");
        }
        None => note("SKIPPED `kubectl kustomize deploy` (kubectl not installed); the file list was compared instead"),
    }
}

#[test]
fn every_selector_selects_the_pods_it_is_meant_for() {
    let manifests = manifests();
    let workloads = kube::workloads(&manifests);
    let mut problems = Vec::new();
    for workload in &workloads {
        if let Some(selector) = workload.selector {
            if !kube::selects(selector, &workload.labels()) {
                problems.push(format!(
                    "{} {}: spec.selector does not match its own pod labels",
                    workload.kind, workload.name
                ));
            }
        }
    }
    let selected_by = |matches: &dyn Fn(&BTreeMap<String, String>) -> bool| -> Vec<&Workload<'_>> {
        workloads
            .iter()
            .filter(|workload| matches(&workload.labels()))
            .collect()
    };
    for manifest in &manifests {
        match &manifest.object {
            Object::Service(service) => {
                let spec = service.spec.as_ref().expect("a Service has a spec");
                let selector = spec.selector.clone().unwrap_or_default();
                let targets = selected_by(&|labels| {
                    !selector.is_empty() && kube::map_selects(&selector, labels)
                });
                if targets.is_empty() {
                    problems.push(format!(
                        "Service {}: its selector matches no pod template",
                        manifest.name()
                    ));
                }
                for target in &targets {
                    for port in spec.ports.iter().flatten() {
                        let target_port = port
                            .target_port
                            .clone()
                            .unwrap_or(IntOrString::Int(port.port));
                        let served = target.containers().iter().any(|container| {
                            kube::resolve_port(&target_port, container).is_some_and(|number| {
                                container
                                    .ports
                                    .iter()
                                    .flatten()
                                    .any(|p| p.container_port == number)
                            })
                        });
                        if !served {
                            problems.push(format!(
                                "Service {} port {}: targetPort {target_port:?} is no container port of {} {}",
                                manifest.name(), port.port, target.kind, target.name
                            ));
                        }
                    }
                }
            }
            Object::PodDisruptionBudget(budget) => {
                let selector = budget
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.selector.as_ref())
                    .expect("a PDB selector");
                let targets = selected_by(&|labels| kube::selects(selector, labels));
                let names: Vec<&str> = targets.iter().map(|workload| workload.name).collect();
                if names != [SHARDS] {
                    problems.push(format!(
                        "PodDisruptionBudget {} selects {names:?}, not the shards",
                        manifest.name()
                    ));
                }
            }
            Object::NetworkPolicy(policy) => {
                let spec = policy.spec.as_ref().expect("a NetworkPolicy has a spec");
                let selector = spec.pod_selector.clone().unwrap_or_default();
                if selected_by(&|labels| kube::selects(&selector, labels)).is_empty() {
                    problems.push(format!(
                        "NetworkPolicy {}: podSelector matches no pod",
                        manifest.name()
                    ));
                }
                let peers = spec
                    .ingress
                    .iter()
                    .flatten()
                    .flat_map(|rule| rule.from.iter().flatten())
                    .chain(
                        spec.egress
                            .iter()
                            .flatten()
                            .flat_map(|rule| rule.to.iter().flatten()),
                    );
                for peer in peers {
                    // Peers in other namespaces (DNS, Prometheus) are not
                    // described here; same-namespace peers must exist.
                    if peer.namespace_selector.is_some() {
                        continue;
                    }
                    if let Some(selector) = &peer.pod_selector {
                        if selected_by(&|labels| kube::selects(selector, labels)).is_empty() {
                            problems.push(format!(
                                "NetworkPolicy {}: peer {selector:?} matches no pod",
                                manifest.name()
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    assert_no_problems("selectors", &problems);
}

#[test]
fn every_env_var_set_is_one_the_binaries_read() {
    let manifests = manifests();
    let secret_keys = kube::documented_secret_keys();
    let mut problems = Vec::new();
    let mut checked = 0;
    for workload in kube::workloads(&manifests) {
        for container in workload.containers() {
            let binaries = binaries_of(container);
            if binaries.is_empty() {
                continue; // Kafka's image: its variables are its own business.
            }
            let facts = facts_of(&binaries);
            let names: Vec<&str> = binaries.iter().map(|binary| binary.name()).collect();
            for (name, _, source) in
                kube::container_env(container, &manifests, &secret_keys, &mut problems)
            {
                checked += 1;
                if !facts.env.contains(&name) {
                    problems.push(format!(
                        "{} {} container {}: {name} (from {source:?}) is read by none of {names:?}",
                        workload.kind, workload.name, container.name
                    ));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} variables checked: are the containers found?"
    );
    assert_no_problems("environment variables", &problems);
}

#[test]
fn the_documented_secret_holds_only_the_kafka_security_settings() {
    // The Secret is referenced (optional) and never in git; what operators
    // are told to put in it must be exactly what every Kafka client reads.
    let manifests = manifests();
    let secrets = kube::documented_secret_keys();
    let keys = secrets
        .get("kafka-credentials")
        .expect("deploy/README.md documents kafka-credentials");
    assert!(
        !keys.is_empty(),
        "the kafka-credentials command lists no --from-literal keys"
    );
    let readers = [Binary::Producer, Binary::Consumer, Binary::Ledger];
    let mut problems = Vec::new();
    for key in keys {
        for binary in readers {
            if !binary.facts().env.contains(key) {
                problems.push(format!("{key} is not read by {}", binary.name()));
            }
        }
    }
    for manifest in &manifests {
        if let Object::Secret(_) = manifest.object {
            problems.push(format!(
                "{}: a Secret is in git; create it by hand (deploy/README.md)",
                manifest.origin
            ));
        }
    }
    for workload in kube::workloads(&manifests) {
        for container in workload.containers() {
            for source in container.env_from.iter().flatten() {
                if let Some(secret) = &source.secret_ref {
                    if secret.optional != Some(true) {
                        problems.push(format!(
                            "{} {}: Secret {} must be optional: the demo runs without it",
                            workload.kind, workload.name, secret.name
                        ));
                    }
                }
            }
        }
        for volume in workload
            .template
            .spec
            .iter()
            .flat_map(|spec| spec.volumes.iter().flatten())
        {
            if let Some(secret) = &volume.secret {
                if secret.optional != Some(true) {
                    problems.push(format!(
                        "{} {}: secret volume {} must be optional",
                        workload.kind, workload.name, volume.name
                    ));
                }
            }
        }
    }
    assert_no_problems("secrets", &problems);
}

fn http_probe(probe: Option<&Probe>, container: &Container) -> Option<(String, Option<i32>)> {
    let action = probe?.http_get.as_ref()?;
    Some((
        action.path.clone().unwrap_or_default(),
        kube::resolve_port(&action.port, container),
    ))
}

#[test]
fn ports_and_probe_paths_match_what_the_binaries_serve() {
    let manifests = manifests();
    let mut problems = Vec::new();
    for workload in kube::workloads(&manifests) {
        for container in workload.containers() {
            let binaries = binaries_of(container);
            let Some(main) = binaries.first().copied() else {
                continue;
            };
            let facts = facts_of(&binaries);
            let who = format!(
                "{} {} container {}",
                workload.kind, workload.name, container.name
            );
            let (address_variable, probes_required) = match main {
                Binary::Consumer => ("TXLEDGER_HTTP_ADDR", true),
                Binary::Producer => ("TXLEDGER_PRODUCER_METRICS_ADDR", true),
                Binary::Ledger => {
                    if container.ports.iter().flatten().next().is_some() {
                        problems.push(format!(
                            "{who}: the ledger CLI serves nothing, yet ports are declared"
                        ));
                    }
                    continue;
                }
            };
            let Some(port) = env_value(container, &manifests, &facts, address_variable)
                .and_then(|address| port_of_address(&address))
            else {
                problems.push(format!(
                    "{who}: {address_variable} is not set and has no default: nothing serves HTTP"
                ));
                continue;
            };
            let declared: Vec<i32> = container
                .ports
                .iter()
                .flatten()
                .map(|p| p.container_port)
                .collect();
            if declared != [port] {
                problems.push(format!("{who}: container ports {declared:?}, but {address_variable} makes it listen on {port}"));
            }
            let expected_paths: &[(&str, Option<&Probe>, &str)] = match main {
                Binary::Consumer => &[
                    ("readiness", container.readiness_probe.as_ref(), "/readyz"),
                    ("liveness", container.liveness_probe.as_ref(), "/healthz"),
                ],
                _ => &[
                    ("readiness", container.readiness_probe.as_ref(), "/healthz"),
                    ("liveness", container.liveness_probe.as_ref(), "/healthz"),
                ],
            };
            for (kind, probe, expected) in expected_paths {
                match http_probe(*probe, container) {
                    Some((path, probe_port)) => {
                        if path != *expected {
                            problems.push(format!(
                                "{who}: {kind} probe on {path}, expected {expected}"
                            ));
                        }
                        if !facts.routes.contains(&path) {
                            problems.push(format!(
                                "{who}: {kind} probe path {path} is not a route of {:?}",
                                facts.routes
                            ));
                        }
                        if probe_port != Some(port) {
                            problems.push(format!(
                                "{who}: {kind} probe port {probe_port:?} is not the served {port}"
                            ));
                        }
                    }
                    None if probes_required => {
                        problems.push(format!("{who}: no HTTP {kind} probe"))
                    }
                    None => {}
                }
            }
            let annotations = workload
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default();
            if let Some(scrape_port) = annotations.get("prometheus.io/port") {
                if scrape_port.parse() != Ok(port) {
                    problems.push(format!(
                        "{who}: prometheus.io/port {scrape_port} is not the served {port}"
                    ));
                }
                let path = annotations
                    .get("prometheus.io/path")
                    .map_or("/metrics", String::as_str);
                if !facts.routes.contains(path) {
                    problems.push(format!("{who}: prometheus.io/path {path} is not a route"));
                }
            }
        }
    }
    // NetworkPolicies open the ports that are served.
    let served: BTreeSet<i32> = kube::workloads(&manifests)
        .iter()
        .flat_map(|workload| workload.containers())
        .flat_map(|container| {
            container
                .ports
                .iter()
                .flatten()
                .map(|port| port.container_port)
        })
        .collect();
    for manifest in &manifests {
        if let Object::NetworkPolicy(policy) = &manifest.object {
            let spec = policy.spec.as_ref().unwrap();
            for rule in spec.ingress.iter().flatten() {
                for port in rule.ports.iter().flatten() {
                    if let Some(IntOrString::Int(number)) = &port.port {
                        if !served.contains(number) {
                            problems.push(format!(
                                "NetworkPolicy {}: ingress port {number} is served by no container",
                                manifest.name()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert_no_problems("ports and probes", &problems);
}

#[test]
fn every_pod_is_hardened() {
    let manifests = manifests();
    let mut problems = Vec::new();
    let namespace = manifests
        .iter()
        .find_map(|manifest| match &manifest.object {
            Object::Namespace(namespace) => Some(namespace),
            _ => None,
        })
        .expect("a Namespace");
    let labels = namespace.metadata.labels.clone().unwrap_or_default();
    if labels
        .get("pod-security.kubernetes.io/enforce")
        .map(String::as_str)
        != Some("restricted")
    {
        problems
            .push("the namespace does not enforce the restricted Pod Security profile".to_owned());
    }
    for workload in kube::workloads(&manifests) {
        let who = format!("{} {}", workload.kind, workload.name);
        let spec = workload.template.spec.as_ref().expect("a pod spec");
        let pod = spec.security_context.clone().unwrap_or_default();
        if pod.run_as_non_root != Some(true) {
            problems.push(format!(
                "{who}: pod securityContext.runAsNonRoot is not true"
            ));
        }
        if pod.run_as_user.is_none_or(|user| user == 0) {
            problems.push(format!(
                "{who}: pod securityContext.runAsUser must be a non-zero number"
            ));
        }
        if pod
            .seccomp_profile
            .as_ref()
            .map(|profile| profile.type_.as_str())
            != Some("RuntimeDefault")
        {
            problems.push(format!("{who}: pod seccompProfile is not RuntimeDefault"));
        }
        if spec.automount_service_account_token != Some(false) {
            problems.push(format!(
                "{who}: automountServiceAccountToken must be false: no pod here talks to the API"
            ));
        }
        if spec.host_network == Some(true)
            || spec.host_pid == Some(true)
            || spec.host_ipc == Some(true)
        {
            problems.push(format!("{who}: shares a host namespace"));
        }
        let empty_dirs: BTreeSet<&str> = spec
            .volumes
            .iter()
            .flatten()
            .filter(|volume| volume.empty_dir.is_some())
            .map(|volume| volume.name.as_str())
            .collect();
        for container in workload.containers() {
            let who = format!("{who} container {}", container.name);
            let context = container.security_context.clone().unwrap_or_default();
            if context.allow_privilege_escalation != Some(false) {
                problems.push(format!("{who}: allowPrivilegeEscalation is not false"));
            }
            if context.read_only_root_filesystem != Some(true) {
                problems.push(format!("{who}: readOnlyRootFilesystem is not true"));
            }
            if context.run_as_non_root != Some(true) {
                problems.push(format!("{who}: runAsNonRoot is not true"));
            }
            if context.privileged == Some(true) {
                problems.push(format!("{who}: privileged"));
            }
            let capabilities = context.capabilities.clone().unwrap_or_default();
            if capabilities.drop.as_deref() != Some(&["ALL".to_owned()][..]) {
                problems.push(format!("{who}: capabilities.drop is not [ALL]"));
            }
            if capabilities.add.is_some_and(|add| !add.is_empty()) {
                problems.push(format!("{who}: adds capabilities"));
            }
            let tmp = container
                .volume_mounts
                .iter()
                .flatten()
                .find(|mount| mount.mount_path == "/tmp");
            if !tmp.is_some_and(|mount| empty_dirs.contains(mount.name.as_str())) {
                problems.push(format!(
                    "{who}: /tmp is not an emptyDir (the root filesystem is read-only)"
                ));
            }
            let resources = container.resources.clone().unwrap_or_default();
            for (what, map) in [
                ("requests", &resources.requests),
                ("limits", &resources.limits),
            ] {
                for resource in ["cpu", "memory"] {
                    if !map.as_ref().is_some_and(|map| map.contains_key(resource)) {
                        problems.push(format!("{who}: no {what}.{resource}"));
                    }
                }
            }
            match container.image.as_deref() {
                Some(image)
                    if image.rsplit_once(':').is_some_and(|(_, tag)| {
                        tag != "latest" && tag.chars().any(|c| c.is_ascii_digit())
                    }) => {}
                other => {
                    problems.push(format!("{who}: image {other:?} is not pinned to a version"))
                }
            }
            if container
                .image
                .as_deref()
                .is_some_and(|image| image.starts_with("localhost/txledger/"))
            {
                let version = repo::workspace_version();
                if !container
                    .image
                    .as_deref()
                    .is_some_and(|image| image.ends_with(&format!(":{version}")))
                {
                    problems.push(format!(
                        "{who}: image {:?} is not tagged with the workspace version {version}",
                        container.image
                    ));
                }
                if container.image_pull_policy.as_deref() != Some("IfNotPresent") {
                    problems.push(format!("{who}: imagePullPolicy must be IfNotPresent (kind and minikube load the images)"));
                }
            }
        }
    }
    assert_no_problems("hardening", &problems);
}

#[test]
fn yaml_scalars_mean_the_same_to_kubernetes() {
    let mut problems = Vec::new();
    for dir in ["deploy", "deploy/jobs"] {
        for file in repo::files_in(dir, &[".yaml", ".yml"]) {
            let relative = format!("{dir}/{file}");
            for found in yaml::yaml11_ambiguities(&repo::read(&relative)) {
                problems.push(format!(
                    "{relative} {found}: quote it (YAML 1.1 reads it as a boolean or octal)"
                ));
            }
        }
    }
    assert_no_problems("YAML 1.1 scalars", &problems);
}

#[test]
fn the_shards_are_a_statefulset_that_scales_with_replicas_alone() {
    let manifests = manifests();
    let consumer_facts = facts_of(&[Binary::Consumer, Binary::Ledger]);
    let set = statefulset(&manifests, SHARDS);
    let spec = set.spec.as_ref().unwrap();
    let replicas = spec.replicas.expect("replicas is explicit");
    let pod = spec.template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    let mut problems = Vec::new();

    // The group, not a count kept equal to replicas by hand, decides what
    // each pod owns.
    let assignment = env_value(
        container,
        &manifests,
        &consumer_facts,
        "TXLEDGER_ASSIGNMENT",
    );
    if assignment.as_deref() != Some("group") {
        problems.push(format!(
            "TXLEDGER_ASSIGNMENT is {assignment:?}: with group, the StatefulSet's {replicas} replicas alone set the shard count"
        ));
    }
    let mut env_problems = Vec::new();
    let env = kube::container_env(container, &manifests, &BTreeMap::new(), &mut env_problems);
    for fixed in ["TXLEDGER_SHARD", "TXLEDGER_SHARDS"] {
        if env.iter().any(|(name, _, _)| name == fixed) {
            problems.push(format!(
                "{fixed} is set: every pod reads the same value; the name comes from the pod's hostname"
            ));
        }
    }
    if spec.pod_management_policy.as_deref() != Some("Parallel") {
        problems.push("podManagementPolicy is not Parallel".to_owned());
    }
    if spec.service_name.as_deref() != Some(SHARDS) {
        problems.push(format!(
            "serviceName is {:?}, not the headless Service {SHARDS}",
            spec.service_name
        ));
    }
    let headless = manifests.iter().any(|manifest| {
        matches!(&manifest.object, Object::Service(service)
            if manifest.name() == SHARDS
            && service.spec.as_ref().and_then(|spec| spec.cluster_ip.as_deref()) == Some("None"))
    });
    if !headless {
        problems.push(format!(
            "Service {SHARDS} is not headless (clusterIP: None)"
        ));
    }

    // sled lives on the claim: the data dir must be under its mount.
    let data_dir =
        env_value(container, &manifests, &consumer_facts, "TXLEDGER_DATA_DIR").unwrap_or_default();
    let claims: Vec<String> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|claim| claim.metadata.name.clone())
        .collect();
    let on_claim = container.volume_mounts.iter().flatten().any(|mount| {
        claims.contains(&mount.name)
            && data_dir.starts_with(&format!("{}/", mount.mount_path.trim_end_matches('/')))
    });
    if !on_claim {
        problems.push(format!(
            "TXLEDGER_DATA_DIR {data_dir:?} is not below a volumeClaimTemplate's mount"
        ));
    }

    // SIGTERM finishes the open batch, bounded by the transaction timeout.
    let timeout_ms: i64 = env_value(
        container,
        &manifests,
        &consumer_facts,
        "TXLEDGER_TRANSACTION_TIMEOUT_MS",
    )
    .and_then(|value| value.parse().ok())
    .expect("the transaction timeout is known (set or the source's default)");
    let batch_ms: i64 = env_value(container, &manifests, &consumer_facts, "TXLEDGER_BATCH_MS")
        .and_then(|value| value.parse().ok())
        .expect("the batch time is known");
    let grace_ms = pod.termination_grace_period_seconds.unwrap_or(30) * 1000;
    if grace_ms <= timeout_ms || grace_ms <= batch_ms {
        problems.push(format!(
            "terminationGracePeriodSeconds ({} s) must exceed a batch: transaction timeout {timeout_ms} ms, batch {batch_ms} ms",
            grace_ms / 1000
        ));
    }

    // Every list of shard URLs is the headless Service's name, which
    // resolves to each ready shard whatever the replicas.
    let port = env_value(container, &manifests, &consumer_facts, "TXLEDGER_HTTP_ADDR")
        .and_then(|address| port_of_address(&address))
        .expect("the shards' port");
    let expected = vec![format!("http://{SHARDS}:{port}")];
    let shard_urls = env_value(
        container,
        &manifests,
        &consumer_facts,
        "TXLEDGER_SHARD_URLS",
    )
    .unwrap_or_default();
    let listed: Vec<String> = shard_urls.split(',').map(str::to_owned).collect();
    if listed != expected {
        problems.push(format!(
            "TXLEDGER_SHARD_URLS is {listed:?}, expected {expected:?}"
        ));
    }
    let audit = kube::workloads(&manifests)
        .into_iter()
        .find(|workload| workload.kind == "Job")
        .expect("the audit Job");
    let args = audit.template.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default();
    let audited: Vec<String> = args
        .windows(2)
        .filter(|pair| pair[0] == "--url")
        .map(|pair| pair[1].clone())
        .collect();
    if audited != expected {
        problems.push(format!(
            "the audit Job asks {audited:?}, expected every shard {expected:?}"
        ));
    }
    if !manifests
        .iter()
        .any(|manifest| manifest.kind() == "PodDisruptionBudget")
    {
        problems.push("no PodDisruptionBudget".to_owned());
    }
    assert_no_problems("shards", &problems);
}

#[test]
fn producer_and_shards_agree_on_topic_and_partitions() {
    let manifests = manifests();
    let producer_facts = facts_of(&[Binary::Producer]);
    let consumer_facts = facts_of(&[Binary::Consumer]);
    let container_of = |name: &str| -> Container {
        kube::workloads(&manifests)
            .into_iter()
            .find(|workload| workload.name == name)
            .unwrap_or_else(|| panic!("no workload {name}"))
            .template
            .spec
            .clone()
            .unwrap()
            .containers[0]
            .clone()
    };
    let producer = container_of("ledger-producer");
    let consumer = container_of(SHARDS);
    // Settings both binaries have, under the same name.
    for variable in ["TXLEDGER_TRANSFERS_TOPIC", "TXLEDGER_PARTITIONS"] {
        let written = env_value(&producer, &manifests, &producer_facts, variable);
        let read = env_value(&consumer, &manifests, &consumer_facts, variable);
        assert!(written.is_some(), "{variable} unknown");
        assert_eq!(written, read, "producer {variable} != shards {variable}");
    }
    // The producer's transactional.id is fixed, so a replacement fences the
    // old pod; and a Deployment replaces it only after the old one is gone.
    let producer_env =
        kube::container_env(&producer, &manifests, &BTreeMap::new(), &mut Vec::new());
    assert!(
        producer_env
            .iter()
            .any(|(name, value, _)| name == "TXLEDGER_PRODUCER_TRANSACTIONAL_ID" && value.is_some()),
        "TXLEDGER_PRODUCER_TRANSACTIONAL_ID must be fixed: the default follows the pod's random name"
    );
    let strategy = manifests
        .iter()
        .find_map(|manifest| match &manifest.object {
            Object::Deployment(deployment) => {
                deployment.spec.as_ref()?.strategy.as_ref()?.type_.clone()
            }
            _ => None,
        });
    assert_eq!(strategy.as_deref(), Some("Recreate"));
}

#[test]
fn kafka_is_a_single_kraft_node_fit_for_transactions() {
    let manifests = manifests();
    let mut problems = Vec::new();
    let set = statefulset(&manifests, KAFKA);
    let spec = set.spec.as_ref().unwrap();
    if spec
        .volume_claim_templates
        .as_ref()
        .is_none_or(Vec::is_empty)
    {
        problems.push("Kafka has no volumeClaimTemplate".to_owned());
    }
    let container = &spec.template.spec.as_ref().unwrap().containers[0];
    let version = repo::harness_kafka_version();
    if container.image.as_deref() != Some(format!("apache/kafka:{version}").as_str()) {
        problems.push(format!(
            "Kafka image {:?} is not apache/kafka:{version} (harness/kafka/pom.xml)",
            container.image
        ));
    }
    for (name, probe) in [
        ("readiness", &container.readiness_probe),
        ("liveness", &container.liveness_probe),
        ("startup", &container.startup_probe),
    ] {
        if probe.is_none() {
            problems.push(format!("Kafka has no {name} probe"));
        }
    }
    let headless = manifests
        .iter()
        .find_map(|manifest| match &manifest.object {
            Object::Service(service) if manifest.name() == KAFKA => service.spec.clone(),
            _ => None,
        });
    match headless {
        Some(service) => {
            if service.cluster_ip.as_deref() != Some("None") {
                problems.push("Service kafka is not headless".to_owned());
            }
            if service.publish_not_ready_addresses != Some(true) {
                problems.push("Service kafka must publish not-ready addresses".to_owned());
            }
        }
        None => problems.push("no Service kafka".to_owned()),
    }
    let properties = config_map(&manifests, "kafka-server")
        .data
        .as_ref()
        .and_then(|data| data.get("server.properties"))
        .cloned()
        .expect("kafka-server holds server.properties");
    let settings: BTreeMap<&str, &str> = properties
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    for (key, value) in [
        ("process.roles", "broker,controller"),
        ("offsets.topic.replication.factor", "1"),
        ("transaction.state.log.replication.factor", "1"),
        ("transaction.state.log.min.isr", "1"),
        // `ledger audit` reads every topic from its first record.
        ("log.retention.ms", "-1"),
    ] {
        if settings.get(key) != Some(&value) {
            problems.push(format!(
                "server.properties: {key} is {:?}, expected {value}",
                settings.get(key)
            ));
        }
    }
    // The address the broker advertises is the one the clients dial.
    let advertised = settings.get("advertised.listeners").copied().unwrap_or("");
    let bootstrap = config_map(&manifests, "kafka-client")
        .data
        .as_ref()
        .and_then(|data| data.get("KAFKA_BOOTSTRAP_SERVERS"))
        .cloned()
        .unwrap_or_default();
    if !advertised.contains(&format!("//{bootstrap}")) {
        problems.push(format!(
            "clients dial {bootstrap:?} but the broker advertises {advertised:?}"
        ));
    }
    let pod_dns = format!("{KAFKA}-0.{KAFKA}.{NAMESPACE}.svc:");
    if !bootstrap.starts_with(&pod_dns) {
        problems.push(format!(
            "KAFKA_BOOTSTRAP_SERVERS {bootstrap:?} is not the broker pod's name {pod_dns}..."
        ));
    }
    // The mounted configuration is the one the broker starts with.
    let script = container.args.clone().unwrap_or_default().join("\n");
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| mount.name == "server-config")
        .map(|mount| mount.mount_path.clone())
        .unwrap_or_default();
    if !script.contains(&format!("{mount}/server.properties"))
        || !script.contains("--ignore-formatted")
    {
        problems.push("the Kafka container does not format (idempotently) and start with the mounted server.properties".to_owned());
    }
    assert_no_problems("Kafka", &problems);
}

#[test]
fn network_policies_deny_by_default_and_allow_dns() {
    let manifests = manifests();
    let policies: Vec<_> = manifests
        .iter()
        .filter_map(|manifest| match &manifest.object {
            Object::NetworkPolicy(policy) => policy.spec.clone(),
            _ => None,
        })
        .collect();
    let everything = |spec: &k8s_openapi::api::networking::v1::NetworkPolicySpec| {
        spec.pod_selector.as_ref().is_none_or(|selector| {
            selector
                .match_labels
                .as_ref()
                .is_none_or(BTreeMap::is_empty)
                && selector
                    .match_expressions
                    .as_ref()
                    .is_none_or(Vec::is_empty)
        })
    };
    let deny_all = policies.iter().any(|spec| {
        everything(spec)
            && spec.ingress.as_ref().is_none_or(Vec::is_empty)
            && spec.egress.as_ref().is_none_or(Vec::is_empty)
            && spec.policy_types.as_ref().is_some_and(|types| {
                types.contains(&"Ingress".to_owned()) && types.contains(&"Egress".to_owned())
            })
    });
    assert!(
        deny_all,
        "no default-deny NetworkPolicy (empty podSelector, Ingress and Egress)"
    );
    let dns = policies.iter().any(|spec| {
        everything(spec)
            && spec.egress.iter().flatten().any(|rule| {
                rule.ports
                    .iter()
                    .flatten()
                    .any(|port| port.port == Some(IntOrString::Int(53)))
            })
    });
    assert!(
        dns,
        "with egress denied, every pod needs a DNS egress rule (port 53)"
    );
}

#[test]
fn the_audit_job_is_outside_the_applied_folder_and_follows_the_audit() {
    // `kubectl apply -f deploy/` must not start an audit; chaos.sh applies it.
    assert!(repo::path("deploy/jobs/audit-job.yaml").is_file());
    let manifests = manifests();
    let (top_level, _) = kube::load_dir("deploy");
    assert!(
        !top_level.iter().any(|manifest| manifest.kind() == "Job"),
        "a Job in deploy/ would run on every apply"
    );
    let job = manifests
        .iter()
        .find_map(|manifest| match &manifest.object {
            Object::Job(job) => job.spec.clone(),
            _ => None,
        })
        .unwrap();
    let container = &job.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        container.command.as_deref(),
        Some(&["ledger".to_owned(), "audit".to_owned()][..])
    );
    assert_eq!(
        job.template
            .spec
            .as_ref()
            .unwrap()
            .restart_policy
            .as_deref(),
        Some("Never")
    );
    // A violation (exit 1) is final; only "could not run" (2) is retried.
    let fails_on_violation = job
        .pod_failure_policy
        .iter()
        .flat_map(|policy| policy.rules.iter())
        .any(|rule| {
            rule.action == "FailJob"
                && rule
                    .on_exit_codes
                    .as_ref()
                    .is_some_and(|codes| codes.operator == "In" && codes.values.contains(&1))
        });
    assert!(
        fails_on_violation,
        "the audit Job must fail at once on exit code 1"
    );
    let script = repo::read("deploy/chaos.sh");
    assert!(
        script.contains("jobs/audit-job.yaml"),
        "chaos.sh applies the audit Job"
    );
}

/// A Kubernetes quantity in base units (cores, bytes): enough of the format
/// for what manifests here use (`250m`, `1`, `512Mi`, `2Gi`, `1.5`).
fn quantity(text: &str) -> Option<f64> {
    let suffixes: [(&str, f64); 10] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("m", 1e-3),
        ("", 1.0),
    ];
    suffixes.iter().find_map(|(suffix, factor)| {
        let number = text.strip_suffix(suffix)?;
        number.parse::<f64>().ok().map(|value| value * factor)
    })
}

#[test]
fn api_server_rules_that_types_alone_do_not_enforce() {
    // What the API server's validation rejects at create time (pods are
    // validated only when a controller creates them, i.e. after apply "worked").
    let manifests = manifests();
    let mut problems = Vec::new();
    let dns_label = |name: &str| {
        !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-')
    };
    for manifest in &manifests {
        if !dns_label(manifest.name()) {
            problems.push(format!(
                "{}: name {:?} is not a DNS-1123 label",
                manifest.origin,
                manifest.name()
            ));
        }
    }
    for workload in kube::workloads(&manifests) {
        let who = format!("{} {}", workload.kind, workload.name);
        let spec = workload.template.spec.as_ref().unwrap();
        let mut volumes: BTreeSet<String> = spec
            .volumes
            .iter()
            .flatten()
            .map(|volume| volume.name.clone())
            .collect();
        for manifest in &manifests {
            if let Object::StatefulSet(set) = &manifest.object {
                if manifest.name() == workload.name {
                    let claims = set
                        .spec
                        .as_ref()
                        .and_then(|spec| spec.volume_claim_templates.clone())
                        .unwrap_or_default();
                    volumes.extend(claims.into_iter().filter_map(|claim| claim.metadata.name));
                }
            }
        }
        for container in workload.containers() {
            let who = format!("{who} container {}", container.name);
            for mount in container.volume_mounts.iter().flatten() {
                if !volumes.contains(&mount.name) {
                    problems.push(format!(
                        "{who}: mounts volume {}, which the pod does not have",
                        mount.name
                    ));
                }
            }
            for port in container.ports.iter().flatten() {
                if let Some(name) = &port.name {
                    let valid = name.len() <= 15
                        && dns_label(name)
                        && name.chars().any(|c| c.is_ascii_lowercase());
                    if !valid {
                        problems.push(format!("{who}: port name {name:?} is not an IANA service name (at most 15 characters)"));
                    }
                }
            }
            let resources = container.resources.clone().unwrap_or_default();
            for (resource, request) in resources.requests.iter().flatten() {
                let limit = resources
                    .limits
                    .as_ref()
                    .and_then(|limits| limits.get(resource));
                match (quantity(&request.0), limit.map(|limit| quantity(&limit.0))) {
                    (Some(request_value), Some(Some(limit_value)))
                        if request_value > limit_value =>
                    {
                        problems.push(format!(
                            "{who}: {resource} request {} exceeds its limit {}",
                            request.0,
                            limit.unwrap().0
                        ));
                    }
                    (None, _) | (_, Some(None)) => {
                        problems.push(format!("{who}: {resource} quantity not understood"))
                    }
                    _ => {}
                }
            }
        }
    }
    assert_no_problems("API server rules", &problems);
}
