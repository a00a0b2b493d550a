//! The call records file (`[records]`): one line per finished call, JSON lines or CSV, for
//! billing checks and support tickets. Lines are handed to a writer thread through a bounded
//! queue, so a slow disk never stalls the SIP path; when the queue is full a record is
//! dropped and counted (`sluice_call_records_dropped_total`). Rotation is left to logrotate:
//! on a reload (SIGHUP) the file is closed and opened again by name.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use crate::config::RecordFormat;
use crate::proxy::record::Ended;

/// Records waiting for the writer thread at most.
const QUEUE: usize = 65_536;

enum Msg {
    Line(String),
    Reopen,
}

/// The open records file.
pub struct Records {
    tx: SyncSender<Msg>,
    format: RecordFormat,
    dropped: AtomicU64,
}

impl Records {
    /// Opens (appends to) `path` and starts the writer thread; an error names the file.
    pub fn open(path: &Path, format: RecordFormat) -> std::io::Result<Self> {
        let file = open(path, format)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("sluice-records".into())
            .spawn(move || write_loop(&path, format, file, &rx))?;
        Ok(Self { tx, format, dropped: AtomicU64::new(0) })
    }

    /// Queues one record; never waits.
    pub fn push(&self, ended: &Ended) {
        let line = match self.format {
            RecordFormat::Jsonl => serde_json::to_string(ended).unwrap_or_default(),
            RecordFormat::Csv => ended.csv_row(),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(Msg::Line(line))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes the file and opens it again by name (after logrotate moved it).
    pub fn reopen(&self) {
        let _ = self.tx.try_send(Msg::Reopen);
    }

    /// Records dropped because the writer could not keep up (or the file is gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Opens for appending; a new (empty) CSV file gets the header line.
fn open(path: &Path, format: RecordFormat) -> std::io::Result<BufWriter<File>> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let empty = file.metadata()?.len() == 0;
    let mut out = BufWriter::new(file);
    if empty && format == RecordFormat::Csv {
        writeln!(out, "{}", Ended::CSV_HEADER)?;
        out.flush()?;
    }
    Ok(out)
}

fn write_loop(path: &Path, format: RecordFormat, file: BufWriter<File>, rx: &Receiver<Msg>) {
    let mut out = Some(file);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Whatever is queued goes out before one flush.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => {
                    if let Some(o) = out.as_mut() {
                        if writeln!(o, "{line}").is_err() {
                            out = None;
                        }
                    }
                }
                Msg::Reopen => {
                    if let Some(mut o) = out.take() {
                        let _ = o.flush();
                    }
                    out = match open(path, format) {
                        Ok(o) => Some(o),
                        Err(e) => {
                            tracing::error!(event = "records.open_failed", path = %path.display(), error = %e, "call records are not written until the next reload");
                            None
                        }
                    };
                }
            }
            next = rx.try_recv().ok();
        }
        if let Some(o) = out.as_mut() {
            if o.flush().is_err() {
                tracing::error!(event = "records.write_failed", path = %path.display(), "call records file cannot be written");
                out = None;
            }
        }
    }
}
