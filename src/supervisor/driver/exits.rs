//! What the driver does when a process it started ends: a preflight's end goes to its check, a
//! worker's exit is judged once its last stderr lines and channel messages are in (`Reaped`),
//! and the machine is told with the reason.

use super::*;

impl Driver {
    pub(super) fn on_exit(&mut self, pid: Pid, st: WaitStatus) {
        if let Some(p) = self.preflights.remove(&pid.as_raw_nonzero().get()) {
            self.preflight_done(p, st);
            return;
        }
        let Some((&id, g)) = self
            .workers
            .iter_mut()
            .find(|(_, g)| g.pid == pid && !g.exited)
        else {
            tracing::debug!(pid = pid.as_raw_nonzero().get(), "reaped an orphan");
            return;
        };
        // Judge the exit only once its last stderr lines and channel messages (a `failed`
        // reason) are in: they may still be in flight behind the SIGCHLD.
        g.exited = true;
        let status = describe_status(st);
        g.exit_status = Some(status.clone());
        let tasks = std::mem::take(&mut g.tasks);
        let events = self.events.clone();
        tokio::spawn(async move {
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
            }
            let _ = events.send(Event::Reaped(id, status));
        });
    }

    pub(super) fn on_reaped(&mut self, worker: WorkerId, status: String) {
        let Some(mut g) = self.workers.remove(&worker) else {
            return;
        };
        self.listeners
            .discard_unadopted(std::mem::take(&mut g.bound));
        if self
            .standby_file
            .as_ref()
            .is_some_and(|(s, _)| *s == worker)
        {
            self.standby_file = None;
        }
        // Its channel has been read to the end: its last counts are final, and it has answered
        // every reopen it is going to.
        self.totals.retire(worker);
        self.reopen_worker_gone(worker);
        let reported = self.fail_reasons.remove(&worker);
        let tail = g.stderr_tail();
        let reason = match reported {
            Some(r) => format!("{r} ({status})"),
            None if tail.is_empty() => status.clone(),
            None => format!("{status}; last output:\n{tail}"),
        };
        self.feed(machine::Event::Exited {
            worker,
            status,
            reason,
            pid: g.pid_u32(),
            now: Instant::now(),
        });
    }
}

/// A wait status in words: `exit status N` or `killed by signal NAME`.
pub(super) fn describe_status(st: WaitStatus) -> String {
    if let Some(code) = st.exit_status() {
        format!("exit status {code}")
    } else if let Some(sig) = st.terminating_signal() {
        let name = Signal::from_named_raw(sig)
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| sig.to_string());
        format!("killed by signal {name}")
    } else {
        format!("{st:?}")
    }
}
