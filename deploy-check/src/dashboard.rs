//! The Grafana dashboard: its JSON, its queries, and the metric names they
//! use, for the checks against the binaries' source and their live
//! `/metrics`.

use serde_json::Value;

use crate::repo;

/// The dashboard that compose and the manifests provision.
pub const PATH: &str = "monitoring/grafana/dashboards/txledger.json";

pub fn load() -> Value {
    serde_json::from_str(&repo::read(PATH)).expect("the dashboard is JSON")
}

/// Every string under a key named `expr` (PromQL and LogQL targets).
pub fn queries(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                for (key, child) in object {
                    match (key.as_str(), child) {
                        ("expr", Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(child, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// The `txledger_[a-z0-9_]+` identifiers of a query, as whole words.
/// Series names are compared as such: a histogram's `_bucket` series is in
/// the scrape under that name, and a gauge named `..._sum` is not mistaken
/// for a histogram's.
pub fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut names = Vec::new();
    let mut at = 0;
    while let Some(offset) = expr[at..].find("txledger_") {
        let start = at + offset;
        let mut end = start;
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        if start == 0 || !word(bytes[start - 1]) {
            names.push(expr[start..end].to_owned());
        }
        at = end.max(start + 1);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::{metric_names, queries};

    #[test]
    fn metric_names_are_whole_words() {
        assert_eq!(
            metric_names("sum(rate(txledger_a_total[1m])) - x_txledger_b + txledger_c_bucket"),
            ["txledger_a_total", "txledger_c_bucket"]
        );
    }

    #[test]
    fn queries_are_found_at_any_depth() {
        let dashboard = serde_json::json!({
            "panels": [
                {"targets": [{"expr": "a"}, {"expr": "b"}]},
                {"panels": [{"targets": [{"expr": "c", "legendFormat": "x"}]}]}
            ]
        });
        assert_eq!(queries(&dashboard), ["a", "b", "c"]);
    }
}
