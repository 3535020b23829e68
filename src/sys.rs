//! The only `unsafe` in apphost: handing file descriptors to a child process and adopting the
//! ones handed to us. Everything else (SCM_RIGHTS, `waitpid`, `prctl`) goes through rustix's safe
//! API.
//!
//! - [`prepare_child`]: in the forked child, just before `exec`, clear `FD_CLOEXEC` on the
//!   descriptors the child must inherit (listening sockets, its channel) and ask the kernel to
//!   send it `SIGTERM` if the supervisor dies (so no orphan worker serves forever).
//! - [`adopt_fd`]: turn a descriptor number read from the environment (`APPHOST_LISTEN_FDS`,
//!   `APPHOST_CHANNEL_FD`, systemd's `LISTEN_FDS`) into an [`OwnedFd`], after checking that it is
//!   open.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Arrange for `cmd`'s child to inherit `fds` (same numbers) and to get `SIGTERM` when its parent
/// dies.
pub(crate) fn prepare_child(cmd: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // operations are allowed. It only makes raw syscalls through rustix (fcntl, prctl), allocates
    // nothing (the Vec was built before fork and is only read), and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                // SAFETY: the parent keeps these descriptors open until after the spawn returns,
                // so each number refers to an open descriptor in the child too.
                let b = BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(b, rustix::io::FdFlags::empty())?;
            }
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            Ok(())
        });
    }
}

/// Take ownership of descriptor `raw`, which the parent process handed to us by number.
///
/// Fails if `raw` is not an open descriptor. The caller must call this at most once per number
/// (the environment variables naming them are read once, at start-up).
pub(crate) fn adopt_fd(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
    }
    // SAFETY: we only borrow for the duration of the fcntl call, which fails with EBADF if the
    // number is not open, and does nothing else.
    let flags = rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(raw) })?;
    // Do not leak it into grandchildren by accident.
    // SAFETY: as above, a borrow for one syscall on a descriptor we just saw open.
    let b = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_setfd(b, flags | rustix::io::FdFlags::CLOEXEC)?;
    // SAFETY: the descriptor is open (checked above) and, by the contract of the environment
    // variable it came from, owned by nobody else in this process: the start-up code reads each
    // number once.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Register an owned descriptor with tokio's reactor.
pub(crate) fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor that nobody else owns, it stays open for as long
    // as the `AsyncFd` holds it, and its `as_raw_fd` always returns the same number.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
