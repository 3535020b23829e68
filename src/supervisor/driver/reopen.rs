//! `reopen-logs`: every live worker (serving, draining, starting; not the warm standby, which
//! has opened nothing yet) reopens its access log files, and the answer waits for them.
//!
//! The answer is given once each worker told has said it is done (`logs_reopened`), has exited
//! (its writer wrote everything to the file it had open before it went), or
//! [`ANSWER_WITHIN`] has passed. So when `apphost reopen-logs` (or the admin route) returns,
//! every line written before it is in the renamed file and no worker writes there any more:
//! logrotate may compress it at once, without `delaycompress` (nginx's `USR1` is answered before
//! its workers have reopened, which is why its logrotate recipes need `delaycompress`). A file
//! that cannot be reopened (its directory is gone, the path is now a directory) is named in the
//! answer, which then fails: the worker goes on writing to the file it has open, so nothing is
//! lost. A worker of an older version, after a binary
//! upgrade, reopens without answering: the answer then says so after [`ANSWER_WITHIN`].
//!
//! Not a restart: the machine is not involved. A re-execution of the supervisor answers what
//! is pending with what it knows first.

use std::time::Duration;

use super::*;

/// How long the answer waits for the workers: a little longer than each waits for its own
/// files ([`crate::worker::REOPEN_WAIT`]), so a worker whose disk is slow says so itself.
const ANSWER_WITHIN: Duration = Duration::from_secs(6);

/// The reopens asked for and not answered yet.
#[derive(Debug, Default)]
pub(super) struct Reopens {
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
}

#[derive(Debug)]
struct Pending {
    reply: Reply,
    /// Workers told and not heard from (nor exited), with their pids for the answer.
    waiting: BTreeMap<WorkerId, u32>,
    told: u32,
    confirmed: u32,
    files: u32,
    failed: Vec<String>,
}

impl Driver {
    /// Tell every live worker to reopen its access log files; the answer goes to `reply` when
    /// they are done (see the module doc).
    pub(super) fn reopen_logs(&mut self, reply: Reply) {
        let standby = self.standby_file.as_ref().map(|(id, _)| *id);
        self.reopens.next_id += 1;
        let id = self.reopens.next_id;
        let mut p = Pending {
            reply,
            waiting: BTreeMap::new(),
            told: 0,
            confirmed: 0,
            files: 0,
            failed: Vec::new(),
        };
        for (w, g) in self
            .workers
            .iter()
            .filter(|(w, g)| !g.exited && Some(**w) != standby)
        {
            let chan = g.chan.clone();
            p.told += 1;
            p.waiting.insert(*w, g.pid_u32());
            tokio::spawn(async move {
                let _ = chan.send(&Msg::ReopenLogs { id: Some(id) }, &[]).await;
            });
        }
        if p.waiting.is_empty() {
            self.answer_reopen(p);
            return;
        }
        self.reopens.pending.insert(id, p);
        self.after(ANSWER_WITHIN, Event::ReopenDeadline(id));
    }

    /// Worker `worker` has reopened its files (`files` of them; `failed` says why others not).
    pub(super) fn on_logs_reopened(
        &mut self,
        worker: WorkerId,
        id: u64,
        files: u32,
        failed: Vec<String>,
    ) {
        let Some(p) = self.reopens.pending.get_mut(&id) else {
            return;
        };
        let Some(pid) = p.waiting.remove(&worker) else {
            return;
        };
        p.confirmed += 1;
        p.files += files;
        p.failed
            .extend(failed.into_iter().map(|f| format!("worker {pid}: {f}")));
        if p.waiting.is_empty() {
            self.finish_reopen(id);
        }
    }

    /// Worker `worker` is gone: its lines are all written where they went; no reopen waits for
    /// it any more.
    pub(super) fn reopen_worker_gone(&mut self, worker: WorkerId) {
        let done: Vec<u64> = self
            .reopens
            .pending
            .iter_mut()
            .filter_map(|(id, p)| {
                (p.waiting.remove(&worker).is_some() && p.waiting.is_empty()).then_some(*id)
            })
            .collect();
        for id in done {
            self.finish_reopen(id);
        }
    }

    /// Answer every pending reopen now (the supervisor is about to re-execute itself).
    pub(super) fn finish_reopens(&mut self) {
        let ids: Vec<u64> = self.reopens.pending.keys().copied().collect();
        for id in ids {
            self.finish_reopen(id);
        }
    }

    /// Answer reopen `id` with what is known (all answered, or its time is over).
    pub(super) fn finish_reopen(&mut self, id: u64) {
        if let Some(p) = self.reopens.pending.remove(&id) {
            self.answer_reopen(p);
        }
    }

    fn answer_reopen(&self, mut p: Pending) {
        for pid in p.waiting.values() {
            p.failed.push(format!(
                "worker {pid}: no answer within {} s (still starting, an older version that reopens without saying so, or stuck)",
                ANSWER_WITHIN.as_secs()
            ));
        }
        if !p.failed.is_empty() {
            tracing::warn!(failed = ?p.failed, "reopen-logs: not every access log was reopened");
        }
        let reply = OpReply::LogsReopened {
            workers: p.told,
            confirmed: p.confirmed,
            files: p.files,
            failed: p.failed,
        };
        self.reply(p.reply, Ok(reply));
    }
}
