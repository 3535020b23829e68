//! The machine's recycling: the serving worker passed a `recycle` limit (`max_requests`, which
//! it counts itself and reports; `max_age` or `max_memory`, which the driver watches), so it is
//! replaced by a restart like any other, with trigger `recycle`.
//!
//! - **One at a time**: a recycle is started only from `Serving`, for the worker that serves;
//!   asked during another restart, a shutdown or a recovery, or for a worker that no longer
//!   serves, it is not started and not refused aloud (the driver asks again on its next look,
//!   and the limit still holds only for a worker that still serves).
//! - **No hot loop**: a recycle that fails (the new worker does not start, the old one serves
//!   on) is not tried again before [`RECYCLE_RETRY_MIN`] has passed since it was asked, doubling
//!   to [`RECYCLE_RETRY_MAX`] while they keep failing; one that succeeds resets the wait.
//! - The restart follows `graceful` like any other: with `graceful: false` a recycle is a full
//!   restart (the old worker drains first, new connections wait meanwhile).

use std::path::PathBuf;
use std::time::Instant;

use super::{Machine, Phase, RECYCLE_RETRY_MAX, RECYCLE_RETRY_MIN, Trigger, WorkerId};

impl<R> Machine<R> {
    /// [`super::Event::Recycle`].
    pub(super) fn on_recycle(
        &mut self,
        worker: WorkerId,
        reason: String,
        (exe, standby_fits, upgrade): (Result<PathBuf, String>, bool, bool),
        reply: R,
        now: Instant,
    ) {
        if !matches!(self.phase, Phase::Serving { current } if current == worker) {
            tracing::debug!(
                reason,
                "recycle not started now: not the serving worker, or a restart is under way"
            );
            return;
        }
        if let Some(at) = self.recycle_tried_at
            && now.saturating_duration_since(at) < self.recycle_retry
        {
            return;
        }
        self.recycle_tried_at = Some(now);
        tracing::info!(
            generation = self.generation_of(worker),
            "recycling the worker: {reason}"
        );
        self.on_restart(Trigger::Recycle, exe, standby_fits, upgrade, reply, now);
    }

    /// A restart ended: a recycle that failed makes the next wait longer, any that succeeded
    /// resets it.
    pub(super) fn recycle_ended(&mut self, trigger: &Trigger, ok: bool) {
        if *trigger != Trigger::Recycle {
            return;
        }
        if ok {
            self.recycle_retry = std::time::Duration::ZERO;
        } else {
            self.recycle_retry =
                (self.recycle_retry * 2).clamp(RECYCLE_RETRY_MIN, RECYCLE_RETRY_MAX);
            tracing::warn!(
                "recycling failed; the worker serves on, and recycling is tried again in {} s at the earliest",
                self.recycle_retry.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Action, Event, Phase, Settings, Trigger};
    use super::*;
    use crate::channel::WorkerSettings;

    type M = Machine<u32>;

    use crate::supervisor::machine::tests::{exe, spawned};

    fn reported() -> WorkerSettings {
        WorkerSettings {
            recycle: Some(crate::channel::RecycleSettings {
                max_requests: Some(100),
                ..Default::default()
            }),
            ..crate::supervisor::machine::tests::reported(true, false)
        }
    }

    fn ready(worker: WorkerId, pid: u32, now: Instant) -> Event<u32> {
        Event::Ready {
            worker,
            pid,
            settings: reported(),
            now,
        }
    }

    fn recycle(worker: WorkerId, now: Instant) -> Event<u32> {
        Event::Recycle {
            worker,
            reason: "max_requests: it has started 100 requests (limit 100)".into(),
            exe: Ok(exe()),
            standby_fits: false,
            upgrade: false,
            reply: 0,
            now,
        }
    }

    /// A machine whose first generation serves (graceful).
    fn serving() -> (M, WorkerId, Instant) {
        let t = Instant::now();
        let settings = Settings {
            graceful: true,
            graceful_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(60),
            shutdown_delay: Duration::ZERO,
            warm_standby: false,
        };
        let mut m = M::new(exe(), settings, || 1_700_000_000);
        let first = spawned(&m.handle(Event::Start { now: t }))[0];
        m.handle(ready(first, 100, t));
        (m, first, t)
    }

    #[test]
    fn a_recycle_is_a_graceful_restart_recorded_with_its_trigger() {
        let (mut m, old, t) = serving();
        let acts = m.handle(recycle(old, t));
        let new = spawned(&acts)[0];
        assert!(
            matches!(m.phase(), Phase::Starting { current, new: n, pending } if *current == old && *n == new && pending.trigger == Trigger::Recycle)
        );
        // A second recycle, or one for the new worker, while it starts: nothing at all.
        assert!(m.handle(recycle(old, t)).is_empty());
        assert!(m.handle(recycle(new, t)).is_empty());
        let acts = m.handle(ready(new, 200, t));
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Drain { worker, .. } if *worker == old))
        );
        assert_eq!(m.current(), Some(new));
        let last = m.last_restart().unwrap();
        assert!(last.ok);
        assert_eq!(last.trigger, "recycle");
        assert_eq!(m.restarts(), 1);
        // The old worker's late report changes nothing; the new one recycles in its turn.
        assert!(m.handle(recycle(old, t)).is_empty());
        assert_eq!(spawned(&m.handle(recycle(new, t))).len(), 1);
    }

    #[test]
    fn a_failed_recycle_is_not_retried_before_the_backoff_and_doubles_it() {
        let (mut m, old, t) = serving();
        let new = spawned(&m.handle(recycle(old, t)))[0];
        m.handle(Event::Exited {
            worker: new,
            status: "exit status 2".into(),
            reason: "boom".into(),
            pid: 200,
            now: t,
        });
        assert_eq!(m.current(), Some(old), "the old worker serves on");
        let last = m.last_restart().unwrap();
        assert!(!last.ok);
        assert_eq!(last.trigger, "recycle");
        // Asked again at once and just before the wait is over: nothing.
        assert!(m.handle(recycle(old, t)).is_empty());
        let early = t + RECYCLE_RETRY_MIN - Duration::from_millis(1);
        assert!(m.handle(recycle(old, early)).is_empty());
        // After it: tried again; failing again doubles the wait.
        let t2 = t + RECYCLE_RETRY_MIN;
        let new2 = spawned(&m.handle(recycle(old, t2)))[0];
        m.handle(Event::SpawnFailed {
            worker: new2,
            reason: "cannot start".into(),
        });
        assert!(m.handle(recycle(old, t2 + RECYCLE_RETRY_MIN)).is_empty());
        let t3 = t2 + RECYCLE_RETRY_MIN * 2;
        let new3 = spawned(&m.handle(recycle(old, t3)))[0];
        // Success resets the wait: the next recycle may start at once.
        m.handle(ready(new3, 300, t3));
        assert_eq!(spawned(&m.handle(recycle(new3, t3))).len(), 1);
    }

    #[test]
    fn no_recycle_during_another_restart_or_a_shutdown() {
        let (mut m, old, t) = serving();
        m.handle(Event::Restart {
            trigger: Trigger::Cli,
            exe: Ok(exe()),
            standby_fits: false,
            upgrade: false,
            reply: 7,
            now: t,
        });
        assert!(m.handle(recycle(old, t)).is_empty());
        let (mut m, old, t) = serving();
        m.handle(Event::StopSignal { name: "SIGTERM" });
        assert!(m.handle(recycle(old, t)).is_empty());
    }
}
