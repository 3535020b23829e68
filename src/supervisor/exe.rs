//! Checks on an executable before a generation is started from it: it must exist, be a regular
//! file, be executable by us, and be a binary this machine can run (ELF of our architecture,
//! or a `#!` script). A file that fails is refused with the reason; nothing is stopped.
//!
//! The check runs on the supervisor's loop, so it must never block there, whatever sits at the
//! path. The file is opened with `O_NONBLOCK` (a FIFO opens at once instead of waiting for a
//! writer; a file under a lease answers `EWOULDBLOCK` instead of waiting up to
//! `lease-break-time`), and its type, mode and first bytes are read from that descriptor, so
//! what is judged is what was opened, not what a second lookup of the path finds.
//!
//! Running that same file: rather than executing through the kept descriptor
//! (`/proc/self/fd/N`, which breaks `#!` scripts and hides the path from the worker), the check
//! ends by looking the path up again and comparing its identity (device and inode) with the
//! descriptor's; a file swapped in meanwhile is refused. The worker is spawned right after, in
//! the same turn of the loop. A swap inside that last window can only make `execve` fail (a
//! FIFO or a non-program is refused by the kernel, without blocking), which fails the restart
//! with the old generation serving.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// An error about `path`: `PATH: what`.
fn about(path: &Path, what: impl std::fmt::Display) -> String {
    format!("{}: {what}", path.display())
}

/// Open `path` for reading without ever blocking.
fn open(path: &Path) -> Result<OwnedFd, String> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::WOULDBLOCK {
            about(
                path,
                "busy: another process holds a lease on it, so opening it would wait; try again",
            )
        } else {
            about(path, io::Error::from(e))
        }
    })
}

/// Check `path` and return it made absolute.
pub(crate) fn check(path: &Path) -> Result<PathBuf, String> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(path)
    };
    let fd = open(&abs)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| about(&abs, io::Error::from(e)))?;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => None,
        FileType::Directory => Some("a directory"),
        FileType::Fifo => Some("a FIFO"),
        FileType::CharacterDevice => Some("a character device"),
        FileType::BlockDevice => Some("a block device"),
        FileType::Socket => Some("a socket"),
        _ => Some("another kind of file"),
    };
    if let Some(kind) = kind {
        return Err(about(&abs, format!("not a regular file (it is {kind})")));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o111 == 0 {
        return Err(about(&abs, format!("not executable (mode {mode:o})")));
    }
    rustix::fs::access(&abs, rustix::fs::Access::EXEC_OK).map_err(|e| {
        about(
            &abs,
            format!("not executable by this user: {}", io::Error::from(e)),
        )
    })?;
    let mut head = [0u8; 20];
    let mut n = 0;
    while n < head.len() {
        match rustix::io::read(&fd, &mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(about(&abs, io::Error::from(e))),
        }
    }
    check_format(&head[..n]).map_err(|e| about(&abs, e))?;
    // The path must still name the file just checked.
    let now = rustix::fs::stat(&abs).map_err(|e| about(&abs, io::Error::from(e)))?;
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
        return Err(about(
            &abs,
            "replaced while it was being checked; try again",
        ));
    }
    Ok(abs)
}

/// Whether `path` is an ELF binary (not a `#!` script): only such a file is a program the
/// supervisor re-executes itself from. A script may run anything, differently each time; as a
/// worker that is harmless (a failing worker leaves the old one serving), as the supervisor it
/// would take the host's PID with it.
pub(crate) fn is_elf(path: &Path) -> bool {
    let Ok(fd) = open(path) else { return false };
    let mut head = [0u8; 4];
    matches!(rustix::io::read(&fd, &mut head), Ok(4)) && &head == b"\x7fELF"
}

/// ELF machine number of this build's target.
fn our_machine() -> Option<u16> {
    match std::env::consts::ARCH {
        "x86_64" => Some(62),
        "aarch64" => Some(183),
        "x86" => Some(3),
        "arm" => Some(40),
        "riscv64" => Some(243),
        "powerpc64" => Some(21),
        "s390x" => Some(22),
        _ => None,
    }
}

fn check_format(head: &[u8]) -> Result<(), String> {
    if head.starts_with(b"#!") {
        return Ok(());
    }
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return Err("not an executable this machine can run (no ELF header)".into());
    }
    let class_ok = match head[4] {
        1 => cfg!(target_pointer_width = "32"),
        2 => cfg!(target_pointer_width = "64"),
        _ => false,
    };
    let machine = match head[5] {
        1 => u16::from_le_bytes([head[18], head[19]]),
        2 => u16::from_be_bytes([head[18], head[19]]),
        _ => return Err("malformed ELF header".into()),
    };
    if !class_ok || our_machine().is_some_and(|m| m != machine) {
        return Err(format!(
            "ELF binary for another machine (class {}, machine {machine}); this is {}",
            head[4],
            std::env::consts::ARCH
        ));
    }
    let etype = if head[5] == 1 {
        u16::from_le_bytes([head[16], head[17]])
    } else {
        u16::from_be_bytes([head[16], head[17]])
    };
    if etype != 2 && etype != 3 {
        return Err(format!("ELF file is not an executable (type {etype})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn our_own_test_binary_passes() {
        let me = std::env::current_exe().unwrap();
        assert_eq!(check(&me).unwrap(), me);
    }

    #[test]
    fn missing_dir_garbage_and_non_executable_are_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            check(&d.path().join("nope"))
                .unwrap_err()
                .contains("No such file")
        );
        assert!(check(d.path()).unwrap_err().contains("not a regular file"));
        let f = d.path().join("garbage");
        std::fs::write(&f, b"this is not a program at all").unwrap();
        assert!(check(&f).unwrap_err().contains("not executable"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check(&f).unwrap_err().contains("no ELF header"));
        let s = d.path().join("script");
        std::fs::write(&s, b"#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check(&s).is_ok());
    }

    #[test]
    fn only_elf_binaries_count_as_programs() {
        assert!(is_elf(&std::env::current_exe().unwrap()));
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("script");
        std::fs::write(&s, b"#!/bin/sh\nexit 1\n").unwrap();
        assert!(!is_elf(&s));
        assert!(!is_elf(&d.path().join("missing")));
    }

    #[test]
    fn foreign_elf_is_refused() {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[16] = 2;
        h[18] = 0xb7; // aarch64 = 183
        let r = check_format(&h);
        if std::env::consts::ARCH == "aarch64" {
            assert!(r.is_ok());
        } else {
            assert!(r.unwrap_err().contains("another machine"));
        }
    }
}
