//! The admin's actions: `restart` (with an optional new executable, checked against
//! `allowed_exe_dirs`) and `shutdown`, each asked of the supervisor through the worker's link.

use std::path::{Path, PathBuf};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::answer::{AdminError, Format, closing, is_form, json_body, respond};
use super::{Admin, Asked, RESULT_REFRESH_SECS, ask, draining_error, form, page, worker_facts};
use crate::channel::Op;
use crate::handler::{Request, Response};
use crate::ops::{Link, OpError, OpReply, OpResult};

impl Admin {
    /// Check a `newExeFilePath`: absolute, and inside `allowed_exe_dirs` when there are any.
    /// Returns the path to hand to the supervisor (canonical when checked against the list).
    pub(super) fn check_exe(&self, given: &str) -> Result<PathBuf, OpError> {
        let p = Path::new(given);
        if !p.is_absolute() {
            return Err(OpError::BadExecutable(format!(
                "{given}: give an absolute path"
            )));
        }
        if self.allowed_exe_dirs.is_empty() {
            return Ok(p.to_path_buf());
        }
        let canon = std::fs::canonicalize(p)
            .map_err(|e| OpError::BadExecutable(format!("{given}: {e}")))?;
        let inside = self.allowed_exe_dirs.iter().any(|d| {
            std::fs::canonicalize(d)
                .map(|d| canon.starts_with(d))
                .unwrap_or(false)
        });
        if inside {
            Ok(canon)
        } else {
            let dirs = self
                .allowed_exe_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            // The resolved path is not echoed: it would tell the asker where links point.
            Err(OpError::Forbidden(format!(
                "{given} is not inside allowed_exe_dirs ({dirs})"
            )))
        }
    }

    /// Ask for the restart. `None`: a full restart was accepted and this worker is draining, so
    /// its outcome will not reach us.
    pub(super) async fn ask_restart(&self, exe: Option<PathBuf>) -> Option<OpResult> {
        let op = Op::Restart {
            exe: exe.map(|p| p.to_string_lossy().into_owned()),
            via: Some("admin".into()),
        };
        let asked = ask(self.link.as_ref(), op);
        match self.link.as_ref().map(Link::serving) {
            Some(serving) if !self.graceful => {
                tokio::pin!(asked);
                tokio::select! {
                    biased;
                    r = &mut asked => Some(r),
                    _ = serving.drained_signal() => None,
                }
            }
            _ => Some(asked.await),
        }
    }

    pub(super) async fn restart(
        &self,
        req: Request,
        query: &[(String, String)],
        asked: &Asked,
    ) -> Result<Response, AdminError> {
        Self::same_site(&req)?;
        let mut exe = form::get(query, "newExeFilePath").map(str::to_owned);
        if req.method() == Method::POST && is_form(req.headers()) {
            let body = form::read_body(req.into_body()).await?;
            let fields = form::parse(&body)?;
            if let Some(v) = form::get(&fields, "newExeFilePath") {
                exe = Some(v.to_owned());
            }
        }
        let exe = exe.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let exe = exe.as_deref().map(|e| self.check_exe(e)).transpose()?;
        if worker_facts(self.link.as_ref()).draining {
            return Err(draining_error().into());
        }
        let shown = exe
            .as_deref()
            .map_or_else(|| "(recorded)".to_string(), |p| p.display().to_string());
        tracing::info!(client = %asked.client, server = %self.server, exe = %shown, "admin: restart requested");
        let Some(result) = self.ask_restart(exe).await else {
            tracing::info!(client = %asked.client, "admin: full restart under way; this worker drains first");
            let msg = "full restart under way (graceful: false): this worker drains and exits \
                       before the new one starts, so the outcome is not known here; check \
                       the status in a moment";
            let body = match asked.fmt {
                Format::Json => json_body(&json!({
                    "ok": true, "kind": "restart_accepted", "mode": "full", "message": msg,
                })),
                Format::Text => format!("{msg}\n"),
                Format::Html => page::result(
                    self,
                    true,
                    "Full restart under way",
                    &[("Note", msg.to_string())],
                    Some(RESULT_REFRESH_SECS),
                ),
            };
            return Ok(closing(
                respond(StatusCode::ACCEPTED, asked.fmt, body),
                asked.http1,
            ));
        };
        let o = match result? {
            OpReply::Restarted(o) => o,
            other => {
                return Err(OpError::Unavailable(format!(
                    "unexpected answer to restart: {other:?}"
                ))
                .into());
            }
        };
        let old = o
            .old_pid
            .map_or_else(|| "none".to_string(), |p| p.to_string());
        tracing::info!(client = %asked.client, server = %self.server, pid = o.pid, generation = o.generation, handoff_ms = format!("{:.1}", o.handoff_ms), "admin: restart done");
        let body = match asked.fmt {
            Format::Json => {
                let mut v = json!({ "ok": true, "kind": "restarted" });
                if let (Some(m), Ok(Value::Object(o))) =
                    (v.as_object_mut(), serde_json::to_value(&o))
                {
                    m.extend(o);
                }
                json_body(&v)
            }
            Format::Text => format!(
                "restarted: generation {}, pid {} (was {old}), handoff {:.1} ms ({})\n",
                o.generation, o.pid, o.handoff_ms, o.mode
            ),
            Format::Html => page::result(
                self,
                true,
                &format!("Restarted: worker pid {} now serves", o.pid),
                &[
                    ("New worker pid", o.pid.to_string()),
                    ("Generation", o.generation.to_string()),
                    ("Previous worker pid", old),
                    ("Handoff", format!("{:.1} ms", o.handoff_ms)),
                    ("Mode", o.mode.clone()),
                    ("Executable", o.exe.clone()),
                ],
                Some(RESULT_REFRESH_SECS),
            ),
        };
        // Close this (old worker's) connection so the browser's next request reaches the new one.
        Ok(closing(
            respond(StatusCode::OK, asked.fmt, body),
            asked.http1,
        ))
    }

    pub(super) async fn shutdown(
        &self,
        req: Request,
        asked: &Asked,
    ) -> Result<Response, AdminError> {
        Self::same_site(&req)?;
        tracing::info!(client = %asked.client, server = %self.server, "admin: shutdown requested");
        match ask(self.link.as_ref(), Op::Shutdown).await? {
            OpReply::ShuttingDown => {}
            other => {
                return Err(OpError::Unavailable(format!(
                    "unexpected answer to shutdown: {other:?}"
                ))
                .into());
            }
        }
        let msg = "shutting down: every worker drains, then the supervisor exits";
        let body = match asked.fmt {
            Format::Json => {
                json_body(&json!({ "ok": true, "kind": "shutting_down", "message": msg }))
            }
            Format::Text => format!("{msg}\n"),
            Format::Html => page::result(
                self,
                true,
                "The host is shutting down",
                &[("Note", msg.into())],
                None,
            ),
        };
        Ok(closing(
            respond(StatusCode::OK, asked.fmt, body),
            asked.http1,
        ))
    }
}
