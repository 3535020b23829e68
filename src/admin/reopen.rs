//! `{path}/reopen-logs` (POST): the admin form of `apphost reopen-logs`. The supervisor passes
//! it to every live worker, draining ones included, and each writes what it has buffered to its
//! access log files and opens their paths anew (logrotate's rename, then reopen). Refused, like
//! restart and shutdown, to a request a browser marks as cross-site.
//!
//! The answer waits until every worker has reopened (see `supervisor::driver::reopen`): `200`,
//! text `reopened 2 access log files in 2 of 2 workers: the renamed files are complete`; JSON
//! `{"ok":true,"kind":"logs_reopened","workers":2,"confirmed":2,"files":2,"failed":[]}`. When a
//! file could not be reopened (or a worker did not answer in time), `500`, `"ok":false`, and
//! each reason in `failed` (one line each in text); those workers keep writing to the files
//! they have open.

use http::StatusCode;
use serde_json::json;

use super::answer::{AdminError, Format, json_body, respond};
use super::{Admin, Asked, ask, page};
use crate::channel::Op;
use crate::handler::{Request, Response};
use crate::ops::describe_reopen;
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
        let OpReply::LogsReopened {
            workers,
            confirmed,
            files,
            failed,
        } = &reply
        else {
            return Err(OpError::Unavailable(format!(
                "unexpected answer to reopen-logs: {reply:?}"
            ))
            .into());
        };
        let msg = describe_reopen(*workers, *confirmed, *files, failed.len());
        let ok = failed.is_empty();
        let body = match asked.fmt {
            Format::Json => json_body(&json!({
                "ok": ok,
                "kind": "logs_reopened",
                "workers": workers,
                "confirmed": confirmed,
                "files": files,
                "failed": failed,
            })),
            Format::Text => {
                let mut t = format!("{msg}\n");
                for f in failed {
                    t.push_str(&format!("{f}\n"));
                }
                t
            }
            Format::Html => {
                let mut rows = vec![("Result", msg.clone())];
                rows.extend(failed.iter().map(|f| ("Failed", f.clone())));
                let title = if ok {
                    "Access logs reopened"
                } else {
                    "Access logs not all reopened"
                };
                page::result(self, ok, title, &rows, None)
            }
        };
        // A file that could not be reopened is the host's failure, not the asker's.
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        Ok(respond(status, asked.fmt, body))
    }
}
