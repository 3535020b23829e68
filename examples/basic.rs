//! Seed example 1 as a program: the three handlers written here (as GoFrame's example writes
//! them), registered by name, and `basic.yaml` shipped as the program's default config.
//!
//! ```sh
//! cargo run --release --example basic -- run      # serves :8199
//! curl localhost:8199/sleep &  kill -USR1 <the pid apphost run printed>  # the sleep survives
//! ```
//! Every `apphost` subcommand works: `-- check`, `-- run -c other.yaml`, …

use std::sync::Arc;
use std::time::Duration;

use apphost::{Body, Host, ParamType, Params, Request, Response};

fn main() -> std::process::ExitCode {
    Host::new()
        .handler("hello", |_req: Request, _p: Arc<Params>| async {
            Response::new(Body::from("哈喽！\n"))
        })
        .handler("pid", |_req: Request, _p: Arc<Params>| async {
            Response::new(Body::from(format!("{}\n", std::process::id())))
        })
        // Declaring the params it reads makes `duratoin: 1s` or `duration: soon` a config error
        // at `check`, with file:line:col, as for the built-in handlers.
        .handler_with_params(
            "sleep",
            &[("duration", ParamType::Duration)],
            |_req: Request, p: Arc<Params>| async move {
                let wait = p
                    .duration("duration")
                    .ok()
                    .flatten()
                    .unwrap_or(Duration::from_secs(10));
                let (tx, body) = Body::channel();
                tokio::spawn(async move {
                    let line = format!("{}\n", std::process::id());
                    tx.send(line.clone()).await;
                    tokio::time::sleep(wait).await;
                    tx.send(line).await;
                });
                Response::new(body)
            },
        )
        .default_config(include_str!("basic.yaml"))
        // `basic --version` prints `basic 1.0.0 (apphost 0.1.0)`. A program of its own crate
        // writes `.program(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))`.
        .program("basic", "1.0.0")
        .main()
}
