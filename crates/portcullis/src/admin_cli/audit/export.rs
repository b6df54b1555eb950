//! `audit export`: `GET /admin/v1/audit/export` streamed to stdout or a file as it arrives.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, anyhow};

use super::ExportArgs;
use crate::admin_cli::client::AdminClient;
use crate::admin_cli::output::Streaming;

pub(super) async fn export(args: ExportArgs, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(global)?;
    let mut query = args.filters.query();
    query.push(("format", args.format.as_str().to_string()));
    let pairs: Vec<(&str, &str)> = query.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let mut response = client.get_stream(&["audit", "export"], &pairs).await?;
    match &args.output {
        None => {
            let mut out = Streaming::stdout();
            while let Some(chunk) = response.chunk().await.context("the export was cut short")? {
                out.bytes(&chunk)?;
                if out.is_closed() {
                    return Ok(());
                }
            }
            out.finish()
        }
        Some(path) => {
            let written = write_file(path, &mut response).await;
            if written.is_err() {
                // A partial export looks complete to whoever opens it: leave nothing behind.
                let _ = std::fs::remove_file(path);
            }
            written
        }
    }
}

async fn write_file(path: &Path, response: &mut reqwest::Response) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut file = std::io::BufWriter::new(file);
    while let Some(chunk) = response.chunk().await.context("the export was cut short")? {
        file.write_all(&chunk).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let file = file.into_inner().map_err(|error| anyhow!("cannot write {}: {}", path.display(), error.error()))?;
    file.sync_all().with_context(|| format!("cannot write {}", path.display()))
}
