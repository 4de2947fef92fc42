//! The `jsonl` sink: appends each event as one JSON line to a file, the embedded default.
//!
//! Flushed at least once a second and on shutdown; rotated when it passes `max_bytes`
//! (`events.jsonl` -> `events.jsonl.1` -> ... up to `keep` old files), as logrotate would. A local
//! file either takes the write or the disk is broken: there is no spool behind it.

use super::super::model::CloudEvent;
use crate::events::counters::{EventOutcome, SinkMetrics};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub struct JsonlFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    writer: BufWriter<File>,
    size: u64,
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl JsonlFile {
    /// Opens (or creates) the file; its folder must exist: a mistyped path is an error, not a new
    /// folder somewhere.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(JsonlFile {
            path: path.to_path_buf(),
            max_bytes,
            keep,
            writer: BufWriter::new(file),
            size,
        })
    }

    pub fn write(&mut self, e: &CloudEvent) -> io::Result<()> {
        let line = e.to_json_line();
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.writer.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.writer.flush()?;
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            let _ = fs::remove_file(rotated(&self.path, self.keep));
            for n in (1..self.keep).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.writer = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

pub async fn run(
    mut file: JsonlFile,
    mut rx: mpsc::Receiver<Arc<CloudEvent>>,
    metrics: SinkMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let write = |file: &mut JsonlFile, e: &CloudEvent| match file.write(e) {
        Ok(()) => metrics.count(e.kind, EventOutcome::Delivered),
        Err(err) => {
            metrics.count(e.kind, EventOutcome::Dropped);
            tracing::error!(path = %file.path.display(), "cannot write event: {err}");
        }
    };
    loop {
        tokio::select! {
            e = rx.recv() => match e {
                Some(e) => {
                    write(&mut file, &e);
                    while let Ok(e) = rx.try_recv() {
                        write(&mut file, &e);
                    }
                    metrics.queue_depth.set(rx.len() as i64);
                }
                None => break,
            },
            _ = tick.tick() => {
                let _ = file.flush();
            }
            _ = stop.changed() => break,
        }
    }
    super::drain(&mut rx, |e| write(&mut file, e)).await;
    let _ = file.flush();
    metrics.queue_depth.set(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::model::EventType;

    #[test]
    fn rotates_at_max_bytes_keeping_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ev.jsonl");
        let e = CloudEvent::new(
            "usher://t",
            EventType::Rerouted,
            "c",
            0,
            "",
            serde_json::json!({}),
        );
        let len = e.to_json_line().len() as u64;
        let mut f = JsonlFile::open(&path, len * 3, 2).unwrap();
        for _ in 0..10 {
            f.write(&e).unwrap();
        }
        f.flush().unwrap();
        let lines = |p: &Path| {
            fs::read_to_string(p)
                .map(|s| s.lines().count())
                .unwrap_or(0)
        };
        assert_eq!(lines(&path), 1);
        assert_eq!(lines(&rotated(&path, 1)), 3);
        assert_eq!(lines(&rotated(&path, 2)), 3);
        assert!(!rotated(&path, 3).exists(), "only `keep` old files");
    }
}
