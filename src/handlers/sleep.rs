//! The `sleep` handler: a slow, streaming request for watching restarts drain. It writes
//! `PID\n` at once, waits `duration` (param, default 10s), then writes `PID\n` again — so a
//! request that spans a restart shows the same process id twice.
//!
//! The answer's headers and first line go out immediately (the body is a [`Body::channel`]); the
//! wait runs in its own task, which stops as soon as the client has gone.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};

use super::pid::pid_line;
use super::{Respond, text_ok};
use crate::body::{Body, BodySender};
use crate::config::{ConfigError, Params};
use crate::handler::{BoxFuture, text};

/// The wait when `duration` is not given.
pub(crate) const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Answers `PID\n`, waits, `PID\n`.
pub(crate) struct Sleep {
    duration: Duration,
}

impl Sleep {
    /// Read `duration` from a route's params.
    pub(crate) fn from_params(params: &Params) -> Result<Sleep, ConfigError> {
        Ok(Sleep {
            duration: params.duration("duration")?.unwrap_or(DEFAULT_DURATION),
        })
    }
}

impl Respond for Sleep {
    fn respond(&self, parts: http::request::Parts) -> BoxFuture {
        let line = pid_line();
        if parts.method == Method::HEAD {
            // The body's length is not known up front, so no Content-Length for HEAD either.
            let mut r = text_ok(&parts.method, line);
            r.headers_mut().remove(http::header::CONTENT_LENGTH);
            return Box::pin(std::future::ready(r));
        }
        let (tx, body) = Body::channel();
        tokio::spawn(stream(tx, line, self.duration));
        Box::pin(std::future::ready(text(StatusCode::OK, body)))
    }
}

/// Write `line`, wait `duration`, write `line`; stop early when the client goes away.
async fn stream(tx: BodySender, line: Bytes, duration: Duration) {
    if !tx.send(line.clone()).await {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => {
            tx.send(line).await;
        }
        _ = tx.closed() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use tokio::time::Instant;

    use http_body_util::BodyExt;

    use super::*;
    use crate::config::Node;
    use crate::config::tree::Value;
    use crate::handlers::test_util::*;

    #[tokio::test]
    async fn first_line_at_once_second_after_the_duration() {
        let h = Sleep {
            duration: Duration::from_millis(300),
        };
        let start = Instant::now();
        let r = h.respond(req(Method::GET, "/sleep").into_parts().0).await;
        assert_eq!(r.status(), StatusCode::OK);
        let mut body = r.into_body();
        let want = pid_line();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, want);
        assert!(start.elapsed() < Duration::from_millis(200));
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, want);
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn headers_and_first_line_come_at_once_through_the_factory() {
        let p = params(PathBuf::from("/"), vec![("duration", s("400ms"))]);
        let h = build("sleep", &p).unwrap();
        let start = Instant::now();
        let resp = h.call(req(Method::GET, "/sleep")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, pid_line());
        assert!(start.elapsed() < Duration::from_millis(300));
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, pid_line());
        assert!(start.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn stops_when_the_client_goes_away() {
        let (tx, body) = Body::channel();
        let start = Instant::now();
        let task = tokio::spawn(stream(tx, pid_line(), Duration::from_secs(3600)));
        let mut body = body;
        assert!(body.frame().await.is_some());
        drop(body);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task stopped")
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn head_answers_at_once_without_body() {
        let h = Sleep {
            duration: Duration::from_secs(3600),
        };
        let r = h.respond(req(Method::HEAD, "/sleep").into_parts().0).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "");
    }

    #[test]
    fn duration_param() {
        let p = params(PathBuf::from("/"), vec![]);
        assert_eq!(Sleep::from_params(&p).unwrap().duration, DEFAULT_DURATION);
        let p = params(PathBuf::from("/"), vec![("duration", s("250ms"))]);
        assert_eq!(
            Sleep::from_params(&p).unwrap().duration,
            Duration::from_millis(250)
        );
        let bad = Node {
            value: Value::Str("soon".into()),
            pos: crate::config::Pos::new(4, 9),
        };
        let p = params(PathBuf::from("/"), vec![("duration", bad)]);
        let err = Sleep::from_params(&p).err().expect("bad duration");
        assert_eq!(err.pos, Some(crate::config::Pos::new(4, 9)));
    }
}
