//! docker/Dockerfile and .dockerignore, checked without a container engine:
//! the targets, the locked release build, pinned Debian 12 bases, a runtime
//! with exactly the libraries the binaries link, non-root exec-form images.

// A test may keep its length when it reads as one story.
#![allow(clippy::too_many_lines)]
use std::collections::{BTreeMap, BTreeSet};

use deploy_check::{assert_no_problems, compose, note, repo, tools};

/// One instruction: keyword (upper case) and its text, continuation lines
/// joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    text: String,
}

#[derive(Debug, Clone, Default)]
struct Stage {
    base: String,
    instructions: Vec<Instruction>,
}

/// ARGs before the first FROM (their defaults), and the stages by name.
fn dockerfile() -> (BTreeMap<String, String>, BTreeMap<String, Stage>) {
    let text = repo::read("docker/Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty()
            || trimmed.is_empty() && current.is_empty()
        {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else if !trimmed.starts_with('#') {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    let mut args = BTreeMap::new();
    let mut stages: BTreeMap<String, Stage> = BTreeMap::new();
    let mut stage: Option<String> = None;
    for line in logical {
        let (keyword, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => name.to_string(),
                _ => format!("#{}", stages.len()),
            };
            stages.insert(
                name.clone(),
                Stage {
                    base: words[0].to_owned(),
                    instructions: Vec::new(),
                },
            );
            stage = Some(name);
        } else if let Some(name) = &stage {
            stages
                .get_mut(name)
                .unwrap()
                .instructions
                .push(Instruction {
                    keyword,
                    text: rest.to_owned(),
                });
        } else if keyword == "ARG" {
            if let Some((name, default)) = rest.split_once('=') {
                args.insert(name.trim().to_owned(), default.trim().to_owned());
            }
        }
    }
    (args, stages)
}

/// The instructions of a stage and the stages it is built FROM, nearest
/// first.
fn lineage<'a>(stages: &'a BTreeMap<String, Stage>, name: &str) -> Vec<&'a Stage> {
    let mut out = Vec::new();
    let mut current = stages.get(name);
    while let Some(stage) = current {
        out.push(stage);
        current = stages.get(&stage.base);
    }
    out
}

#[test]
fn both_images_are_non_root_exec_form_and_carry_their_binaries() {
    let (_, stages) = dockerfile();
    let mut problems = Vec::new();
    for (target, binaries) in [
        ("producer", vec!["producer"]),
        ("consumer", vec!["consumer", "ledger"]),
    ] {
        let Some(stage) = stages.get(target) else {
            problems.push(format!("no target {target}"));
            continue;
        };
        let chain = lineage(&stages, target);
        let user = chain
            .iter()
            .find_map(|stage| {
                stage
                    .instructions
                    .iter()
                    .rev()
                    .find(|i| i.keyword == "USER")
            })
            .map(|i| i.text.clone())
            .unwrap_or_default();
        let uid = user.split(':').next().unwrap_or("");
        if uid.parse::<u32>().map_or(true, |uid| uid == 0) {
            problems.push(format!(
                "{target}: USER {user:?} is not a numeric non-root user"
            ));
        }
        let entrypoint = stage
            .instructions
            .iter()
            .rev()
            .find(|i| i.keyword == "ENTRYPOINT");
        match entrypoint.map(|i| serde_json::from_str::<Vec<String>>(&i.text)) {
            Some(Ok(words)) if words.first().map(String::as_str) == Some(&format!("/usr/local/bin/{target}")) => {}
            other => problems.push(format!("{target}: ENTRYPOINT must be the exec form [\"/usr/local/bin/{target}\"], found {other:?}")),
        }
        let copies: String = stage
            .instructions
            .iter()
            .filter(|i| i.keyword == "COPY")
            .map(|i| i.text.clone())
            .collect::<Vec<_>>()
            .join("\n");
        for binary in binaries {
            if !copies.contains(&format!("/out/{binary}")) {
                problems.push(format!("{target}: does not copy {binary}"));
            }
        }
        if !chain
            .iter()
            .any(|stage| stage.base.contains("RUNTIME_IMAGE"))
        {
            problems.push(format!("{target}: not built on the slim runtime stage"));
        }
    }
    assert_no_problems("images", &problems);
}

#[test]
fn the_build_is_a_locked_release_of_the_three_binaries_with_cached_dependencies() {
    let (_, stages) = dockerfile();
    let runs: Vec<String> = stages
        .values()
        .flat_map(|stage| stage.instructions.iter())
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.text.clone())
        .collect();
    let packages = "-p producer -p consumer -p ledger-cli";
    assert!(
        runs.iter()
            .any(|run| run.contains(&format!("cargo build --release --locked {packages}"))),
        "no `cargo build --release --locked {packages}`"
    );
    // Dependencies cooked with the same profile and packages as the build,
    // or the cooked layer would not be reused.
    assert!(
        runs.iter()
            .any(|run| run.contains(&format!("cargo chef cook --release --locked {packages}"))),
        "no `cargo chef cook --release --locked {packages}`"
    );
    assert!(
        runs.iter().any(|run| run.contains("cargo chef prepare")),
        "no recipe"
    );
    assert!(
        runs.iter()
            .any(|run| run.contains("cargo install cargo-chef --version")
                && run.contains("--locked")),
        "cargo-chef must be a pinned version"
    );
}

#[test]
fn base_images_are_pinned_debian_12_on_both_sides() {
    let (args, stages) = dockerfile();
    let rust = args.get("RUST_IMAGE").expect("ARG RUST_IMAGE");
    let runtime = args.get("RUNTIME_IMAGE").expect("ARG RUNTIME_IMAGE");
    // rust:X.Y.Z-bookworm, debian:12.N-slim: same Debian release, so the
    // binaries' glibc requirement is met by the runtime.
    let rust_version = rust
        .strip_prefix("rust:")
        .and_then(|tag| tag.strip_suffix("-bookworm"));
    assert!(
        rust_version.is_some_and(|version| version.split('.').count() == 3
            && version.split('.').all(|part| part.parse::<u32>().is_ok())),
        "RUST_IMAGE {rust} is not rust:X.Y.Z-bookworm"
    );
    let debian = runtime
        .strip_prefix("debian:12.")
        .and_then(|rest| rest.strip_suffix("-slim"));
    assert!(
        debian.is_some_and(|minor| minor.parse::<u32>().is_ok()),
        "RUNTIME_IMAGE {runtime} is not debian:12.N-slim"
    );
    for (name, stage) in &stages {
        let pinned = stage.base.starts_with("${") || stages.contains_key(&stage.base);
        assert!(
            pinned,
            "stage {name} is FROM {}, not a pinned ARG or another stage",
            stage.base
        );
    }
}

/// Debian package of each shared library the binaries may link; libraries
/// of libc6 and libgcc-s1 are in every Debian image.
fn package_of(library: &str) -> Option<&'static str> {
    let base = [
        "linux-vdso",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
        "libpthread.so",
        "libdl.so",
        "librt.so",
    ];
    if base.iter().any(|prefix| library.starts_with(prefix)) {
        return Some("(base)");
    }
    match library {
        "libssl.so.3" | "libcrypto.so.3" => Some("libssl3"),
        "libz.so.1" => Some("zlib1g"),
        "libcurl.so.4" => Some("libcurl4"),
        "libsasl2.so.2" => Some("libsasl2-2"),
        "libzstd.so.1" => Some("libzstd1"),
        "liblz4.so.1" => Some("liblz4-1"),
        _ => None,
    }
}

#[test]
fn the_runtime_installs_exactly_what_the_binaries_link() {
    let (_, stages) = dockerfile();
    let install = stages["runtime"]
        .instructions
        .iter()
        .find(|i| i.keyword == "RUN" && i.text.contains("apt-get install"))
        .expect("the runtime installs packages")
        .text
        .clone();
    // The words after `apt-get install`, options left out, up to the next
    // command.
    let words: Vec<&str> = install.split_whitespace().collect();
    let start = words
        .windows(2)
        .position(|pair| pair == ["apt-get", "install"])
        .expect("apt-get install")
        + 2;
    let installed: BTreeSet<&str> = words[start..]
        .iter()
        .take_while(|word| **word != "&&")
        .filter(|word| !word.starts_with('-'))
        .copied()
        .collect();
    assert!(
        installed.contains("ca-certificates"),
        "TLS to Kafka needs the CA bundle"
    );
    let mut needed: BTreeSet<&str> = BTreeSet::from(["ca-certificates"]);
    let mut inspected = 0;
    for profile in ["release", "debug"] {
        for binary in ["producer", "consumer", "ledger"] {
            let path = repo::path(&format!("target/{profile}/{binary}"));
            if !path.is_file() {
                continue;
            }
            let Some(output) = tools::run("ldd", &[path.to_str().unwrap()]) else {
                continue;
            };
            inspected += 1;
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let library = line.split_whitespace().next().unwrap_or("");
                let library = library.rsplit('/').next().unwrap_or(library);
                match package_of(library) {
                    Some("(base)") => {}
                    Some(package) => {
                        needed.insert(package);
                    }
                    None => panic!("{binary} links {library}: add its Debian package to package_of and the runtime stage"),
                }
            }
        }
    }
    if inspected == 0 {
        note("SKIPPED the ldd comparison: no built producer/consumer/ledger in target/ (run cargo build first); the package list was checked as declared");
        assert_eq!(
            installed,
            BTreeSet::from(["ca-certificates", "libssl3", "zlib1g"])
        );
        return;
    }
    assert_eq!(
        installed, needed,
        "the runtime's packages differ from what the binaries link (ldd)"
    );
}

#[test]
fn dockerignore_leaves_out_output_but_keeps_every_workspace_input() {
    let text = repo::read(".dockerignore");
    let patterns: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('!'))
        .map(|line| {
            line.trim_start_matches('/')
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    for needed in ["target", ".git"] {
        assert!(
            patterns.iter().any(|p| p == needed),
            ".dockerignore must exclude {needed}/"
        );
    }
    // cargo refuses a workspace with a missing member, and every file a
    // crate embeds (include_str!, include_bytes!) must be in the context.
    let mut kept: Vec<String> = repo::workspace_members();
    kept.extend(["Cargo.toml", "Cargo.lock"].map(String::from));
    kept.extend(embedded_files());
    for path in &kept {
        for pattern in &patterns {
            let literal = !pattern.contains(['*', '?', '[']);
            let matches = if literal {
                path == pattern || path.starts_with(&format!("{pattern}/"))
            } else {
                // Only `**/NAME` and `**/*.EXT` forms are used here.
                let tail = pattern.trim_start_matches("**/");
                let name = path.rsplit('/').next().unwrap_or(path);
                match tail.strip_prefix('*') {
                    Some(extension) => name.ends_with(extension),
                    None => name == tail,
                }
            };
            assert!(
                !matches,
                ".dockerignore pattern {pattern:?} excludes {path}, which the build needs"
            );
        }
    }
}

/// The files the workspace's crates embed at compile time, relative to the
/// workspace root: `include_str!("...")` and `include_bytes!("...")` with a
/// literal path, resolved against the including file's directory.
fn embedded_files() -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                out.push(path);
            }
        }
    }
    let root = repo::root();
    let mut sources = Vec::new();
    for member in repo::workspace_members() {
        walk(&root.join(&member).join("src"), &mut sources);
    }
    let mut out = Vec::new();
    for source in sources {
        let text = std::fs::read_to_string(&source).unwrap();
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = &text[at + macro_name.len()..];
                let Some(end) = rest.find('"') else { continue };
                let embedded = source.parent().unwrap().join(&rest[..end]);
                // Normalise `..` without touching the filesystem.
                let mut parts: Vec<String> = Vec::new();
                for component in embedded
                    .strip_prefix(&root)
                    .unwrap_or(&embedded)
                    .components()
                {
                    match component {
                        std::path::Component::ParentDir => {
                            parts.pop();
                        }
                        std::path::Component::Normal(part) => {
                            parts.push(part.to_string_lossy().into_owned())
                        }
                        _ => {}
                    }
                }
                out.push(parts.join("/"));
            }
        }
    }
    out
}

#[test]
fn embedded_files_are_found() {
    let embedded = embedded_files();
    assert!(
        embedded.iter().any(|path| path == "harness/kafka/pom.xml"),
        "the harness embeds its pom.xml: {embedded:?}"
    );
}

#[test]
fn compose_builds_targets_that_exist() {
    let (_, stages) = dockerfile();
    let compose = compose::load();
    for (name, service) in compose.services() {
        if let Some(target) = service["build"]["target"].as_str() {
            assert!(
                stages.contains_key(target),
                "service {name} builds target {target}, which docker/Dockerfile lacks"
            );
        }
    }
}
