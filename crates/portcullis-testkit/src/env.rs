//! Finding optional real services from the environment, and skipping loudly when one is missing.
#![allow(clippy::panic, clippy::expect_used, reason = "test support: a failure here is a failed test")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

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

/// The scripts under `<workspace>/tests/sdk/` that drive the gateway with an official SDK.
#[derive(Clone, Copy, Debug)]
pub enum SdkScript {
    /// `openai_sdk_check.py`: chat, streams, embeddings, models, error classes, faults.
    OpenAi,
    /// `openai_responses_check.py`: `responses.create`, stored responses, error classes.
    OpenAiResponses,
    /// `anthropic_sdk_check.py`: messages, streams, count_tokens, error classes.
    Anthropic,
}

impl SdkScript {
    fn file(self) -> &'static str {
        match self {
            SdkScript::OpenAi => "openai_sdk_check.py",
            SdkScript::OpenAiResponses => "openai_responses_check.py",
            SdkScript::Anthropic => "anthropic_sdk_check.py",
        }
    }

    fn sdk(self) -> &'static str {
        match self {
            SdkScript::OpenAi | SdkScript::OpenAiResponses => "openai",
            SdkScript::Anthropic => "anthropic",
        }
    }

    /// A Python that imports this script's SDK: `$PORTCULLIS_PYTHON` if set, else
    /// `<workspace>/.venv/bin/python` (made by `scripts/test.sh`) if the import works there.
    fn python(self) -> Option<PathBuf> {
        // One answer per SDK: asking the venv takes a Python start-up.
        static OPENAI: OnceLock<Option<PathBuf>> = OnceLock::new();
        static ANTHROPIC: OnceLock<Option<PathBuf>> = OnceLock::new();
        let venv_python = match self {
            SdkScript::OpenAi | SdkScript::OpenAiResponses => &OPENAI,
            SdkScript::Anthropic => &ANTHROPIC,
        };
        python_with(venv_python, self.sdk())
    }
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

/// An SDK check script and a Python that can run it.
#[derive(Clone, Debug)]
pub struct SdkCheck {
    python: PathBuf,
    script: SdkScript,
}

impl SdkCheck {
    /// `script` with a Python that has its SDK, or `None` after [`skip_or_fail`] when there is
    /// no such Python.
    pub fn or_skip(script: SdkScript) -> Option<SdkCheck> {
        let Some(python) = script.python() else {
            let sdk = script.sdk();
            skip_or_fail(
                &format!("Python {sdk} SDK"),
                &format!("no .venv with {sdk} (run scripts/test.sh) and PORTCULLIS_PYTHON unset"),
            );
            return None;
        };
        Some(SdkCheck { python, script })
    }

    /// Runs `python tests/sdk/<script> <scenario>` from the workspace root with `env` added
    /// (`PORTCULLIS_BASE_URL`, `PORTCULLIS_KEY`, ...) and returns the one JSON line it prints on
    /// success; a failed check fails the test with the script's own words.
    pub fn run(&self, scenario: &str, env: &[(&str, &str)]) -> Value {
        let output = Command::new(&self.python)
            .arg(workspace_root().join("tests/sdk").join(self.script.file()))
            .arg(scenario)
            .current_dir(workspace_root())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {} for scenario {scenario}: {error}", self.python.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "SDK scenario {scenario} failed:\n{}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(stdout.trim().lines().last().unwrap_or_default())
            .unwrap_or_else(|error| panic!("scenario {scenario} printed no JSON ({error}): {stdout}"))
    }
}

/// `$PORTCULLIS_REAL_SLM_URL` (e.g. `http://127.0.0.1:8090`, no trailing slash), if set.
pub fn real_slm_url() -> Option<String> {
    non_empty_env("PORTCULLIS_REAL_SLM_URL").map(|url| url.trim_end_matches('/').to_string())
}

/// [`real_slm_url`], or `None` after [`skip_or_fail`] when it is not set.
pub fn real_slm_url_or_skip() -> Option<String> {
    let url = real_slm_url();
    if url.is_none() {
        skip_or_fail("real small model", "PORTCULLIS_REAL_SLM_URL is not set (scripts/real-slm.sh start)");
    }
    url
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
