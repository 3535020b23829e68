//! systemd integration: `sd_notify` messages (`Type=notify`) and socket activation
//! (`LISTEN_FDS`), both written from the protocol description, with no libsystemd.
//!
//! Notify: when `NOTIFY_SOCKET` is set, datagrams `READY=1`, `RELOADING=1`,
//! `STOPPING=1`, `STATUS=…`, `MAINPID=…` go to it (a path, or an abstract socket when it starts
//! with `@`). Workers never notify: the supervisor is systemd's main PID and speaks for them.
//!
//! Activation: when `LISTEN_PID` is our pid, descriptors 3 … 3+`LISTEN_FDS`-1 are listening
//! sockets; each is keyed by the address it is bound to (`:8199` for a wildcard address,
//! `unix:/run/app.sock` for a Unix socket) and used for the config address with the same key.
//! `LISTEN_FDNAMES` (colon-separated, one name per descriptor: the unit's
//! `FileDescriptorName=`, or `--fdname` of `systemd-socket-activate`) names them: a config
//! address `systemd:NAME` takes the socket with that name, whatever it is bound to (see
//! `sockets`). When several sockets share a name, `systemd:NAME` takes the first.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

/// Send one notify message; does nothing when not run by systemd with `Type=notify`.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let r = (|| -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        // Never block the supervisor's loop on a slow reader.
        sock.set_nonblocking(true)?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        tracing::warn!("sd_notify {state:?} failed: {e}");
    }
}

/// One socket systemd passed.
#[derive(Debug)]
pub(crate) struct Activated {
    /// Its listener key: the address it is bound to (`:8199`, `unix:/run/app.sock`), or
    /// `systemd:NAME` for a socket with no such address (an abstract Unix socket).
    pub(crate) key: String,
    /// Its name from `LISTEN_FDNAMES`, if systemd gave one.
    pub(crate) name: Option<String>,
    /// The descriptor.
    pub(crate) fd: OwnedFd,
}

/// Take the sockets systemd passed, with their keys and names. Empty when not socket-activated.
pub(crate) fn activated_sockets() -> Vec<Activated> {
    let mut out = Vec::new();
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !pid_ok {
        return out;
    }
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':');
    let mut keys = BTreeMap::new();
    for raw in 3..3 + n {
        let name = names.next().filter(|n| !n.is_empty()).map(str::to_string);
        let fd = match crate::sys::adopt_fd(raw) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("LISTEN_FDS: fd {raw}: {e}");
                continue;
            }
        };
        let sock = socket2::Socket::from(fd);
        let local = sock.local_addr().ok();
        // A key travels in a comma-separated list to the workers: a path with a comma can
        // only be taken by name.
        let bound = local
            .as_ref()
            .and_then(|a| match a.as_socket() {
                Some(sa) => Some(crate::config::addr::key_for(sa)),
                None => a.as_pathname().map(crate::config::addr::unix_key),
            })
            .filter(|k| !k.contains(','));
        let key = match (bound, &name) {
            (Some(k), _) => k,
            (None, Some(n)) => format!("systemd:{n}"),
            (None, None) => {
                tracing::warn!(
                    "LISTEN_FDS: fd {raw} is neither a TCP nor a named Unix socket, and has no \
                     name; ignored"
                );
                continue;
            }
        };
        if keys.insert(key.clone(), raw).is_some() {
            tracing::warn!("LISTEN_FDS: fd {raw} is a second socket for [{key}]; ignored");
            continue;
        }
        match &name {
            Some(n) => {
                tracing::info!("adopted socket-activated listener [{key}] named {n:?} (fd {raw})")
            }
            None => tracing::info!("adopted socket-activated listener [{key}] (fd {raw})"),
        }
        out.push(Activated {
            key,
            name,
            fd: sock.into(),
        });
    }
    out
}
