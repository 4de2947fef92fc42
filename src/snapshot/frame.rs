//! The snapshot file's framing: a magic line and a format version, then records, each a kind byte,
//! a length and a postcard-encoded payload, then an end record with the number of records and a
//! CRC-32 of every byte before it. Written to a temporary file that is synced and renamed into
//! place, so a crash mid-write leaves the previous snapshot whole.
//!
//! A reader checks the whole file ([`verify`]) before anything is taken from it: a snapshot that
//! is cut short, corrupt, of another format version or not a snapshot at all is refused whole,
//! never half loaded.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 12] = b"USHER-STATE\n";
/// What `crate::snapshot` writes. Version 2 made a journey step 64 bytes (request id, score and
/// struggle marks); version 3 keeps the same step with whether it was slow, and "frustrated" as
/// the request's own judgement (version 2 counted a struggle in it). Versions 1 and 2 are still
/// read, so an upgrade keeps what the previous usher learned.
pub const VERSION: u32 = 3;
/// The oldest version this usher reads.
pub const OLDEST: u32 = 1;
/// The end record.
pub const END: u8 = 0xff;
/// No record is this large; a length beyond it is corruption, not an allocation to attempt.
const MAX_RECORD: u32 = 64 << 20;

/// Why a snapshot was not read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a usher snapshot (no magic line)")]
    Foreign,
    #[error("written in snapshot format v{0}; this usher reads v{OLDEST} to v{VERSION}")]
    Version(u32),
    #[error("cut short: it ends inside record {0}")]
    Truncated(u64),
    #[error("corrupt: {0}")]
    Corrupt(String),
}

/// Writes records to `<path>.tmp`; [`Self::finish`] ends the file and renames it to `path`.
pub struct FrameWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    crc: crc32fast::Hasher,
    records: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl FrameWriter {
    pub fn create(path: &Path) -> io::Result<Self> {
        Self::create_version(path, VERSION)
    }

    /// A writer of an older format, for tests that an upgrade reads what the previous usher wrote.
    pub(crate) fn create_version(path: &Path, version: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let mut w = FrameWriter {
            out,
            tmp,
            path: path.to_path_buf(),
            crc: crc32fast::Hasher::new(),
            records: 0,
            bytes: 0,
            buf: Vec::new(),
        };
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&version.to_le_bytes());
        w.raw(&head)?;
        Ok(w)
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    /// Appends one record of `kind` to `buf` (to be written with [`Self::write_encoded`]), so that
    /// encoding can happen under a lock and writing after it.
    pub fn encode<T: serde::Serialize>(buf: &mut Vec<u8>, kind: u8, value: &T) -> io::Result<()> {
        let at = buf.len();
        buf.push(kind);
        buf.extend_from_slice(&[0; 4]);
        let mut payload = postcard::to_extend(value, std::mem::take(buf))
            .map_err(|e| io::Error::other(format!("encoding a snapshot record: {e}")))?;
        let len = (payload.len() - at - 5) as u32;
        payload[at + 1..at + 5].copy_from_slice(&len.to_le_bytes());
        *buf = payload;
        Ok(())
    }

    /// Writes records made by [`Self::encode`]; `count` of them.
    pub fn write_encoded(&mut self, bytes: &[u8], count: u64) -> io::Result<()> {
        self.records += count;
        self.raw(bytes)
    }

    pub fn write<T: serde::Serialize>(&mut self, kind: u8, value: &T) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        Self::encode(&mut buf, kind, value)?;
        let r = self.write_encoded(&buf, 1);
        self.buf = buf;
        r
    }

    /// Ends the file, syncs it and puts it in place; returns its size.
    pub fn finish(mut self) -> io::Result<u64> {
        let crc = self.crc.clone().finalize();
        let mut end = vec![END];
        end.extend_from_slice(&12u32.to_le_bytes());
        end.extend_from_slice(&self.records.to_le_bytes());
        end.extend_from_slice(&crc.to_le_bytes());
        self.out.write_all(&end)?;
        self.bytes += end.len() as u64;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // The rename itself must reach the disk for the new file to be the one found.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.bytes)
    }
}

/// Reads records in order; `None` after the end record.
pub struct FrameReader {
    input: BufReader<File>,
    crc: crc32fast::Hasher,
    records: u64,
    done: bool,
    version: u32,
}

impl FrameReader {
    pub fn open(path: &Path) -> Result<Self, FrameError> {
        let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut head = [0u8; 16];
        if let Err(e) = input.read_exact(&mut head) {
            return Err(match e.kind() {
                io::ErrorKind::UnexpectedEof => FrameError::Foreign,
                _ => e.into(),
            });
        }
        if &head[..12] != MAGIC {
            return Err(FrameError::Foreign);
        }
        let version = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
        if !(OLDEST..=VERSION).contains(&version) {
            return Err(FrameError::Version(version));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        Ok(FrameReader {
            input,
            crc,
            records: 0,
            done: false,
            version,
        })
    }

    /// The format version the file was written in.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The next record's kind and payload; `None` once the end record has been checked.
    pub fn next_record(&mut self, payload: &mut Vec<u8>) -> Result<Option<u8>, FrameError> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        self.read(&mut head)?;
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_RECORD {
            return Err(FrameError::Corrupt(format!(
                "record {} claims {len} bytes",
                self.records
            )));
        }
        payload.resize(len as usize, 0);
        if kind == END {
            let crc = self.crc.clone().finalize();
            self.read(payload)?;
            if len != 12 {
                return Err(FrameError::Corrupt("malformed end record".into()));
            }
            let records = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
            let want = u32::from_le_bytes(payload[8..12].try_into().unwrap_or_default());
            if records != self.records || want != crc {
                return Err(FrameError::Corrupt(format!(
                    "checksum or record count does not match ({} records read, {records} written)",
                    self.records
                )));
            }
            let mut rest = [0u8; 1];
            if self.input.read(&mut rest)? != 0 {
                return Err(FrameError::Corrupt("data after the end record".into()));
            }
            self.done = true;
            return Ok(None);
        }
        self.crc.update(&head);
        self.read(payload)?;
        self.crc.update(payload);
        self.records += 1;
        Ok(Some(kind))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), FrameError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FrameError::Truncated(self.records),
            _ => e.into(),
        })
    }
}

/// Reads the whole file once, checking framing, count and checksum; nothing is decoded.
pub fn verify(path: &Path) -> Result<u64, FrameError> {
    let mut r = FrameReader::open(path)?;
    let mut buf = Vec::new();
    while r.next_record(&mut buf)?.is_some() {}
    Ok(r.records)
}

/// Decodes a record's payload.
pub fn decode<'a, T: serde::Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    postcard::from_bytes(payload)
        .map_err(|e| FrameError::Corrupt(format!("a record does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, n: u32) {
        let mut w = FrameWriter::create(path).unwrap();
        for i in 0..n {
            w.write(1, &(i, format!("record {i}"))).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        write(&p, 1000);
        assert_eq!(verify(&p).unwrap(), 1000);
        let mut r = FrameReader::open(&p).unwrap();
        let mut buf = Vec::new();
        let mut seen = 0;
        while let Some(kind) = r.next_record(&mut buf).unwrap() {
            assert_eq!(kind, 1);
            let (i, s): (u32, String) = decode(&buf).unwrap();
            assert_eq!((i, s), (seen, format!("record {seen}")));
            seen += 1;
        }
        assert_eq!(seen, 1000);
        assert!(!dir.path().join("s.tmp").exists());
    }

    #[test]
    fn truncated_corrupt_foreign_and_other_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        write(&p, 100);
        let good = std::fs::read(&p).unwrap();

        std::fs::write(&p, &good[..good.len() / 2]).unwrap();
        assert!(
            matches!(verify(&p), Err(FrameError::Truncated(_))),
            "{:?}",
            verify(&p)
        );
        std::fs::write(&p, &good[..good.len() - 3]).unwrap();
        assert!(matches!(verify(&p), Err(FrameError::Truncated(_))));

        let mut flipped = good.clone();
        flipped[22] ^= 0x55; // inside the first record's payload
        std::fs::write(&p, &flipped).unwrap();
        assert!(
            matches!(verify(&p), Err(FrameError::Corrupt(_))),
            "{:?}",
            verify(&p)
        );

        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&p, &longer).unwrap();
        assert!(matches!(verify(&p), Err(FrameError::Corrupt(_))));

        let mut older = good.clone();
        older[12..16].copy_from_slice(&0u32.to_le_bytes());
        std::fs::write(&p, &older).unwrap();
        assert!(matches!(verify(&p), Err(FrameError::Version(0))));

        std::fs::write(&p, b"[server]\nlisten = []\n").unwrap();
        assert!(matches!(verify(&p), Err(FrameError::Foreign)));
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(verify(&p), Err(FrameError::Foreign)));
        let mut huge = good[..16].to_vec();
        huge.push(1);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&p, &huge).unwrap();
        assert!(matches!(verify(&p), Err(FrameError::Corrupt(_))));
    }
}
