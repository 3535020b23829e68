//! systemd integration: `sd_notify` messages (`Type=notify`) and socket activation
//! (`LISTEN_FDS`), both written from the protocol description, with no libsystemd.
//!
//! Notify: when `NOTIFY_SOCKET` is set, datagrams `READY=1`, `RELOADING=1`,
//! `STOPPING=1`, `STATUS=…`, `MAINPID=…` go to it (a path, or an abstract socket when it starts
//! with `@`). Workers never notify: the supervisor is systemd's main PID and speaks for them.
//!
//! Activation: when `LISTEN_PID` is our pid, descriptors 3 … 3+`LISTEN_FDS`-1 are listening
//! sockets; each is keyed by the address it is bound to (`:8199` for a wildcard address) and
//! used for the config address with the same key.

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

/// Take the sockets systemd passed, keyed by address. Empty when not socket-activated.
pub(crate) fn activated_sockets() -> BTreeMap<String, OwnedFd> {
    let mut out = BTreeMap::new();
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
    for raw in 3..3 + n {
        let fd = match crate::sys::adopt_fd(raw) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("LISTEN_FDS: fd {raw}: {e}");
                continue;
            }
        };
        let sock = socket2::Socket::from(fd);
        let key = match sock.local_addr().ok().and_then(|a| a.as_socket()) {
            Some(sa) => crate::config::addr::key_for(sa),
            None => {
                tracing::warn!("LISTEN_FDS: fd {raw} is not a TCP socket; ignored");
                continue;
            }
        };
        tracing::info!("adopted socket-activated listener [{key}] (fd {raw})");
        out.insert(key, sock.into());
    }
    out
}
