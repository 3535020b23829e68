//! The control socket's place: a Unix stream socket owned by the supervisor, through which
//! `apphost status`, `apphost restart` and `apphost shutdown` reach a running host without any
//! HTTP route. The server is the supervisor's (`supervisor::control`), the client the CLI's
//! (`cli::client`); both find the socket here.
//!
//! # Where it is
//! [`socket_path`], used by both sides: `control.socket` from the config when set; otherwise
//! `$XDG_RUNTIME_DIR/apphost/<hash>.sock` when `XDG_RUNTIME_DIR` is set (and absolute), else
//! `/tmp/apphost-<uid>/<hash>.sock`, where `<hash>` is a 64-bit FNV-1a hash (16 hex digits) of
//! the config file path as given, made absolute but not resolved (so switching a symlinked
//! config to a new target keeps the name), or of the canonical working directory for the embedded
//! default. So the CLI finds the host given the same `-c FILE` (or, for the embedded default,
//! from the same directory and with the same `XDG_RUNTIME_DIR`); `--socket PATH` names the socket
//! directly. The derived directory is created with mode 0700 (an existing one must be ours and is
//! tightened to 0700); the socket is created with mode 0600, and connections from another user
//! (other than root) are refused.
//!
//! At start the supervisor removes a socket file left behind by a host that died, but only if
//! nothing answers on it: when another live host answers, this one runs without a control
//! socket (and says so). The file is removed when the supervisor exits.
//!
//! # Protocol
//! One request per connection: the client writes one JSON line, a [`crate::channel::Op`]
//! (`{"op":"status"}`, `{"op":"shutdown"}`, `{"op":"restart","exe":"/path"}`; `via` defaults to
//! `cli`), and reads one JSON line back, the [`OpResult`](crate::channel::OpResult) in serde's `Result` form:
//! `{"Ok":{"kind":"restarted","generation":2,"pid":4242,…}}` or
//! `{"Err":{"error":"busy","reason":"…"}}` (a line that is not an `Op` gets
//! `{"Err":{"error":"bad_request","reason":"…"}}`). The supervisor turns each request into an
//! operation of its one state machine, exactly like a signal or the admin page.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigSource};
use crate::fnv::fnv1a64;

/// Errors of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    /// Nothing listens at the path (no file, or a stale one).
    #[error("no apphost is running with the control socket {path} ({source})")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// What connect said.
        source: std::io::Error,
    },
    /// Another live host already answers on the path.
    #[error("{0} is in use by another running apphost")]
    InUse(PathBuf),
    /// The path or its directory cannot be used.
    #[error("{path}: {reason}")]
    Unusable {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing the socket failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The answer was not an `OpResult` line.
    #[error("unexpected answer from {path}: {answer:?}")]
    BadAnswer {
        /// The socket path.
        path: PathBuf,
        /// What came back.
        answer: String,
    },
}

pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The directory derived socket paths live in (see the module doc).
pub(crate) fn derived_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d).join("apphost"),
        _ => PathBuf::from(format!("/tmp/apphost-{}", effective_uid())),
    }
}

/// The control socket path of the host running `config` (see the module doc).
pub(crate) fn socket_path(config: &Config) -> PathBuf {
    if let Some(p) = &config.control.socket {
        return p.clone();
    }
    let key = match &config.source {
        ConfigSource::File(p) => std::path::absolute(p).unwrap_or_else(|_| p.clone()),
        ConfigSource::Embedded => std::env::current_dir()
            .and_then(std::fs::canonicalize)
            .unwrap_or_else(|_| PathBuf::from("/")),
    };
    derived_dir().join(format!("{:016x}.sock", fnv1a64(key.as_os_str().as_bytes())))
}

pub(crate) fn unusable(path: &Path, reason: impl Into<String>) -> ControlError {
    ControlError::Unusable {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What to do when the derived directory cannot be used.
const SET_SOCKET_HINT: &str = "set `control: { socket: /some/private/dir/apphost.sock }` in the \
     config (or point XDG_RUNTIME_DIR at a directory of yours) to put the control socket elsewhere";

/// Make sure the socket's directory exists. A derived directory must be a real directory owned
/// by us with no access for others (tightened to 0700 if needed); a configured one is only
/// created when missing. An unusable derived one is reported with how to choose another place.
pub(crate) fn prepare_dir(dir: &Path, derived: bool) -> Result<(), ControlError> {
    prepare_dir_inner(dir, derived).map_err(|e| match e {
        ControlError::Unusable { path, reason } if derived => ControlError::Unusable {
            path,
            reason: format!("{reason}; {SET_SOCKET_HINT}"),
        },
        e => e,
    })
}

fn prepare_dir_inner(dir: &Path, derived: bool) -> Result<(), ControlError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| unusable(dir, format!("cannot create the directory: {e}")))?;
    if !derived {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| unusable(dir, e.to_string()))?;
    if !meta.is_dir() {
        return Err(unusable(dir, "not a directory"));
    }
    if meta.uid() != effective_uid() {
        return Err(unusable(
            dir,
            format!("owned by uid {}, not by us", meta.uid()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| unusable(dir, format!("cannot make it private: {e}")))?;
    }
    Ok(())
}

/// What is at a socket path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    Absent,
    /// A socket file nobody listens on.
    Stale,
    /// Someone answers.
    Alive,
}

/// Look at `path` without blocking: a non-blocking connect tells a live listener (connected, or
/// `EAGAIN` when its backlog is full) from a stale file (`ECONNREFUSED`).
pub(crate) fn probe(path: &Path) -> Result<Probe, ControlError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Probe::Absent),
        Err(e) => return Err(unusable(path, e.to_string())),
    };
    if !meta.file_type().is_socket() {
        return Err(unusable(
            path,
            "exists and is not a socket; not touching it",
        ));
    }
    let addr = rustix::net::SocketAddrUnix::new(path).map_err(|e| unusable(path, e.to_string()))?;
    let fd = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| unusable(path, e.to_string()))?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => Ok(Probe::Alive),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INPROGRESS) => Ok(Probe::Alive),
        Err(rustix::io::Errno::CONNREFUSED) => Ok(Probe::Stale),
        Err(rustix::io::Errno::NOENT) => Ok(Probe::Absent),
        Err(e) => Err(unusable(
            path,
            format!("cannot tell whether it is in use: {e}"),
        )),
    }
}

/// The supervisor's end of the control socket. Dropping it stops accepting and removes the
/// socket file (if it is still the one this server created).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fnv1a() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn socket_path_is_configured_or_derived() {
        let mut c = Config::embedded().unwrap();
        c.control.socket = Some(PathBuf::from("/run/x.sock"));
        assert_eq!(socket_path(&c), PathBuf::from("/run/x.sock"));
        c.control.socket = None;
        let p = socket_path(&c);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 16 + ".sock".len(), "{name}");
        assert!(name.ends_with(".sock"));
        assert_eq!(p.parent().unwrap(), derived_dir());
        // Same config file, same path; another file, another path.
        let d = tempfile::tempdir().unwrap();
        let mut f = Config::embedded().unwrap();
        f.source = ConfigSource::File(d.path().join("a.yaml"));
        let mut g = f.clone();
        assert_eq!(socket_path(&f), socket_path(&g));
        g.source = ConfigSource::File(d.path().join("b.yaml"));
        assert_ne!(socket_path(&f), socket_path(&g));
    }

    #[test]
    fn derived_dir_must_be_ours_and_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("apphost");
        prepare_dir(&dir, true).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dir(&dir, true).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let file = d.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = prepare_dir(&file, true).unwrap_err().to_string();
        assert!(
            e.contains("File exists") && e.contains("control: { socket:"),
            "{e}"
        );
        // Owned by someone else (only root can stage that).
        if effective_uid() == 0 {
            rustix::fs::chown(&dir, Some(rustix::process::Uid::from_raw(65534)), None).unwrap();
            let e = prepare_dir(&dir, true).unwrap_err().to_string();
            assert!(
                e.contains("owned by uid 65534") && e.contains("control: { socket:"),
                "{e}"
            );
            // A configured directory is the user's choice: no ownership rule, no hint.
            prepare_dir(&dir, false).unwrap();
        }
    }
}
