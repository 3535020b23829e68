//! Listening sockets: bind one for a config address, or adopt one that was handed in (by the
//! supervisor, or by systemd socket activation). TCP and Unix-domain stream sockets alike.
//!
//! `:PORT` (all interfaces) binds a dual-stack `[::]:PORT` socket, falling back to
//! `0.0.0.0:PORT` where IPv6 is unavailable. Sockets get `SO_REUSEADDR` (so a restart of the
//! whole host can rebind while old connections sit in TIME_WAIT) but never `SO_REUSEPORT`: one
//! socket per address, passed from generation to generation.
//!
//! `TCP_NODELAY` is set on the listening TCP socket when a worker registers it (bound or
//! adopted alike): Linux copies it to every connection `accept` returns, which saves a
//! `setsockopt` per connection. Where setting it fails, the accept loop sets it on each
//! connection instead ([`Accepted::Tcp`] says which).
//!
//! `unix:PATH`: a socket file already at the path is looked at first, without blocking (a
//! non-blocking connect): one nobody listens on (`ECONNREFUSED`: left by a host that crashed)
//! is removed and the path bound anew; one that answers is another running process's, and the
//! bind fails saying so; anything that is not a socket is never touched. The mode
//! (`unix_mode`) is set between `bind` and `listen`, so no client connects before it holds.
//! Workers never remove the file: the supervisor does, when the address leaves the config or the
//! host shuts down (see `supervisor::driver`).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::ListenAddr;
use crate::control::Probe;

/// Accept queue length asked for (the kernel caps it at `net.core.somaxconn`).
pub(crate) const BACKLOG: i32 = 4096;

/// A listening socket, bound or adopted, not yet registered with the runtime.
#[derive(Debug)]
pub(crate) enum Bound {
    /// TCP (IPv4 or IPv6).
    Tcp(TcpListener),
    /// Unix-domain stream.
    Unix(UnixListener),
}

impl Bound {
    /// The descriptor (to duplicate it for the supervisor).
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Bound::Tcp(l) => l.as_fd(),
            Bound::Unix(l) => l.as_fd(),
        }
    }

    /// Register with the current tokio runtime; a TCP socket gets `TCP_NODELAY`, which its
    /// connections inherit.
    pub(crate) fn into_tokio(self) -> io::Result<Listener> {
        Ok(match self {
            Bound::Tcp(l) => {
                let inherits_nodelay = socket2::SockRef::from(&l).set_tcp_nodelay(true).is_ok();
                Listener::Tcp(tokio::net::TcpListener::from_std(l)?, inherits_nodelay)
            }
            Bound::Unix(l) => Listener::Unix(tokio::net::UnixListener::from_std(l)?),
        })
    }
}

/// A listening socket registered with the runtime.
#[derive(Debug)]
pub(crate) enum Listener {
    /// TCP, and whether its connections inherit `TCP_NODELAY` from it.
    Tcp(tokio::net::TcpListener, bool),
    /// Unix-domain stream.
    Unix(tokio::net::UnixListener),
}

/// An accepted connection.
pub(crate) enum Accepted {
    /// A TCP connection, its peer, and whether it already has `TCP_NODELAY` (inherited from the
    /// listening socket; if not, the accept loop sets it).
    Tcp(tokio::net::TcpStream, SocketAddr, bool),
    /// A Unix-domain connection (its peer has no address worth keeping).
    Unix(tokio::net::UnixStream),
}

impl Listener {
    /// Accept one connection, or register the waker.
    pub(crate) fn poll_accept(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<Accepted>> {
        match self {
            Listener::Tcp(l, nodelay) => l
                .poll_accept(cx)
                .map(|r| r.map(|(s, a)| Accepted::Tcp(s, a, *nodelay))),
            Listener::Unix(l) => l.poll_accept(cx).map(|r| r.map(|(s, _)| Accepted::Unix(s))),
        }
    }
}

/// Bind and listen on `addr` (TCP or `unix:`); `unix_mode` sets a Unix socket's permission bits.
/// A `systemd:` address cannot be bound (only adopted): an error.
pub(crate) fn bind(addr: &ListenAddr, unix_mode: Option<u32>) -> io::Result<Bound> {
    if let Some(path) = addr.unix_path() {
        return bind_unix(path, unix_mode).map(Bound::Unix);
    }
    bind_tcp(addr).map(Bound::Tcp)
}

fn bind_tcp(addr: &ListenAddr) -> io::Result<TcpListener> {
    let Some(sa) = addr.socket_addrs() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only systemd can open this socket",
        ));
    };
    if addr.is_all_interfaces() {
        match bind_one(sa, true) {
            Ok(l) => Ok(l),
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::AFNOSUPPORT.raw_os_error())
                    || e.raw_os_error() == Some(rustix::io::Errno::ADDRNOTAVAIL.raw_os_error()) =>
            {
                bind_one(
                    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, sa.port())),
                    false,
                )
            }
            Err(e) => Err(e),
        }
    } else {
        bind_one(sa, false)
    }
}

fn bind_one(sa: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(sa), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack && sa.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&sa.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// What is at a Unix socket path before it is bound: nothing, a stale socket file (removed),
/// or a live socket (an error).
fn clear_stale(path: &Path) -> io::Result<()> {
    match crate::control::probe(path).map_err(|e| io::Error::other(e.to_string()))? {
        Probe::Absent => Ok(()),
        Probe::Stale => {
            tracing::info!(
                "removing the stale socket file {} (nothing listens on it)",
                path.display()
            );
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Probe::Alive => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another running process listens on this socket (a connection to it succeeded)",
        )),
    }
}

fn bind_unix(path: &Path, mode: Option<u32>) -> io::Result<UnixListener> {
    clear_stale(path)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    if let Some(m) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m))?;
    }
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Set the permission bits of an adopted Unix socket's file to `mode` (a config whose
/// `unix_mode` changed applies at the next generation, on the same socket).
pub(crate) fn set_unix_mode(path: &Path, mode: u32) -> io::Result<()> {
    let m = std::fs::symlink_metadata(path)?;
    if m.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Check that an adopted descriptor is a listening stream socket (TCP or Unix), and make it
/// non-blocking.
pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Bound> {
    let socket = Socket::from(fd);
    if socket.r#type()? != Type::STREAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a stream socket",
        ));
    }
    if !socket.is_listener()? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening socket",
        ));
    }
    socket.set_nonblocking(true)?;
    if socket.local_addr()?.is_unix() {
        Ok(Bound::Unix(socket.into()))
    } else {
        Ok(Bound::Tcp(socket.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// Accept one connection to `bound` (connecting to it from this task).
    async fn accept_one(bound: Bound) -> tokio::net::TcpStream {
        let addr = match &bound {
            Bound::Tcp(l) => l.local_addr().unwrap(),
            Bound::Unix(_) => unreachable!("a TCP listener"),
        };
        let listener = bound.into_tokio().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        match poll_fn(|cx| listener.poll_accept(cx)).await.unwrap() {
            Accepted::Tcp(s, _, inherited) => {
                assert!(inherited, "TCP_NODELAY could not be set on the listener");
                s
            }
            Accepted::Unix(_) => unreachable!("a TCP listener"),
        }
    }

    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_a_bound_listener() {
        let addr = ListenAddr::parse("127.0.0.1:0").unwrap();
        let stream = accept_one(bind(&addr, None).unwrap()).await;
        assert!(stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_an_adopted_listener() {
        // A listening socket made elsewhere (as systemd or the supervisor hands one in),
        // without TCP_NODELAY.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!socket2::SockRef::from(&plain).tcp_nodelay().unwrap());
        let stream = accept_one(adopt(OwnedFd::from(plain)).unwrap()).await;
        assert!(stream.nodelay().unwrap());
    }
}
