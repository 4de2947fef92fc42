//! The access log: one line per request, written off the request path.
//!
//! A request's line is handed to a bounded queue and a thread of its own formats and writes it, so
//! a slow disk never slows a request: when the queue is full the line is dropped and counted
//! (`usher_access_log_lines_total{outcome="dropped"}`), never waited for. The file is opened for
//! appending and opened again on SIGUSR1 (after logrotate has moved it) and when a reload names
//! another file; the writer flushes whenever its queue runs dry, at least every second.
//!
//! Besides what every proxy logs, a line says what only usher knows: the customer, their tier,
//! score and state, and whether the request was protected and why. JSON by default (one object
//! per line); `combined` is Apache's combined format with usher's fields appended as `key=value`.
//!
//! What this module deliberately isn't: a log shipper (point Vector, Fluent Bit or promtail at
//! the file), nor a place for errors (those are the process log's).

use compact_str::CompactString;
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Combined,
}

/// Where and how, as the configuration says.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// `None`: standard output.
    pub path: Option<PathBuf>,
    pub format: Format,
    /// Lines held for the writer before new ones are dropped.
    pub queue: usize,
    /// Keep query strings in `path` (they often carry tokens and personal data).
    pub query: bool,
}

/// One request, as the log line says it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// RFC 3339, milliseconds, UTC: when the request finished.
    pub time: String,
    pub request_id: CompactString,
    pub client: Option<std::net::IpAddr>,
    pub method: CompactString,
    pub host: CompactString,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub route: Option<CompactString>,
    pub upstream: Option<String>,
    pub attempts: u8,
    pub outcome: &'static str,
    pub customer: CompactString,
    pub tier: CompactString,
    pub score: Option<f64>,
    pub state: &'static str,
    pub protected: bool,
    /// Why it was protected (`tier_on_critical`, `rescue`, ...), when it was.
    pub protection: Option<&'static str>,
}

impl Entry {
    pub fn write(&self, format: Format, out: &mut Vec<u8>) {
        match format {
            Format::Json => {
                // An Entry is plain data: serialising it cannot fail.
                let _ = serde_json::to_writer(&mut *out, self);
            }
            Format::Combined => self.write_combined(out),
        }
        out.push(b'\n');
    }

    /// `client - customer [time] "METHOD path PROTOCOL" status bytes "-" "-" key=value...`, the
    /// combined format's fields (referer and user agent are not kept) then usher's.
    fn write_combined(&self, out: &mut Vec<u8>) {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        let _ = write!(
            out,
            "{} - {} [{}] \"{} {} {}\" {} {} \"-\" \"-\" request_id={} host={} duration_ms={:.3} upstream_ms={} route={} upstream={} attempts={} outcome={} tier={} score={} state={} protected={}",
            self.client.map_or("-".to_string(), |c| c.to_string()),
            quote_free(&dash(&self.customer)),
            self.time,
            self.method,
            quote_free(&self.path),
            self.protocol,
            self.status,
            self.bytes_out,
            quote_free(&self.request_id),
            quote_free(&dash(&self.host)),
            self.duration_ms,
            self.upstream_ms.map_or("-".to_string(), |v| format!("{v:.3}")),
            self.route.as_deref().unwrap_or("-"),
            self.upstream.as_deref().unwrap_or("-"),
            self.attempts,
            self.outcome,
            self.tier,
            self.score.map_or("-".to_string(), |s| format!("{s:.1}")),
            self.state,
            self.protection.unwrap_or(if self.protected { "yes" } else { "no" }),
        );
    }
}

/// A value for a space-separated line: no spaces, quotes or control characters (a path or id a
/// client chose must not be able to forge fields).
fn quote_free(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `usher_access_log_lines_total{outcome}`: written (in the file) or dropped.
#[derive(Clone)]
pub struct Counters {
    written: prometheus::IntCounter,
    dropped: prometheus::IntCounter,
}

impl Counters {
    pub fn register(registry: &Registry) -> Counters {
        let vec = IntCounterVec::new(
            Opts::new(
                "usher_access_log_lines_total",
                "Access log lines by outcome: written (the file took the whole line), or dropped because the writer's queue was full or the file could not be written (a disk full, an I/O error).",
            ),
            &["outcome"],
        )
        .expect("a valid metric definition");
        let _ = registry.register(Box::new(vec.clone()));
        Counters {
            written: vec.with_label_values(&["written"]),
            dropped: vec.with_label_values(&["dropped"]),
        }
    }
}

/// One open access log: its queue and the thread that writes it.
pub struct Writer {
    config: AccessLogConfig,
    tx: Option<SyncSender<Entry>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counters: Counters,
}

impl Writer {
    /// Starts writing to `config`'s file (created if missing, appended to), or standard output.
    pub fn start(
        config: AccessLogConfig,
        counters: Counters,
        reopen: Arc<AtomicBool>,
    ) -> std::io::Result<Writer> {
        let mut out = Output::open(config.path.as_ref())?;
        let (tx, rx) = sync_channel::<Entry>(config.queue.max(1));
        let (format, c) = (config.format, counters.clone());
        let thread = std::thread::Builder::new()
            .name("usher-access-log".into())
            .spawn(move || {
                let mut line = Vec::with_capacity(512);
                let mut write = |e: Entry, out: &mut Output| {
                    line.clear();
                    e.write(format, &mut line);
                    out.push(&line, &c);
                };
                loop {
                    let first = match rx.recv_timeout(FLUSH_EVERY) {
                        Ok(e) => Some(e),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    if reopen.swap(false, Ordering::AcqRel) {
                        out.reopen(&c);
                    }
                    if let Some(e) = first {
                        write(e, &mut out);
                        // Whatever else is waiting, then a flush once the queue has run dry: a
                        // quiet log is on disk at once, a busy one in 64 KiB writes.
                        while let Ok(e) = rx.try_recv() {
                            write(e, &mut out);
                        }
                    }
                    out.flush(&c);
                }
                out.flush(&c);
            })?;
        Ok(Writer {
            config,
            tx: Some(tx),
            thread: Some(thread),
            counters,
        })
    }

    pub fn config(&self) -> &AccessLogConfig {
        &self.config
    }

    /// Hands `entry` to the writer; never blocks. A full queue drops it (counted).
    pub fn log(&self, entry: Entry) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.inc()
            }
        }
    }
}

impl Drop for Writer {
    /// Writes out what is queued, then stops the thread.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Longest path written in a line: a queue of 65,536 lines must stay within a few hundred MiB
/// however long the paths clients send (the head limit allows 64 KiB).
pub const MAX_PATH_BYTES: usize = 2048;

/// `path`, cut to [`MAX_PATH_BYTES`] on a character boundary, with `…` when cut.
pub fn bounded_path(path: &str) -> String {
    if path.len() <= MAX_PATH_BYTES {
        return path.to_string();
    }
    let mut end = MAX_PATH_BYTES;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

/// The access log in force, across configurations: kept while a reload names the same file and
/// format, replaced when it names another.
pub struct AccessLogs {
    current: arc_swap::ArcSwapOption<Writer>,
    reopen: Arc<AtomicBool>,
    counters: Counters,
    changing: parking_lot::Mutex<()>,
}

impl AccessLogs {
    pub fn new(registry: &Registry) -> AccessLogs {
        AccessLogs {
            current: arc_swap::ArcSwapOption::empty(),
            reopen: Arc::default(),
            counters: Counters::register(registry),
            changing: parking_lot::Mutex::new(()),
        }
    }

    /// Puts `config` in force. A file that cannot be opened keeps the log in force, loudly.
    /// Blocking when a writer is replaced (its queue is written out first).
    pub fn reconcile(&self, config: Option<&AccessLogConfig>) {
        let _one_at_a_time = self.changing.lock();
        let same = match (self.current.load().as_deref(), config) {
            (None, None) => true,
            (Some(w), Some(c)) => w.config() == c,
            _ => false,
        };
        if same {
            return;
        }
        let next = match config {
            None => None,
            Some(c) => match Writer::start(c.clone(), self.counters.clone(), self.reopen.clone()) {
                Ok(w) => Some(Arc::new(w)),
                Err(e) => {
                    tracing::error!(
                        path = ?c.path,
                        "cannot open the access log, keeping the one in force: {e}"
                    );
                    return;
                }
            },
        };
        // The old writer writes out its queue on a thread of its own: a stalled file (a pipe
        // nobody reads) must not hold the reload.
        if let Some(old) = self.current.swap(next) {
            let _ = std::thread::Builder::new()
                .name("usher-access-log-close".into())
                .spawn(move || drop(old));
        }
    }

    /// After logrotate: the writer opens the file again before its next line.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Runs `f` on the writer in force, if any: a line is built only when somebody reads it.
    pub fn with(&self, f: impl FnOnce(&Writer)) {
        if let Some(w) = self.current.load().as_ref() {
            f(w);
        }
    }

    /// Writes out what is queued and stops (at shutdown).
    pub fn close(&self) {
        let _one_at_a_time = self.changing.lock();
        drop(self.current.swap(None));
    }
}

/// Where lines go, and what was buffered for it: lines are counted written only once the file
/// has taken them whole, so a disk that fills up shows as dropped lines, not as written ones.
struct Output {
    /// `None`: standard output.
    path: Option<PathBuf>,
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
    /// Lines in `buf`.
    lines: u64,
    /// The last write stopped inside a line: the next one starts on a line of its own, so that
    /// one torn line is all a failure costs.
    torn: bool,
    /// Writes are failing (said once, and again when they work).
    failing: bool,
}

/// Lines are written in pieces of about this much (a busy log), or whenever the queue runs dry.
const BUFFER_BYTES: usize = 64 * 1024;

impl Output {
    fn open(path: Option<&PathBuf>) -> std::io::Result<Output> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(append(p)?),
            None => Box::new(std::io::stdout()),
        };
        Ok(Output::to(path.cloned(), out))
    }

    fn to(path: Option<PathBuf>, out: Box<dyn Write + Send>) -> Output {
        Output {
            path,
            out,
            buf: Vec::with_capacity(BUFFER_BYTES),
            lines: 0,
            torn: false,
            failing: false,
        }
    }

    fn push(&mut self, line: &[u8], c: &Counters) {
        if self.buf.len() + line.len() > BUFFER_BYTES {
            self.flush(c);
        }
        self.buf.extend_from_slice(line);
        self.lines += 1;
    }

    /// Writes what is buffered: the whole lines the file took are written, the rest dropped.
    fn flush(&mut self, c: &Counters) {
        if self.buf.is_empty() {
            return;
        }
        if self.torn && self.write_all(b"\n").is_ok() {
            self.torn = false;
        }
        let (taken, error) = if self.torn {
            (
                0,
                Some(std::io::Error::other(
                    "the torn line before could not be ended",
                )),
            )
        } else {
            let mut taken = 0;
            let error = loop {
                match self.out.write(&self.buf[taken..]) {
                    Ok(0) => break Some(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        taken += n;
                        if taken == self.buf.len() {
                            break self.out.flush().err();
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Some(e),
                }
            };
            (taken, error)
        };
        let whole = self.buf[..taken].iter().filter(|&&b| b == b'\n').count() as u64;
        c.written.inc_by(whole);
        c.dropped.inc_by(self.lines - whole);
        self.torn |= taken > 0 && self.buf[taken - 1] != b'\n';
        match error {
            Some(e) if !self.failing => {
                self.failing = true;
                tracing::error!(path = ?self.path, "the access log cannot be written, its lines are dropped (counted) until it can: {e}");
            }
            None if self.failing => {
                self.failing = false;
                tracing::warn!(path = ?self.path, "the access log is written again");
            }
            _ => {}
        }
        self.buf.clear();
        self.lines = 0;
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.out.flush()
    }

    /// After logrotate moved the file: write out what is buffered to the old one, go on in a new
    /// one at the configured path. If it cannot be opened, the old one is kept.
    fn reopen(&mut self, c: &Counters) {
        let Some(path) = self.path.clone() else {
            return;
        };
        self.flush(c);
        match append(&path) {
            Ok(f) => {
                self.out = Box::new(f);
                self.torn = false;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), "cannot reopen the access log, writing on to the old file: {e}")
            }
        }
    }
}

/// Opens for appending; a new file is readable by its owner and group only: it holds customer
/// ids and client addresses.
fn append(p: &PathBuf) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: "2026-12-01T10:00:00.000Z".into(),
            request_id: "r1".into(),
            client: Some("10.0.0.1".parse().unwrap()),
            method: "GET".into(),
            host: "shop.example".into(),
            path: "/a b\"c".into(),
            protocol: "HTTP/1.1",
            status: 200,
            bytes_in: 0,
            bytes_out: 12,
            duration_ms: 1.5,
            upstream_ms: Some(1.0),
            route: Some("site".into()),
            upstream: Some("127.0.0.1:9000".into()),
            attempts: 1,
            outcome: "ok",
            customer: "".into(),
            tier: "standard".into(),
            score: None,
            state: "ok",
            protected: false,
            protection: None,
        }
    }

    /// A disk with `room` bytes left: it takes what fits, then says it is full.
    #[derive(Clone, Default)]
    struct Disk {
        file: Arc<parking_lot::Mutex<Vec<u8>>>,
        room: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for Disk {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let room = self.room.load(Ordering::Relaxed);
            if room == 0 {
                return Err(std::io::ErrorKind::StorageFull.into());
            }
            let n = b.len().min(room);
            self.room.fetch_sub(n, Ordering::Relaxed);
            self.file.lock().extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn counted(c: &Counters) -> (u64, u64) {
        (c.written.get(), c.dropped.get())
    }

    #[test]
    fn a_full_disk_counts_lines_dropped_not_written_and_tears_at_most_one_line() {
        let c = Counters::register(&Registry::new());
        let disk = Disk::default();
        disk.room.store(20, Ordering::Relaxed);
        let mut out = Output::to(None, Box::new(disk.clone()));
        for line in ["first line\n", "second line\n", "third line\n"] {
            out.push(line.as_bytes(), &c);
        }
        out.flush(&c);
        // 20 bytes: the first line whole, the second torn.
        assert_eq!(counted(&c), (1, 2));
        assert_eq!(disk.file.lock().as_slice(), b"first line\nsecond li");
        // Still full: nothing more is written, and nothing is counted written.
        out.push(b"fourth line\n", &c);
        out.flush(&c);
        assert_eq!(counted(&c), (1, 3));
        // Room again: the next line starts on a line of its own.
        disk.room.store(1000, Ordering::Relaxed);
        out.push(b"fifth line\n", &c);
        out.flush(&c);
        assert_eq!(counted(&c), (2, 3));
        let text = String::from_utf8(disk.file.lock().clone()).unwrap();
        assert_eq!(text, "first line\nsecond li\nfifth line\n");
    }

    #[test]
    fn a_client_chosen_path_cannot_forge_fields_in_the_combined_format() {
        let mut out = Vec::new();
        entry().write(Format::Combined, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.starts_with(
                "10.0.0.1 - - [2026-12-01T10:00:00.000Z] \"GET /a_b_c HTTP/1.1\" 200 12"
            ),
            "{line}"
        );
        assert!(line.ends_with("state=ok protected=no\n"), "{line}");
        let mut out = Vec::new();
        entry().write(Format::Json, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/a b\"c");
    }
}
