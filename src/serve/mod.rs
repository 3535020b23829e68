//! Serving: accept loops, connections and the drain of one generation.
//!
//! - [`listen`]: bind a listening socket for a config address, or adopt one handed in.
//! - [`tls`]: rustls server config and the certificate store (swappable for renewal).
//! - [`conn`]: one connection: HTTP/1.1 or HTTP/2 via hyper, and how it drains.
//! - [`watchdog`]: the registry of live connections and the one timer task that enforces their
//!   deadlines (header read, keep-alive idle, drain grace, send timeout).
//! - [`progress`]: the wrappers around a connection's I/O and its response bodies that tell the
//!   watchdog a response is still being written (until its last byte reaches the socket).
//!
//! A generation's servers share one [`Serving`]: it holds the watchdog and carries the drain
//! signal. Draining works like this:
//! 1. every accept loop stops and drops its listener (the supervisor and the next generation still
//!    hold the socket, so nothing is refused);
//! 2. HTTP/2 connections get GOAWAY at once (clients retry unstarted streams elsewhere);
//! 3. HTTP/1 connections are *not* closed while idle right away: a keep-alive client may already
//!    be sending its next request, and closing then loses it (the race nginx loses on reload).
//!    Instead every response finished from now on carries `Connection: close`, and a connection
//!    that stays idle for `keepalive_grace` (from the drain's start or its last response) is
//!    closed by the watchdog;
//! 4. when every connection is gone, or `shutdown_timeout` passes, the generation exits.

pub(crate) mod conn;
pub(crate) mod listen;
pub(crate) mod progress;
pub(crate) mod tls;
pub(crate) mod watchdog;

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::routes::RouteTable;
use watchdog::{Guard, Limits, Watchdog};

/// Shared by all connections of one generation.
#[derive(Debug)]
pub(crate) struct Serving {
    drain_tx: watch::Sender<bool>,
    /// Live connections and their deadlines.
    watchdog: Arc<Watchdog>,
    /// The accept loops' wakers, woken when the drain starts.
    accept_wakers: Mutex<Vec<Waker>>,
    /// hyper's connection builders.
    builders: conn::Builders,
}

impl Serving {
    /// A new, not draining, state; starts the watchdog's timer task on the current runtime.
    /// `http2_max_streams` caps the concurrent streams of each HTTP/2 connection.
    pub(crate) fn new(limits: Limits, http2_max_streams: u32) -> Arc<Serving> {
        Arc::new(Serving {
            drain_tx: watch::Sender::new(false),
            watchdog: Watchdog::start(limits),
            accept_wakers: Mutex::new(Vec::new()),
            builders: conn::Builders::new(http2_max_streams),
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
}

/// Accept connections on `listener` until the drain starts, then drop the listener.
pub(crate) async fn accept_loop(listener: TcpListener, endpoint: Endpoint, serving: Arc<Serving>) {
    let endpoint = Arc::new(endpoint);
    let mut registered: Option<Waker> = None;
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
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let Some(accepted) = accepted else { break };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                // Registered here, before the task runs, so a drain starting now counts it.
                let (state, reg) = serving.watchdog.register();
                let (ep, s) = (endpoint.clone(), serving.clone());
                // Plain and TLS connections are separate futures: a plain one does not carry the
                // (much larger) TLS state, and tokio copies the future when spawning it.
                if ep.tls.is_some() {
                    let conn = conn::serve_tls(stream, peer, ep, s, state.clone());
                    tokio::spawn(Guard::new(state, reg, conn));
                } else {
                    let conn = conn::serve_plain(stream, peer, ep, s, state.clone());
                    tokio::spawn(Guard::new(state, reg, conn));
                }
            }
            Err(e) => {
                // EMFILE/ENFILE/ECONNABORTED: keep the listener, back off briefly.
                tracing::warn!(listener = %endpoint.key, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tracing::debug!(listener = %endpoint.key, "stopped accepting");
}
