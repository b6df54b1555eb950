//! [`WebGateway`]: a real nginx or Caddy, run from the configuration shipped in `examples/`, in
//! front of a model server and asking a Portcullis authorizer about every request.
//!
//! The shipped file is used as it is: only the three addresses it leaves open (`${LISTEN}`,
//! `${AUTHZ}`, `${UPSTREAM}`) are filled — by substitution for nginx (what `envsubst` does in
//! the docs), from the environment for Caddy (which reads `{$LISTEN}` itself).
//!
//! ```text
//! <tempdir>/nginx.conf or Caddyfile   the example, as run
//! <tempdir>/gateway.log               the server's stdout and stderr
//! <tempdir>/...                       nginx's temp directories and access.log; Caddy's data
//! ```
#![allow(clippy::panic, clippy::expect_used, reason = "test support: a failure here is a failed test")]

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::env::{free_port, skip_or_fail, workspace_root};

const LOG_FILE: &str = "gateway.log";
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// Which web server, and where its example and binary are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebServer {
    Nginx,
    Caddy,
}

impl WebServer {
    pub fn name(self) -> &'static str {
        match self {
            WebServer::Nginx => "nginx",
            WebServer::Caddy => "caddy",
        }
    }

    /// The shipped example, from the workspace root.
    pub fn example(self) -> PathBuf {
        workspace_root().join(match self {
            WebServer::Nginx => "examples/nginx/nginx.conf",
            WebServer::Caddy => "examples/caddy/Caddyfile",
        })
    }

    /// The server's binary: on `PATH`, else where Debian installs it.
    pub fn binary(self) -> Option<PathBuf> {
        let (name, debian) = match self {
            WebServer::Nginx => ("nginx", "/usr/sbin/nginx"),
            WebServer::Caddy => ("caddy", "/usr/bin/caddy"),
        };
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(name))
            .chain([PathBuf::from(debian)])
            .find(|path| path.is_file())
    }
}

/// `text` with each `${NAME}` of `values` replaced, as `envsubst '${NAME} …'` does.
pub fn fill_in(text: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(text.to_string(), |text, (name, value)| text.replace(&format!("${{{name}}}"), value))
}

/// A running nginx or Caddy; stopped (with its workers) when dropped.
#[derive(Debug)]
pub struct WebGateway {
    server: WebServer,
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl WebGateway {
    /// The server's shipped example in front of `upstream`, asking the authorizer at `authz`;
    /// `None` (after a loud skip, or a failure with `CI=true`) when the server is not installed.
    pub async fn start_or_skip(server: WebServer, authz: SocketAddr, upstream: SocketAddr) -> Option<WebGateway> {
        let Some(binary) = server.binary() else {
            skip_or_fail(server.name(), "not installed (Debian: apt-get install nginx-light caddy)");
            return None;
        };
        Some(WebGateway::start(server, &binary, authz, upstream).await)
    }

    async fn start(server: WebServer, binary: &Path, authz: SocketAddr, upstream: SocketAddr) -> WebGateway {
        let dir = tempfile::Builder::new().prefix("portcullis-web-gateway-").tempdir().expect("create a temp dir");
        // nginx started as root runs its workers as nobody, who must reach the files here.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("open the temp dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (listen, authz, upstream) = (addr.to_string(), authz.to_string(), upstream.to_string());
        let example = fs::read_to_string(server.example()).expect("read the shipped example");
        let log = File::create(dir.path().join(LOG_FILE)).expect("create the log file");
        let mut command = match server {
            WebServer::Nginx => {
                let config = dir.path().join("nginx.conf");
                let filled = fill_in(&example, &[("LISTEN", &listen), ("AUTHZ", &authz), ("UPSTREAM", &upstream)]);
                fs::write(&config, filled).expect("write nginx.conf");
                let globals = format!("daemon off; pid {};", dir.path().join("nginx.pid").display());
                let mut command = Command::new(binary);
                command.arg("-p").arg(dir.path()).arg("-c").arg(&config).arg("-g").arg(globals);
                command
            }
            WebServer::Caddy => {
                let config = dir.path().join("Caddyfile");
                fs::write(&config, example).expect("write the Caddyfile");
                let mut command = Command::new(binary);
                command.args(["run", "--adapter", "caddyfile", "--config"]).arg(&config);
                command.envs([("LISTEN", &listen), ("AUTHZ", &authz), ("UPSTREAM", &upstream)]);
                // Caddy keeps its state under the home and XDG directories: here, not the user's.
                for var in ["HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"] {
                    command.env(var, dir.path());
                }
                command
            }
        };
        let stderr = log.try_clone().expect("clone the log file");
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", binary.display()));
        let mut gateway = WebGateway { server, child, addr, dir };
        gateway.wait_until_listening().await;
        gateway
    }

    async fn wait_until_listening(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) during start-up; log:\n{}", self.server.name(), self.log_text());
            }
            if TcpStream::connect_timeout(&self.addr, POLL).is_ok() {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "{} did not listen on {} within {READY_TIMEOUT:?}; log:\n{}",
                self.server.name(),
                self.addr,
                self.log_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn server(&self) -> WebServer {
        self.server
    }

    /// `http://127.0.0.1:PORT`: where clients send their requests.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the server wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.path().join(LOG_FILE)).unwrap_or_default()
    }
}

impl Drop for WebGateway {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master stops its workers only when asked.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let started = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && started.elapsed() < STOP_TIMEOUT {
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_in_replaces_exactly_the_named_variables() {
        let text = "listen ${LISTEN}; proxy_pass http://${UPSTREAM}; set $x ${OTHER};";
        let filled = fill_in(text, &[("LISTEN", "127.0.0.1:1"), ("UPSTREAM", "127.0.0.1:2")]);
        assert_eq!(filled, "listen 127.0.0.1:1; proxy_pass http://127.0.0.1:2; set $x ${OTHER};");
    }

    #[test]
    fn every_shipped_example_names_the_three_addresses() {
        for (server, form) in [(WebServer::Nginx, "${NAME}"), (WebServer::Caddy, "{$NAME}")] {
            let text = fs::read_to_string(server.example()).expect("read the example");
            for name in ["LISTEN", "AUTHZ", "UPSTREAM"] {
                assert!(text.contains(&form.replace("NAME", name)), "{server:?} example lacks {name}");
            }
        }
    }
}
