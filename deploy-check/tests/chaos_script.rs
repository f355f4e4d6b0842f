//! deploy/chaos.sh: valid bash, shellcheck-clean, executable, and naming
//! the objects the manifests actually create.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use deploy_check::kube::{self, Object};
use deploy_check::{note, repo, tools};

const SCRIPT: &str = "deploy/chaos.sh";

#[test]
fn the_script_is_valid_bash() {
    match tools::run("bash", &["-n", SCRIPT]) {
        Some(output) => assert!(output.status.success(), "bash -n: {}", tools::text(&output)),
        None => note("SKIPPED bash -n deploy/chaos.sh (no bash)"),
    }
}

#[test]
fn shellcheck_finds_nothing() {
    match tools::run("shellcheck", &[SCRIPT]) {
        Some(output) => assert!(
            output.status.success(),
            "shellcheck: {}",
            tools::text(&output)
        ),
        None => {
            note("SKIPPED shellcheck deploy/chaos.sh (not installed: apt-get install shellcheck)")
        }
    }
}

#[test]
fn the_script_is_executable() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(repo::path(SCRIPT))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "{SCRIPT} is not executable (chmod +x)");
    assert!(repo::read(SCRIPT).starts_with("#!/usr/bin/env bash\n"));
}

/// `readonly NAME=value` of the script.
fn setting(script: &str, name: &str) -> String {
    let prefix = format!("readonly {name}=");
    script
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{SCRIPT} has no `{prefix}...`"))
        .trim_matches('"')
        .to_owned()
}

#[test]
fn the_script_names_objects_the_manifests_create() {
    let script = repo::read(SCRIPT);
    let manifests = kube::load_all();
    let exists = |kind: &str, name: &str| {
        manifests
            .iter()
            .any(|m| m.kind() == kind && m.name() == name)
    };
    assert_eq!(setting(&script, "NAMESPACE"), "${NAMESPACE:-txledger}");
    assert!(exists("Namespace", "txledger"));
    assert_eq!(
        setting(&script, "CHAOS_DURATION"),
        "${CHAOS_DURATION:-300}",
        "the default chaos lasts 300 s"
    );
    let shards = setting(&script, "SHARDS_STS");
    assert!(exists("StatefulSet", &shards), "no StatefulSet {shards}");
    let producer = setting(&script, "PRODUCER_DEPLOY");
    assert!(exists("Deployment", &producer), "no Deployment {producer}");
    let audit = setting(&script, "AUDIT_JOB");
    assert!(exists("Job", &audit), "no Job {audit}");
    // kafka-0 is the Kafka StatefulSet's first pod.
    let kafka_pod = setting(&script, "KAFKA_POD");
    let kafka_set = kafka_pod
        .strip_suffix("-0")
        .expect("the Kafka pod is ordinal 0");
    assert!(
        exists("StatefulSet", kafka_set),
        "no StatefulSet {kafka_set}"
    );
    // The label the script lists pods by is on every workload's pods, and
    // the producer's pods carry app.kubernetes.io/name=<deployment>.
    let part_of = setting(&script, "PART_OF");
    let (key, value) = part_of.split_once('=').unwrap();
    for workload in kube::workloads(&manifests) {
        let labels = workload.labels();
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some(value),
            "{} {} lacks {part_of}",
            workload.kind,
            workload.name
        );
        if workload.kind == "Deployment" {
            assert_eq!(labels.get("app.kubernetes.io/name"), Some(&producer));
        }
    }
    // The script's shard pods have a container named `consumer` (kubectl exec -c).
    let set = manifests.iter().find_map(|m| match &m.object {
        Object::StatefulSet(set) if m.name() == shards => set.spec.clone(),
        _ => None,
    });
    let container = &set.unwrap().template.spec.unwrap().containers[0].name;
    assert!(
        script.contains(&format!("-c {container} --")),
        "kubectl exec -c names another container than {container}"
    );
}
