//! Extra copies of the log: a JSON Lines file and standard output, written after records are durable.
//!
//! These are for shipping the log elsewhere (a SIEM, `jq`), and, kept off the database host, they are
//! an independent copy of each chain's head that makes a rewritten store detectable. They are
//! best-effort: a failed write is logged and counted, never retried, and never delays an acknowledgement.

use std::path::{Path, PathBuf};

use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncWriteExt, BufWriter, Stdout};

use crate::{AuditError, AuditRecord, AuditStats};

#[derive(Debug)]
pub(crate) struct Sinks {
    file: Option<(PathBuf, BufWriter<File>)>,
    stdout: Option<Stdout>,
    line: Vec<u8>,
}

impl Sinks {
    pub(crate) async fn open(file: Option<&Path>, stdout: bool) -> Result<Sinks, AuditError> {
        let file = match file {
            Some(path) => {
                let opened = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .await
                    .map_err(|e| AuditError::io(format!("audit file sink {}", path.display()), e))?;
                Some((path.to_path_buf(), BufWriter::new(opened)))
            }
            None => None,
        };
        Ok(Sinks { file, stdout: stdout.then(tokio::io::stdout), line: Vec::new() })
    }

    /// One JSON line per record to each sink, flushed once per call (per batch).
    pub(crate) async fn write(&mut self, records: &[AuditRecord], stats: &AuditStats) {
        if records.is_empty() || (self.file.is_none() && self.stdout.is_none()) {
            return;
        }
        self.line.clear();
        for record in records {
            if let Err(error) = serde_json::to_writer(&mut self.line, record) {
                tracing::warn!(%error, "could not encode an audit record for the sinks");
                stats.sink_failed();
                return;
            }
            self.line.push(b'\n');
        }
        if let Some((path, file)) = &mut self.file
            && let Err(error) = write_flush(file, &self.line).await
        {
            tracing::warn!(path = %path.display(), %error, "could not write the audit file sink");
            stats.sink_failed();
        }
        if let Some(stdout) = &mut self.stdout
            && let Err(error) = write_flush(stdout, &self.line).await
        {
            tracing::warn!(%error, "could not write audit records to stdout");
            stats.sink_failed();
        }
    }
}

async fn write_flush<W: AsyncWriteExt + Unpin>(out: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes).await?;
    out.flush().await
}
