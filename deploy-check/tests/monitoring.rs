//! monitoring/: the Grafana dashboard queries only metrics the binaries
//! export, its data sources are the provisioned ones, Prometheus scrapes
//! every /metrics of the compose file at the right port, and the log
//! pipeline (Alloy -> Loki) points where compose runs Loki.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::collections::{BTreeMap, BTreeSet};

use deploy_check::source::{Binary, Facts};
use deploy_check::{assert_no_problems, repo, yaml};
use deploy_check::{compose, dashboard};
use serde_json::Value;

fn exported() -> BTreeMap<String, &'static str> {
    let facts = [Binary::Producer, Binary::Consumer, Binary::Ledger]
        .into_iter()
        .fold(Facts::default(), |facts, binary| {
            facts.union(binary.facts())
        });
    facts.metrics
}

/// Whether a series name exists: a metric as recorded, or a histogram's
/// `_bucket`, `_sum` or `_count` series.
fn series_exists(name: &str, exported: &BTreeMap<String, &'static str>) -> bool {
    if exported.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|base| exported.get(base))
            .is_some_and(|kind| *kind == "histogram")
    })
}

#[test]
fn dashboard_queries_reference_only_exported_metrics() {
    let exported = exported();
    assert!(
        exported.len() >= 10,
        "only {} metrics found in the binaries' source: {exported:?}",
        exported.len()
    );
    let queries = dashboard::queries(&dashboard::load());
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for query in &queries {
        for name in dashboard::metric_names(query) {
            if !series_exists(&name, &exported) {
                problems.push(format!("{name} (in `{query}`) is exported by no binary"));
            }
            used.insert(name);
        }
    }
    assert_no_problems("dashboard metrics", &problems);
    // The panels: throughput, outcomes, commits/aborts, latency,
    // sum of balances (lag is shown as a trend and as end-to-end latency).
    for required in [
        "txledger_producer_records_total",
        "txledger_consumer_records_in_total",
        "txledger_consumer_outcomes_total",
        "txledger_consumer_transactions_total",
        "txledger_consumer_batch_duration_seconds_bucket",
        "txledger_consumer_end_to_end_latency_seconds_bucket",
        "txledger_consumer_balance_sum",
    ] {
        assert!(
            used.contains(required),
            "the dashboard does not chart {required}"
        );
    }
}

#[test]
fn the_metric_check_catches_a_name_nobody_exports() {
    let exported = exported();
    assert!(series_exists(
        "txledger_consumer_batch_duration_seconds_bucket",
        &exported
    ));
    assert!(
        !series_exists("txledger_consumer_outcomes_total_bucket", &exported),
        "a counter has no buckets"
    );
    assert!(!series_exists("txledger_consumer_made_up_total", &exported));
}

#[test]
fn dashboard_data_sources_are_the_provisioned_ones() {
    let provisioned = yaml::document(&repo::read(
        "monitoring/grafana/provisioning/datasources/datasources.yaml",
    ))
    .unwrap();
    let compose = compose::load();
    let services = compose.services();
    let mut uids = BTreeSet::new();
    let mut problems = Vec::new();
    for source in provisioned["datasources"].as_array().expect("datasources") {
        let uid = source["uid"]
            .as_str()
            .expect("every data source has a fixed uid");
        uids.insert(uid.to_owned());
        // http://SERVICE:PORT must be a compose service.
        let url = source["url"].as_str().unwrap_or("");
        let host = url
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap_or("");
        if !services.contains_key(host) {
            problems.push(format!("data source {uid}: {url} is no compose service"));
        }
    }
    fn datasource_uids(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(object) => {
                if let Some(Value::Object(source)) = object.get("datasource") {
                    if let Some(uid) = source.get("uid").and_then(Value::as_str) {
                        out.insert(uid.to_owned());
                    }
                }
                object
                    .values()
                    .for_each(|child| datasource_uids(child, out));
            }
            Value::Array(items) => items.iter().for_each(|item| datasource_uids(item, out)),
            _ => {}
        }
    }
    let mut used = BTreeSet::new();
    datasource_uids(&dashboard::load(), &mut used);
    for uid in used.difference(&uids) {
        problems.push(format!(
            "the dashboard uses data source {uid}, which is not provisioned"
        ));
    }
    // The dashboards provider reads the folder compose mounts.
    let providers = yaml::document(&repo::read(
        "monitoring/grafana/provisioning/dashboards/dashboards.yaml",
    ))
    .unwrap();
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap_or("");
    let mounts = services["grafana"]["volumes"].to_string();
    if !mounts.contains(&format!("./monitoring/grafana/dashboards:{path}")) {
        problems.push(format!(
            "grafana does not mount monitoring/grafana/dashboards at the provider's path {path}"
        ));
    }
    let home = compose::environment(services["grafana"])
        .get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        .cloned()
        .unwrap_or_default();
    if home != format!("{path}/txledger.json") {
        problems.push(format!(
            "the home dashboard path {home:?} is not {path}/txledger.json"
        ));
    }
    assert_no_problems("data sources", &problems);
}

#[test]
fn prometheus_scrapes_every_metrics_endpoint_at_its_port() {
    let config = yaml::document(&repo::read("monitoring/prometheus/prometheus.yml")).unwrap();
    let mut scraped: BTreeMap<String, String> = BTreeMap::new();
    for job in config["scrape_configs"].as_array().expect("scrape_configs") {
        let path = job["metrics_path"]
            .as_str()
            .unwrap_or("/metrics")
            .to_owned();
        for group in job["static_configs"].as_array().into_iter().flatten() {
            for target in group["targets"].as_array().into_iter().flatten() {
                scraped.insert(target.as_str().unwrap_or("").to_owned(), path.clone());
            }
        }
        // A name that resolves to every replica of a scaled service.
        for group in job["dns_sd_configs"].as_array().into_iter().flatten() {
            let port = group["port"].as_u64().unwrap_or(0);
            for name in group["names"].as_array().into_iter().flatten() {
                let target = format!("{}:{port}", name.as_str().unwrap_or(""));
                scraped.insert(target, path.clone());
            }
        }
    }
    let compose = compose::load();
    let mut problems = Vec::new();
    let mut expected = BTreeSet::new();
    for (name, service) in compose.services() {
        let binaries = compose::image_binaries(service);
        let Some(main) = binaries.first().copied() else {
            continue;
        };
        let facts = main.facts();
        let variable = match main {
            Binary::Consumer => "TXLEDGER_HTTP_ADDR",
            Binary::Producer => "TXLEDGER_PRODUCER_METRICS_ADDR",
            Binary::Ledger => continue,
        };
        let address = compose::environment(service)
            .get(variable)
            .cloned()
            .or_else(|| facts.env_defaults.get(variable).cloned());
        let Some(port) = address
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .map(|(_, port)| port.to_owned())
        else {
            problems.push(format!(
                "{name}: {variable} is not set: the service serves no /metrics"
            ));
            continue;
        };
        let target = format!("{name}:{port}");
        match scraped.get(&target) {
            Some(path) if facts.routes.contains(path) => {}
            Some(path) => problems.push(format!(
                "{target}: scraped at {path}, which {} does not serve",
                main.name()
            )),
            None => problems.push(format!("{target} is not scraped")),
        }
        expected.insert(target);
    }
    for target in scraped.keys() {
        if !expected.contains(target) && !target.starts_with("localhost:") {
            problems.push(format!("{target} is scraped but is no txledger service"));
        }
    }
    assert_no_problems("scrape targets", &problems);
}

#[test]
fn logs_flow_from_the_compose_project_to_loki() {
    let alloy = repo::read("monitoring/alloy/config.alloy");
    let compose = compose::load();
    let project = compose.root["name"]
        .as_str()
        .expect("compose names its project");
    assert!(
        alloy.contains(&format!("com.docker.compose.project={project}")),
        "Alloy does not select the containers of compose project {project}"
    );
    let loki = yaml::document(&repo::read("monitoring/loki/loki.yaml")).unwrap();
    let port = loki["server"]["http_listen_port"]
        .as_u64()
        .expect("Loki's port");
    assert!(
        alloy.contains(&format!("http://loki:{port}/loki/api/v1/push")),
        "Alloy does not push to loki:{port}"
    );
    let services = compose.services();
    for name in ["loki", "alloy"] {
        assert_eq!(
            services[name]["profiles"],
            serde_json::json!(["logs"]),
            "{name} belongs to the logs profile"
        );
    }
    let mounted = services["loki"]["command"].to_string();
    assert!(
        mounted.contains("/etc/loki/loki.yaml"),
        "loki starts with the mounted config"
    );
}
