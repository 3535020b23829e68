//! Reading the small files a config names (the config itself, `token_file`) and checking the
//! ones read later (TLS cert and key) without trusting what sits at the path: it must be a
//! regular file, no larger than a cap, and opening it must never block.
//!
//! A FIFO opened the usual way blocks until a writer appears (so `apphost check` would hang),
//! and a device such as `/dev/zero` reads forever. So the file is opened with `O_NONBLOCK`
//! (a FIFO then opens at once), its type and size are taken from the open descriptor (no
//! window between a check and the open), and only then is it read, at most `cap + 1` bytes.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::error::io_message;

/// The largest config file read: far beyond any real one, small enough to parse at once.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The largest TLS certificate or key file accepted.
pub(crate) const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The largest `token_file` read.
pub(crate) const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Why a file named by the config cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    /// It cannot be opened or read.
    #[error("{}", io_message(.0))]
    Io(#[from] io::Error),
    /// It is not a regular file.
    #[error("not a regular file: it is {0}")]
    NotRegular(&'static str),
    /// It is larger than the cap.
    #[error("larger than the limit of {limit} bytes ({size} bytes)")]
    TooLarge {
        /// The file's size (at least the bytes read).
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// It is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotUtf8,
}

/// The kind of a non-regular file, for messages.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "another kind of file"
    }
}

/// Open `path` without blocking (whatever it is) and check, on the open descriptor, that it is
/// a regular file of at most `limit` bytes.
pub(crate) fn open_regular(
    path: &Path,
    limit: u64,
) -> Result<(File, std::fs::Metadata), FileError> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(kind(&meta)));
    }
    if meta.size() > limit {
        return Err(FileError::TooLarge {
            size: meta.size(),
            limit,
        });
    }
    Ok((file, meta))
}

/// Read the regular file at `path` as text, refusing anything else and anything over `limit`
/// bytes (also if it grew after the check). Returns the text and the file's metadata.
pub(crate) fn read_regular(
    path: &Path,
    limit: u64,
) -> Result<(String, std::fs::Metadata), FileError> {
    let (file, meta) = open_regular(path, limit)?;
    let mut bytes = Vec::with_capacity(meta.size() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| FileError::NotUtf8)?;
    Ok((text, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_others_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.yaml");
        std::fs::write(&f, "graceful: true\n").unwrap();
        assert_eq!(read_regular(&f, 100).unwrap().0, "graceful: true\n");
        // Over the cap, by its size.
        let e = read_regular(&f, 4).unwrap_err();
        assert!(
            matches!(e, FileError::TooLarge { size: 15, limit: 4 }),
            "{e}"
        );
        // A FIFO with no writer: refused at once instead of waiting for one.
        let fifo = d.path().join("fifo.yaml");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(
            read_regular(&fifo, 100).unwrap_err().to_string(),
            "not a regular file: it is a FIFO"
        );
        assert_eq!(
            read_regular(Path::new("/dev/zero"), 100)
                .unwrap_err()
                .to_string(),
            "not a regular file: it is a character device"
        );
        assert_eq!(
            read_regular(d.path(), 100).unwrap_err().to_string(),
            "not a regular file: it is a directory"
        );
        assert_eq!(
            read_regular(&d.path().join("missing"), 100)
                .unwrap_err()
                .to_string(),
            "No such file or directory"
        );
        let bin = d.path().join("bin");
        std::fs::write(&bin, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_regular(&bin, 100), Err(FileError::NotUtf8)));
    }
}
