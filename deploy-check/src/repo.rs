//! The workspace's paths and the facts the checks compare against.

use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root (this crate's parent directory).
pub fn root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("deploy-check lives one level below the workspace root")
        .to_path_buf()
}

/// A path relative to the workspace root.
pub fn path(relative: &str) -> PathBuf {
    root().join(relative)
}

/// A file's text; a missing file fails the test with its name.
pub fn read(relative: &str) -> String {
    let path = path(relative);
    fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// The files directly in `relative` (not recursive) whose names end with one
/// of `extensions`, sorted by name: the order `kubectl apply -f DIR` uses.
pub fn files_in(relative: &str, extensions: &[&str]) -> Vec<String> {
    let dir = path(relative);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("listing {}: {error}", dir.display()))
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| extensions.iter().any(|extension| name.ends_with(extension)))
        .collect();
    names.sort();
    names
}

fn root_manifest() -> toml::Table {
    read("Cargo.toml")
        .parse()
        .expect("the root Cargo.toml is valid TOML")
}

/// `[workspace.package] version`: the tag of the images the manifests run.
pub fn workspace_version() -> String {
    root_manifest()["workspace"]["package"]["version"]
        .as_str()
        .expect("[workspace.package] version is a string")
        .to_owned()
}

/// `[workspace] members`.
pub fn workspace_members() -> Vec<String> {
    root_manifest()["workspace"]["members"]
        .as_array()
        .expect("[workspace] members is an array")
        .iter()
        .map(|member| member.as_str().expect("a member is a string").to_owned())
        .collect()
}

/// The Kafka version the test harness runs (`<kafka.version>` in
/// harness/kafka/pom.xml): compose, the manifests and CI must run the same.
pub fn harness_kafka_version() -> String {
    let pom = read("harness/kafka/pom.xml");
    let start = pom
        .find("<kafka.version>")
        .expect("harness/kafka/pom.xml pins <kafka.version>")
        + "<kafka.version>".len();
    let end = start
        + pom[start..]
            .find("</kafka.version>")
            .expect("<kafka.version> is closed");
    pom[start..end].trim().to_owned()
}
