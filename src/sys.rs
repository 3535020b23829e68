//! The only `unsafe` in apphost: handing file descriptors to a child process and adopting the
//! ones handed to us. Everything else (SCM_RIGHTS, `waitpid`, `prctl`) goes through rustix's safe
//! API.
//!
//! - [`prepare_child`]: in the forked child, just before `exec`, clear `FD_CLOEXEC` on the
//!   descriptors the child must inherit (listening sockets, its channel) and ask the kernel to
//!   send it `SIGTERM` if the supervisor dies (so no orphan worker serves forever).
//! - [`cloexec_from`]: at supervisor start, mark every descriptor it was started with
//!   close-on-exec, so workers inherit only what is passed to them.
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

/// Mark every open descriptor numbered `first` or above close-on-exec, so that a child started
/// later inherits only what [`prepare_child`] passes it. Called once at supervisor start: a
/// shell or service manager may have started `apphost run` with descriptors of its own open
/// (`exec 7<file`, a leaked pipe), and `std::process::Command` would hand them on to every
/// worker. Descriptors the supervisor adopts afterwards (systemd's sockets, through
/// [`adopt_fd`]) are close-on-exec anyway and passed on explicitly.
///
/// The numbers are read from `/proc/self/fd` (this runs before the supervisor's loop starts).
pub(crate) fn cloexec_from(first: RawFd) -> io::Result<()> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
            && fd >= first
        {
            fds.push(fd);
        }
    }
    // The directory's own descriptor is in the list and closed by now: skipped by EBADF.
    for fd in fds {
        // SAFETY: a borrow for the duration of two fcntl calls, which fail with EBADF if the
        // number is no longer open and only change the descriptor's close-on-exec flag.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        match rustix::io::fcntl_getfd(b) {
            Ok(flags) if !flags.contains(rustix::io::FdFlags::CLOEXEC) => {
                rustix::io::fcntl_setfd(b, flags | rustix::io::FdFlags::CLOEXEC)?;
            }
            Ok(_) | Err(rustix::io::Errno::BADF) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn stray_descriptors_become_close_on_exec() {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::empty()).unwrap();
        for fd in [&r, &w] {
            assert!(
                !rustix::io::fcntl_getfd(fd)
                    .unwrap()
                    .contains(rustix::io::FdFlags::CLOEXEC)
            );
        }
        cloexec_from(r.as_raw_fd().min(w.as_raw_fd())).unwrap();
        for fd in [&r, &w] {
            assert!(
                rustix::io::fcntl_getfd(fd)
                    .unwrap()
                    .contains(rustix::io::FdFlags::CLOEXEC)
            );
        }
    }
}
