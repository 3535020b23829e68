//! `{path}/reopen-logs` (POST): the admin form of `apphost reopen-logs`. The supervisor passes
//! it to every live worker, draining ones included, and each writes what it has buffered to its
//! access log files and opens their paths anew (logrotate's rename, then reopen). Refused, like
//! restart and shutdown, to a request a browser marks as cross-site.
//!
//! Answers `200`: text `reopening the access log files: asked 2 workers`; JSON
//! `{"ok":true,"kind":"logs_reopened","workers":2}`.

use http::StatusCode;
use serde_json::json;

use super::answer::{AdminError, Format, json_body, respond};
use super::{Admin, Asked, ask, page};
use crate::channel::Op;
use crate::handler::{Request, Response};
use crate::ops::{OpError, OpReply};

impl Admin {
    pub(super) async fn reopen_logs(
        &self,
        req: Request,
        asked: &Asked,
    ) -> Result<Response, AdminError> {
        Self::same_site(&req)?;
        tracing::info!(client = %asked.client, server = %self.server, "admin: reopen-logs requested");
        let reply = ask(self.link.as_ref(), Op::ReopenLogs).await?;
        let OpReply::LogsReopened { workers } = reply else {
            return Err(OpError::Unavailable(format!(
                "unexpected answer to reopen-logs: {reply:?}"
            ))
            .into());
        };
        let msg = format!(
            "reopening the access log files: asked {}",
            crate::clock::plural(u64::from(workers), "worker")
        );
        let body = match asked.fmt {
            Format::Json => {
                json_body(&json!({ "ok": true, "kind": "logs_reopened", "workers": workers }))
            }
            Format::Text => format!("{msg}\n"),
            Format::Html => {
                page::result(self, true, "Access logs reopened", &[("Note", msg)], None)
            }
        };
        Ok(respond(StatusCode::OK, asked.fmt, body))
    }
}
