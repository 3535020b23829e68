//! What the driver answers: operations asked of the supervisor (restart, shutdown, status,
//! reopen-logs, metrics) from the control socket, the admin routes, signals and watchers, and
//! where each answer goes ([`Reply`]).

use super::*;

impl Driver {
    pub(super) fn on_op(&mut self, op: Op, reply: Reply) {
        match op {
            Op::Status => {
                let s = self.status();
                self.reply(reply, Ok(OpReply::Status(s)));
            }
            Op::Shutdown => self.feed(machine::Event::Shutdown { reply }),
            Op::ReopenLogs => self.reopen_logs(reply),
            Op::Restart { exe, via } => {
                let trigger = Trigger::from_via(via.as_deref());
                let (checked, standby_fits) = self.restart_exe(exe);
                let upgrade = checked.as_ref().is_ok_and(|e| self.image.differs_from(e));
                self.feed(machine::Event::Restart {
                    trigger,
                    exe: checked,
                    standby_fits,
                    upgrade,
                    reply,
                    now: Instant::now(),
                });
            }
        }
    }

    /// The executable a restart runs (`given`, else the recorded one), checked, and whether the
    /// warm standby fits it.
    pub(super) fn restart_exe(&self, given: Option<String>) -> (Result<PathBuf, String>, bool) {
        let given = given.filter(|s| !s.is_empty());
        let recorded = self.machine.recorded_exe().clone();
        // The standby runs the file now at the recorded path (same device, inode, size and
        // mtime as its `/proc/PID/exe`): activating it executes nothing, so the checks for
        // running that file are not needed before `activate` (one `stat` instead of an open,
        // a read and three lookups).
        if given.is_none()
            && recorded.is_absolute()
            && let Some((_, Some(file))) = &self.standby_file
            && crate::watch::file_id(&recorded).as_ref() == Some(file)
        {
            return (Ok(recorded), true);
        }
        let checked = match &given {
            Some(p) => exe::check(Path::new(p)),
            None => exe::check(&recorded),
        };
        // The standby runs the recorded executable as it was when the standby started.
        let standby_fits = given.is_none()
            && checked.as_ref().is_ok_and(|e| *e == recorded)
            && self.standby_file.as_ref().is_some_and(|(_, file)| {
                file.is_some() && crate::watch::file_id(&recorded) == *file
            });
        (checked, standby_fits)
    }

    pub(super) fn status(&self) -> Status {
        let cur = self.machine.current();
        Status {
            supervisor_pid: std::process::id(),
            worker_pid: cur
                .and_then(|w| self.workers.get(&w))
                .map(Generation::pid_u32),
            generation: cur.and_then(|w| self.machine.generation_of(w)).unwrap_or(0),
            exe: self.machine.recorded_exe().display().to_string(),
            config: self.opts.config.source.to_string(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            generation_uptime_s: cur
                .and_then(|w| self.machine.ready_at(w))
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(0.0),
            graceful: self.machine.settings().graceful,
            listeners: self.listeners.keys(),
            phase: self.machine.phase().name().into(),
            restarts: self.machine.restarts(),
            last_restart: self.machine.last_restart().cloned(),
        }
    }

    /// Answer worker `worker`'s metrics request `id`: the host's counts and the supervisor's
    /// facts.
    pub(super) fn answer_metrics(&self, worker: WorkerId, id: u64) {
        let Some(g) = self.workers.get(&worker) else {
            return;
        };
        let cur = self.machine.current();
        let generation = cur.and_then(|w| self.machine.generation_of(w)).unwrap_or(0);
        let pids = self
            .workers
            .values()
            .filter(|g| !g.exited)
            .map(Generation::pid_u32);
        let metrics = self.totals.metrics(generation, self.machine.stats(), pids);
        let chan = g.chan.clone();
        tokio::spawn(async move {
            let msg = Msg::Metrics {
                id,
                metrics: Box::new(metrics),
            };
            if let Err(e) = chan.send(&msg, &[]).await {
                tracing::warn!("cannot send the metrics to the worker: {e}");
            }
        });
    }

    pub(super) fn reply(&self, to: Reply, r: OpResult) {
        match to {
            Reply::Log => match &r {
                Ok(_) => {}
                Err(e) => tracing::warn!("{e}"),
            },
            Reply::Local(tx) | Reply::Client { tx, .. } | Reply::Watcher { tx, .. } => {
                let _ = tx.send(r);
            }
            Reply::WatcherHandedOver(what) => {
                watchers::log_outcome(&what, &r.map(|_| ()));
            }
            Reply::HandedOver(conn) => control::answer_handed_over(conn, r),
            Reply::Worker { worker, id } => {
                let Some(g) = self.workers.get(&worker) else {
                    return;
                };
                let chan = g.chan.clone();
                let result = serde_json::to_value(&r).unwrap_or(serde_json::Value::Null);
                tokio::spawn(async move {
                    let _ = chan.send(&Msg::Reply { id, result }, &[]).await;
                });
            }
        }
    }
}
