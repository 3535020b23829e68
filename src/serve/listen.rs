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
//! `TCP_DEFER_ACCEPT` (the server's `defer_accept`, on by default; nginx's `listen ... deferred`)
//! is set or cleared on a TCP listening socket by every worker that registers it: the kernel
//! keeps a new connection to itself until the client's first bytes arrive (an HTTP request, a
//! TLS ClientHello, a PROXY header: here the client always speaks first), so `accept` returns a
//! connection whose first read finds data, and the read that would find nothing yet, with the
//! wait for readiness after it, is not made. A client that connects and sends nothing is held by
//! the kernel, not by the worker (no descriptor, no task, not counted in `max_connections`), for
//! [`DEFER_ACCEPT_SECS`]: then the kernel retransmits its SYN-ACK, the client's next ACK makes
//! the connection acceptable all the same, and `header_read_timeout` runs from that `accept`. A
//! connection the client closes (or resets) without sending is handed over (or dropped) at once.
//! Connections the kernel holds belong to the listening socket, which the generations share: a
//! handoff loses none of them.
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
use tokio::io::unix::AsyncFd;

use crate::config::ListenAddr;
use crate::control::Probe;

/// Accept queue length asked for (the kernel caps it at `net.core.somaxconn`).
pub(crate) const BACKLOG: i32 = 4096;

/// `TCP_DEFER_ACCEPT`'s timeout with `defer_accept` on: how long the kernel holds a connection
/// that has sent nothing before handing it over anyway (one SYN-ACK retransmission; nginx's
/// `deferred` uses the same).
pub(crate) const DEFER_ACCEPT_SECS: u32 = 1;

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

    /// Set (`on`) or clear `TCP_DEFER_ACCEPT` on a TCP socket (see the module doc); nothing on a
    /// Unix socket.
    pub(crate) fn set_defer_accept(&self, on: bool) -> io::Result<()> {
        match self {
            Bound::Tcp(l) => {
                crate::sys::set_tcp_defer_accept(l.as_fd(), if on { DEFER_ACCEPT_SECS } else { 0 })
            }
            Bound::Unix(_) => Ok(()),
        }
    }

    /// Register with the current tokio runtime; a TCP socket gets `TCP_NODELAY`, which its
    /// connections inherit.
    pub(crate) fn into_tokio(self) -> io::Result<Listener> {
        Ok(match self {
            Bound::Tcp(l) => {
                let inherits_nodelay = socket2::SockRef::from(&l).set_tcp_nodelay(true).is_ok();
                Listener::Tcp(crate::sys::async_listener(l)?, inherits_nodelay)
            }
            Bound::Unix(l) => Listener::Unix(tokio::net::UnixListener::from_std(l)?),
        })
    }
}

/// A listening socket registered with the runtime.
#[derive(Debug)]
pub(crate) enum Listener {
    /// TCP, and whether its connections inherit `TCP_NODELAY` from it. Registered as the
    /// descriptor it is, not as a tokio `TcpListener`, whose `accept` registers every connection
    /// with the poller at once: connections are registered only when they must wait
    /// ([`super::lazy`]).
    Tcp(AsyncFd<TcpListener>, bool),
    /// Unix-domain stream.
    Unix(tokio::net::UnixListener),
}

/// An accepted connection.
pub(crate) enum Accepted {
    /// A TCP connection (non-blocking, not registered with the poller), its peer, and whether it
    /// already has `TCP_NODELAY` (inherited from the listening socket; if not, the accept loop
    /// sets it).
    Tcp(std::net::TcpStream, SocketAddr, bool),
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
            Listener::Tcp(l, nodelay) => loop {
                let mut ready = std::task::ready!(l.poll_read_ready(cx))?;
                if let Ok(r) = ready.try_io(|l| accept_tcp(l.get_ref())) {
                    return std::task::Poll::Ready(r.map(|(s, a)| Accepted::Tcp(s, a, *nodelay)));
                }
            },
            Listener::Unix(l) => l.poll_accept(cx).map(|r| r.map(|(s, _)| Accepted::Unix(s))),
        }
    }
}

/// Accept a connection on `l`: non-blocking and close-on-exec from `accept4` itself.
fn accept_tcp(l: &TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use rustix::net::{SocketFlags, acceptfrom_with};
    let (fd, addr) = acceptfrom_with(l, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    // A TCP peer always has an address; should the kernel not give one, it is unknown.
    let peer = addr
        .and_then(|a| SocketAddr::try_from(a).ok())
        .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    Ok((std::net::TcpStream::from(fd), peer))
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
    async fn accept_one(bound: Bound) -> std::net::TcpStream {
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

    fn defer_accept_of(bound: &Bound) -> u32 {
        crate::sys::tcp_defer_accept(bound.as_fd()).unwrap()
    }

    #[test]
    fn defer_accept_is_set_and_cleared_on_tcp_listeners_bound_or_adopted() {
        let addr = ListenAddr::parse("127.0.0.1:0").unwrap();
        let bound = bind(&addr, None).unwrap();
        assert_eq!(defer_accept_of(&bound), 0, "off until a worker sets it");
        bound.set_defer_accept(true).unwrap();
        assert_eq!(defer_accept_of(&bound), DEFER_ACCEPT_SECS);
        bound.set_defer_accept(false).unwrap();
        assert_eq!(defer_accept_of(&bound), 0);
        // A socket handed in (by the supervisor, or systemd) gets the config's setting too.
        let adopted = adopt(OwnedFd::from(
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        ))
        .unwrap();
        adopted.set_defer_accept(true).unwrap();
        assert_eq!(defer_accept_of(&adopted), DEFER_ACCEPT_SECS);
        // Nothing to set on a Unix socket.
        let dir = std::env::temp_dir().join(format!("apphost-defer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let unix = bind(
            &ListenAddr::parse(&format!("unix:{}/s", dir.display())).unwrap(),
            None,
        );
        unix.unwrap().set_defer_accept(true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Accept the next connection `listener` hands over within `within`, if any; its peer.
    async fn next_peer(listener: &Listener, within: std::time::Duration) -> Option<SocketAddr> {
        let accepted = tokio::time::timeout(within, poll_fn(|cx| listener.poll_accept(cx))).await;
        match accepted.ok()?.unwrap() {
            Accepted::Tcp(_, peer, _) => Some(peer),
            Accepted::Unix(_) => unreachable!("a TCP listener"),
        }
    }

    /// With `TCP_DEFER_ACCEPT`, a connection that has sent nothing is not handed over; one that
    /// connected after it and sent its request is. Without it, the first is handed over at once.
    #[tokio::test]
    async fn a_deferred_listener_hands_over_only_connections_that_have_sent_bytes() {
        use tokio::io::AsyncWriteExt;
        for defer in [true, false] {
            let bound = bind(&ListenAddr::parse("127.0.0.1:0").unwrap(), None).unwrap();
            bound.set_defer_accept(defer).unwrap();
            let addr = match &bound {
                Bound::Tcp(l) => l.local_addr().unwrap(),
                Bound::Unix(_) => unreachable!("a TCP listener"),
            };
            let listener = bound.into_tokio().unwrap();
            let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
            let short = std::time::Duration::from_millis(300);
            if defer {
                assert_eq!(
                    next_peer(&listener, short).await,
                    None,
                    "handed over silent"
                );
                let mut speaking = tokio::net::TcpStream::connect(addr).await.unwrap();
                speaking.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
                let long = std::time::Duration::from_secs(5);
                let peer = next_peer(&listener, long).await;
                assert_eq!(peer, Some(speaking.local_addr().unwrap()));
            } else {
                let peer = next_peer(&listener, std::time::Duration::from_secs(5)).await;
                assert_eq!(peer, Some(silent.local_addr().unwrap()));
            }
        }
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
