//! `portcullis-bench-upstream`: the fake model server that `bench/run.sh` and `bench/scale.sh`
//! put behind nginx and Portcullis. See the library for what it answers.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use portcullis_bench_upstream::{Issuer, Responses, Settings, bind, serve};

/// A fast OpenAI-compatible upstream for benchmarks: every answer pre-rendered.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (loopback by default; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Shorthand for `--listen 127.0.0.1:PORT`.
    #[arg(long, conflicts_with = "listen")]
    port: Option<u16>,
    /// Content chunks in a streamed answer (words in a plain one).
    #[arg(long, default_value_t = 16)]
    chunks: usize,
    /// Milliseconds between two content chunks of a stream.
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
    /// Runtime worker threads; 0 = one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Model name in answers and in `/v1/models`.
    #[arg(long, default_value = "bench")]
    model: String,
    /// Once listening, write the bound address (`127.0.0.1:PORT`) here.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Also be an OIDC token issuer (`iss` = this server's URL; discovery and JWKS served here) and
    /// write an access token for `--token-audience`, valid for a day, to this file.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The `aud` of the token written to `--token-file`.
    #[arg(long, default_value = "portcullis-bench")]
    token_audience: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.chunks > 0, "--chunks must be at least 1");
    let listen = match args.port {
        Some(port) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        None => args.listen,
    };
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        threads => threads,
    };
    let settings = Settings { chunks: args.chunks, gap: Duration::from_millis(args.gap_ms), model: args.model };
    let responses = Responses::render(&settings);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let listener = bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener.local_addr().context("cannot read the bound address")?;
        let responses = match &args.token_file {
            Some(path) => {
                let issuer = Issuer::generate(format!("http://{bound}"));
                let token = issuer.token(&args.token_audience, "bench-client", Duration::from_secs(86_400))?;
                write_atomically(path, &token)?;
                responses.with_issuer(&issuer)
            }
            None => responses,
        };
        if let Some(path) = &args.ready_file {
            write_atomically(path, &format!("{bound}\n"))?;
        }
        let _ = writeln!(
            std::io::stderr(),
            "portcullis-bench-upstream: listening on {bound} ({threads} threads, {} chunks, {} ms gap)",
            settings.chunks,
            args.gap_ms
        );
        serve(listener, Arc::new(responses)).await;
        Ok(())
    })
}

/// Written to a temporary name and renamed, so a reader never sees half a file.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
