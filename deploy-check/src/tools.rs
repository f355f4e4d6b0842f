//! External tools that validate a file better than a parser here can, run
//! when installed. A missing tool is never a silent pass: the test prints a
//! note saying what was not checked and how to install it.

use std::io::ErrorKind;
use std::process::{Command, Output};

use crate::repo;

/// Runs `program args...` in the workspace root. `None` when the program is
/// not installed.
pub fn run(program: &str, args: &[&str]) -> Option<Output> {
    match Command::new(program)
        .args(args)
        .current_dir(repo::root())
        .output()
    {
        Ok(output) => Some(output),
        Err(error) if error.kind() == ErrorKind::NotFound => None,
        Err(error) => panic!("running {program}: {error}"),
    }
}

/// stdout and stderr together, for failure messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// How to run Docker Compose here: the `docker compose` plugin of Compose v2
/// or later, or `None`. The standalone `docker-compose` is never used: its
/// 1.x releases (Debian's `docker-compose` package) predate the Compose
/// Specification and reject valid files, such as one with a top-level `name`.
pub fn compose_command() -> Option<Vec<&'static str>> {
    let output = run("docker", &["compose", "version", "--short"])?;
    if !output.status.success() {
        return None;
    }
    let version = String::from_utf8_lossy(&output.stdout);
    let major = version.trim().trim_start_matches('v').split('.').next()?;
    (major.parse::<u32>().ok()? >= 2).then(|| vec!["docker", "compose"])
}
