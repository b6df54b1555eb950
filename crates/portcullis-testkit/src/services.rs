#![allow(clippy::panic, clippy::expect_used, reason = "test support: a failure here is a failed test")]

//! The data services fleet tests need: PostgreSQL and Redis, found on the machine.
//!
//! Each test gets its own PostgreSQL database (dropped again when the [`PostgresDatabase`] is) and
//! should use its own Redis key prefix ([`unique_name`]), so tests run in parallel against one
//! shared server without seeing each other's rows or counters.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::env::skip_or_fail;

/// Server-level PostgreSQL URL: `PORTCULLIS_TEST_POSTGRES_URL`, default the machine's
/// `postgres://root@127.0.0.1:5432/test`.
pub fn postgres_url() -> String {
    std::env::var("PORTCULLIS_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// Redis URL: `PORTCULLIS_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name no other test (in this or another process) uses: `prefix_<pid>_<nanos>_<n>`, lowercase.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{nanos}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Redis at [`redis_url`] if it accepts connections; otherwise skips loudly (fails with `CI=true`)
/// and returns `None`.
pub fn redis_or_skip() -> Option<String> {
    let url = redis_url();
    match reachable(&url) {
        Ok(()) => Some(url),
        Err(why) => {
            skip_or_fail("Redis", &format!("{url}: {why}"));
            None
        }
    }
}

/// A fresh, empty database on the PostgreSQL server at [`postgres_url`], dropped with the value.
#[derive(Debug)]
pub struct PostgresDatabase {
    server_url: String,
    name: String,
    url: String,
}

impl PostgresDatabase {
    /// Creates the database, or skips loudly (fails with `CI=true`) and returns `None` when the
    /// server cannot be reached.
    pub async fn create_or_skip() -> Option<PostgresDatabase> {
        let server_url = postgres_url();
        let name = unique_name("pcl_test");
        match create_database(&server_url, &name).await {
            Ok(()) => {
                let url = with_database(&server_url, &name);
                Some(PostgresDatabase { server_url, name, url })
            }
            Err(why) => {
                skip_or_fail("PostgreSQL", &format!("{server_url}: {why}"));
                None
            }
        }
    }

    /// URL of the fresh database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let server_url = self.server_url.clone();
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop may run inside a runtime, which cannot block on another: use a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&server_url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(connection);
                client.batch_execute(&statement).await.ok()
            })
        });
        let _ = dropped.join();
    }
}

async fn create_database(server_url: &str, name: &str) -> Result<(), String> {
    reachable(server_url)?;
    let (client, connection) =
        tokio_postgres::connect(server_url, tokio_postgres::NoTls).await.map_err(|err| err.to_string())?;
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.map_err(|err| err.to_string())
}

/// `server_url` with its database path replaced by `name`.
fn with_database(server_url: &str, name: &str) -> String {
    match url::Url::parse(server_url) {
        Ok(mut url) => {
            url.set_path(name);
            url.to_string()
        }
        Err(_) => server_url.to_string(),
    }
}

/// A quick TCP check, so a missing service costs a second, not a client library's long retry.
fn reachable(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|err| format!("bad URL: {err}"))?;
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let port = parsed.port_or_known_default().unwrap_or(match parsed.scheme() {
        "redis" => 6379,
        _ => 5432,
    });
    let address = (host, port)
        .to_socket_addrs()
        .map_err(|err| err.to_string())?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    TcpStream::connect_timeout(&address, Duration::from_secs(1)).map(drop).map_err(|err| err.to_string())
}

/// A `redis-server` of the test's own on a free loopback port, for tests that stop and restart
/// Redis without touching the shared one. Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one, or skips loudly (fails with `CI=true`) and returns `None` when `redis-server`
    /// is not installed.
    pub async fn start_or_skip() -> Option<RedisServer> {
        let mut server = RedisServer { port: crate::env::free_port(), child: None };
        match server.launch().await {
            Ok(()) => Some(server),
            Err(why) => {
                skip_or_fail("redis-server (Debian package redis-server)", &why);
                None
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: no goodbye to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open but nothing answers, as with a hung host.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status();
        assert!(status.is_ok_and(|status| status.success()), "kill {signal} redis-server");
    }

    /// Starts it again on the same port, empty (it keeps nothing on disk).
    pub async fn restart(&mut self) {
        self.stop();
        if let Err(why) = self.launch().await {
            panic!("redis-server did not restart: {why}");
        }
    }

    async fn launch(&mut self) -> Result<(), String> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot run redis-server: {err}"))?;
        self.child = Some(child);
        let url = self.url();
        for _ in 0..100 {
            if reachable(&url).is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("redis-server did not listen on port {} within 5 s", self.port))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
