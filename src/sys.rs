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
//!   `APPHOST_CHANNEL_FD`, systemd's `LISTEN_FDS`, a re-executed supervisor's handover) into an
//!   [`OwnedFd`], after checking that it is open; [`fd_is_open`] checks without adopting.
//! - [`exec`], [`exec_fd`]: the supervisor re-executing itself in place (same PID) from a new
//!   executable's path, or back into the previous image through a kept descriptor.
//! - [`block_stop_signals`], [`unblock_stop_signals`]: the supervisor's signals are held
//!   pending across that exec, until the new image has its handlers.
//! - [`monotonic_ns`]: the monotonic clock as plain nanoseconds, through libc (whose vDSO call
//!   valgrind understands; rustix's own vDSO lookup crashes under it, which the instruction
//!   counts of `bench/instructions.sh` need).
//! - [`IdBlock`]: request ids made as header values without checking each one's bytes (the
//!   block writes them, and writes only hex digits and `-`).
//! - [`set_tcp_defer_accept`], `tcp_defer_accept` (tests): `TCP_DEFER_ACCEPT` on a listening socket
//!   (neither rustix nor socket2 has it), through libc's `setsockopt` / `getsockopt`.
//! - [`BoxSlot`]: one box handed between threads by an atomic swap or compare-and-swap,
//!   without a lock (a connection's spare request record, and its record waiting for a flush).
//! - [`async_listener`]: a listening TCP socket registered with tokio as the descriptor it is
//!   (`serve::listen`), as [`async_fd`] does for other descriptors.
//! - [`recv_into`]: `recv` into the unfilled, possibly uninitialised part of a tokio `ReadBuf`
//!   (an unregistered connection's read, `serve::lazy`), without zeroing it first.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
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

/// Whether `raw` is an open descriptor (nothing about it changes).
pub(crate) fn fd_is_open(raw: RawFd) -> bool {
    // SAFETY: a borrow for one fcntl call, which fails with EBADF if the number is not open and
    // changes nothing.
    raw >= 0 && rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(raw) }).is_ok()
}

/// Read up to `max` bytes from the start of descriptor `raw` without taking it over or moving
/// its offset (a re-executed supervisor reads its handover this way: it may have to pass the
/// same descriptor on untouched).
pub(crate) fn pread_all(raw: RawFd, max: usize) -> io::Result<Vec<u8>> {
    if !fd_is_open(raw) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: open (checked above); borrowed only for the reads below, nobody closes it meanwhile
    // (this runs before the process has any other thread that could).
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    let mut out = vec![0u8; max + 1];
    let mut n = 0;
    while n < out.len() {
        match rustix::io::pread(fd, &mut out[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if n > max {
        return Err(io::Error::other(format!("longer than {max} bytes")));
    }
    out.truncate(n);
    Ok(out)
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::other("a NUL byte in an argument"))
}

/// `argv` and `envp` as the C arrays `execve` takes (the `CString`s own the bytes the
/// pointers point to, so they must outlive the call).
type CArgs = (Vec<CString>, Vec<*const libc::c_char>);

fn c_array(items: impl Iterator<Item = io::Result<CString>>) -> io::Result<CArgs> {
    let owned: Vec<CString> = items.collect::<io::Result<_>>()?;
    let mut ptrs: Vec<*const libc::c_char> = owned.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    Ok((owned, ptrs))
}

fn exec_args(argv: &[OsString], env: &[(OsString, OsString)]) -> io::Result<(CArgs, CArgs)> {
    let a = c_array(argv.iter().map(|a| cstring(a)))?;
    let e = c_array(env.iter().map(|(k, v)| {
        let mut kv = k.clone();
        kv.push("=");
        kv.push(v);
        cstring(&kv)
    }))?;
    Ok((a, e))
}

/// Replace this process's image with the program at `path` (`execve`: same PID, same children,
/// the descriptors without close-on-exec kept). Returns only if that failed, with why.
pub(crate) fn exec(path: &Path, argv: &[OsString], env: &[(OsString, OsString)]) -> io::Error {
    let p = match cstring(path.as_os_str()) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let ((_a, argv), (_e, envp)) = match exec_args(argv, env) {
        Ok(x) => x,
        Err(e) => return e,
    };
    // SAFETY: `p`, `argv` and `envp` are NUL-terminated strings and NULL-terminated arrays of
    // pointers into `CString`s (`_a`, `_e`) that live until after the call. On success the call
    // does not return; on failure nothing changed.
    unsafe { libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// Replace this process's image with the program open at `fd` (`fexecve`): the way back to the
/// previous supervisor image, whose file may have been replaced or deleted since. Returns only
/// if that failed.
pub(crate) fn exec_fd(fd: RawFd, argv: &[OsString], env: &[(OsString, OsString)]) -> io::Error {
    let ((_a, argv), (_e, envp)) = match exec_args(argv, env) {
        Ok(x) => x,
        Err(e) => return e,
    };
    // SAFETY: as in `exec`. `fd` is only a number to the kernel: a closed one fails with EBADF.
    unsafe { libc::fexecve(fd, argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// Set or clear close-on-exec on descriptor `raw`, which this process holds open (an
/// `OwnedFd` of the caller's, named by number because a handover lists them so).
pub(crate) fn set_cloexec(raw: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: a borrow for two fcntl calls, which fail with EBADF if the number is not open and
    // change only the descriptor's close-on-exec flag.
    let b = unsafe { BorrowedFd::borrow_raw(raw) };
    let flags = rustix::io::fcntl_getfd(b)?;
    let flags = if on {
        flags | rustix::io::FdFlags::CLOEXEC
    } else {
        flags - rustix::io::FdFlags::CLOEXEC
    };
    rustix::io::fcntl_setfd(b, flags)?;
    Ok(())
}

/// The signals the supervisor handles (stop signals, SIGUSR1, SIGCHLD).
const SUPERVISOR_SIGNALS: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGCHLD,
];

fn mask_supervisor_signals(how: libc::c_int) -> io::Result<()> {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before use; sigaddset and
    // pthread_sigmask only read and write it and this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SUPERVISOR_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        let r = libc::pthread_sigmask(how, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    Ok(())
}

/// Hold the supervisor's signals pending (this thread's mask, which `execve` keeps): a signal
/// that arrives while the image is being replaced is delivered once the new image has its
/// handlers, instead of killing it with the default action (SIGUSR1, SIGTERM) in between.
pub(crate) fn block_stop_signals() -> io::Result<()> {
    mask_supervisor_signals(libc::SIG_BLOCK)
}

/// Let the supervisor's signals through again (its handlers are installed).
pub(crate) fn unblock_stop_signals() -> io::Result<()> {
    mask_supervisor_signals(libc::SIG_UNBLOCK)
}

/// Register an owned descriptor with tokio's reactor.
pub(crate) fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor that nobody else owns, it stays open for as long
    // as the `AsyncFd` holds it, and its `as_raw_fd` always returns the same number.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Register an owned descriptor with tokio's reactor for `interest` only: the reactor's thread
/// is then not woken by the other readiness (a socket becoming writable again each time its
/// peer reads).
pub(crate) fn async_fd_for(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: as in `async_fd`.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(|e| e.into_parts().1)
}

/// Register a listening TCP socket with tokio's reactor, for readability only (accepting
/// connections to it: `serve::listen`).
pub(crate) fn async_listener(
    l: std::net::TcpListener,
) -> io::Result<tokio::io::unix::AsyncFd<std::net::TcpListener>> {
    // SAFETY: a `TcpListener` owns its open descriptor, nobody else closes it, it stays open for
    // as long as the `AsyncFd` holds it, and its `as_raw_fd` always returns the same number.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
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

/// `CLOCK_MONOTONIC` (the clock [`std::time::Instant`] reads) in nanoseconds.
#[inline]
pub(crate) fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable `timespec` for the call's duration, and
    // `CLOCK_MONOTONIC` is a clock every Linux has (it cannot fail with a valid pointer; if it
    // did, `t` stays zero).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// How many request ids an [`IdBlock`] holds.
pub(crate) const ID_BLOCK: usize = 64;
/// The length of a made request id: `PPPPPPPPPPPPPPPP-NNNNNNNNNNNNNNNN`.
pub(crate) const ID_LEN: usize = 33;

/// [`ID_BLOCK`] request ids `PPPPPPPPPPPPPPPP-NNNNNNNNNNNNNNNN` (a prefix and a number, each as
/// 16 hex digits) in one shared buffer, each handed out as a header value without checking its
/// bytes again: this type writes them, hex digits and `-` only, and nothing else can.
#[derive(Debug, Clone)]
pub(crate) struct IdBlock(bytes::Bytes);

/// The bytes of an [`IdBlock`]'s ids, owned by its `Bytes`.
struct Ids([[u8; ID_LEN]; ID_BLOCK]);

impl AsRef<[u8]> for Ids {
    fn as_ref(&self) -> &[u8] {
        self.0.as_flattened()
    }
}

impl IdBlock {
    /// A block with no ids (a thread's before its first).
    pub(crate) const EMPTY: IdBlock = IdBlock(bytes::Bytes::new());

    /// The ids of `prefix` and the numbers `first..first + ID_BLOCK`; `first` is a multiple of
    /// [`ID_BLOCK`] (so within a block only the last two digits change, with no carry).
    pub(crate) fn new(prefix: u64, first: u64) -> IdBlock {
        debug_assert_eq!(first % ID_BLOCK as u64, 0);
        let mut id = [b'-'; ID_LEN];
        id[..16].copy_from_slice(&hex16(prefix));
        id[17..].copy_from_slice(&hex16(first));
        let low = (first & 0xff) as usize;
        // Made on the stack (copies of a fixed size, no call per id), then moved once into the
        // `Bytes`' own allocation: shared from the start (a slice of it is one reference count,
        // with no first-clone promotion).
        let mut ids = [id; ID_BLOCK];
        for (i, id) in ids.iter_mut().enumerate() {
            let n = low + i;
            id[ID_LEN - 2] = HEX_DIGITS[(n >> 4) & 0xf];
            id[ID_LEN - 1] = HEX_DIGITS[n & 0xf];
        }
        IdBlock(bytes::Bytes::from_owner(Ids(ids)))
    }

    /// Whether every id of the block has been taken.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Take the block's next id (its ids come in order); panics if [`IdBlock::is_empty`].
    /// The block keeps the ids after it: the one `Bytes` splits, so an id costs one reference
    /// count and no range checks (the last one is the block's own reference).
    #[inline]
    pub(crate) fn take(&mut self) -> http::HeaderValue {
        let id = self.0.split_to(ID_LEN);
        // SAFETY: `from_maybe_shared_unchecked` needs bytes valid in a header value (visible
        // ASCII, space, tab). A block's bytes are all written by `new`, from `hex16`'s digits,
        // `HEX_DIGITS` and `-`, and it is only ever split at id boundaries (its length is a
        // multiple of `ID_LEN`; the empty block has none, and `split_to` panics past the end).
        unsafe { http::HeaderValue::from_maybe_shared_unchecked(id) }
    }
}

/// A slot holding at most one box, put and taken with one atomic swap each: an
/// `Option<Box<T>>` behind a lock, without the lock (a connection's spare request record,
/// handed from the flush that finished it to the next request, costs two swaps).
pub(crate) struct BoxSlot<T> {
    /// Null, or a pointer from `Box::into_raw` that the slot owns.
    ptr: std::sync::atomic::AtomicPtr<T>,
    /// Sent and shared as a `Mutex<Option<Box<T>>>` would be (`Send` and `Sync` when `T` is
    /// `Send`): a box moves whole from one thread to another, never shared.
    _owns: std::marker::PhantomData<std::sync::Mutex<Option<Box<T>>>>,
}

impl<T> BoxSlot<T> {
    /// An empty slot.
    pub(crate) const fn new() -> BoxSlot<T> {
        BoxSlot {
            ptr: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            _owns: std::marker::PhantomData,
        }
    }

    /// Take the box, if the slot holds one.
    #[inline]
    pub(crate) fn take(&self) -> Option<Box<T>> {
        let p = self
            .ptr
            .swap(std::ptr::null_mut(), std::sync::atomic::Ordering::Acquire);
        // SAFETY: a non-null pointer in the slot came from `Box::into_raw` (`put`) and was
        // owned by the slot; the swap took it out, so only this call has it (the `Acquire`
        // pairs with `put`'s release: the box's contents are visible here).
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }

    /// Put `b` in the slot if it is empty (one compare-and-swap); if it holds a box, hand `b`
    /// back.
    #[inline]
    pub(crate) fn put_if_empty(&self, b: Box<T>) -> Result<(), Box<T>> {
        let p = Box::into_raw(b);
        match self.ptr.compare_exchange(
            std::ptr::null_mut(),
            p,
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Relaxed,
        ) {
            Ok(_) => Ok(()),
            // SAFETY: the exchange failed, so the slot did not take `p`: it is still the
            // pointer `Box::into_raw` just made, owned by this call alone.
            Err(_) => Err(unsafe { Box::from_raw(p) }),
        }
    }

    /// Whether the slot holds a box (a load: it may be taken or put right after).
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        !self
            .ptr
            .load(std::sync::atomic::Ordering::Acquire)
            .is_null()
    }

    /// Put `b` in the slot (a box it held is dropped).
    #[inline]
    pub(crate) fn put(&self, b: Box<T>) {
        let old = self
            .ptr
            .swap(Box::into_raw(b), std::sync::atomic::Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: as in `take`: the swap took the slot's pointer out, to this call alone.
            drop(unsafe { Box::from_raw(old) });
        }
    }
}

impl<T> Default for BoxSlot<T> {
    fn default() -> BoxSlot<T> {
        BoxSlot::new()
    }
}

impl<T> Drop for BoxSlot<T> {
    fn drop(&mut self) {
        drop(self.take());
    }
}

impl<T> std::fmt::Debug for BoxSlot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let full = !self
            .ptr
            .load(std::sync::atomic::Ordering::Relaxed)
            .is_null();
        f.debug_struct("BoxSlot").field("full", &full).finish()
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `n` as 16 hex digits (lowercase), most significant first.
pub(crate) fn hex16(n: u64) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&hex8((n >> 32) as u32).to_be_bytes());
    out[8..].copy_from_slice(&hex8(n as u32).to_be_bytes());
    out
}

/// `n`'s 8 hex digits as the bytes of a `u64`, most significant digit in the highest byte: each
/// nibble spread into a byte of its own, then turned into its digit, all 8 at once.
#[inline]
fn hex8(n: u32) -> u64 {
    let x = u64::from(n);
    let x = ((x & 0xffff_0000) << 16) | (x & 0xffff);
    let x = ((x & 0x0000_ff00_0000_ff00) << 8) | (x & 0x0000_00ff_0000_00ff);
    let x = ((x & 0x00f0_00f0_00f0_00f0) << 4) | (x & 0x000f_000f_000f_000f);
    // A byte holding 10..=15 gets `'a' - '0' - 10` more (39), so it becomes a letter.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    x + 0x3030_3030_3030_3030 + letters * 39
}

/// Set `TCP_DEFER_ACCEPT` on the TCP socket `fd`: `accept` returns a connection only once its
/// first bytes have arrived, or after about `secs` seconds without any (0: off). The kernel
/// rounds `secs` up to a number of SYN-ACK retransmissions (1 s, 3 s, 7 s, ...).
pub(crate) fn set_tcp_defer_accept(fd: BorrowedFd<'_>, secs: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open descriptor for the call's duration (a borrow); `value` is a live
    // `c_int` and the length passed is its size, so the kernel reads exactly that. A descriptor
    // that is not a TCP socket fails with an error, it is not undefined behaviour.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `recv` from the socket `fd` into the unfilled part of `buf` (which may be uninitialised:
/// hyper hands over its buffer's spare capacity), and count what arrived as filled. Returns
/// the number of bytes received (0: the peer closed, or `buf` is full).
pub(crate) fn recv_into(fd: BorrowedFd<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: the slice is only written to, by the kernel through rustix's `recv` (which takes
    // `&mut [MaybeUninit<u8>]` and never reads or de-initialises it).
    let unfilled = unsafe { buf.unfilled_mut() };
    let ((received, _), _) = rustix::net::recv(fd, unfilled, rustix::net::RecvFlags::empty())?;
    let n = received.len();
    // SAFETY: `recv` initialised the first `n` bytes of the unfilled part (rustix returns them
    // as the initialised slice, at most the slice's length).
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

/// `TCP_DEFER_ACCEPT` of the TCP socket `fd`, in seconds as the kernel rounded it (0: off).
#[cfg(test)]
pub(crate) fn tcp_defer_accept(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is open for the call's duration (a borrow); `value` and `len` are live,
    // writable locals, and `len` holds `value`'s size, which bounds what the kernel writes.
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(u32::try_from(value).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests;
