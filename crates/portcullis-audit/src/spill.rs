//! The spill file: where records go when the store fails, until they are replayed into it.
//!
//! JSON Lines, one `AuditRecord` per line, appended and `fsync`ed before the writer acknowledges them.
//! A crash can leave a torn last line; it was never acknowledged (the `fsync` had not returned), so
//! opening the file cuts it off. Replay sends every line to the store in chunks; the store skips
//! `(node, seq)` it already holds, so a replay that fails half way is simply repeated. The file is
//! emptied only when every record in it is stored. It is created by the first spill, not at start:
//! a gateway whose store never fails leaves no file behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_store::StoreError;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::{AuditError, AuditRecord, AuditStore};

#[derive(Debug)]
pub(crate) struct SpillFile {
    path: PathBuf,
    /// `None` until the first spill (or when the file was there at start).
    file: Option<File>,
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
    /// Opens the file if it is there and repairs a torn last line. A file that is not there is
    /// created and removed again, so that a spill path that cannot be written fails the start, not
    /// the first store outage.
    pub(crate) async fn open(path: &Path, node: &str) -> Result<(SpillFile, SpillContents), AuditError> {
        let context = || format!("audit spill file {}", path.display());
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| AuditError::io(context(), e))?;
        }
        let mut spill = SpillFile { path: path.to_path_buf(), file: None, len: 0 };
        let mut contents = SpillContents::default();
        let file = match OpenOptions::new().read(true).append(true).open(path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                drop(create(path).await?);
                tokio::fs::remove_file(path).await.map_err(|e| AuditError::io(context(), e))?;
                return Ok((spill, contents));
            }
            Err(error) => return Err(AuditError::io(context(), error)),
        };
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
            file.set_len(complete).await.map_err(|e| AuditError::io(context(), e))?;
            file.sync_all().await.map_err(|e| AuditError::io(context(), e))?;
        }
        spill.file = Some(file);
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
        let file = match self.file {
            Some(ref mut file) => file,
            None => self.file.insert(create(&self.path).await?),
        };
        let written = async {
            file.write_all(&lines).await?;
            file.flush().await?;
            file.sync_data().await
        }
        .await;
        match written {
            Ok(()) => {
                self.len += lines.len() as u64;
                Ok(())
            }
            Err(error) => {
                if let Err(undo) = file.set_len(self.len).await {
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
        if let Some(file) = &self.file {
            let context = self.context();
            file.set_len(0).await.map_err(|e| AuditError::io(&context, e))?;
            file.sync_all().await.map_err(|e| AuditError::io(&context, e))?;
        }
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

/// Creates the file and makes its name durable: the directory's entry is fsynced too, or a crash
/// could lose the file with the records it acknowledged.
async fn create(path: &Path) -> Result<File, AuditError> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .await
        .map_err(|e| AuditError::io(format!("audit spill file {}", path.display()), e))?;
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let synced = async { File::open(dir).await?.sync_all().await }.await;
    synced.map_err(|e| AuditError::io(format!("directory {} of the audit spill file", dir.display()), e))?;
    Ok(file)
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
