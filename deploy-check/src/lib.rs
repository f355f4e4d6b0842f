//! deploy-check: the deployment files of txledger, validated with real types
//! and against the binaries' own source, by `cargo test`.
//!
//! Nothing here ships. The tests in `tests/` check the Dockerfile, the
//! compose file, the Kubernetes manifests in `deploy/`, the chaos script, the
//! CI workflow and the monitoring configuration; this library holds what
//! they share.
//!
//! # Layout
//!
//! - [`repo`]: the workspace's paths and facts (version, members, the
//!   broker version the harness pins).
//! - [`yaml`]: YAML files as JSON values (every document, merge keys
//!   applied), and the YAML 1.1 scalars Kubernetes would read differently.
//! - [`kube`]: manifests parsed into the Kubernetes API types of
//!   `k8s-openapi`, with unknown (misspelt, misplaced) fields reported;
//!   workloads, selectors, env sources.
//! - [`source`]: what each binary reads (environment variables), exports
//!   (metric names) and serves (HTTP routes), read from its Rust source with
//!   `syn`, so the checks follow the code as it changes.
//! - [`compose`]: the compose file: known keys, services, environments.
//! - [`dashboard`]: the Grafana dashboard's queries and the metric names
//!   they use.
//! - [`tools`]: external tools run when present (docker compose, kubectl,
//!   shellcheck, actionlint), with a visible note when one is missing.

// A test may keep its length when it reads as one story; production
// functions are held to clippy.toml's limit.
#![cfg_attr(test, allow(clippy::too_many_lines))]
pub mod compose;
pub mod dashboard;
pub mod kube;
pub mod repo;
pub mod source;
pub mod tools;
pub mod yaml;

/// Prints a line that shows even for a passing test: libtest captures the
/// print macros, not writes to the stderr handle. For skip notes, which must
/// never pass silently.
pub fn note(message: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "deploy-check: {message}");
}

/// Fails with every problem found, one per line, rather than the first only:
/// a reviewer fixing a manifest wants the whole list.
#[track_caller]
pub fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}
