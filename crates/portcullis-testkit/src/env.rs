//! Finding optional real services from the environment, and skipping loudly when one is missing.
#![allow(clippy::panic, clippy::expect_used, reason = "test support: a failure here is a failed test")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The workspace root: the nearest ancestor of this crate whose `Cargo.toml` has `[workspace]`.
pub fn workspace_root() -> PathBuf {
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|text| text.lines().any(|line| line.trim() == "[workspace]"))
        })
        .unwrap_or(start)
        .to_path_buf()
}

/// Whether this run is CI (`CI=true` or `CI=1`), where every optional service is required.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value.eq_ignore_ascii_case("true") || value == "1")
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|value| value.trim().to_string()).filter(|value| !value.is_empty())
}

/// A Python interpreter that has the official `openai` package: `$PORTCULLIS_PYTHON` if set,
/// else `<workspace>/.venv/bin/python` (made by `scripts/test.sh`) if `import openai` works there.
pub fn openai_python() -> Option<PathBuf> {
    static VENV_PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    python_with(&VENV_PYTHON, "openai")
}

/// The same for the official `anthropic` package.
pub fn anthropic_python() -> Option<PathBuf> {
    static VENV_PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    python_with(&VENV_PYTHON, "anthropic")
}

/// `$PORTCULLIS_PYTHON`, or the workspace's `.venv` Python if it imports `module` (asked once).
fn python_with(venv_python: &OnceLock<Option<PathBuf>>, module: &str) -> Option<PathBuf> {
    if let Some(python) = non_empty_env("PORTCULLIS_PYTHON") {
        return Some(PathBuf::from(python));
    }
    venv_python
        .get_or_init(|| {
            let python = workspace_root().join(".venv/bin/python");
            let imports = python.exists()
                && Command::new(&python)
                    .args(["-c", &format!("import {module}")])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success());
            imports.then_some(python)
        })
        .clone()
}

/// `<workspace>/tests/sdk/openai_sdk_check.py`.
pub fn openai_sdk_script() -> PathBuf {
    workspace_root().join("tests/sdk/openai_sdk_check.py")
}

/// Runs `python tests/sdk/openai_sdk_check.py <scenario>` from the workspace root with `env`
/// added (`PORTCULLIS_BASE_URL`, `PORTCULLIS_KEY`, ...). The script prints one JSON line on
/// success and exits non-zero with a message on failure.
pub fn run_openai_sdk_check(python: &Path, scenario: &str, env: &[(&str, &str)]) -> Output {
    run_sdk_check(python, &openai_sdk_script(), scenario, env)
}

/// Runs `python tests/sdk/anthropic_sdk_check.py <scenario>` as [`run_openai_sdk_check`] does.
pub fn run_anthropic_sdk_check(python: &Path, scenario: &str, env: &[(&str, &str)]) -> Output {
    run_sdk_check(python, &workspace_root().join("tests/sdk/anthropic_sdk_check.py"), scenario, env)
}

fn run_sdk_check(python: &Path, script: &Path, scenario: &str, env: &[(&str, &str)]) -> Output {
    Command::new(python)
        .arg(script)
        .arg(scenario)
        .current_dir(workspace_root())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {} for scenario {scenario}: {error}", python.display()))
}

/// `$PORTCULLIS_REAL_SLM_URL` (e.g. `http://127.0.0.1:8090`, no trailing slash), if set.
pub fn real_slm_url() -> Option<String> {
    non_empty_env("PORTCULLIS_REAL_SLM_URL").map(|url| url.trim_end_matches('/').to_string())
}

/// Call when a test cannot run because `what` is missing: with `CI=true` this panics (CI must
/// provide every service); elsewhere it prints a loud line to stderr and returns, and the test
/// should then return early. The line is written straight to the process's stderr, past the
/// test harness's output capture, so it shows in `cargo test` output even when the test passes.
///
/// ```no_run
/// let Some(url) = portcullis_testkit::real_slm_url() else {
///     return portcullis_testkit::skip_or_fail("real SLM", "PORTCULLIS_REAL_SLM_URL is not set");
/// };
/// # let _ = url;
/// ```
pub fn skip_or_fail(what: &str, why: &str) {
    if in_ci() {
        panic!("{what} is required in CI (CI=true) but unavailable: {why}");
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("\n!!!!!!!! SKIPPED (missing service): {what}: {why} [test {test}] !!!!!!!!\n");
    // Not eprintln!: the harness captures that for passing tests, and a skip must be seen.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// A TCP port on 127.0.0.1 that was free a moment ago (nothing listens on it), for endpoints
/// that must refuse connections.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address of a bound listener").port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let root = workspace_root();
        assert!(root.join("crates/portcullis-testkit/Cargo.toml").exists(), "{}", root.display());
    }

    #[test]
    fn free_port_refuses_connections() {
        let port = free_port();
        assert_ne!(port, 0);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
