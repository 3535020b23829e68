//! The guards of issue #14 on handlers of your own: `max_request_body` (server and route),
//! a route's `timeout`, `max_connections` and `recycle`. `guards.yaml` is its default config.
//!
//! ```sh
//! cargo run --release --example guards -- run          # serves 127.0.0.1:8500
//! curl --data-binary @/etc/services localhost:8500/upload        # 413: over the server's 1 KiB
//! curl --data-binary @/etc/services localhost:8500/big/upload    # counted: the route allows 1 MiB
//! curl -X POST --data-binary @/etc/services localhost:8500/svc/echo   # an axum router, same limit
//! curl localhost:8500/slow          # 504 after the route's 1 s timeout (the handler takes 3 s)
//! curl localhost:8500/fast          # answered at once, same handler without the wait
//! ```
//!
//! The handlers: `upload` reads its request body to the end and answers how many bytes it got
//! (a body over the limit fails to read, and the connection answers `413` for it); `slow`
//! answers after its `delay`; `hog` keeps `size` bytes of memory per request for the worker's
//! life (to watch `recycle.max_memory` replace the worker); `echo` is an axum router answering a
//! POST with its body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apphost::{Body, Host, ParamType, Params, Request, Response};
use axum::routing::post;
use http_body_util::BodyExt;

/// What `hog` has taken, kept until the worker exits.
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn main() -> std::process::ExitCode {
    let echo =
        axum::Router::new().route("/echo", post(|body: axum::body::Bytes| async move { body }));
    Host::with_builtins()
        .handler("upload", |req: Request, _p: Arc<Params>| async move {
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len()),
                    Err(e) => {
                        return apphost::text(http::StatusCode::BAD_REQUEST, format!("{e}\n"));
                    }
                }
            }
            Response::new(Body::from(format!("{n} bytes\n")))
        })
        .handler_with_params(
            "slow",
            &[("delay", ParamType::Duration)],
            |_req: Request, p: Arc<Params>| async move {
                let delay = p.duration("delay").ok().flatten().unwrap_or(Duration::ZERO);
                tokio::time::sleep(delay).await;
                Response::new(Body::from(format!("{}\n", std::process::id())))
            },
        )
        .handler_with_params(
            "hog",
            &[("size", ParamType::U64)],
            |_req: Request, p: Arc<Params>| async move {
                let size = p.u64("size").ok().flatten().unwrap_or(1 << 20) as usize;
                // Written, so the pages are resident.
                let block = vec![1u8; size];
                let mut hoard = HOARD.lock().unwrap_or_else(|e| e.into_inner());
                hoard.push(block);
                let held: usize = hoard.iter().map(Vec::len).sum();
                Response::new(Body::from(format!(
                    "{} holds {held} bytes\n",
                    std::process::id()
                )))
            },
        )
        .service("echo", echo)
        .default_config(include_str!("guards.yaml"))
        .program("guards", "1.0.0")
        .main()
}
