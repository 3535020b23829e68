//! A release with a bug, for trying `apphost rollout` (and its integration tests): apphost with
//! its built-in handlers, except that the application's own routes, `hello` and `pid`, answer
//! `500 Internal Server Error`. It starts, passes its readiness request, and its `ready`,
//! `health` and admin routes answer as usual: only the requests of its users fail. A restart
//! onto it succeeds; what catches it is a canary's bake, which watches the 5xx share of
//! `apphost_http_requests_total`.
//!
//! ```sh
//! cargo build --example bad_release
//! apphost rollout --exe "$PWD/target/debug/examples/bad_release" --bake 30s --rollback \
//!     /run/app-a/ctl.sock /run/app-b/ctl.sock
//! ```

use std::sync::Arc;

use apphost::{Host, Params, Request, Response, text};

/// What the broken routes answer.
async fn broken(_req: Request, _p: Arc<Params>) -> Response {
    text(
        http::StatusCode::INTERNAL_SERVER_ERROR,
        "500 internal server error: this release is broken\n",
    )
}

fn main() -> std::process::ExitCode {
    Host::with_builtins()
        .handler("hello", broken)
        .handler("pid", broken)
        .program("bad_release", "0.0.0")
        .main()
}
