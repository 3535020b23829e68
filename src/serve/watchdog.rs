//! The connection watchdog: one registry of a generation's live connections and one timer task
//! (the sweeper) that enforces every connection deadline, instead of a timer per connection or
//! per request.
//!
//! Why: arming, polling and cancelling a tokio timer on every request (hyper's header-read timer)
//! and watching a drain signal and a first-request timer on every wake-up of every connection
//! cost more than the rest of apphost's request path put together (`bench/instructions.sh`
//! counts it). Here the hot path only touches a few atomics of its own connection's
//! [`ConnState`]:
//! - a request starting marks the connection busy, its response body ending (being dropped by
//!   hyper) marks it idle again and stamps the time from a coarse clock the sweeper keeps;
//! - the connection's I/O and response bodies report write progress and output that waits on
//!   the client ([`super::progress`]): a connection whose last response is queued but not yet
//!   written is not idle;
//! - the connection's task checks one "killed" flag each time it is polled.
//!
//! The sweeper wakes every `tick` (at most 1 s; finer when a timeout is short; not at all while
//! there is no connection) and kills a connection — sets its flag and wakes its task, which then
//! drops the connection and so closes the socket — when its output has waited on the client
//! (a blocked write, or a response body hyper holds for want of window) with no write progress
//! for `send_timeout`, or when it is not busy, has no output waiting, and:
//! - it has sent no complete request head (and, on TLS, finished no handshake) within
//!   `header_read_timeout` of being accepted;
//! - it is HTTP/1 and has been idle for `idle_timeout` since its last response ended (a
//!   keep-alive connection's next request head must arrive within it); an HTTP/2 connection
//!   idle that long (no open stream) is not killed but asked to send GOAWAY and close;
//! - it is HTTP/1, the generation is draining and it has been idle for `keepalive_grace` since
//!   the drain began or its last response ended, whichever is later (see the drain rules in
//!   [`crate::serve`]);
//! - it is HTTP/2, has been told to go away (the drain, or the idle GOAWAY above) and is still
//!   open and idle `idle_timeout` later: its client never answered the GOAWAY's PING (see
//!   [`h2_told_at`] for why it is not cut after `keepalive_grace`).
//!
//! An upgraded connection (a WebSocket) is the application's: none of these deadlines apply to
//! it; during a drain, `stream_grace` closes it (see [`super::upgrade`]).
//!
//! Request bodies: a handler waiting for a request body that has delivered nothing for
//! `idle_timeout` (reported through [`crate::body::BodyWatch`]) is not left to wait forever: the
//! requests of that connection still waiting for their answer are told, and answer `408` with
//! `Connection: close`; if the body is still stalled at the next sweep (its response had already
//! started), the connection is killed.
//!
//! Route timeouts: the requests of routes with a `timeout` wait on one list
//! ([`super::guarded::Deadlines`]) that the sweeper also looks at on each tick, so they too arm
//! no timer.
//!
//! A deadline fires up to one tick late, never early. Starting the drain wakes every
//! connection's task, so HTTP/2 connections send GOAWAY at once.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::progress::Busy;
use super::upgrade::{self, UPGRADED};

mod guard;
mod limits;
pub(crate) use guard::Guard;
pub(crate) use limits::Limits;

/// `ConnState::flags`: a request has been seen.
const SEEN: u8 = 1;
/// `ConnState::flags`: the connection speaks HTTP/2.
const H2: u8 = 2;
/// `ConnState::flags`: the sweeper closed the connection.
const KILLED: u8 = 4;
/// `ConnState::flags`: the sweeper asked an idle HTTP/2 connection to send GOAWAY and close.
const GOAWAY: u8 = 8;
/// `ConnState::flags`: a request body stalled for `idle_timeout` while its handler waited; the
/// requests waiting for a response were told (they answer 408). Still stalled at the next sweep:
/// the connection is cut.
const BODY_TIMEOUT: u8 = 32;
/// `ConnState::flags`: output waits on the client: a write returned `Pending` and no flush has
/// completed since (set and cleared by [`super::progress::TrackedIo`]).
pub(super) const BLOCKED: u8 = 16;
/// `ConnState::flags`: the HTTP/1 request being answered had no body, and its answer did not ask
/// to close ([`super::progress::End`]).
pub(super) const LAST_WORD: u8 = 64;
/// `ConnState::flags`: a request with a body has come on this connection ([`super::lazy`]).
pub(super) const BODY_SEEN: u8 = 128;

/// Milliseconds since the process's clock epoch, refreshed by the sweepers on every tick: read
/// on every response end, so it must cost one load, not a clock call.
static COARSE_NOW_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the epoch, read from the clock; also refreshes the coarse clock.
pub(super) fn precise_now_ms() -> u64 {
    let now = epoch().elapsed().as_millis() as u64;
    COARSE_NOW_MS.fetch_max(now, Ordering::Relaxed);
    now
}

pub(super) fn coarse_now_ms() -> u64 {
    COARSE_NOW_MS.load(Ordering::Relaxed)
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// One connection's state, shared by its task, its in-flight responses, its I/O and the sweeper.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// When the connection was accepted or its last response ended, or its last pending output
    /// was flushed (coarse ms).
    pub(super) since_ms: AtomicU64,
    /// Requests whose response body has not ended yet.
    pub(super) busy: AtomicU32,
    /// When the connection last wrote bytes or handed hyper a response or chunk (coarse ms).
    pub(super) progress_ms: AtomicU64,
    /// Response bodies hyper holds without asking them for data: it waits for the client
    /// (an HTTP/2 window, or room in its write buffer), not for the handler.
    pub(super) stalled: AtomicU32,
    /// Request bodies whose handler waits for their next frame ([`crate::body::BodyWatch`]).
    pub(super) body_waiting: AtomicU32,
    /// When a request body last delivered a frame or its handler started waiting (coarse ms).
    pub(super) body_progress_ms: AtomicU64,
    /// Notified when a request body stalls (see `BODY_TIMEOUT`).
    body_stalled: Notify,
    /// `SEEN | H2 | KILLED | GOAWAY | BLOCKED | BODY_TIMEOUT`.
    pub(super) flags: AtomicU8,
    /// The connection task's waker, for the sweeper and the drain to wake it.
    waker: Mutex<Option<Waker>>,
    /// The generation's drain flag (the watchdog's).
    generation_draining: Arc<AtomicBool>,
    /// Recorded responses whose bodies ended, waiting for the flush that writes them (see
    /// [`super::exchange`]).
    pub(super) unflushed: super::exchange::Unflushed,
    /// An upgraded connection's state: `UPGRADING | WEBSOCKET | UPGRADED | CLOSING | CLOSED |
    /// GONE` (see [`super::upgrade`]); 0 for every other connection.
    pub(super) stream: AtomicU8,
    /// An upgraded connection's reader and writer tasks, woken when the host closes it.
    pub(super) stream_wakers: Mutex<[Option<Waker>; 2]>,
    /// The index of the server whose listener accepted it (for the metrics' gauges).
    server: u16,
    /// The connection's place under its server's `max_connections`, freed when the last of the
    /// connection (its task, a response, an upgraded stream) is gone.
    _permit: Option<super::conn_limit::Permit>,
}

impl ConnState {
    pub(super) fn flag(&self, f: u8) -> bool {
        self.flags.load(Ordering::Acquire) & f != 0
    }

    pub(super) fn set(&self, f: u8) {
        if !self.flag(f) {
            self.flags.fetch_or(f, Ordering::AcqRel);
        }
    }

    /// Resolves when a request body of this connection stalls while its handler waits.
    pub(super) async fn body_stalled(&self) {
        self.body_stalled.notified().await
    }

    /// True once the connection's generation has started draining.
    pub(super) fn generation_draining(&self) -> bool {
        self.generation_draining.load(Ordering::Relaxed)
    }

    pub(super) fn clear(&self, f: u8) {
        self.flags.fetch_and(!f, Ordering::AcqRel);
    }

    /// The connection speaks HTTP/2 (ALPN, or an h2c request seen).
    pub(crate) fn mark_h2(&self) {
        self.set(H2);
    }

    /// True once [`ConnState::mark_h2`] was called.
    pub(crate) fn is_h2(&self) -> bool {
        self.flag(H2)
    }

    /// True once the sweeper found this HTTP/2 connection idle for `idle_timeout`: the
    /// connection should send GOAWAY and close.
    pub(crate) fn goaway_requested(&self) -> bool {
        self.flag(GOAWAY)
    }

    /// A request has started: the connection is busy until the returned body guard ends.
    pub(crate) fn request_started(self: &Arc<Self>) -> Busy {
        self.set(SEEN);
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy::new(self.clone())
    }

    pub(super) fn wake(&self) {
        if let Some(w) = &*self.waker.lock().unwrap_or_else(|p| p.into_inner()) {
            w.wake_by_ref();
        }
    }
}

/// The live connections of one generation and the deadlines on them.
#[derive(Debug)]
pub(crate) struct Watchdog {
    limits: Limits,
    slots: Mutex<Slots>,
    /// Set by [`Watchdog::start_drain`]; `drain_at_ms` is valid once it is. Shared with every
    /// connection's state (one reference count per connection, none per request), so a response
    /// learns of the drain with one load.
    draining: Arc<AtomicBool>,
    drain_at_ms: AtomicU64,
    /// Wakes the sweeper: a first connection, or the drain.
    wake_sweeper: Notify,
    /// Notified when the last connection is gone.
    empty: Notify,
    /// Requests whose route has a `timeout`, until their handler answers.
    pub(crate) deadlines: Arc<super::guarded::Deadlines>,
}

#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Option<Arc<ConnState>>>,
    free: Vec<usize>,
    len: usize,
    /// The sweeper task is running (it ends when drained and empty; a registration after that
    /// starts it again). Under the lock, so a registration cannot slip between the sweeper's
    /// last look and its end.
    sweeper_running: bool,
}

/// A connection's place in the registry; dropping it removes the connection.
#[derive(Debug)]
pub(crate) struct Registration {
    watchdog: Arc<Watchdog>,
    slot: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let now_empty = {
            let mut s = self.watchdog.lock();
            s.entries[self.slot] = None;
            s.free.push(self.slot);
            s.len -= 1;
            s.len == 0
        };
        if now_empty {
            self.watchdog.empty.notify_waiters();
        }
    }
}

impl Watchdog {
    /// A registry with these deadlines; its sweeper runs on the current tokio runtime until the
    /// drain has started and the last connection is gone.
    pub(crate) fn start(limits: Limits) -> Arc<Watchdog> {
        let wd = Arc::new(Watchdog {
            limits,
            slots: Mutex::new(Slots::default()),
            draining: Arc::new(AtomicBool::new(false)),
            drain_at_ms: AtomicU64::new(0),
            wake_sweeper: Notify::new(),
            empty: Notify::new(),
            deadlines: Arc::default(),
        });
        wd.lock().sweeper_running = true;
        tokio::spawn(sweeper(wd.clone()));
        wd
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a connection accepted now (of server 0, as far as the gauges go).
    pub(crate) fn register(self: &Arc<Self>) -> (Arc<ConnState>, Registration) {
        self.register_for(0, None)
    }

    /// Register a connection accepted now by a listener of server `server` (its index among
    /// the worker's counted servers), holding `permit` (its place under `max_connections`) for
    /// as long as the connection's state lives.
    pub(crate) fn register_for(
        self: &Arc<Self>,
        server: u16,
        permit: Option<super::conn_limit::Permit>,
    ) -> (Arc<ConnState>, Registration) {
        let now = precise_now_ms();
        let state = Arc::new(ConnState {
            since_ms: AtomicU64::new(now),
            busy: AtomicU32::new(0),
            progress_ms: AtomicU64::new(now),
            stalled: AtomicU32::new(0),
            body_waiting: AtomicU32::new(0),
            body_progress_ms: AtomicU64::new(now),
            body_stalled: Notify::new(),
            flags: AtomicU8::new(0),
            waker: Mutex::new(None),
            generation_draining: self.draining.clone(),
            unflushed: Default::default(),
            stream: AtomicU8::new(0),
            stream_wakers: Mutex::new([None, None]),
            server,
            _permit: permit,
        });
        let (slot, first, restart_sweeper) = {
            let mut s = self.lock();
            let restart_sweeper = !s.sweeper_running;
            s.sweeper_running = true;
            let slot = match s.free.pop() {
                Some(i) => {
                    s.entries[i] = Some(state.clone());
                    i
                }
                None => {
                    s.entries.push(Some(state.clone()));
                    s.entries.len() - 1
                }
            };
            s.len += 1;
            (slot, s.len == 1, restart_sweeper)
        };
        // A connection accepted as the drain began, after the last one had gone: the sweeper
        // had ended, and this connection still needs its deadlines.
        if restart_sweeper {
            tokio::spawn(sweeper(self.clone()));
        }
        if first {
            self.wake_sweeper.notify_one();
        }
        let reg = Registration {
            watchdog: self.clone(),
            slot,
        };
        (state, reg)
    }

    /// Live connections.
    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }

    /// Per server index: live connections speaking HTTP/1 and HTTP/2, and requests in flight
    /// (whose response body has not ended). Read at a scrape, never on the request path.
    pub(crate) fn gauges(&self) -> crate::tally::Gauges {
        let mut out: crate::tally::Gauges = Vec::new();
        for s in self.lock().entries.iter().flatten() {
            let i = usize::from(s.server);
            if out.len() <= i {
                out.resize(i + 1, (0, 0, 0));
            }
            let g = &mut out[i];
            if s.flag(H2) {
                g.1 += 1;
            } else {
                g.0 += 1;
            }
            g.2 += u64::from(s.busy.load(Ordering::Acquire));
        }
        out
    }

    /// True when no connection is live.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once [`Watchdog::start_drain`] was called.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Start the drain deadlines and wake every connection's task (HTTP/2 ones send GOAWAY).
    pub(crate) fn start_drain(&self) {
        self.drain_at_ms.store(precise_now_ms(), Ordering::Release);
        self.draining.store(true, Ordering::Release);
        self.wake_sweeper.notify_one();
        let states: Vec<Arc<ConnState>> = self.lock().entries.iter().flatten().cloned().collect();
        for s in states {
            s.wake();
        }
    }

    /// Resolves once no connection is live.
    pub(crate) async fn wait_empty(&self) {
        loop {
            let mut n = pin!(self.empty.notified());
            n.as_mut().enable();
            if self.is_empty() {
                return;
            }
            n.await;
        }
    }

    /// One sweep at `now`: kill what is past its deadline.
    fn sweep(&self, now: u64, tick: u64) {
        let l = &self.limits;
        let drain_at = self
            .is_draining()
            .then(|| self.drain_at_ms.load(Ordering::Acquire));
        let (mut doomed, mut goaway, mut body_stalled) = (Vec::new(), Vec::new(), Vec::new());
        let mut streams_to_close: Vec<Arc<ConnState>> = Vec::new();
        for s in self.lock().entries.iter().flatten() {
            let flags = s.flags.load(Ordering::Acquire);
            if flags & KILLED != 0 {
                continue;
            }
            // An upgraded connection is the application's: no HTTP deadline applies; during a
            // drain, `stream_grace` closes it (see `super::upgrade`).
            let stream = s.stream.load(Ordering::Acquire);
            if stream & UPGRADED != 0 {
                match upgrade::sweep(s, stream, drain_at, l.stream_grace, now, tick) {
                    upgrade::Sweep::Close => streams_to_close.push(s.clone()),
                    upgrade::Sweep::GiveUp => doomed.push(s.clone()),
                    upgrade::Sweep::Leave => {}
                }
                continue;
            }
            // A handler waiting for a request body that makes no progress for idle_timeout.
            if s.body_waiting.load(Ordering::Acquire) > 0 {
                let progress = s.body_progress_ms.load(Ordering::Acquire);
                if now.saturating_sub(progress) >= millis(l.idle_timeout) + tick {
                    if flags & BODY_TIMEOUT != 0 {
                        doomed.push(s.clone());
                        continue;
                    }
                    body_stalled.push(s.clone());
                }
            }
            // Output waiting on the client is never idle, whatever the drain or idle deadlines
            // say; only `send_timeout` without write progress cuts it.
            if flags & BLOCKED != 0 || s.stalled.load(Ordering::Acquire) > 0 {
                let progress = s.progress_ms.load(Ordering::Acquire);
                if now.saturating_sub(progress) >= millis(l.send_timeout) + tick {
                    tracing::debug!(
                        stalled_bodies = s.stalled.load(Ordering::Relaxed),
                        blocked = flags & BLOCKED != 0,
                        "send_timeout: the client has read nothing for that long; closing"
                    );
                    doomed.push(s.clone());
                }
                continue;
            }
            if s.busy.load(Ordering::Acquire) > 0 {
                continue;
            }
            let since = s.since_ms.load(Ordering::Acquire);
            let idle = now.saturating_sub(since);
            if flags & H2 != 0 {
                if flags & SEEN == 0 {
                    // No request yet: the first must come within header_read_timeout, drain or
                    // not (a drain does not cut it sooner: see `h2_told_at`).
                    if idle > millis(l.header_read_timeout) {
                        doomed.push(s.clone());
                    }
                    continue;
                }
                let idle_timeout = millis(l.idle_timeout) + tick;
                match h2_told_at(flags, drain_at, since, millis(l.idle_timeout)) {
                    // Not told yet: GOAWAY, by its own task, when idle for idle_timeout.
                    None if idle >= idle_timeout => goaway.push(s.clone()),
                    None => {}
                    Some(told) if now.saturating_sub(told) >= idle_timeout => {
                        doomed.push(s.clone())
                    }
                    Some(_) => {}
                }
                continue;
            }
            // `since` is stamped from the coarse clock (up to a tick old) except at accept, where
            // it is the precise clock truncated to the millisecond, as `now` is: a difference of
            // `header_read_timeout` ms may be up to 1 ms short of it, so it must exceed it.
            let expired = if flags & SEEN == 0 {
                idle > millis(l.header_read_timeout)
            } else {
                idle >= millis(l.idle_timeout) + tick
            };
            let drained = drain_at.is_some_and(|at| {
                now.saturating_sub(since.max(at)) >= millis(l.keepalive_grace) + tick
            });
            if expired || drained {
                doomed.push(s.clone());
            }
        }
        for s in streams_to_close {
            s.since_ms.store(now, Ordering::Release);
            s.close_stream();
        }
        for s in body_stalled {
            s.flags.fetch_or(BODY_TIMEOUT, Ordering::AcqRel);
            s.body_stalled.notify_waiters();
        }
        for (list, flag) in [(doomed, KILLED), (goaway, GOAWAY)] {
            for s in list {
                s.flags.fetch_or(flag, Ordering::AcqRel);
                s.wake();
            }
        }
    }
}

/// For an HTTP/2 connection that has made a request and has no open stream: from when (coarse
/// ms) it counts as told to go away, or `None` if it has not been told.
///
/// GOAWAY is sent the two-step way (h2's `graceful_shutdown`, RFC 9113 §6.8): first with the
/// largest stream id and a PING, and only once the client answers the PING, a final GOAWAY with
/// the last stream id taken; then h2 closes the connection when its last stream ends. A request
/// the client sent before it read the first GOAWAY arrives before the PING's answer and is
/// served. So a draining connection is not cut after `keepalive_grace` as an idle HTTP/1 one is
/// (that would drop such a request on a client slower than the grace); but a client that never
/// answers the PING would hold it open for ever, so one still open and idle `idle_timeout` after
/// it was told (the drain's start, the idle GOAWAY's request, or its last response, whichever
/// is latest) is cut.
fn h2_told_at(flags: u8, drain_at: Option<u64>, since: u64, idle_timeout: u64) -> Option<u64> {
    match (drain_at, flags & GOAWAY != 0) {
        (Some(at), _) => Some(since.max(at)),
        // The idle GOAWAY was asked for once the connection had been idle for `idle_timeout`.
        (None, true) => Some(since + idle_timeout),
        (None, false) => None,
    }
}

/// The sweeper task: ticks while there are connections, parks on `wake_sweeper` otherwise; ends
/// once the drain has started and the last connection is gone (a connection the accept loop was
/// already registering then starts it again: see [`Watchdog::register`]).
async fn sweeper(w: Arc<Watchdog>) {
    loop {
        let draining = w.is_draining();
        if draining {
            let mut s = w.lock();
            if s.len == 0 {
                s.sweeper_running = false;
                return;
            }
        }
        if w.is_empty() {
            if draining {
                // Ends at the locked check above (or sees the connection that just came).
                continue;
            }
            // `notify_one` stores a permit, so a registration racing this wait is not missed.
            w.wake_sweeper.notified().await;
            continue;
        }
        let tick = if draining {
            w.limits.drain_tick()
        } else {
            w.limits.tick()
        };
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = w.wake_sweeper.notified() => {}
        }
        let now = precise_now_ms();
        w.sweep(now, millis(tick));
        w.deadlines.sweep(now);
    }
}

#[cfg(test)]
mod tests;
