//! The machine's shutdown: a stop signal or `shutdown` request ends the host in two steps.
//!
//! 1. **Going away** (`shutdown_delay`, when it is not zero): every worker is told so (its
//!    `ready` routes answer 503) and keeps accepting and serving. Load balancers and Kubernetes
//!    endpoints see the 503 (or the pod's termination) and stop sending new requests; the
//!    requests they still send in that time are served, not refused. Restarts are refused.
//! 2. **Draining**: every worker stops accepting and finishes what it has (`shutdown_timeout`);
//!    when the last one has exited the supervisor exits 0.
//!
//! A second stop signal, in either step, kills the workers and exits 1 at once; the whole
//! shutdown is bounded by `shutdown_delay + shutdown_timeout` and a margin.

use super::{Action, Machine, Notify, Phase, SHUTDOWN_EXIT_MARGIN, Timer, WorkerId};
use crate::channel::OpError;

impl<R> Machine<R> {
    pub(super) fn exit_if_shut_down(&mut self) {
        if matches!(self.phase, Phase::ShuttingDown { .. }) && self.workers.is_empty() {
            tracing::info!("supervisor exiting");
            self.out.push(Action::Exit(0));
        }
    }

    pub(super) fn on_stop_signal(&mut self, name: &'static str) {
        if matches!(self.phase, Phase::ShuttingDown { .. }) {
            tracing::warn!("second {name} during the shutdown: stopping now");
            self.out.push(Action::KillAll);
            self.out.push(Action::Exit(1));
            return;
        }
        tracing::info!("{name} received");
        self.begin_shutdown(name);
    }

    pub(super) fn begin_shutdown(&mut self, why: &str) {
        if matches!(self.phase, Phase::ShuttingDown { .. }) {
            return;
        }
        let delay = self.settings.shutdown_delay;
        let delaying = !delay.is_zero() && !self.workers.is_empty();
        if delaying {
            tracing::info!(
                "shutting down ({why}): serving for shutdown_delay ({}) with `ready` answering 503, then draining",
                crate::config::duration::format_duration(delay)
            );
        } else {
            tracing::info!("shutting down ({why})");
        }
        self.out.push(Action::Notify(Notify::Stopping));
        let current = self.phase.current();
        let phase = std::mem::replace(&mut self.phase, Phase::ShuttingDown { current, delaying });
        let waiters = match phase {
            Phase::Starting { pending, .. }
            | Phase::Stopping { pending, .. }
            | Phase::Recovering { pending, .. }
            | Phase::Upgrading { pending, .. } => pending.waiters,
            _ => Vec::new(),
        };
        for w in waiters {
            self.reply(w, Err(OpError::ShuttingDown));
        }
        // The standby serves nothing: it goes now.
        if let Some(s) = self.standby.take() {
            self.stop_standby(s);
        }
        if delaying {
            let serving: Vec<WorkerId> = self
                .workers
                .iter()
                .filter(|(_, w)| !w.draining)
                .map(|(id, _)| *id)
                .collect();
            for worker in serving {
                self.out.push(Action::GoingAway { worker });
            }
            self.arm(delay, Timer::ShutdownDelay);
        } else {
            self.drain_all();
        }
    }

    /// `shutdown_delay` is over: everything drains now.
    pub(super) fn end_shutdown_delay(&mut self) {
        let Phase::ShuttingDown {
            current,
            delaying: true,
        } = self.phase
        else {
            return;
        };
        tracing::info!("shutdown_delay is over; draining");
        self.phase = Phase::ShuttingDown {
            current,
            delaying: false,
        };
        self.drain_all();
    }

    fn drain_all(&mut self) {
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            // A worker not yet seen ready may already be serving (it accepts before it
            // reports): it reads the drain right after its report, so nothing is cut.
            self.drain(id, true);
        }
        // Every worker drops its listeners as its drain starts; the supervisor's copies go too.
        self.out.push(Action::CloseListeners);
        self.arm(
            self.settings.shutdown_timeout + SHUTDOWN_EXIT_MARGIN,
            Timer::ForceExit,
        );
        if self.workers.is_empty() {
            self.out.push(Action::Exit(0));
        }
    }
}
