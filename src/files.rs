//! Reading the small files a configuration names (tokens, keys, certificates, tables,
//! templates, the configuration itself): a regular file, opened so that a pipe or a device
//! planted at the path neither blocks the open nor streams forever, and read to at most a
//! bound. A FIFO as a tokens file once hung `usher check`, and a reload, for good.
//!
//! Not here: files usher writes (logs, spools, snapshots), which have their own rules.

use std::io::Read;
use std::path::Path;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error("larger than {0} bytes")]
    TooLarge(u64),
}

/// The contents of `path`, a regular file of at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Without O_NONBLOCK, opening a FIFO for reading waits for a writer that never comes.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(ReadError::NotAFile);
    }
    let mut bytes = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_a_folder_or_a_device_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Would block for good on a plain open.
        assert!(matches!(read_regular(&fifo, 10), Err(ReadError::NotAFile)));
        assert!(matches!(
            read_regular(dir.path(), 10),
            Err(ReadError::NotAFile)
        ));
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 10),
            Err(ReadError::NotAFile)
        ));
        assert!(matches!(
            read_regular(&dir.path().join("none"), 10),
            Err(ReadError::Io(_))
        ));
        let f = dir.path().join("f");
        std::fs::write(&f, "0123456789").unwrap();
        assert_eq!(read_regular(&f, 10).unwrap(), b"0123456789");
        assert!(matches!(read_regular(&f, 9), Err(ReadError::TooLarge(9))));
    }
}
