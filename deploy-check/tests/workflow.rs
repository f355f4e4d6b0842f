//! .github/workflows/ci-cd.yml: parses, triggers as the issue asks, jobs
//! wired together, every action pinned to a commit SHA, the Kafka service
//! like compose's, and actionlint's verdict where it is installed.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::collections::BTreeSet;

use deploy_check::{assert_no_problems, note, repo, tools, yaml};
use serde_json::Value;

const WORKFLOW: &str = ".github/workflows/ci-cd.yml";

fn workflow() -> Value {
    yaml::document(&repo::read(WORKFLOW)).unwrap_or_else(|error| panic!("{WORKFLOW}: {error}"))
}

/// Every step of every job, with its job's name.
fn steps(workflow: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (job, body) in workflow["jobs"].as_object().expect("jobs") {
        for step in body["steps"].as_array().into_iter().flatten() {
            out.push((job.clone(), step.clone()));
        }
    }
    out
}

fn run_scripts(workflow: &Value, job: &str) -> String {
    workflow["jobs"][job]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|step| step["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn uses(workflow: &Value, job: &str) -> Vec<String> {
    workflow["jobs"][job]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|step| step["uses"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn triggers_are_develop_pull_requests_and_version_tags() {
    let workflow = workflow();
    let on = &workflow["on"];
    assert!(
        on["push"]["branches"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b == "develop")),
        "push to develop"
    );
    assert!(
        on["push"]["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "v*")),
        "push of v* tags"
    );
    assert!(on.get("pull_request").is_some(), "pull requests");
    assert_eq!(
        workflow["permissions"]["contents"], "read",
        "least privilege by default"
    );
}

#[test]
fn jobs_do_what_the_issue_asks() {
    let workflow = workflow();
    let jobs = workflow["jobs"].as_object().expect("jobs");
    let names: BTreeSet<&str> = jobs.keys().map(String::as_str).collect();
    let mut problems = Vec::new();
    for (job, body) in jobs {
        for need in body["needs"].as_array().into_iter().flatten() {
            if !names.contains(need.as_str().unwrap_or("")) {
                problems.push(format!("{job} needs {need}, which is no job"));
            }
        }
    }
    let lint = run_scripts(&workflow, "lint");
    for command in [
        "cargo fmt --all --check",
        "cargo clippy --workspace --all-targets --locked -- -D warnings",
    ] {
        if !lint.contains(command) {
            problems.push(format!("lint does not run `{command}`"));
        }
    }
    // Tests against a real broker, the same one compose and the harness run.
    let test = &jobs["test"];
    let version = repo::harness_kafka_version();
    if test["services"]["kafka"]["image"] != format!("apache/kafka:{version}").as_str() {
        problems.push(format!(
            "the test job's Kafka is not apache/kafka:{version}"
        ));
    }
    for (key, expected) in [
        ("KAFKA_PROCESS_ROLES", "broker,controller"),
        ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1"),
        ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"),
        ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1"),
    ] {
        if test["services"]["kafka"]["env"][key] != expected {
            problems.push(format!("the test job's Kafka: {key} is not {expected}"));
        }
    }
    if test["env"]["KAFKA_BOOTSTRAP_SERVERS"] != "localhost:9092" {
        problems.push(
            "the test job does not point the tests at the service (KAFKA_BOOTSTRAP_SERVERS)"
                .to_owned(),
        );
    }
    if !test["services"]["kafka"]["options"]
        .as_str()
        .unwrap_or("")
        .contains("--health-cmd")
    {
        problems
            .push("the Kafka service has no health check: tests could start before it".to_owned());
    }
    if !run_scripts(&workflow, "test").contains("cargo test --workspace --locked") {
        problems.push("the test job does not run the README's test command".to_owned());
    }
    // Both jobs build librdkafka, whose 2.12 sources include curl.h even
    // without curl support: the one list of system packages must hold it.
    for job in ["lint", "test"] {
        if !run_scripts(&workflow, job).contains("scripts/install-prerequisites") {
            problems.push(format!(
                "{job} does not install the system packages with scripts/install-prerequisites"
            ));
        }
    }
    if !repo::read("scripts/install-prerequisites").contains("libcurl4-openssl-dev") {
        problems.push(
            "scripts/install-prerequisites does not install libcurl4-openssl-dev, which librdkafka's build needs"
                .to_owned(),
        );
    }
    // The compose quick start run for real, and a release only after it.
    if !run_scripts(&workflow, "compose").contains("scripts/compose-check") {
        problems.push("the compose job does not run scripts/compose-check".to_owned());
    }
    if !jobs["release"]["needs"].to_string().contains("\"compose\"") {
        problems.push("release does not need the compose job".to_owned());
    }
    // Images built and scanned.
    let images = &jobs["images"];
    let targets = images["strategy"]["matrix"]["target"].to_string();
    for target in ["producer", "consumer"] {
        if !targets.contains(target) {
            problems.push(format!("the images job does not build {target}"));
        }
    }
    let image_steps = images["steps"].as_array().cloned().unwrap_or_default();
    let trivy = image_steps.iter().find(|step| {
        step["uses"]
            .as_str()
            .is_some_and(|u| u.starts_with("aquasecurity/trivy-action@"))
    });
    match trivy {
        Some(step) => {
            let with = &step["with"];
            if with["severity"] != "HIGH,CRITICAL"
                || with["ignore-unfixed"] != true
                || with["exit-code"] != "1"
            {
                problems.push("Trivy must fail (exit-code 1) on HIGH,CRITICAL vulnerabilities that have a fix".to_owned());
            }
        }
        None => problems.push("no Trivy scan".to_owned()),
    }
    if !uses(&workflow, "images")
        .iter()
        .any(|u| u.starts_with("docker/build-push-action@"))
    {
        problems.push("images are not built with docker/build-push-action".to_owned());
    }
    // The chaos demo in kind.
    let chaos = run_scripts(&workflow, "chaos-kind");
    for needed in [
        "kind load docker-image",
        "kubectl apply -f deploy/",
        "deploy/chaos.sh",
    ] {
        if !chaos.contains(needed) {
            problems.push(format!("chaos-kind does not run `{needed}`"));
        }
    }
    if !uses(&workflow, "chaos-kind")
        .iter()
        .any(|u| u.starts_with("helm/kind-action@"))
    {
        problems.push("chaos-kind does not create a kind cluster".to_owned());
    }
    // Release only for tags, then deploy.
    let release = &jobs["release"];
    if !release["if"].as_str().unwrap_or("").contains("refs/tags/v") {
        problems.push("release must run only for v* tags".to_owned());
    }
    if release["permissions"]["packages"] != "write" {
        problems.push("release needs packages: write for GHCR".to_owned());
    }
    let release_text = release.to_string();
    if !release_text.contains("ghcr.io/${GITHUB_REPOSITORY,,}")
        || !release_text.contains("origin/main")
    {
        problems.push(
            "release must push to ghcr.io/<repository> and check the tag is on main".to_owned(),
        );
    }
    let deploy = &jobs["deploy"];
    if deploy["needs"] != serde_json::json!(["release"])
        || !run_scripts(&workflow, "deploy").contains("kubectl apply")
    {
        problems.push("deploy must follow release and apply the manifests".to_owned());
    }
    assert_no_problems("jobs", &problems);
}

#[test]
fn every_action_is_pinned_to_a_full_commit_sha() {
    let workflow = workflow();
    let mut problems = Vec::new();
    for (job, step) in steps(&workflow) {
        let Some(action) = step["uses"].as_str() else {
            continue;
        };
        let pinned = action.rsplit_once('@').is_some_and(|(name, reference)| {
            name.contains('/')
                && reference.len() == 40
                && reference
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        });
        if !pinned {
            problems.push(format!(
                "{job}: {action} is not pinned to a 40-hex commit SHA"
            ));
        }
    }
    // The tag each SHA was taken from stays readable next to it.
    for (number, line) in repo::read(WORKFLOW).lines().enumerate() {
        if line
            .trim_start()
            .trim_start_matches("- ")
            .starts_with("uses:")
            && !line.contains("# v")
        {
            problems.push(format!(
                "line {}: `{}` has no `# vX.Y.Z` comment",
                number + 1,
                line.trim()
            ));
        }
    }
    assert_no_problems("action pins", &problems);
}

#[test]
fn the_toolchain_is_the_one_the_dockerfile_builds_with() {
    let workflow = workflow();
    let toolchain = workflow["env"]["RUST_TOOLCHAIN"]
        .as_str()
        .expect("RUST_TOOLCHAIN");
    let dockerfile = repo::read("docker/Dockerfile");
    assert!(
        dockerfile.contains(&format!("ARG RUST_IMAGE=rust:{toolchain}-")),
        "CI's Rust {toolchain} differs from the Dockerfile's rust image"
    );
}

#[test]
fn actionlint_accepts_the_workflow() {
    match tools::run("actionlint", &[WORKFLOW]) {
        Some(output) => assert!(output.status.success(), "actionlint: {}", tools::text(&output)),
        None => note("SKIPPED actionlint (not installed: `go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12`); the workflow was checked as YAML instead"),
    }
}
