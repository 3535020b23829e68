//! Serving: accept loops, connections and the drain of one generation.
//!
//! - [`listen`]: bind a listening socket (TCP or Unix) for a config address, or adopt one handed
//!   in.
//! - [`lazy`]: an accepted TCP connection, registered with the runtime's poller only once it
//!   must wait.
//! - [`proxy`]: the PROXY protocol header (v1, v2) a `proxy_protocol` server's connections start
//!   with.
//! - [`tls`]: rustls server config and the certificate store (swappable for renewal).
//! - [`conn`]: one connection: HTTP/1.1 or HTTP/2 via hyper, and how it drains.
//! - [`sniff`]: a plain connection's protocol (HTTP/1.1 or h2c), from its first bytes.
//! - [`conn_limit`]: a server's `max_connections` (at the cap, accept loops stop accepting).
//! - [`guarded`]: a route's `timeout` (`504`) and `max_request_body` (`413`), answered for the
//!   handler.
//! - [`watchdog`]: the registry of live connections and the one timer task that enforces their
//!   deadlines (header read, keep-alive idle, drain grace, send timeout).
//! - [`probe`]: the readiness request a new generation sends through its own serving path.
//! - [`exchange`]: one request as recorded, and the [`exchange::Observer`] (access log, metrics)
//!   told when it has finished: its last byte written.
//! - [`upgrade`]: upgraded connections (WebSockets): counted while the application holds them,
//!   closed with a close frame 1001 at `stream_grace` during a drain.
//! - [`requests`]: the generation's request count, for `recycle.max_requests`.
//! - [`progress`]: the wrappers around a connection's I/O and its response bodies that tell the
//!   watchdog a response is still being written (until its last byte reaches the socket).
//!
//! A generation's servers share one [`Serving`]: it holds the watchdog and carries the drain
//! signal. Draining works like this:
//! 1. every accept loop stops and drops its listener (the supervisor and the next generation still
//!    hold the socket, so nothing is refused);
//! 2. HTTP/2 connections get GOAWAY at once, the two-step way (h2's `graceful_shutdown`: a first
//!    GOAWAY with the largest stream id and a PING, the final one once the PING is answered), so a
//!    request that crossed the first on the wire is served; clients retry unstarted streams
//!    elsewhere. They are not cut after `keepalive_grace` (see [`watchdog`]);
//! 3. HTTP/1 connections are *not* closed while idle right away: a keep-alive client may already
//!    be sending its next request, and closing then loses it (the race nginx loses on reload).
//!    Instead every response finished from now on carries `Connection: close`, and a connection
//!    that stays idle for `keepalive_grace` (from the drain's start or its last response) is
//!    closed by the watchdog;
//! 4. upgraded connections (WebSockets) are the application's, which learns of the drain from
//!    [`crate::draining`]; those still open at `stream_grace` are closed by the host;
//! 5. when every connection is gone, or `shutdown_timeout` passes, the generation exits.

pub(crate) mod conn;
pub(crate) mod conn_limit;
pub(crate) mod exchange;
pub(crate) mod guarded;
pub(crate) mod lazy;
pub(crate) mod listen;
pub(crate) mod probe;
pub(crate) mod progress;
pub(crate) mod proxy;
pub(crate) mod requests;
pub(crate) mod sniff;
pub(crate) mod tls;
pub(crate) mod upgrade;
pub(crate) mod watchdog;

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::handler::ClientAddr;
use crate::routes::RouteTable;
use listen::{Accepted, Listener};
use watchdog::{ConnState, Guard, Limits, Watchdog};

/// Shared by all connections of one generation.
#[derive(Debug)]
pub(crate) struct Serving {
    drain_tx: watch::Sender<bool>,
    /// Live connections and their deadlines.
    watchdog: Arc<Watchdog>,
    /// The accept loops' wakers, woken when the drain starts or accepting resumes.
    accept_wakers: Mutex<Vec<Waker>>,
    /// Accepting is paused: the next generation accepts from the same sockets (see
    /// [`Serving::pause_accepting`]).
    paused: AtomicBool,
    /// hyper's connection builders.
    builders: conn::Builders,
    /// Failed accepts not yet logged, for all of this generation's accept loops: descriptors
    /// run out for the whole process, and each listener logging its own line a second would
    /// make as many lines a second as there are listeners.
    accept_failures: Mutex<FailureLog>,
    /// Requests counted for `recycle.max_requests` (`None`: not counted).
    pub(crate) requests: Option<Arc<requests::RequestCount>>,
}

impl Serving {
    /// A new, not draining, state; starts the watchdog's timer task on the current runtime.
    /// `http2_max_streams` caps the concurrent streams of each HTTP/2 connection.
    /// `max_requests`: count requests and announce that many (`recycle`).
    pub(crate) fn new(
        limits: Limits,
        http2_max_streams: u32,
        max_requests: Option<u64>,
    ) -> Arc<Serving> {
        Arc::new(Serving {
            drain_tx: watch::Sender::new(false),
            watchdog: Watchdog::start(limits),
            accept_wakers: Mutex::new(Vec::new()),
            paused: AtomicBool::new(false),
            builders: conn::Builders::new(http2_max_streams),
            accept_failures: Mutex::new(FailureLog::default()),
            requests: max_requests.map(|n| Arc::new(requests::RequestCount::new(n))),
        })
    }

    /// True once the drain has started.
    pub(crate) fn is_draining(&self) -> bool {
        self.watchdog.is_draining()
    }

    /// Start draining: accept loops stop, connections wind down.
    pub(crate) fn start_drain(&self) {
        // Sets the flag `is_draining` reads, then wakes every connection task.
        self.watchdog.start_drain();
        self.drain_tx.send_replace(true);
        for w in self.lock_accept_wakers().drain(..) {
            w.wake();
        }
    }

    /// Stop taking connections for now, without draining: they wait in the listen queue for
    /// the next generation, which accepts from the same sockets. [`Serving::resume_accepting`]
    /// undoes it (that generation is gone); a drain makes it final.
    pub(crate) fn pause_accepting(&self) {
        self.paused.store(true, Ordering::Release);
    }

    /// Take connections again after [`Serving::pause_accepting`].
    pub(crate) fn resume_accepting(&self) {
        self.paused.store(false, Ordering::Release);
        // By reference: each loop registers its waker once.
        for w in self.lock_accept_wakers().iter() {
            w.wake_by_ref();
        }
    }

    fn lock_accept_wakers(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        self.accept_wakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when the drain has started.
    pub(crate) async fn drained_signal(&self) {
        let mut rx = self.drain_tx.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Live connections.
    pub(crate) fn connections(&self) -> usize {
        self.watchdog.len()
    }

    /// Per server index: live HTTP/1 and HTTP/2 connections and requests in flight (see
    /// [`crate::tally::Gauges`]).
    pub(crate) fn gauges(&self) -> crate::tally::Gauges {
        self.watchdog.gauges()
    }

    /// Resolves when the drain has started and every connection has finished.
    pub(crate) async fn wait_idle(&self) {
        self.drained_signal().await;
        self.watchdog.wait_empty().await;
    }
}

/// What a listener serves: its server's routes, and TLS if it is an HTTPS listener.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// The listener key, for logs.
    pub key: String,
    /// The route table.
    pub routes: Arc<RouteTable>,
    /// TLS, for HTTPS listeners.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Told about every request (its server's access log, metrics); `None` costs nothing.
    pub observer: Option<Arc<dyn exchange::Observer>>,
    /// Whether connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// The server's `max_connections`, shared by its listeners (`None`: no cap, for the
    /// readiness request's in-memory connection).
    pub limit: Option<Arc<conn_limit::ConnLimit>>,
}

/// Accept connections on `listener` until the drain starts, then drop the listener.
pub(crate) async fn accept_loop(listener: Listener, endpoint: Endpoint, serving: Arc<Serving>) {
    let endpoint = Arc::new(endpoint);
    let mut registered: Option<Waker> = None;
    let mut backoff = AcceptBackoff::new();
    loop {
        // Checks the drain flag, not a drain channel: re-arming a channel receiver for every
        // accepted connection costs a lock. `start_drain` wakes this task.
        let accepted = poll_fn(|cx| {
            if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                let w = cx.waker().clone();
                serving.lock_accept_wakers().push(w.clone());
                registered = Some(w);
            }
            if serving.is_draining() {
                return Poll::Ready(None);
            }
            // Woken by `resume_accepting` or the drain.
            if serving.paused.load(Ordering::Acquire) {
                return Poll::Pending;
            }
            // At `max_connections`, accept nothing: connections wait in the kernel's queue.
            let permit = match &endpoint.limit {
                Some(l) => match l.poll_acquire(cx) {
                    Poll::Ready(p) => Some(p),
                    Poll::Pending => return Poll::Pending,
                },
                None => None,
            };
            match listener.poll_accept(cx) {
                Poll::Ready(r) => Poll::Ready(Some((r, permit))),
                Poll::Pending => {
                    if let Some(l) = &endpoint.limit {
                        l.queue_empty();
                    }
                    Poll::Pending
                }
            }
        })
        .await;
        let Some((accepted, permit)) = accepted else {
            break;
        };
        match accepted {
            Ok(Accepted::Tcp(stream, peer, has_nodelay)) => {
                if !has_nodelay {
                    let _ = stream.set_nodelay(true);
                }
                let stream = |state: &Arc<ConnState>| lazy::LazyTcp::new(stream, state);
                spawn_conn(stream, ClientAddr(peer), permit, &endpoint, &serving);
            }
            Ok(Accepted::Unix(stream)) => {
                spawn_conn(|_| stream, ClientAddr::UNIX, permit, &endpoint, &serving);
            }
            Err(e) => {
                // EMFILE/ENFILE/ECONNABORTED: keep the listener, pause (the connection stays in
                // the queue, so retrying at once would spin), but not past the drain's start.
                let pause = backoff.failed(&serving.accept_failures, &endpoint.key, &e);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = serving.drained_signal() => {}
                }
                continue;
            }
        }
        backoff.succeeded(&serving.accept_failures, &endpoint.key);
    }
    tracing::debug!(listener = %endpoint.key, "stopped accepting");
}

/// Start serving one accepted connection in its own task; `stream` makes its socket, given the
/// connection's state.
fn spawn_conn<S: conn::Stream>(
    stream: impl FnOnce(&Arc<ConnState>) -> S,
    peer: ClientAddr,
    permit: Option<conn_limit::Permit>,
    endpoint: &Arc<Endpoint>,
    serving: &Arc<Serving>,
) {
    // Registered here, before the task runs, so a drain starting now counts it.
    let (state, reg) = serving
        .watchdog
        .register_for(endpoint.routes.server_index(), permit);
    let stream = stream(&state);
    let (ep, s) = (endpoint.clone(), serving.clone());
    // Plain and TLS connections are separate futures: a plain one does not carry the (much
    // larger) TLS state. Each is boxed before it is spawned: tokio moves a task's future through
    // several copies (into the task, and its stage is overwritten whole when the task finishes),
    // and a pointer is cheaper to move than the future (one allocation against ~1,000
    // instructions of copying per connection).
    if ep.tls.is_some() {
        let conn = conn::serve_tls(stream, peer, ep, s, state.clone());
        tokio::spawn(Box::pin(Guard::new(state, reg, conn)));
    } else {
        let conn = conn::serve_plain(stream, peer, ep, s, state.clone());
        tokio::spawn(Box::pin(Guard::new(state, reg, conn)));
    }
}

/// An accept loop's failures: a pause that doubles while accepts keep failing (descriptors
/// exhausted: the failing connection stays queued, so retrying at once only spins). The log
/// line, at most once a second with the count of failures it stands for, is the generation's
/// ([`FailureLog`], shared by its accept loops), not each loop's.
#[derive(Debug)]
struct AcceptBackoff {
    pause: Duration,
}

/// Failed accepts of one generation, across its accept loops, and when they were last logged.
#[derive(Debug, Default)]
struct FailureLog {
    /// Failures not yet reported.
    unreported: u64,
    /// When the last failure was reported.
    reported_at: Option<Instant>,
}

impl FailureLog {
    const REPORT_EVERY: Duration = Duration::from_secs(1);

    /// True when a report is due (none yet, or the last one a second ago or more); the report
    /// is then taken as made.
    fn due(&mut self, now: Instant) -> bool {
        let due = self
            .reported_at
            .is_none_or(|t| now.duration_since(t) >= Self::REPORT_EVERY);
        if due {
            self.reported_at = Some(now);
        }
        due
    }
}

fn lock_log(log: &Mutex<FailureLog>) -> std::sync::MutexGuard<'_, FailureLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

impl AcceptBackoff {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_millis(500);

    fn new() -> AcceptBackoff {
        AcceptBackoff {
            pause: Self::FIRST_PAUSE,
        }
    }

    /// Note a failed accept on listener `key`; how long to pause before the next.
    fn failed(&mut self, log: &Mutex<FailureLog>, key: &str, e: &std::io::Error) -> Duration {
        {
            let mut log = lock_log(log);
            log.unreported += 1;
            if log.due(Instant::now()) {
                tracing::warn!(
                    listener = %key,
                    error = %e,
                    failures = log.unreported,
                    "accept failed ({} time(s) since the last report); pausing accepts",
                    log.unreported
                );
                log.unreported = 0;
            }
        }
        let pause = self.pause;
        self.pause = (pause * 2).min(Self::MAX_PAUSE);
        pause
    }

    /// Note an accepted connection (the hot path: one comparison when nothing failed). The
    /// pause starts again from the shortest; the failures not yet reported are reported with
    /// the recovery, within the same once-a-second limit.
    fn succeeded(&mut self, log: &Mutex<FailureLog>, key: &str) {
        if self.pause == Self::FIRST_PAUSE {
            return;
        }
        self.pause = Self::FIRST_PAUSE;
        let mut log = lock_log(log);
        if log.unreported > 0 && log.due(Instant::now()) {
            tracing::warn!(
                listener = %key,
                failures = log.unreported,
                "accept failed {} more time(s), then accepted again",
                log.unreported
            );
            log.unreported = 0;
        }
    }
}

/// Raise this process's soft limit on open descriptors to its hard limit (each connection is
/// one; the usual soft default of 1024 is a thousand idle keep-alive clients). Called once when a
/// worker starts; a failure is only logged.
pub(crate) fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current == lim.maximum {
        return;
    }
    let raised = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(
            from = ?lim.current,
            to = ?lim.maximum,
            "raised the open-file limit to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}
