//! The audit log: who looked up or erased which customer, when, and from where, one JSON object a
//! line in `server.admin_audit_log`. Admin traffic is a few people, so a record is written and
//! flushed as the answer is made, under a lock, off the reactor (the admin service answers on a
//! blocking thread). The file is opened in append mode with mode 0640, and refused if it is not a
//! regular file (a pipe or a device would stall the writer); a reload that names another file
//! moves to it. Each record counts in `usher_admin_audit_records_total{result}`.
//!
//! The same caller asking the same thing about the same customer again within a minute (the live
//! page refreshes an open customer every few seconds) is one record: the log says who looked
//! whom up and when, to the minute, without a line per refresh.

use crate::metrics::Metrics;
use parking_lot::Mutex;
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// One record.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// RFC 3339.
    pub time: String,
    /// The token's name (or `sha256:` and the first 8 hex digits of its digest); `loopback` when
    /// the admin API has no tokens.
    pub who: &'a str,
    /// viewer or operator.
    pub role: &'a str,
    pub from: Option<IpAddr>,
    /// lookup, events or erase.
    pub action: &'a str,
    pub customer: &'a str,
    /// The answer's status: 200, or 404 for a customer usher does not know.
    pub status: u16,
}

/// A repeat within this long of the same record is not written again.
pub const REPEAT_WITHIN_MS: u64 = 60_000;
/// Repeats remembered at most; past it the memory starts over (a few extra lines, never fewer).
const REPEATS_KEPT: usize = 4096;

#[derive(Default)]
pub struct AuditLog {
    out: Mutex<Option<Open>>,
    /// (who, action, customer, status) -> when it was last written.
    written: Mutex<std::collections::HashMap<(String, String, String, u16), u64>>,
}

fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.is_file() {
            return Err(std::io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
    }
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        // Never wait on a pipe that appeared since the check.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

/// The file records go to, and which file that is (device, inode): a path that names another
/// file now, or none, was rotated or removed, and the next record opens it anew.
struct Open {
    path: PathBuf,
    w: BufWriter<File>,
    id: (u64, u64),
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

impl AuditLog {
    /// Appends `r` to `path` (opening it, or moving to it when the configuration names another
    /// file), flushed. Failures are counted and logged, and do not fail the answer.
    pub fn write(&self, path: &Path, r: &Record<'_>, now_ms: u64, metrics: &Metrics) {
        if self.repeat(r, now_ms) {
            return;
        }
        match self.try_write(path, r) {
            Ok(()) => metrics.audit_written.inc(),
            Err(e) => {
                metrics.audit_failed.inc();
                tracing::warn!(file = %path.display(), error = %e, "cannot write the admin audit log");
            }
        }
    }

    /// Whether `r` was written less than [`REPEAT_WITHIN_MS`] ago; if not, remembers it now.
    fn repeat(&self, r: &Record<'_>, now_ms: u64) -> bool {
        let key = (
            r.who.to_string(),
            r.action.to_string(),
            r.customer.to_string(),
            r.status,
        );
        let mut written = self.written.lock();
        if written
            .get(&key)
            .is_some_and(|&at| now_ms.saturating_sub(at) < REPEAT_WITHIN_MS)
        {
            return true;
        }
        if written.len() >= REPEATS_KEPT {
            written.clear();
        }
        written.insert(key, now_ms);
        false
    }

    fn try_write(&self, path: &Path, r: &Record<'_>) -> std::io::Result<()> {
        let mut out = self.out.lock();
        // A stat per record (records are few: one per look-up a minute) so that a logrotate
        // move or a removed file is noticed at the next record, not at the next restart.
        let current = std::fs::symlink_metadata(path).ok().map(|m| file_id(&m));
        if out
            .as_ref()
            .is_none_or(|o| o.path != path || current != Some(o.id))
        {
            let f = open(path)?;
            let id = file_id(&f.metadata()?);
            *out = Some(Open {
                path: path.to_path_buf(),
                w: BufWriter::new(f),
                id,
            });
        }
        let Some(Open { w, .. }) = out.as_mut() else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let written = w.write_all(&line).and_then(|()| w.flush());
        if written.is_err() {
            // Open it again next time: the file may have been moved or its disk filled.
            *out = None;
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(customer: &'a str) -> Record<'a> {
        Record {
            time: "2026-01-01T00:00:00Z".into(),
            who: "alice-laptop",
            role: "viewer",
            from: Some("127.0.0.1".parse().unwrap()),
            action: "lookup",
            customer,
            status: 200,
        }
    }

    #[test]
    fn records_are_json_lines_in_a_private_regular_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::default();
        let m = Metrics::new();
        log.write(&path, &record("bob"), 1_000, &m);
        log.write(&path, &record("eve\"\n{"), 1_000, &m);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["customer"], "bob");
        assert_eq!(lines[1]["customer"], "eve\"\n{");
        assert_eq!(lines[0]["who"], "alice-laptop");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o137, 0, "{mode:o}: no more than 0640");
        assert_eq!(m.audit_written.get(), 2);
        // A folder is not a file to append to.
        log.write(dir.path(), &record("x"), 1_000, &m);
        assert_eq!(m.audit_failed.get(), 1);
    }

    #[test]
    fn a_page_refreshing_an_open_customer_is_one_record_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, m) = (AuditLog::default(), Metrics::new());
        for at in (0..60_000).step_by(5_000) {
            log.write(&path, &record("bob"), at, &m);
        }
        log.write(&path, &record("ann"), 10_000, &m);
        log.write(&path, &record("bob"), 60_000, &m);
        let erase = Record {
            action: "erase",
            ..record("bob")
        };
        log.write(&path, &erase, 60_001, &m);
        let text = std::fs::read_to_string(&path).unwrap();
        let got: Vec<(String, String)> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["action"].to_string(), v["customer"].to_string()))
            .collect();
        assert_eq!(
            got.len(),
            4,
            "bob at 0 and 60 s, ann, and bob's erasure: {text}"
        );
        assert_eq!(m.audit_written.get(), 4);
    }

    #[test]
    fn a_rotated_or_removed_file_is_opened_anew_at_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("audit");
        std::fs::create_dir(&folder).unwrap();
        let path = folder.join("audit.jsonl");
        let (log, m) = (AuditLog::default(), Metrics::new());
        log.write(&path, &record("ann"), 0, &m);
        // logrotate's move: the next record starts the new file.
        std::fs::rename(&path, folder.join("audit.jsonl.1")).unwrap();
        log.write(&path, &record("bob"), 0, &m);
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!((lines(&folder.join("audit.jsonl.1")), lines(&path)), (1, 1));
        // Its folder gone: counted as failed, never as written to a deleted file.
        std::fs::remove_dir_all(&folder).unwrap();
        log.write(&path, &record("cy"), 0, &m);
        assert_eq!((m.audit_written.get(), m.audit_failed.get()), (2, 1));
        // And back once the folder is.
        std::fs::create_dir(&folder).unwrap();
        log.write(&path, &record("dee"), 0, &m);
        assert_eq!(lines(&path), 1);
        assert_eq!(m.audit_written.get(), 3);
    }
}
