//! The `health` handler: `200 ok\n` for as long as the worker runs: liveness (Kubernetes'
//! `livenessProbe`). Load balancers and readiness probes use `ready`, which turns to 503 when a
//! shutdown begins. No params.

use bytes::Bytes;

use super::{Respond, text_ok};
use crate::handler::BoxFuture;

/// Answers `ok\n`.
pub(crate) struct Health;

impl Respond for Health {
    fn respond(&self, parts: http::request::Parts) -> BoxFuture {
        Box::pin(std::future::ready(text_ok(
            &parts.method,
            Bytes::from_static(b"ok\n"),
        )))
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};

    use super::*;
    use crate::handlers::test_util::*;
    use crate::handlers::{Builtin, MethodPolicy};

    #[tokio::test]
    async fn answers_ok() {
        let h = Builtin::new(Health, MethodPolicy::GetHead);
        let r = h.handle(req(Method::GET, "/healthz")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(body(r).await, "ok\n");
    }

    #[tokio::test]
    async fn head_has_length_but_no_body() {
        let h = Builtin::new(Health, MethodPolicy::GetHead);
        let r = h.handle(req(Method::HEAD, "/healthz")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], "3");
        assert_eq!(body(r).await, "");
    }
}
