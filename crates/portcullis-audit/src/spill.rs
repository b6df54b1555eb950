//! The spill file: where records go when the store fails, until they are replayed into it.
//!
//! JSON Lines, one `AuditRecord` per line, appended and `fsync`ed before the writer acknowledges them.
//! A crash can leave a torn last line; it was never acknowledged (the `fsync` had not returned), so
//! opening the file cuts it off. Replay sends every line to the store in chunks; the store skips
//! `(node, seq)` it already holds, so a replay that fails half way is simply repeated. The file is
//! emptied only when every record in it is stored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_store::StoreError;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::{AuditError, AuditRecord, AuditStore};

#[derive(Debug)]
pub(crate) struct SpillFile {
    path: PathBuf,
    file: File,
    /// Length of the file's complete lines; everything in it is durable.
    len: u64,
}

/// What opening found in the file.
#[derive(Debug, Default)]
pub(crate) struct SpillContents {
    /// The newest record of the node asked about: `(seq, hash)`.
    pub(crate) last: Option<(u64, String)>,
    pub(crate) records: u64,
}

impl SpillFile {
    /// Opens (creating it and its directory if needed) and repairs a torn last line.
    pub(crate) async fn open(path: &Path, node: &str) -> Result<(SpillFile, SpillContents), AuditError> {
        let context = || format!("audit spill file {}", path.display());
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| AuditError::io(context(), e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .await
            .map_err(|e| AuditError::io(context(), e))?;
        let mut spill = SpillFile { path: path.to_path_buf(), file, len: 0 };
        let mut contents = SpillContents::default();
        let mut lines = spill.lines().await?;
        while let Some(record) = lines.next().await? {
            contents.records += 1;
            if record.node == node && contents.last.as_ref().is_none_or(|(seq, _)| record.seq > *seq) {
                contents.last = Some((record.seq, record.hash));
            }
        }
        let (complete, size) = (lines.complete, lines.read);
        if complete < size {
            tracing::warn!(path = %path.display(), bytes = size - complete, "cutting a torn last line off the audit spill file");
            spill.file.set_len(complete).await.map_err(|e| AuditError::io(context(), e))?;
            spill.file.sync_all().await.map_err(|e| AuditError::io(context(), e))?;
        }
        spill.len = complete;
        Ok((spill, contents))
    }

    /// Whether every record spilled has been replayed.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `records` and fsyncs. On failure the file is cut back to what it held, so a partial
    /// line cannot glue itself to the next append.
    pub(crate) async fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
        let mut lines = Vec::with_capacity(records.len() * 512);
        for record in records {
            serde_json::to_writer(&mut lines, record).map_err(|e| AuditError::io(self.context(), e.into()))?;
            lines.push(b'\n');
        }
        let written = async {
            self.file.write_all(&lines).await?;
            self.file.flush().await?;
            self.file.sync_data().await
        }
        .await;
        match written {
            Ok(()) => {
                self.len += lines.len() as u64;
                Ok(())
            }
            Err(error) => {
                if let Err(undo) = self.file.set_len(self.len).await {
                    tracing::error!(path = %self.path.display(), error = %undo, "could not cut a failed append off the audit spill file");
                }
                Err(AuditError::io(self.context(), error))
            }
        }
    }

    /// Sends every spilled record to `store`, `chunk` at a time, then empties the file. Returns how many
    /// records were sent. On a store error the file is kept whole (what was sent is skipped next time).
    pub(crate) async fn replay(
        &mut self,
        store: &dyn AuditStore,
        chunk: usize,
        timeout: Duration,
    ) -> Result<u64, AuditError> {
        let mut lines = self.lines().await?;
        let mut batch = Vec::with_capacity(chunk);
        let mut sent = 0u64;
        loop {
            let record = lines.next().await?;
            let last = record.is_none();
            batch.extend(record);
            if batch.len() < chunk.max(1) && !last {
                continue;
            }
            if !batch.is_empty() {
                match tokio::time::timeout(timeout, store.append_audit(&batch)).await {
                    Ok(Ok(())) => sent += batch.len() as u64,
                    Ok(Err(error)) => return Err(AuditError::Store(error)),
                    Err(_) => return Err(timed_out(timeout)),
                }
                batch.clear();
            }
            if last {
                break;
            }
        }
        let context = self.context();
        self.file.set_len(0).await.map_err(|e| AuditError::io(&context, e))?;
        self.file.sync_all().await.map_err(|e| AuditError::io(&context, e))?;
        self.len = 0;
        Ok(sent)
    }

    /// Reads the file's complete lines from the start, through a handle of its own.
    async fn lines(&self) -> Result<Lines, AuditError> {
        let file = File::open(&self.path).await.map_err(|e| AuditError::io(self.context(), e))?;
        Ok(Lines { reader: BufReader::new(file), line: Vec::new(), read: 0, complete: 0, context: self.context() })
    }

    fn context(&self) -> String {
        format!("audit spill file {}", self.path.display())
    }
}

/// The records of a spill file, in order.
struct Lines {
    reader: BufReader<File>,
    line: Vec<u8>,
    /// Bytes read so far.
    read: u64,
    /// Bytes of complete (newline-terminated) lines read so far.
    complete: u64,
    context: String,
}

impl Lines {
    /// The next record; `None` at the end or at a torn last line. A complete line that does not parse
    /// (which appends never write) is logged and skipped rather than stopping every later replay.
    async fn next(&mut self) -> Result<Option<AuditRecord>, AuditError> {
        loop {
            self.line.clear();
            let read =
                self.reader.read_until(b'\n', &mut self.line).await.map_err(|e| AuditError::io(&self.context, e))?;
            self.read += read as u64;
            if read == 0 || self.line.last() != Some(&b'\n') {
                return Ok(None);
            }
            self.complete = self.read;
            match serde_json::from_slice(&self.line) {
                Ok(record) => return Ok(Some(record)),
                Err(error) => {
                    tracing::error!(context = %self.context, %error, "skipping an unreadable audit spill line")
                }
            }
        }
    }
}

pub(crate) fn timed_out(timeout: Duration) -> AuditError {
    AuditError::Store(StoreError::unavailable(format!("no answer within {timeout:?}")))
}
