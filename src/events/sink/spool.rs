//! A write-ahead disk queue of events, one per remote sink: every event is appended here before
//! delivery is attempted, and a cursor, persisted after each acknowledged batch, says how far
//! delivery has got. So an unreachable receiver loses nothing (events wait on disk, up to
//! `max_bytes`), a restart of usher loses nothing (the next process starts at the cursor), and a crash
//! between delivery and cursor costs a duplicate, never a loss: delivery is at least once.
//!
//! Segments of up to 4 MiB (`0000000001.jsonl`, ...) are deleted once delivered past. A line that
//! does not parse (a write cut short by a crash) is skipped and counted.
//!
//! One process at a time: opening takes an exclusive lock on the folder (`lock`, an advisory file
//! lock the kernel drops when the process ends, `kill -9` included), so two sinks, or an old and a
//! new process during a graceful upgrade, never write one spool at once; the second is told
//! `WouldBlock` and waits.

use super::super::model::CloudEvent;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const SEGMENT_MAX: u64 = 4 << 20;
const CURSOR: &str = "cursor";
const LOCK: &str = "lock";
/// Batches the receiver refused for good, one event per line, beside the spool.
pub const DEAD: &str = "dead.jsonl";
/// The dead-letter file stops growing here; what would go beyond is counted as dropped.
const DEAD_MAX: u64 = 64 << 20;

/// A place in the spool: segment number and byte offset within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

pub struct Spool {
    /// Held while the spool is open; dropping it releases the lock.
    _lock: File,
    dir: PathBuf,
    max_bytes: u64,
    writer: BufWriter<File>,
    write: Position,
    read: Position,
    pending: u64,
    corrupt: u64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:010}.jsonl"))
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".jsonl")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

impl Spool {
    /// Opens the spool in `dir`; `WouldBlock` when another process has it open.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is in use by another process", dir.display()),
                ))
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        let segs = segments(dir)?;
        let cursor = fs::read_to_string(dir.join(CURSOR)).ok().and_then(|c| {
            let (s, o) = c.trim().split_once(' ')?;
            Some(Position {
                segment: s.parse().ok()?,
                offset: o.parse().ok()?,
            })
        });
        let first = segs.first().copied().unwrap_or(1);
        let last = segs.last().copied().unwrap_or(1);
        let read = match cursor {
            // A cursor into a segment that is gone means that segment was delivered.
            Some(c) if c.segment >= first => c,
            _ => Position {
                segment: first,
                offset: 0,
            },
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, last))?;
        let write = Position {
            segment: last,
            offset: file.metadata()?.len(),
        };
        let mut pending = 0;
        for s in segs.iter().filter(|s| **s >= read.segment) {
            let len = fs::metadata(segment_path(dir, *s))
                .map(|m| m.len())
                .unwrap_or(0);
            pending += if *s == read.segment {
                len.saturating_sub(read.offset)
            } else {
                len
            };
        }
        Ok(Spool {
            _lock: lock,
            dir: dir.to_path_buf(),
            max_bytes,
            writer: BufWriter::new(file),
            write,
            read,
            pending,
            corrupt: 0,
        })
    }

    /// Bytes appended and not yet delivered.
    pub fn pending_bytes(&self) -> u64 {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Lines skipped because they did not parse.
    pub fn corrupt(&self) -> u64 {
        self.corrupt
    }

    /// Appends one event line. `Ok(false)`: the spool is full (`max_bytes`) and the event was not
    /// kept; the caller counts it.
    pub fn append(&mut self, line: &str) -> io::Result<bool> {
        let len = line.len() as u64;
        if self.pending + len > self.max_bytes {
            return Ok(false);
        }
        if self.write.offset > 0 && self.write.offset + len > SEGMENT_MAX {
            self.writer.flush()?;
            self.write = Position {
                segment: self.write.segment + 1,
                offset: 0,
            };
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(segment_path(&self.dir, self.write.segment))?;
            self.writer = BufWriter::new(file);
        }
        self.writer.write_all(line.as_bytes())?;
        self.write.offset += len;
        self.pending += len;
        Ok(true)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Up to `max` events from the cursor on, and the position after them. Does not move the
    /// cursor: call [`Self::commit`] once they are delivered.
    pub fn peek(&mut self, max: usize) -> io::Result<(Vec<CloudEvent>, Position)> {
        self.writer.flush()?;
        let mut out = Vec::new();
        let mut pos = self.read;
        while out.len() < max && pos < self.write {
            let path = segment_path(&self.dir, pos.segment);
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    pos = Position {
                        segment: pos.segment + 1,
                        offset: 0,
                    };
                    continue;
                }
                Err(e) => return Err(e),
            };
            file.seek(SeekFrom::Start(pos.offset))?;
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            while out.len() < max {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                pos.offset += n as u64;
                match serde_json::from_str::<CloudEvent>(line.trim_end()) {
                    Ok(e) => out.push(e),
                    Err(_) => self.corrupt += 1,
                }
            }
            if out.len() < max && pos.segment < self.write.segment {
                pos = Position {
                    segment: pos.segment + 1,
                    offset: 0,
                };
            } else {
                break;
            }
        }
        Ok((out, pos))
    }

    /// Keeps a batch the receiver refused for good in the dead-letter file (written through).
    /// `Ok(false)`: the file is full and the batch was not kept.
    pub fn dead_letter(&mut self, events: &[CloudEvent]) -> io::Result<bool> {
        let path = self.dir.join(DEAD);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let lines: String = events.iter().map(|e| e.to_json_line()).collect();
        if size + lines.len() as u64 > DEAD_MAX {
            return Ok(false);
        }
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(lines.as_bytes())?;
        Ok(true)
    }

    /// Delivery got as far as `to`: persist the cursor and drop delivered segments.
    pub fn commit(&mut self, to: Position) -> io::Result<()> {
        if to <= self.read {
            return Ok(());
        }
        let tmp = self.dir.join("cursor.tmp");
        {
            let mut f = File::create(&tmp)?;
            writeln!(f, "{} {}", to.segment, to.offset)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(CURSOR))?;
        let mut delivered = 0;
        for s in segments(&self.dir)?
            .into_iter()
            .filter(|s| *s <= to.segment)
        {
            let len = fs::metadata(segment_path(&self.dir, s))
                .map(|m| m.len())
                .unwrap_or(0);
            let from = if s == self.read.segment {
                self.read.offset
            } else {
                0
            };
            let until = if s == to.segment { to.offset } else { len };
            delivered += until.saturating_sub(from);
            if s < to.segment {
                fs::remove_file(segment_path(&self.dir, s))?;
            }
        }
        self.pending = self.pending.saturating_sub(delivered);
        self.read = to;
        Ok(())
    }
}

/// The newest `limit` dead letters in spool folder `dir`, oldest first.
pub fn dead_letters(dir: &Path, limit: usize) -> io::Result<Vec<CloudEvent>> {
    let text = match fs::read_to_string(dir.join(DEAD)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(limit);
    Ok(lines[skip..]
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::model::EventType;

    fn ev(i: u64) -> String {
        CloudEvent::new(
            "usher://t",
            EventType::Rerouted,
            &format!("c{i}"),
            i,
            "",
            serde_json::json!({ "i": i }),
        )
        .to_json_line()
    }

    #[test]
    fn delivers_in_order_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..10 {
            assert!(s.append(&ev(i)).unwrap());
        }
        let (batch, pos) = s.peek(4).unwrap();
        assert_eq!(
            batch.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>(),
            ["c0", "c1", "c2", "c3"]
        );
        s.commit(pos).unwrap();
        // Peeked but not committed: comes again after a restart.
        let (again, _) = s.peek(2).unwrap();
        assert_eq!(again[0].subject, "c4");
        s.flush().unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let (rest, pos) = s.peek(100).unwrap();
        assert_eq!(rest.len(), 6);
        assert_eq!(rest[0].subject, "c4");
        s.commit(pos).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.peek(10).unwrap().0.len(), 0);
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        let busy = Spool::open(dir.path(), 1 << 20).err().unwrap();
        assert_eq!(busy.kind(), io::ErrorKind::WouldBlock);
        drop(s);
        Spool::open(dir.path(), 1 << 20).unwrap();
    }

    #[test]
    fn rolls_segments_and_removes_delivered_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 64 << 20).unwrap();
        let line = ev(0);
        let n = (SEGMENT_MAX / line.len() as u64) * 2 + 10;
        for _ in 0..n {
            s.append(&line).unwrap();
        }
        assert_eq!(segments(dir.path()).unwrap().len(), 3);
        let mut total = 0;
        loop {
            let (b, pos) = s.peek(5000).unwrap();
            if b.is_empty() {
                break;
            }
            total += b.len() as u64;
            s.commit(pos).unwrap();
        }
        assert_eq!(total, n);
        assert_eq!(s.pending_bytes(), 0);
        assert_eq!(
            segments(dir.path()).unwrap().len(),
            1,
            "delivered segments are deleted"
        );
    }

    #[test]
    fn a_full_spool_refuses_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let line = ev(1);
        let mut s = Spool::open(dir.path(), line.len() as u64 * 2).unwrap();
        assert!(s.append(&line).unwrap());
        assert!(s.append(&line).unwrap());
        assert!(!s.append(&line).unwrap());
        s.flush().unwrap();
        drop(s);
        // A crash mid-write leaves half a line, and then a complete one after a restart.
        let seg = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"specversion\": \"1.0\", \"id\n").unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(&ev(2)).unwrap();
        let (b, _) = s.peek(10).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(s.corrupt(), 1);
    }
}
