//! Where access log lines go: a bounded buffer filled by requests and a writer thread that
//! empties it into a file, stdout or stderr, off the request path.
//!
//! # Several generations, one file, whole lines
//! Every worker process opens the target itself (a file with `O_APPEND`; stdout and stderr as
//! inherited) and writes only whole lines, each batch with one `write`:
//! - to a regular file, `O_APPEND` makes the kernel move to the end and write as one step, and
//!   Linux holds the file's lock for a whole `write`, so the batches of two generations (or two
//!   servers) never interleave and nothing is overwritten. A batch is at most [`MAX_BUFFER`].
//! - to a pipe (stdout under a container runtime or systemd) only writes of at most `PIPE_BUF`
//!   (4096) bytes are atomic, so batches are cut, at line ends, into writes of at most that; a
//!   line is never longer ([`super::line::MAX_LINE`]).
//!
//! So nothing is lost, doubled or interleaved across restarts, with no coordination between
//! processes. (A short write, which a regular file gives only when the disk is full, is
//! completed by a second `write`, which another process's batch could precede; the lines it held
//! are then at worst split, never lost or doubled.)
//!
//! # Bounded, and never in a request's way
//! A request formats its line straight into the buffer, under a lock held only for that (about
//! 231 instructions for the usual JSON line, the lock's included: `parking_lot`'s, which has no
//! poisoning to check; no scratch buffer, no copy).
//! The writer thread takes the whole buffer (swapping in an empty one), writes it without the
//! lock, and waits again: at most [`FLUSH_EVERY`], or until the buffer passes [`WAKE_AT`]. If the
//! output does not keep up — a stdout pipe nobody reads, a full disk, a file on a hung NFS
//! mount — the writer is stuck in its `write`, the buffer fills to [`MAX_BUFFER`], and lines
//! that do not fit are **dropped and counted**: memory stays bounded and no request ever waits
//! on the output. The count is reported (a warning on stderr naming the target) at most once a
//! second once the writer gets going again. A write that fails (`ENOSPC`, `EPIPE`) drops its
//! batch, counted the same way.
//!
//! # Reopening, and the end
//! [`Sink::ask_reopen`] (`apphost reopen-logs`) has the writer write what it holds to the old
//! file, then open the path anew (creating it), for logrotate's rename-then-reopen: the lines
//! before go to the renamed file, the lines after to the new one, none is lost.
//! [`Sink::wait_reopened`] returns once that is done (or why it failed: the path cannot be
//! opened, and the writer goes on with the file it has open), so `reopen-logs` can answer only
//! when the renamed file is complete: logrotate may compress it at once. [`Sink::close`] (a worker
//! exiting, after its drain) has the writer write everything and stop, waiting for it at most
//! [`CLOSE_WAIT`]: an output that is stuck then cannot hold the worker's exit.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::line::{Buf, Cache, WINDOW};
use crate::config::LogTarget;

/// The most bytes of lines held (in each of the two buffers: the one filling, the one written).
pub(crate) const MAX_BUFFER: usize = 1 << 20;
/// The writer is woken early when this much waits.
const WAKE_AT: usize = 64 << 10;
/// The size each of the two buffers starts at and goes back to: room for what comes in while
/// the writer wakes past [`WAKE_AT`], so a steady flow of lines never grows it.
const START_SIZE: usize = 2 * WAKE_AT + WINDOW;
/// Lines wait at most this long for the writer.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long closing waits for the writer to write what it holds.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Writes to anything but a regular file are at most this (Linux's `PIPE_BUF`).
const PIPE_BUF: usize = 4096;

/// One output and its writer thread.
#[derive(Debug)]
pub(crate) struct Sink {
    target: LogTarget,
    shared: Mutex<Shared>,
    /// Wakes the writer.
    wake: Condvar,
    /// Wakes `close` when the writer has finished.
    finished: Condvar,
    /// Lines dropped and not yet reported.
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    /// The lines queued are its first `used` bytes; past them it is zero-filled (or holds old
    /// lines), at least [`WINDOW`] bytes of it, where the next line is formatted in place.
    lines: Vec<u8>,
    used: usize,
    /// The most bytes `used` may reach: [`MAX_BUFFER`], 0 once closing (every line is dropped:
    /// one comparison for both).
    limit: usize,
    /// What formatting keeps from line to line (the second, the last client).
    cache: Cache,
    /// The writer was woken for `lines` already.
    woken: bool,
    reopen: bool,
    /// Reopens asked for ([`Sink::ask_reopen`]) and done by the writer, and how the last one
    /// done went: [`Sink::wait_reopened`] waits for `reopens_done` to reach its ticket.
    reopens_asked: u64,
    reopens_done: u64,
    reopen_result: Result<(), String>,
    closing: bool,
    /// The writer has stopped.
    done: bool,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            lines: Vec::new(),
            used: 0,
            limit: MAX_BUFFER,
            cache: Cache::default(),
            woken: false,
            reopen: false,
            reopens_asked: 0,
            reopens_done: 0,
            reopen_result: Ok(()),
            closing: false,
            done: false,
        }
    }
}

impl Shared {
    /// The lines queued, leaving no buffer (the writer's last batch, at close).
    fn take_lines(&mut self) -> Vec<u8> {
        let mut lines = std::mem::take(&mut self.lines);
        lines.truncate(std::mem::take(&mut self.used));
        lines
    }
}

/// Make room in `lines` for a line at `used` (zero-filled: a line is formatted into initialized
/// bytes), doubling, up to [`MAX_BUFFER`] and a line; returns the room.
#[cold]
fn grow(lines: &mut Vec<u8>, used: usize) -> &mut Buf {
    let want = (used + WINDOW)
        .max(2 * lines.len())
        .min(MAX_BUFFER + WINDOW)
        .max(used + WINDOW);
    lines.resize(want, 0);
    (&mut lines[used..used + WINDOW]).try_into().unwrap()
}

impl Sink {
    /// Open `target` and start its writer thread.
    pub(crate) fn open(target: LogTarget) -> std::io::Result<Arc<Sink>> {
        let out = Output::open(&target)?;
        let sink = Arc::new(Sink {
            target,
            shared: Mutex::new(Shared {
                lines: vec![0; START_SIZE],
                ..Default::default()
            }),
            wake: Condvar::new(),
            finished: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let s = sink.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || s.writer(out))?;
        Ok(sink)
    }

    /// Where it writes.
    pub(crate) fn target(&self) -> &LogTarget {
        &self.target
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock()
    }

    /// Queue one line (with its newline): dropped, and counted, if the buffer is full.
    #[cfg(test)]
    pub(crate) fn append(&self, line: &[u8]) {
        self.append_with(|buf, _| {
            buf[..line.len()].copy_from_slice(line);
            line.len()
        });
    }

    /// Queue the line `format` writes (with its newline) at the start of the buffer it is given,
    /// returning its length: formatted in place, under the lock (no copy, one lock). Dropped, and
    /// counted, if the buffer is full or the sink closing.
    #[inline]
    pub(crate) fn append_with(&self, format: impl FnOnce(&mut Buf, &mut Cache) -> usize) {
        let mut s = self.lock();
        // `used` never passes MAX_BUFFER (see below): saying so leaves one bounds check.
        let at = s.used.min(MAX_BUFFER);
        let Shared { lines, cache, .. } = &mut *s;
        let buf = match lines.get_mut(at..at + WINDOW).map(<&mut Buf>::try_from) {
            Some(Ok(b)) => b,
            _ => grow(lines, at),
        };
        let n = format(buf, cache);
        if at + n > s.limit {
            drop(s);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        s.used = at + n;
        if s.used >= WAKE_AT && !s.woken {
            s.woken = true;
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Have the writer write what it holds, then open the file anew (nothing for stdout and
    /// stderr); the ticket to wait for it with ([`Sink::wait_reopened`]).
    pub(crate) fn ask_reopen(&self) -> u64 {
        let mut s = self.lock();
        s.reopen = true;
        s.reopens_asked += 1;
        let ticket = s.reopens_asked;
        drop(s);
        self.wake.notify_one();
        ticket
    }

    /// Wait, until `deadline` at most, for the reopen `ticket` (or a later one) to be done:
    /// every line queued before it written to the file open until then, and the path opened
    /// anew. Its error, or why it did not finish in time.
    pub(crate) fn wait_reopened(&self, ticket: u64, deadline: Instant) -> Result<(), String> {
        let mut s = self.lock();
        while s.reopens_done < ticket {
            if s.done {
                return Err(format!(
                    "access log {}: its writer has stopped (the worker is exiting)",
                    self.target
                ));
            }
            if self.finished.wait_until(&mut s, deadline).timed_out() && s.reopens_done < ticket {
                return Err(format!(
                    "access log {}: not reopened in time: its writer is still writing to the \
                     file open (a slow or stuck disk?); it reopens when that write returns",
                    self.target
                ));
            }
        }
        s.reopen_result.clone()
    }

    /// Write everything queued and stop the writer; waits for it at most [`CLOSE_WAIT`]. Lines
    /// appended afterwards are dropped.
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closing = true;
        s.limit = 0;
        self.wake.notify_one();
        let deadline = Instant::now() + CLOSE_WAIT;
        while !s.done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let lost = s.lines[..s.used].iter().filter(|&&b| b == b'\n').count();
                tracing::warn!(
                    "access log {}: output blocked for {} s at exit; {lost} line(s) not written",
                    self.target,
                    CLOSE_WAIT.as_secs()
                );
                return;
            }
            self.finished.wait_for(&mut s, left);
        }
    }

    /// Open the file anew in place of `out` (nothing for stdout and stderr); on failure `out`
    /// stays, and the reason is returned.
    fn reopen_output(&self, out: &mut Output) -> Result<(), String> {
        let LogTarget::File(p) = &self.target else {
            return Ok(());
        };
        match Output::open(&self.target) {
            Ok(o) => {
                *out = o;
                tracing::info!("access log {} reopened", p.display());
                Ok(())
            }
            Err(e) => {
                let why = format!("cannot reopen {}: {e}", p.display());
                tracing::warn!("access log: {why}; writing to the file already open");
                Err(why)
            }
        }
    }

    /// The writer thread's loop.
    fn writer(&self, mut out: Output) {
        // The buffer the lines were queued in, swapped for this one (zero-filled, as `lines`).
        let mut batch = vec![0; START_SIZE];
        let mut reported = Instant::now() - FLUSH_EVERY;
        loop {
            let (used, reopen, closing) = {
                let mut s = self.lock();
                self.wake.wait_while_for(
                    &mut s,
                    |s| !s.woken && !s.reopen && !s.closing,
                    FLUSH_EVERY,
                );
                std::mem::swap(&mut s.lines, &mut batch);
                let used = std::mem::take(&mut s.used);
                s.woken = false;
                let reopen = std::mem::take(&mut s.reopen).then_some(s.reopens_asked);
                (used, reopen, s.closing)
            };
            if used > 0 {
                let lines = &batch[..used];
                if let Err(e) = out.write_lines(lines) {
                    let lines = lines.iter().filter(|&&b| b == b'\n').count() as u64;
                    self.dropped.fetch_add(lines, Ordering::Relaxed);
                    tracing::warn!("access log {}: write failed: {e}", self.target);
                }
                if batch.len() > 4 * START_SIZE {
                    batch.truncate(START_SIZE);
                    batch.shrink_to_fit();
                }
            }
            if let Some(ticket) = reopen {
                let result = self.reopen_output(&mut out);
                let mut s = self.lock();
                s.reopens_done = ticket;
                s.reopen_result = result;
                self.finished.notify_all();
            }
            if self.dropped.load(Ordering::Relaxed) > 0
                && (closing || reported.elapsed() >= FLUSH_EVERY)
            {
                reported = Instant::now();
                let n = self.dropped.swap(0, Ordering::Relaxed);
                tracing::warn!(
                    "access log {}: {n} line(s) dropped: the output did not keep up (buffer of {} KiB full) or failed",
                    self.target,
                    MAX_BUFFER >> 10
                );
            }
            if closing {
                // Whatever came in while this batch was written goes too.
                let rest = self.lock().take_lines();
                if !rest.is_empty() {
                    let _ = out.write_lines(&rest);
                }
                let mut s = self.lock();
                s.done = true;
                self.finished.notify_all();
                return;
            }
        }
    }
}

/// The writer's open output.
struct Output {
    file: File,
    /// The most bytes one `write` may carry without splitting a line from another process's.
    max_write: usize,
}

impl Output {
    fn open(target: &LogTarget) -> std::io::Result<Output> {
        let file = match target {
            LogTarget::File(p) => std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .custom_flags(rustix::fs::OFlags::CLOEXEC.bits() as i32)
                .open(p)?,
            LogTarget::Stdout => File::from(rustix::io::dup(rustix::stdio::stdout())?),
            LogTarget::Stderr => File::from(rustix::io::dup(rustix::stdio::stderr())?),
        };
        // A regular file takes a batch in one write; a pipe, a terminal or a socket only
        // PIPE_BUF bytes atomically.
        let regular = file.metadata()?.file_type().is_file();
        Ok(Output {
            file,
            max_write: if regular { MAX_BUFFER } else { PIPE_BUF },
        })
    }

    /// Write `batch` (whole lines) in writes of at most `max_write` bytes, each ending at a line
    /// end.
    fn write_lines(&mut self, mut batch: &[u8]) -> std::io::Result<()> {
        while !batch.is_empty() {
            let n = if batch.len() <= self.max_write {
                batch.len()
            } else {
                batch[..self.max_write]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(self.max_write, |i| i + 1)
            };
            self.file.write_all(&batch[..n])?;
            batch = &batch[n..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink on `DIR/a.log` that has queued `one`, the file then renamed to `DIR/a.log.1` (as
    /// logrotate does): the directory, the path and the sink.
    fn rotated_sink() -> (tempfile::TempDir, std::path::PathBuf, Arc<Sink>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let sink = Sink::open(LogTarget::File(path.clone())).unwrap();
        sink.append(b"one\n");
        std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
        (dir, path, sink)
    }

    #[test]
    fn lines_reach_the_file_by_close_and_reopen_follows_a_rename() {
        let (dir, path, sink) = rotated_sink();
        let ticket = sink.ask_reopen();
        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(sink.wait_reopened(ticket, deadline), Ok(()));
        // Once the wait is over, no sooner: the line before is in the renamed file, the path
        // is there anew.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.log.1")).unwrap(),
            "one\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        sink.append(b"two\n");
        sink.close();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.log.1")).unwrap(),
            "one\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        sink.append(b"late\n");
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_reopen_that_fails_says_why_and_keeps_writing_to_the_open_file() {
        let (dir, path, sink) = rotated_sink();
        let rotated = dir.path().join("a.log.1");
        // Something else took the path: a directory cannot be opened for appending.
        std::fs::create_dir(&path).unwrap();
        let ticket = sink.ask_reopen();
        let err = sink
            .wait_reopened(ticket, Instant::now() + Duration::from_secs(10))
            .unwrap_err();
        assert!(
            err.starts_with(&format!("cannot reopen {}: ", path.display())),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\n");
        sink.append(b"two\n");
        sink.close();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
        // A wait after the writer stopped does not hang.
        let ticket = sink.ask_reopen();
        assert!(
            sink.wait_reopened(ticket, Instant::now() + Duration::from_secs(10))
                .is_err()
        );
    }

    #[test]
    fn a_stuck_pipe_drops_and_counts_instead_of_growing_or_blocking() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let out = Output {
            file: File::from(w),
            max_write: PIPE_BUF,
        };
        let sink = Arc::new(Sink {
            target: LogTarget::Stdout,
            shared: Mutex::new(Shared::default()),
            wake: Condvar::new(),
            finished: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let s = sink.clone();
        std::thread::spawn(move || s.writer(out));
        // Nobody reads `r`: the pipe fills (64 KiB), the writer blocks, the buffer fills.
        let line = [b'x'; 99];
        let mut line = line.to_vec();
        line.push(b'\n');
        let start = Instant::now();
        for _ in 0..40_000 {
            sink.append(&line);
        }
        assert!(start.elapsed() < Duration::from_secs(5), "appends blocked");
        assert!(sink.lock().used <= MAX_BUFFER);
        assert!(sink.dropped.load(Ordering::Relaxed) > 0);
        drop(r);
    }
}
