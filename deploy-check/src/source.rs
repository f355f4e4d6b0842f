//! What the binaries read, export and serve, from their Rust source.
//!
//! The deployment files set environment variables, scrape metric names and
//! probe HTTP paths; each must exist in the code, or the setting does nothing
//! (an env var nobody reads) or shows nothing (a Grafana panel over a metric
//! nobody exports). Rather than a copy of those names that drifts, they are
//! read from the source with `syn`:
//!
//! - environment variables: clap's `env = "NAME"` (or `env = CONST`),
//!   `std::env::var("NAME")` / `var_os` (literal or const), the string
//!   literals of a `const` whose name contains `ENV` (tables such as
//!   `ledger::kafka::SECURITY_ENV`, looked up in a loop), and `RUST_LOG`
//!   where `EnvFilter::*from_default_env` is called (tracing-subscriber's
//!   `EnvFilter::DEFAULT_ENV`);
//! - metric names: the first argument of `counter!`, `gauge!`,
//!   `histogram!` (literal or const);
//! - HTTP routes: the first argument of `.route("...", ...)`.
//!
//! Code under `#[cfg(test)]` and `#[test]` functions is left out: what a
//! test reads is not what the binary reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use syn::visit::Visit;
use syn::{Attribute, Expr, ExprCall, ExprMethodCall, Field, Item, ItemConst, ItemMod, Lit};

use crate::repo;

/// The facts of one binary (or an image's binaries together).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Environment variables read.
    pub env: BTreeSet<String>,
    /// Default value of the clap argument behind an environment variable,
    /// where the source gives one (`default_value = "0.0.0.0:8080"`,
    /// `default_value_t = 60_000`).
    pub env_defaults: BTreeMap<String, String>,
    /// Metric names recorded, with their kind (`counter`, `gauge`,
    /// `histogram`): only histograms have `_bucket`, `_sum`, `_count`.
    pub metrics: BTreeMap<String, &'static str>,
    /// HTTP paths routed.
    pub routes: BTreeSet<String>,
}

impl Facts {
    pub fn union(mut self, other: Facts) -> Facts {
        self.env.extend(other.env);
        self.env_defaults.extend(other.env_defaults);
        self.metrics.extend(other.metrics);
        self.routes.extend(other.routes);
        self
    }
}

/// The binaries of the workspace that run in containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Binary {
    Producer,
    Consumer,
    Ledger,
}

impl Binary {
    pub fn name(self) -> &'static str {
        match self {
            Binary::Producer => "producer",
            Binary::Consumer => "consumer",
            Binary::Ledger => "ledger",
        }
    }

    pub fn from_name(name: &str) -> Option<Binary> {
        match name {
            "producer" => Some(Binary::Producer),
            "consumer" => Some(Binary::Consumer),
            "ledger" => Some(Binary::Ledger),
            _ => None,
        }
    }

    /// The source files compiled into the binary: its crate, and the
    /// libraries it links from the workspace (`ledger-core` and `ledger` for
    /// all three; `ledger`'s CLI crate also links `harness`, without the
    /// `txledger-kafka` binary's `main.rs`).
    pub fn files(self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = rs_files("ledger-core/src");
        files.extend(rs_files("ledger/src"));
        match self {
            Binary::Producer => files.extend(rs_files("producer/src")),
            Binary::Consumer => files.extend(rs_files("consumer/src")),
            Binary::Ledger => {
                let harness_main = repo::path("harness/src/main.rs");
                files.extend(rs_files("ledger-cli/src"));
                files.extend(
                    rs_files("harness/src")
                        .into_iter()
                        .filter(|file| *file != harness_main),
                );
            }
        }
        files.sort();
        files.dedup();
        files
    }

    /// The facts of this binary's source; a file that does not parse fails
    /// the test (the check would otherwise miss what it declares).
    pub fn facts(self) -> Facts {
        scan(&self.files()).unwrap_or_else(|error| panic!("scanning {}: {error}", self.name()))
    }
}

/// The `.rs` files under a directory of the workspace, recursively.
fn rs_files(relative: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo::path(relative), &mut out);
    out
}

/// Scans source files: constants first (a name may be used before, or in
/// another file than, its definition), then everything else.
pub fn scan(files: &[PathBuf]) -> Result<Facts, String> {
    let mut parsed = Vec::new();
    for file in files {
        let text =
            fs::read_to_string(file).map_err(|error| format!("{}: {error}", file.display()))?;
        let mut syntax =
            syn::parse_file(&text).map_err(|error| format!("{}: {error}", file.display()))?;
        drop_test_only(&mut syntax.items);
        parsed.push(syntax);
    }
    let mut constants = Constants::default();
    for syntax in &parsed {
        constants.visit_file(syntax);
    }
    let mut scanner = Scanner {
        constants: &constants.strings,
        facts: Facts::default(),
    };
    scanner
        .facts
        .env
        .extend(constants.env_tables.iter().cloned());
    for syntax in &parsed {
        scanner.visit_file(syntax);
    }
    Ok(scanner.facts)
}

/// Drops `#[cfg(test)]` modules and `#[test]` functions, here and in the
/// modules within, so that neither pass sees them. Module level is where
/// Rust code puts them; items declared inside function bodies are kept.
fn drop_test_only(items: &mut Vec<Item>) {
    items.retain(|item| match item {
        Item::Mod(module) => !is_test_only(&module.attrs),
        Item::Fn(function) => !is_test_only(&function.attrs),
        _ => true,
    });
    for item in items {
        if let Item::Mod(ItemMod {
            content: Some((_, inner)),
            ..
        }) = item
        {
            drop_test_only(inner);
        }
    }
}

fn is_test_only(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("test")
            || (attr.path().is_ident("cfg")
                && attr
                    .parse_args::<syn::Meta>()
                    .is_ok_and(|meta| meta.path().is_ident("test")))
    })
}

/// An environment variable's name: upper case, digits, underscores.
fn looks_like_env_name(text: &str) -> bool {
    text.len() > 1
        && text.starts_with(|c: char| c.is_ascii_uppercase())
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

#[derive(Default)]
struct Constants {
    /// `const NAME: &str = "value"`, by name.
    strings: BTreeMap<String, String>,
    /// Env-like literals of constants named `*ENV*`.
    env_tables: BTreeSet<String>,
}

impl<'ast> Visit<'ast> for Constants {
    fn visit_item_const(&mut self, item: &'ast ItemConst) {
        let name = item.ident.to_string();
        if let Expr::Lit(literal) = item.expr.as_ref() {
            if let Lit::Str(text) = &literal.lit {
                self.strings.insert(name.clone(), text.value());
            }
        }
        if name.contains("ENV") {
            let mut literals = StringLiterals::default();
            literals.visit_expr(&item.expr);
            self.env_tables.extend(
                literals
                    .0
                    .into_iter()
                    .filter(|text| looks_like_env_name(text)),
            );
        }
    }
}

#[derive(Default)]
struct StringLiterals(Vec<String>);

impl<'ast> Visit<'ast> for StringLiterals {
    fn visit_lit_str(&mut self, literal: &'ast syn::LitStr) {
        self.0.push(literal.value());
    }
}

struct Scanner<'a> {
    constants: &'a BTreeMap<String, String>,
    facts: Facts,
}

impl Scanner<'_> {
    /// A string literal, or a path whose last segment names a string const.
    fn string_of(&self, expr: &Expr) -> Option<String> {
        match expr {
            Expr::Lit(literal) => match &literal.lit {
                Lit::Str(text) => Some(text.value()),
                _ => None,
            },
            Expr::Path(path) => {
                let last = path.path.segments.last()?.ident.to_string();
                self.constants.get(&last).cloned()
            }
            Expr::Reference(reference) => self.string_of(&reference.expr),
            Expr::Paren(inner) => self.string_of(&inner.expr),
            _ => None,
        }
    }

    /// `#[arg(long, env = "NAME", default_value = "...")]` on a field.
    fn clap_argument(&mut self, attr: &Attribute) {
        if !(attr.path().is_ident("arg") || attr.path().is_ident("clap")) {
            return;
        }
        let mut env = None;
        let mut default = None;
        // Errors are ignored on purpose: an attribute this parser does not
        // understand yields no env name, and the manifests' use of that
        // name then fails loudly as "not read", which is investigated.
        let _ = attr.parse_nested_meta(|meta| {
            if meta.input.peek(syn::Token![=]) {
                let value: Expr = meta.value()?.parse()?;
                if meta.path.is_ident("env") {
                    env = self.string_of(&value);
                } else if meta.path.is_ident("default_value") {
                    default = self.string_of(&value);
                } else if meta.path.is_ident("default_value_t") {
                    if let Expr::Lit(literal) = &value {
                        default = match &literal.lit {
                            Lit::Int(number) => Some(number.base10_digits().to_owned()),
                            Lit::Float(number) => Some(number.base10_digits().to_owned()),
                            Lit::Bool(flag) => Some(flag.value.to_string()),
                            Lit::Str(text) => Some(text.value()),
                            _ => None,
                        };
                    }
                }
            } else if meta.input.peek(syn::token::Paren) {
                let content;
                syn::parenthesized!(content in meta.input);
                let _: proc_macro2::TokenStream = content.parse()?;
            }
            Ok(())
        });
        if let Some(name) = env {
            if let Some(default) = default {
                self.facts.env_defaults.insert(name.clone(), default);
            }
            self.facts.env.insert(name);
        }
    }
}

impl<'ast> Visit<'ast> for Scanner<'_> {
    fn visit_field(&mut self, field: &'ast Field) {
        for attr in &field.attrs {
            self.clap_argument(attr);
        }
        syn::visit::visit_field(self, field);
    }

    fn visit_expr_call(&mut self, call: &'ast ExprCall) {
        if let Expr::Path(function) = call.func.as_ref() {
            let segments: Vec<String> = function
                .path
                .segments
                .iter()
                .map(|segment| segment.ident.to_string())
                .collect();
            let last = segments.last().map(String::as_str).unwrap_or("");
            let reads_env = (last == "var" || last == "var_os")
                && segments.len() >= 2
                && segments[segments.len() - 2] == "env";
            if reads_env {
                if let Some(name) = call.args.first().and_then(|arg| self.string_of(arg)) {
                    self.facts.env.insert(name);
                }
            }
            if last == "from_default_env" || last == "try_from_default_env" {
                // tracing_subscriber::EnvFilter::DEFAULT_ENV.
                self.facts.env.insert("RUST_LOG".to_owned());
            }
        }
        syn::visit::visit_expr_call(self, call);
    }

    fn visit_expr_method_call(&mut self, call: &'ast ExprMethodCall) {
        if call.method == "route" {
            if let Some(Expr::Lit(literal)) = call.args.first() {
                if let Lit::Str(path) = &literal.lit {
                    self.facts.routes.insert(path.value());
                }
            }
        }
        syn::visit::visit_expr_method_call(self, call);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        let name = mac
            .path
            .segments
            .last()
            .map(|segment| segment.ident.to_string())
            .unwrap_or_default();
        let kind = match name.as_str() {
            "counter" => Some("counter"),
            "gauge" => Some("gauge"),
            "histogram" => Some("histogram"),
            _ => None,
        };
        if let Some(kind) = kind {
            let first = mac.parse_body_with(|input: syn::parse::ParseStream<'_>| {
                let first: Expr = input.parse()?;
                let _: proc_macro2::TokenStream = input.parse()?;
                Ok(first)
            });
            if let Some(metric) = first.ok().and_then(|expr| self.string_of(&expr)) {
                self.facts.metrics.insert(metric, kind);
            }
        }
        syn::visit::visit_macro(self, mac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_text(text: &str) -> Facts {
        // Removed with the directory when `dir` drops, so that test runs
        // leave nothing behind.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scanned.rs");
        fs::write(&file, text).unwrap();
        scan(std::slice::from_ref(&file)).unwrap()
    }

    #[test]
    fn finds_env_reads_of_every_documented_form() {
        let facts = scan_text(
            r#"
            pub const ENV_BOOTSTRAP: &str = "KAFKA_BOOTSTRAP_SERVERS";
            pub const SECURITY_ENV: [(&str, &str); 1] = [("KAFKA_SASL_USERNAME", "sasl.username")];
            const URLS: &str = "TXLEDGER_SHARD_URLS";
            struct Config {
                #[arg(long, env = ENV_BOOTSTRAP, default_value = "localhost:9092")]
                bootstrap: String,
                #[arg(long, env = "TXLEDGER_BATCH_MS", default_value_t = 1_000,
                      value_parser = clap::value_parser!(u64).range(1..=60_000))]
                batch_ms: u64,
            }
            fn read() {
                let _ = std::env::var(URLS);
                let _ = env::var_os("HOME");
                let _ = EnvFilter::try_from_default_env();
                let _ = cmd.env("SET_FOR_A_CHILD", "1");
            }
            #[cfg(test)]
            mod tests { fn t() { let _ = std::env::var("ONLY_IN_TESTS"); } }
            mod inner {
                #[test]
                fn t() { let _ = std::env::var("ONLY_IN_A_TEST"); }
            }
            "#,
        );
        let expected: BTreeSet<String> = [
            "KAFKA_BOOTSTRAP_SERVERS",
            "KAFKA_SASL_USERNAME",
            "TXLEDGER_BATCH_MS",
            "TXLEDGER_SHARD_URLS",
            "HOME",
            "RUST_LOG",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(facts.env, expected);
        assert_eq!(
            facts.env_defaults["KAFKA_BOOTSTRAP_SERVERS"],
            "localhost:9092"
        );
        assert_eq!(facts.env_defaults["TXLEDGER_BATCH_MS"], "1000");
    }

    #[test]
    fn finds_metric_names_and_routes() {
        let facts = scan_text(
            r#"
            const RECORDS: &str = "txledger_x_records_total";
            fn record() {
                counter!(RECORDS, "source" => "a").increment(1);
                metrics::histogram!("txledger_x_seconds").record(1.0);
                describe_counter!("txledger_x_described_only", "help");
                let app = Router::new().route("/readyz", get(ready)).route("/v1/{id}", get(one));
            }
            "#,
        );
        assert_eq!(
            facts.metrics.into_iter().collect::<Vec<_>>(),
            [
                ("txledger_x_records_total".to_owned(), "counter"),
                ("txledger_x_seconds".to_owned(), "histogram")
            ]
        );
        assert_eq!(
            facts.routes.into_iter().collect::<Vec<_>>(),
            ["/readyz", "/v1/{id}"]
        );
    }
}
