//! [`Gateway`]: the real `portcullis` binary, spawned on free ports with a temporary directory
//! holding its configuration, SQLite store, ready file and log.
//!
//! ```text
//! <tempdir>/portcullis.toml   [server] [admin] [store] written here, then the test's fragment
//! <tempdir>/portcullis.db     the SQLite store
//! <tempdir>/ready.json        {"proxy":"127.0.0.1:P","admin":"127.0.0.1:Q"}, written by the binary
//! <tempdir>/gateway.log       stdout and stderr of every run, appended
//! ```
#![allow(clippy::panic, clippy::expect_used, reason = "test support: a failure here is a failed test")]

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;

const CONFIG_FILE: &str = "portcullis.toml";
const READY_FILE: &str = "ready.json";
const LOG_FILE: &str = "gateway.log";
const DB_FILE: &str = "portcullis.db";
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Gateway::restart`] lets a running gateway shut down on SIGTERM before SIGKILL.
const RESTART_GRACE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);

/// Why a gateway could not be started.
#[derive(Debug)]
pub enum GatewayError {
    /// Preparing the directory or spawning the process failed.
    Io { action: String, source: std::io::Error },
    /// The process exited before it wrote its ready file.
    Exited { status: ExitStatus, log_tail: String },
    /// No valid ready file appeared in time (the process has been killed).
    NotReady { waited: Duration, log_tail: String },
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayError::Io { action, source } => write!(f, "{action}: {source}"),
            GatewayError::Exited { status, log_tail } => {
                write!(f, "portcullis exited ({status}) before it was ready; log tail:\n{log_tail}")
            }
            GatewayError::NotReady { waited, log_tail } => {
                write!(f, "portcullis wrote no valid ready file within {waited:?}; log tail:\n{log_tail}")
            }
        }
    }
}

impl std::error::Error for GatewayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GatewayError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> GatewayError {
    let action = action.into();
    move |source| GatewayError::Io { action, source }
}

/// Builds a [`Gateway`]: `GatewayBuilder::new(env!("CARGO_BIN_EXE_portcullis")).config(..).start().await`.
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    binary: PathBuf,
    server_settings: Vec<String>,
    admin_listen: String,
    admin_settings: Vec<String>,
    store_url: Option<String>,
    store_settings: Vec<String>,
    fragments: Vec<String>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    admin_token: Option<String>,
    ready_timeout: Duration,
}

impl GatewayBuilder {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            server_settings: Vec::new(),
            admin_listen: "127.0.0.1:0".to_string(),
            admin_settings: Vec::new(),
            store_url: None,
            store_settings: Vec::new(),
            fragments: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
            admin_token: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// TOML appended after the `[server]`, `[admin]` and `[store]` tables the builder writes
    /// (`[[models]]`, `[tiers.*]`, `[limits]`, `[audit]`...). May be called more than once.
    pub fn config(mut self, toml_fragment: &str) -> Self {
        self.fragments.push(toml_fragment.to_string());
        self
    }

    /// One more `key = value` line inside `[server]`, e.g. `"max_body_bytes = 1024"`.
    pub fn server_setting(mut self, line: &str) -> Self {
        self.server_settings.push(line.to_string());
        self
    }

    /// The admin listener's address (default `127.0.0.1:0`).
    pub fn admin_listen(mut self, addr: &str) -> Self {
        self.admin_listen = addr.to_string();
        self
    }

    /// One more `key = value` line inside `[admin]`, e.g. `"max_connections = 8"`.
    pub fn admin_setting(mut self, line: &str) -> Self {
        self.admin_settings.push(line.to_string());
        self
    }

    /// Replaces the store URL (default `sqlite://<tempdir>/portcullis.db`), e.g. with PostgreSQL.
    pub fn store_url(mut self, url: &str) -> Self {
        self.store_url = Some(url.to_string());
        self
    }

    /// One more `key = value` line inside `[store]`, e.g. `"change_poll = \"1s\""`.
    pub fn store_setting(mut self, line: &str) -> Self {
        self.store_settings.push(line.to_string());
        self
    }

    /// An environment variable for the gateway process (and for [`Gateway::cli`]).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// An extra argument after `serve --config .. --ready-file .. --log-format json`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Uses this bootstrap admin token instead of a generated `pct_bootstrap_...` one.
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// How long to wait for the ready file (default 10 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Writes the configuration, spawns `portcullis serve` and waits until it is ready.
    ///
    /// # Panics
    /// When it cannot start; the message carries the tail of the gateway's log.
    pub async fn start(self) -> Gateway {
        match self.try_start().await {
            Ok(gateway) => gateway,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`GatewayBuilder::start`], returning the failure instead of panicking.
    pub async fn try_start(self) -> Result<Gateway, GatewayError> {
        let dir = tempfile::Builder::new().prefix("portcullis-test-").tempdir().map_err(io_error("create temp dir"))?;
        let db_path = dir.path().join(DB_FILE);
        let store_url = self.store_url.clone().unwrap_or_else(|| format!("sqlite://{}", db_path.display()));
        let store = Store { url: &store_url, settings: &self.store_settings };
        let admin = Admin { listen: &self.admin_listen, settings: &self.admin_settings };
        let config = render_config(&self.server_settings, &admin, &store, &self.fragments);
        let config_path = dir.path().join(CONFIG_FILE);
        fs::write(&config_path, config).map_err(io_error(format!("write {}", config_path.display())))?;
        let admin_token = match self.admin_token {
            Some(token) => token,
            None => bootstrap_token().map_err(io_error("read /dev/urandom"))?,
        };
        let mut gateway = Gateway {
            binary: self.binary,
            dir,
            env: self.env,
            args: self.args,
            admin_token,
            ready_timeout: self.ready_timeout,
            child: None,
            proxy: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            authz: None,
        };
        gateway.launch().await?;
        Ok(gateway)
    }
}

fn toml_string(value: &str) -> String {
    // A TOML basic string is a JSON string for everything a path or URL contains.
    serde_json::to_string(value).unwrap_or_else(|_| format!("\"{value}\""))
}

/// The `[store]` table's contents.
struct Store<'a> {
    url: &'a str,
    settings: &'a [String],
}

struct Admin<'a> {
    listen: &'a str,
    settings: &'a [String],
}

fn render_config(server_settings: &[String], admin: &Admin<'_>, store: &Store<'_>, fragments: &[String]) -> String {
    let mut text = String::from("# written by portcullis-testkit\n[server]\nlisten = \"127.0.0.1:0\"\n");
    for line in server_settings {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("\n[admin]\nlisten = ");
    text.push_str(&toml_string(admin.listen));
    text.push('\n');
    for line in admin.settings {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("\n[store]\nurl = ");
    text.push_str(&toml_string(store.url));
    text.push('\n');
    for line in store.settings {
        text.push_str(line);
        text.push('\n');
    }
    for fragment in fragments {
        text.push('\n');
        text.push_str(fragment);
        text.push('\n');
    }
    text
}

/// `pct_bootstrap_` and 26 random base62 characters: 40 characters in all.
fn bootstrap_token() -> std::io::Result<String> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut urandom = fs::File::open("/dev/urandom")?;
    let mut token = String::from("pct_bootstrap_");
    let mut buffer = [0u8; 64];
    while token.len() < 40 {
        urandom.read_exact(&mut buffer)?;
        // 248 = 4 × 62: rejecting the rest keeps every character equally likely.
        for byte in buffer.iter().filter(|byte| **byte < 248) {
            if token.len() < 40 {
                token.push(char::from(ALPHABET[usize::from(*byte % 62)]));
            }
        }
    }
    Ok(token)
}

/// Spawns, retrying briefly on "text file busy": a binary written a moment ago can still be open
/// for writing in a child forked by another test thread that has not reached `exec` yet.
async fn spawn_retrying_busy(command: &mut Command) -> std::io::Result<Child> {
    const ETXTBSY: i32 = 26;
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(error) if error.raw_os_error() == Some(ETXTBSY) && attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ReadyFile {
    proxy: SocketAddr,
    admin: SocketAddr,
    /// Only when `authz.listen` is set.
    #[serde(default)]
    authz: Option<SocketAddr>,
}

/// A running `portcullis serve`. Dropping it kills the process (SIGKILL if it still runs).
#[derive(Debug)]
pub struct Gateway {
    binary: PathBuf,
    dir: TempDir,
    env: Vec<(String, String)>,
    args: Vec<String>,
    admin_token: String,
    ready_timeout: Duration,
    child: Option<Child>,
    proxy: SocketAddr,
    admin: SocketAddr,
    authz: Option<SocketAddr>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Gateway {
    /// Shorthand for [`GatewayBuilder::new`].
    pub fn builder(binary: impl Into<PathBuf>) -> GatewayBuilder {
        GatewayBuilder::new(binary)
    }

    /// Spawns the process into the existing directory and waits for a fresh ready file.
    async fn launch(&mut self) -> Result<(), GatewayError> {
        let ready_path = self.ready_path();
        match fs::remove_file(&ready_path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(format!("remove {}", ready_path.display()))(error)),
        }
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error(format!("open {}", log_path.display())))?;
        let log_err = log.try_clone().map_err(io_error("clone the log handle"))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .arg("--ready-file")
            .arg(&ready_path)
            .arg("--log-format")
            .arg("json")
            .args(&self.args)
            .current_dir(self.dir.path())
            .env("PORTCULLIS_ADMIN_TOKEN", &self.admin_token)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child =
            spawn_retrying_busy(&mut command).await.map_err(io_error(format!("spawn {}", self.binary.display())))?;
        self.child = Some(child);

        let started = Instant::now();
        loop {
            if let Some(ready) =
                fs::read(&ready_path).ok().and_then(|bytes| serde_json::from_slice::<ReadyFile>(&bytes).ok())
            {
                self.proxy = ready.proxy;
                self.admin = ready.admin;
                self.authz = ready.authz;
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                return Err(GatewayError::Exited { status, log_tail: self.log_tail(40) });
            }
            if started.elapsed() >= self.ready_timeout {
                if let Some(child) = self.child.as_mut() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(GatewayError::NotReady { waited: self.ready_timeout, log_tail: self.log_tail(40) });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy listener (append `/v1/...`).
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// `http://127.0.0.1:PORT/v1`, the `base_url` for OpenAI SDKs.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.proxy)
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }

    /// The authorizer's address; panics unless the config set `[authz] listen`.
    pub fn authz_addr(&self) -> SocketAddr {
        self.authz.expect("the gateway was started without [authz] listen")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The bootstrap admin token given in `PORTCULLIS_ADMIN_TOKEN`.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The temporary directory (also the process's working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the configuration is; rewrite it, then `signal("HUP")` to test reloads.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join(CONFIG_FILE)
    }

    /// The SQLite file of the default store URL.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join(DB_FILE)
    }

    pub fn ready_path(&self) -> PathBuf {
        self.dir.path().join(READY_FILE)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// Everything the gateway wrote to stdout and stderr so far, across restarts.
    pub fn log_text(&self) -> String {
        fs::read(self.log_path()).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The current process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("the gateway has a process")
    }

    /// Runs the same binary as a CLI client of this gateway (`PORTCULLIS_ADMIN_URL` and
    /// `PORTCULLIS_ADMIN_TOKEN` set), in the temp dir, and returns what it did.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .args(args)
            .current_dir(self.dir.path())
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .env("PORTCULLIS_ADMIN_URL", self.admin_url())
            .env("PORTCULLIS_ADMIN_TOKEN", &self.admin_token)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {} {args:?}: {error}", self.binary.display()))
    }

    /// [`Gateway::cli`] with `--json`; panics unless it succeeds and prints JSON.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let output = self.cli(&all);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "`portcullis {}` failed ({}):\n{stderr}{stdout}",
            all.join(" "),
            output.status
        );
        serde_json::from_str(&stdout).unwrap_or_else(|error| {
            panic!("`portcullis {}` printed no JSON ({error}):\n{stdout}\nstderr:\n{stderr}", all.join(" "))
        })
    }

    /// `keys create <args> --json` (a `--name` is added when `args` has none); returns `(id, secret)`.
    pub fn create_key(&self, args: &[&str]) -> (String, String) {
        let name = format!("test-key-{}", std::process::id());
        let mut all = vec!["keys", "create"];
        all.extend_from_slice(args);
        if !args.iter().any(|arg| *arg == "--name" || arg.starts_with("--name=")) {
            all.extend_from_slice(&["--name", &name]);
        }
        let created = self.cli_json(&all);
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| created.get(*name).and_then(Value::as_str))
                .map(str::to_string)
                .unwrap_or_else(|| panic!("`keys create` printed no {names:?}: {created}"))
        };
        (field(&["id"]), field(&["key", "secret"]))
    }

    /// Sends a signal with the `kill` command: `"TERM"`, `"-TERM"`, `"SIGHUP"`, `"KILL"`...
    pub fn signal(&self, signal: &str) {
        let name = signal.trim_start_matches('-');
        let name = name.strip_prefix("SIG").unwrap_or(name);
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|error| panic!("cannot run kill: {error}"));
        assert!(status.success(), "kill -{name} {} failed ({status})", self.pid());
    }

    /// Waits for the process to exit; `None` if it still runs after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().ok().flatten() {
                return Some(status);
            }
            if started.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGTERM, then waits up to `timeout`; SIGKILL if it is still running then.
    /// Returns the exit status when it ended by itself.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if !self.is_running() {
            return self.wait_exit(Duration::ZERO).await;
        }
        self.signal("TERM");
        let status = self.wait_exit(timeout).await;
        if status.is_none()
            && let Some(child) = self.child.as_mut()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }

    /// Stops the gateway if it runs (SIGTERM, SIGKILL after 15 s) and starts it again with the
    /// same directory, configuration file (as it is now) and token; the ports may change.
    ///
    /// # Panics
    /// When it does not come back; the message carries the tail of the log.
    pub async fn restart(&mut self) {
        if let Err(error) = self.try_restart().await {
            panic!("{error}");
        }
    }

    /// Like [`Gateway::restart`], returning the failure instead of panicking.
    pub async fn try_restart(&mut self) -> Result<(), GatewayError> {
        self.terminate(RESTART_GRACE).await;
        self.launch().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tokens_are_40_random_base62_characters() {
        let one = bootstrap_token().unwrap();
        let two = bootstrap_token().unwrap();
        assert_eq!(one.len(), 40);
        assert!(one.starts_with("pct_bootstrap_"));
        assert!(one["pct_bootstrap_".len()..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(one, two);
    }

    #[test]
    fn config_puts_both_listeners_on_port_zero_and_appends_fragments() {
        let text = render_config(
            &["max_body_bytes = 10".to_string()],
            &Admin { listen: "127.0.0.1:0", settings: &["max_connections = 9".to_string()] },
            &Store { url: "sqlite:///tmp/x y/portcullis.db", settings: &["pool_size = 2".to_string()] },
            &["[[models]]\nname = \"m\"\nendpoints = [\"http://127.0.0.1:1\"]".to_string()],
        );
        assert!(text.contains("[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 10\n"), "{text}");
        assert!(text.contains("[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = 9\n"), "{text}");
        assert!(text.contains("[store]\nurl = \"sqlite:///tmp/x y/portcullis.db\"\npool_size = 2\n"), "{text}");
        assert!(text.trim_end().ends_with("endpoints = [\"http://127.0.0.1:1\"]"), "{text}");
    }

    /// Writes an executable shell script standing in for the binary.
    fn fake_binary(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-portcullis");
        fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn a_binary_that_exits_early_fails_with_its_log() {
        // `false` ignores its arguments and exits 1 without writing a ready file.
        let error = GatewayBuilder::new("false").try_start().await.unwrap_err();
        assert!(matches!(error, GatewayError::Exited { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_binary_that_never_gets_ready_times_out() {
        let script_dir = tempfile::tempdir().unwrap();
        let script = fake_binary(script_dir.path(), "echo starting up\nexec sleep 30\n");
        let error =
            GatewayBuilder::new(&script).ready_timeout(Duration::from_millis(300)).try_start().await.unwrap_err();
        match error {
            GatewayError::NotReady { log_tail, .. } => assert!(log_tail.contains("starting up"), "{log_tail}"),
            other => panic!("expected NotReady, got {other}"),
        }
    }

    #[tokio::test]
    async fn a_fake_binary_that_writes_the_ready_file_is_started_signalled_and_restarted() {
        // A shell script standing in for the binary: it writes the ready file and waits.
        let script_dir = tempfile::tempdir().unwrap();
        let script = fake_binary(
            script_dir.path(),
            "if [ \"$1\" != serve ]; then echo \"{\\\"id\\\":\\\"key_1\\\",\\\"key\\\":\\\"pcl_x\\\"}\"; exit 0; fi\n\
             echo \"token=$PORTCULLIS_ADMIN_TOKEN\"\n\
             printf '{\"proxy\":\"127.0.0.1:1111\",\"admin\":\"127.0.0.1:2222\"}' > \"$5\"\n\
             trap 'echo got-term; exit 0' TERM\n\
             while :; do sleep 0.05; done\n",
        );

        let mut gateway = GatewayBuilder::new(&script).start().await;
        assert_eq!(gateway.proxy_url(), "http://127.0.0.1:1111");
        assert_eq!(gateway.admin_url(), "http://127.0.0.1:2222");
        assert!(gateway.log_text().contains(&format!("token={}", gateway.admin_token())));
        assert!(fs::read_to_string(gateway.config_path()).unwrap().contains("[store]"));

        let (id, secret) = gateway.create_key(&["--tier", "free"]);
        assert_eq!((id.as_str(), secret.as_str()), ("key_1", "pcl_x"));

        let first_pid = gateway.pid();
        gateway.restart().await;
        assert_ne!(gateway.pid(), first_pid);
        assert!(gateway.log_text().contains("got-term"));

        gateway.signal("-TERM");
        assert!(gateway.wait_exit(Duration::from_secs(5)).await.unwrap().success());
    }
}
