//! The worker's link to its supervisor: operations asked inside the worker (through its
//! [`Link`], or by a signal sent to the worker) relayed to the supervisor and the answers back,
//! and this worker's counts.

use super::*;

/// Relays the operations asked inside this worker (through its [`Link`], or by a signal) to
/// the supervisor, and the answers back; and this worker's counts.
pub(super) struct Relay {
    chan: Arc<Channel>,
    link: Link,
    /// Answers awaited, by request id.
    pending: HashMap<u64, oneshot::Sender<OpResult>>,
    /// Metrics awaited, by request id.
    pending_metrics: HashMap<u64, oneshot::Sender<crate::tally::HostMetrics>>,
    next_id: u64,
    /// False once the supervisor is gone.
    pub(super) open: bool,
    /// The supervisor keeps the host's metrics ([`ENV_SUPERVISOR_METRICS`]).
    pub(super) metrics_supervisor: bool,
    /// The counts last sent (a periodic report that would say the same is not sent).
    last_counts: Option<crate::tally::Counts>,
}

impl Relay {
    pub(super) fn new(chan: Arc<Channel>, link: Link) -> Relay {
        Relay {
            chan,
            link,
            pending: HashMap::new(),
            pending_metrics: HashMap::new(),
            next_id: 1,
            open: true,
            metrics_supervisor: false,
            last_counts: None,
        }
    }

    /// Pass on what was asked through the link.
    pub(super) async fn ask(&mut self, asked: Pending) {
        match asked {
            Pending::Op(op, tx) => self.forward(op, Some(tx)).await,
            Pending::Metrics(tx) => self.metrics(tx).await,
        }
    }

    /// Send this worker's counts as of now (unless they are the ones sent last). Sent from
    /// this one task, so the supervisor gets them in the order they were taken: each report it
    /// keeps is at least the one before. Besides before each scrape, every
    /// [`super::COUNTS_EVERY`], serving or draining: a worker killed with no chance to say more
    /// (SIGKILL, the OOM killer) loses at most that much of its counts.
    pub(super) async fn report_counts(&mut self) {
        if !self.metrics_supervisor {
            return;
        }
        let counts = self.link.counts();
        if self.last_counts.as_ref() == Some(&counts) {
            return;
        }
        let msg = Msg::Counts { counts };
        if let Err(e) = self.chan.send(&msg, &[]).await {
            tracing::warn!("cannot report the request counts to the supervisor: {e}");
            return;
        }
        if let Msg::Counts { counts } = msg {
            let requests: u64 = counts.requests.values().sum();
            tracing::debug!(requests, "counts reported");
            self.last_counts = Some(counts);
        }
    }

    /// A scrape: this worker's counts as of now, then the request for the host's metrics
    /// (which therefore include them). Without a supervisor, `tx` is dropped: the asker
    /// answers from this worker's counts alone.
    pub(super) async fn metrics(&mut self, tx: oneshot::Sender<crate::tally::HostMetrics>) {
        if !self.open || !self.metrics_supervisor {
            return;
        }
        if self.link.tally().is_some() {
            self.report_counts().await;
        }
        let id = self.next_id;
        self.next_id += 1;
        if self
            .chan
            .send(&Msg::MetricsRequest { id }, &[])
            .await
            .is_ok()
        {
            self.pending_metrics.insert(id, tx);
        }
    }

    /// The supervisor answered metrics request `id`.
    pub(super) fn deliver_metrics(&mut self, id: u64, metrics: crate::tally::HostMetrics) {
        if let Some(tx) = self.pending_metrics.remove(&id) {
            let _ = tx.send(metrics);
        }
    }

    /// Send `op` to the supervisor; its answer goes to `answer` (a signal's goes nowhere).
    pub(super) async fn forward(&mut self, op: Op, answer: Option<oneshot::Sender<OpResult>>) {
        let id = self.next_id;
        self.next_id += 1;
        let sent = if self.open {
            self.chan
                .send(&Msg::Request { id, op }, &[])
                .await
                .map_err(|e| e.to_string())
        } else {
            Err("the supervisor is gone".to_string())
        };
        let Some(tx) = answer else { return };
        match sent {
            Ok(()) => {
                self.pending.insert(id, tx);
            }
            Err(e) => {
                let _ = tx.send(Err(OpError::Unavailable(e)));
            }
        }
    }

    /// The supervisor answered request `id`.
    pub(super) fn deliver(&mut self, id: u64, result: serde_json::Value) {
        if let Some(tx) = self.pending.remove(&id) {
            let r: OpResult = serde_json::from_value(result)
                .unwrap_or_else(|e| Err(OpError::Unavailable(format!("unreadable reply: {e}"))));
            let _ = tx.send(r);
        }
    }

    /// The supervisor is gone: answers awaited will not come (their askers hear so when the
    /// senders drop).
    pub(super) fn close(&mut self) {
        self.open = false;
        self.pending.clear();
        self.pending_metrics.clear();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkerSignal {
    Restart,
    Stop,
}

pub(super) struct WorkerSignals {
    streams: Vec<(tokio::signal::unix::Signal, WorkerSignal)>,
}

impl WorkerSignals {
    pub(super) fn new() -> WorkerSignals {
        let mut streams = Vec::new();
        for (kind, what) in [
            (SignalKind::user_defined1(), WorkerSignal::Restart),
            (SignalKind::interrupt(), WorkerSignal::Stop),
            (SignalKind::terminate(), WorkerSignal::Stop),
            (SignalKind::quit(), WorkerSignal::Stop),
            (SignalKind::hangup(), WorkerSignal::Stop),
        ] {
            match signal(kind) {
                Ok(s) => streams.push((s, what)),
                Err(e) => tracing::warn!("cannot handle signal {kind:?}: {e}"),
            }
        }
        WorkerSignals { streams }
    }

    pub(super) async fn next(&mut self) -> WorkerSignal {
        std::future::poll_fn(|cx| {
            for (s, what) in &mut self.streams {
                if s.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*what);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}
