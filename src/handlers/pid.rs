//! The `pid` handler: the id of the process serving the request and a newline, which shows
//! which generation answered across a restart. No params.

use super::{Respond, text_ok};
use crate::handler::BoxFuture;

/// Answers `PID\n`.
pub(crate) struct Pid;

/// `PID\n` for this process.
pub(crate) fn pid_line() -> bytes::Bytes {
    format!("{}\n", std::process::id()).into()
}

impl Respond for Pid {
    fn respond(&self, parts: http::request::Parts) -> BoxFuture {
        Box::pin(std::future::ready(text_ok(&parts.method, pid_line())))
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};

    use super::*;
    use crate::handlers::test_util::*;
    use crate::handlers::{Builtin, MethodPolicy};

    #[tokio::test]
    async fn answers_the_process_id() {
        let h = Builtin::new(Pid, MethodPolicy::GetHead);
        let r = h.handle(req(Method::GET, "/pid")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, format!("{}\n", std::process::id()));
    }

    #[tokio::test]
    async fn delete_is_refused() {
        let h = Builtin::new(Pid, MethodPolicy::GetHead);
        let r = h.handle(req(Method::DELETE, "/pid")).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
