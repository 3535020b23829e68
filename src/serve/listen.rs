//! Listening sockets: bind one for a config address, or adopt one that was handed in (by the
//! supervisor, or by systemd socket activation).
//!
//! `:PORT` (all interfaces) binds a dual-stack `[::]:PORT` socket, falling back to
//! `0.0.0.0:PORT` where IPv6 is unavailable. Sockets get `SO_REUSEADDR` (so a restart of the
//! whole host can rebind while old connections sit in TIME_WAIT) but never `SO_REUSEPORT`: one
//! socket per address, passed from generation to generation.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ListenAddr;

/// Accept queue length asked for (the kernel caps it at `net.core.somaxconn`).
pub(crate) const BACKLOG: i32 = 4096;

/// Bind and listen on `addr`.
pub(crate) fn bind(addr: &ListenAddr) -> io::Result<TcpListener> {
    let sa = addr.socket_addrs();
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

/// Check that an adopted descriptor is a listening TCP socket, and make it non-blocking.
pub(crate) fn adopt(fd: std::os::fd::OwnedFd) -> io::Result<TcpListener> {
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
    Ok(socket.into())
}
