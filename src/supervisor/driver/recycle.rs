//! The driver's side of recycling (see `crate::recycle` for the whole): once a second, while
//! the serving generation has `recycle` limits, look at its age and (off the loop) its resident
//! memory; remember a worker's report that it passed `max_requests`; and hand the machine a
//! `Recycle` event whenever one is due. The machine decides whether a recycle starts now (only
//! from `Serving`, and not too soon after one failed); a recycle not started now is asked for
//! again on the next look, for as long as the worker serves.

use std::time::{Duration, Instant};

use super::Driver;
use crate::supervisor::events::{Event, Reply};
use crate::supervisor::machine::{self, WorkerId};

/// How often the serving worker's age and memory are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What the driver keeps for recycling.
#[derive(Debug, Default)]
pub(super) struct RecycleWatch {
    /// The task sending [`Event::RecycleTick`], while a generation has `recycle` limits.
    ticker: Option<tokio::task::AbortHandle>,
    /// A worker that reported passing `max_requests`, and its reason.
    asked: Option<(WorkerId, String)>,
}

impl Driver {
    /// Start or stop the once-a-second look to match the serving generation's settings.
    pub(super) fn update_recycle_watch(&mut self) {
        let wanted = self
            .machine
            .worker_settings()
            .is_some_and(|s| s.recycle.is_some());
        match (&self.recycle.ticker, wanted) {
            (Some(t), false) => {
                t.abort();
                self.recycle.ticker = None;
            }
            (None, true) => {
                let tx = self.events.clone();
                let task = tokio::spawn(async move {
                    let mut every = tokio::time::interval(LOOK_EVERY);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        every.tick().await;
                        if tx.send(Event::RecycleTick).is_err() {
                            return;
                        }
                    }
                });
                self.recycle.ticker = Some(task.abort_handle());
            }
            _ => {}
        }
    }

    /// A worker passed its `max_requests`.
    pub(super) fn on_worker_recycle(&mut self, worker: WorkerId, reason: String) {
        self.recycle.asked = Some((worker, reason.clone()));
        self.recycle_now(worker, reason);
    }

    /// The once-a-second look at the serving worker.
    pub(super) fn on_recycle_tick(&mut self) {
        let Some(current) = self.machine.current() else {
            return;
        };
        if !matches!(self.machine.phase(), machine::Phase::Serving { .. }) {
            return;
        }
        if let Some((w, reason)) = self.recycle.asked.clone()
            && w == current
        {
            return self.recycle_now(current, reason);
        }
        let Some(limits) = self
            .machine
            .worker_settings()
            .and_then(|s| s.recycle.clone())
        else {
            return;
        };
        let age = self
            .machine
            .ready_at(current)
            .map_or(Duration::ZERO, |t| t.elapsed());
        if let Some(reason) = crate::recycle::due(&limits, age, None) {
            return self.recycle_now(current, reason);
        }
        if limits.max_memory.is_some()
            && let Some(pid) = self.workers.get(&current).map(|g| g.pid_u32())
        {
            // Read off the loop; the answer comes back as an event.
            let tx = self.events.clone();
            tokio::spawn(async move {
                let rss = crate::recycle::resident_bytes(pid).await;
                let _ = tx.send(Event::RecycleMemory(current, rss));
            });
        }
    }

    /// The resident memory of `worker`, read for the look.
    pub(super) fn on_recycle_memory(&mut self, worker: WorkerId, rss: Option<u64>) {
        if self.machine.current() != Some(worker) {
            return;
        }
        let Some(limits) = self
            .machine
            .worker_settings()
            .and_then(|s| s.recycle.clone())
        else {
            return;
        };
        if let Some(reason) = crate::recycle::due(&limits, Duration::ZERO, rss) {
            self.recycle_now(worker, reason);
        }
    }

    /// Ask the machine to recycle `worker` now.
    fn recycle_now(&mut self, worker: WorkerId, reason: String) {
        let (exe, standby_fits) = self.restart_exe(None);
        let upgrade = exe.as_ref().is_ok_and(|e| self.image.differs_from(e));
        self.feed(machine::Event::Recycle {
            worker,
            reason,
            exe,
            standby_fits,
            upgrade,
            reply: Reply::Log,
            now: Instant::now(),
        });
    }
}
