//! The `hello` handler: a fixed greeting. Param `text` (default `哈喽！`); the answer is the text
//! and a newline, as `text/plain; charset=utf-8`.

use bytes::Bytes;

use super::{Respond, text_ok};
use crate::config::{ConfigError, Params};
use crate::handler::BoxFuture;

/// The greeting used when `text` is not given.
pub(crate) const DEFAULT_TEXT: &str = "哈喽！";

/// Answers its text and a newline.
pub(crate) struct Hello {
    /// The text with its newline, shared by every answer.
    body: Bytes,
}

impl Hello {
    /// A greeting of `text` (a newline is added).
    pub(crate) fn new(text: &str) -> Hello {
        Hello {
            body: Bytes::from(format!("{text}\n")),
        }
    }

    /// Read `text` from a route's params.
    pub(crate) fn from_params(params: &Params) -> Result<Hello, ConfigError> {
        Ok(Hello::new(params.str("text")?.unwrap_or(DEFAULT_TEXT)))
    }
}

impl Respond for Hello {
    fn respond(&self, parts: http::request::Parts) -> BoxFuture {
        Box::pin(std::future::ready(text_ok(
            &parts.method,
            self.body.clone(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use http::{Method, StatusCode};

    use super::*;
    use crate::handlers::test_util::*;

    #[tokio::test]
    async fn default_text_through_the_factory() {
        let h = build("hello", &params(PathBuf::from("/"), vec![])).unwrap();
        let app = direct(move |req| h.call(req));
        let r = fetch(&app, Method::GET, "/", &[]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(r.body(), "哈喽！\n");
    }

    #[tokio::test]
    async fn configured_text_and_head() {
        let h = Hello::from_params(&params(PathBuf::from("/"), vec![("text", s("hi"))])).unwrap();
        let r = h.respond(req(Method::GET, "/").into_parts().0).await;
        assert_eq!(body(r).await, "hi\n");
        let r = h.respond(req(Method::HEAD, "/").into_parts().0).await;
        assert_eq!(r.headers()["content-length"], "3");
        assert_eq!(body(r).await, "");
    }
}
