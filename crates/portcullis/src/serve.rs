//! `portcullis serve`, `config check` and `migrate`: the commands that run on the gateway host.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis_config::Config;
use portcullis_server::{RunningServer, Server};
use portcullis_types::chain;
use tokio::signal::unix::{SignalKind, signal};

use crate::log_writer::{self, LogGuard};
use crate::{GlobalArgs, LogFormat};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file.
    #[arg(long, short, default_value = "portcullis.toml")]
    config: PathBuf,
    /// Once the listeners are bound, write `{"proxy":"ADDR","admin":"ADDR"}` here (with
    /// `"authz":"ADDR"` when the authorizer is on), for supervisors and tests that listen on
    /// port 0.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

pub async fn run(args: ServeArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let _logs = init_logging(global.log_format)?;
    let config = load(&args.config)?;
    let bootstrap = std::env::var("PORTCULLIS_ADMIN_TOKEN").ok().filter(|token| !token.is_empty());
    let mut server = Server::bind(config, bootstrap).await.context("cannot start")?;
    let proxy = server.proxy_addr()?;
    let admin = server.admin_addr()?;
    let authz = server.authz_addr().transpose()?;
    if let Some(token) = server.take_generated_admin_token() {
        announce_first_admin_token(token.expose());
    }
    // Handlers first: a signal that arrives once we look ready must not take its default action.
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let running = server.serve();
    tracing::info!(%proxy, %admin, authz = authz.map(tracing::field::display), "portcullis is serving");
    if let Some(path) = &args.ready_file {
        write_ready_file(path, proxy, admin, authz)?;
    }
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(&running, &args.config),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    // Not ready from here on, but still accepting for the drain delay, so that a load balancer
    // sees `/readyz` fail and stops sending before the listeners close; a second signal ends
    // the delay at once.
    running.start_draining();
    let delay = running.drain_delay();
    if !delay.is_zero() {
        tracing::info!(?delay, "shutting down: not ready, still accepting for server.drain_delay");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = terminate.recv() => tracing::info!("second signal: drain delay cut short"),
            _ = interrupt.recv() => tracing::info!("second signal: drain delay cut short"),
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    if running.shutdown().await {
        tracing::info!("drained; bye");
    } else {
        tracing::warn!("shutdown deadline passed with requests still in flight");
    }
    Ok(())
}

/// Applies the file again (SIGHUP). Live settings take effect at once; startup settings that
/// differ from the running ones are named, each time, until a restart or a revert.
fn reload(running: &RunningServer, path: &Path) {
    match Config::load(path) {
        Ok(config) => match running.reload(config) {
            Ok(restart_required) if restart_required.is_empty() => tracing::info!("configuration reloaded"),
            Ok(restart_required) => tracing::warn!(
                ?restart_required,
                "configuration reloaded; these settings differ from the running ones and take effect only after a restart"
            ),
            Err(error) => {
                tracing::error!(error = %chain(&error), "reload failed; keeping the running configuration and TLS files");
            }
        },
        Err(error) => {
            running.reload_refused(&error);
            let error = anyhow::Error::new(error).context(format!("invalid configuration {}", path.display()));
            tracing::error!(error = %chain(error.as_ref()), "reload failed; keeping the running configuration");
        }
    }
}

pub fn check_config(path: &Path, global: &GlobalArgs) -> anyhow::Result<()> {
    let config = load(path)?;
    // What `serve` would refuse before opening anything, said the same way: a backend this
    // binary was built without, a SQLite directory missing on this host, TLS files that do not load.
    let (startup, _) = config.clone().split();
    portcullis_server::check_backends(&startup).with_context(|| format!("invalid configuration {}", path.display()))?;
    portcullis_server::check_tls(&startup).with_context(|| format!("invalid configuration {}", path.display()))?;
    let summary = serde_json::json!({
        "valid": true,
        "file": path.display().to_string(),
        "models": config.models.iter().map(|model| &model.name).collect::<Vec<_>>(),
        "tiers": config.tiers.keys().collect::<Vec<_>>(),
    });
    let mut out = std::io::stdout().lock();
    if global.json {
        writeln!(out, "{summary:#}")?;
    } else {
        writeln!(out, "{}: valid ({} models, {} tiers)", path.display(), config.models.len(), config.tiers.len())?;
    }
    Ok(())
}

pub async fn migrate(path: &Path, global: &GlobalArgs) -> anyhow::Result<()> {
    let _logs = init_logging(global.log_format)?;
    let config = load(path)?;
    let (startup, _) = config.split();
    let applied = portcullis_server::migrate(&startup.store).await.context("migration failed")?;
    writeln!(std::io::stdout().lock(), "applied {applied} migration(s)")?;
    Ok(())
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| format!("invalid configuration {}", path.display()))
}

/// Log lines go to stderr through a thread of their own (see `log_writer`). Keep the guard
/// until exit: dropping it writes what is queued.
fn init_logging(format: LogFormat) -> anyhow::Result<LogGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = log_writer::start(std::io::stderr()).context("cannot start the log writer")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(guard)
}

/// The generated first admin token goes to the terminal once, never through the logger, so
/// log shipping never carries it.
fn announce_first_admin_token(token: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\n  First admin token (shown once; store it now):\n\n    {token}\n\n  export PORTCULLIS_ADMIN_TOKEN={token}\n"
    );
}

/// Written to a temporary name and renamed, so a reader never sees half a file.
fn write_ready_file(
    path: &Path,
    proxy: SocketAddr,
    admin: SocketAddr,
    authz: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut body = serde_json::json!({ "proxy": proxy.to_string(), "admin": admin.to_string() });
    if let Some(authz) = authz {
        body["authz"] = serde_json::Value::String(authz.to_string());
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, body.to_string()).with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
