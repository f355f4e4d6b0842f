//! Finding `java` and `mvn`, and turning `kafka/pom.xml` into a classpath.
//!
//! Maven takes seconds even when every jar is cached, so its answer is kept in
//! `<cache dir>/txledger-kafka/<pom hash>/classpath.txt` and reused for as long
//! as the pom is unchanged and every listed jar still exists.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::HarnessError;

/// The pom is compiled in, so the harness works from any directory and the
/// cache key is exactly the pom the binary was built with.
const POM: &str = include_str!("../kafka/pom.xml");

/// Where the classpath cache lives unless the caller says otherwise: the
/// workspace's `target/` (so `cargo clean` clears it), honouring
/// `CARGO_TARGET_DIR` like cargo does.
pub(crate) fn default_cache_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target"),
    }
}

/// `$JAVA_HOME/bin/java` when `JAVA_HOME` is set (what CI setups expect),
/// otherwise `java` on `PATH`.
pub(crate) fn find_java() -> Result<PathBuf, HarnessError> {
    if let Some(home) = std::env::var_os("JAVA_HOME").filter(|home| !home.is_empty()) {
        let java = Path::new(&home).join("bin").join("java");
        return if java.is_file() {
            Ok(java)
        } else {
            Err(HarnessError::MissingTool {
                program: "java",
                looked_in: format!("JAVA_HOME={}", Path::new(&home).display()),
            })
        };
    }
    find_on_path("java")
}

fn find_on_path(program: &'static str) -> Result<PathBuf, HarnessError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| HarnessError::MissingTool {
            program,
            looked_in: format!("PATH={}", path.to_string_lossy()),
        })
}

/// Returns the broker's classpath, running Maven only when the cache misses.
pub(crate) fn resolve(cache_dir: &Path) -> Result<String, HarnessError> {
    let dir = cache_dir
        .join("txledger-kafka")
        .join(format!("{:016x}", fnv1a_64(POM.as_bytes())));
    let cached = dir.join("classpath.txt");
    if let Ok(classpath) = fs::read_to_string(&cached) {
        let classpath = classpath.trim();
        // A cleaned ~/.m2 leaves a cache that names missing jars: re-resolve.
        if !classpath.is_empty() && classpath.split(':').all(|jar| Path::new(jar).is_file()) {
            return Ok(classpath.to_owned());
        }
    }

    let mvn = find_on_path("mvn")?;
    fs::create_dir_all(&dir).map_err(HarnessError::io(format!("creating {}", dir.display())))?;
    let pom = dir.join("pom.xml");
    fs::write(&pom, POM).map_err(HarnessError::io(format!("writing {}", pom.display())))?;
    // A per-process name: two test binaries may resolve at the same time, and
    // the rename below makes whichever finishes last win with a whole file.
    let partial = dir.join(format!("classpath.txt.{}", std::process::id()));
    let mut command = Command::new(&mvn);
    command
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .arg("dependency:build-classpath")
        .arg(arg_with_path("-Dmdep.outputFile=", &partial))
        .stdin(Stdio::null());
    let output = command
        .output()
        .map_err(HarnessError::io(format!("running {}", mvn.display())))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(HarnessError::Maven {
            command: format!("{command:?}"),
            status: output.status,
            output: crate::process::last_lines(&text, 40),
        });
    }
    fs::rename(&partial, &cached).map_err(HarnessError::io(format!(
        "renaming {} to {}",
        partial.display(),
        cached.display()
    )))?;
    let classpath = fs::read_to_string(&cached)
        .map_err(HarnessError::io(format!("reading {}", cached.display())))?;
    Ok(classpath.trim().to_owned())
}

/// `-Dname=` followed by a path that may not be UTF-8.
pub(crate) fn arg_with_path(prefix: &str, path: &Path) -> std::ffi::OsString {
    let mut arg = OsStr::new(prefix).to_os_string();
    arg.push(path);
    arg
}

/// FNV-1a: a hash that, unlike `DefaultHasher`, is the same in every Rust
/// release, so the cache key survives toolchain updates.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        // Reference values from the FNV specification's test suite.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
