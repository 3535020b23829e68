//! Checks on an executable before a generation is started from it: it must exist, be a regular
//! file, be executable by us, and be a binary this machine can run (ELF of our architecture,
//! or a `#!` script). A file that fails is refused with the reason; nothing is stopped.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Check `path` and return it made absolute.
pub(crate) fn check(path: &Path) -> Result<PathBuf, String> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(path)
    };
    let meta = std::fs::metadata(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", abs.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{}: not executable (mode {:o})",
            abs.display(),
            meta.permissions().mode() & 0o7777
        ));
    }
    rustix::fs::access(&abs, rustix::fs::Access::EXEC_OK)
        .map_err(|e| format!("{}: not executable by this user: {e}", abs.display()))?;
    let mut head = [0u8; 20];
    let n = std::fs::File::open(&abs)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("{}: {e}", abs.display()))?;
    check_format(&head[..n]).map_err(|e| format!("{}: {e}", abs.display()))?;
    Ok(abs)
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
