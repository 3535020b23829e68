//! # apphost: a zero-downtime application host
//!
//! apphost hosts HTTP/HTTPS servers described by a config file (`server.yaml` or `.toml`), with
//! routes mapped to handlers registered by name in the binary ([`Host`]). When a restart is asked
//! for, it moves to a new process without refusing a connection or cutting a request in flight.
//!
//! ## How a request flows
//! A listening socket (`serve`) accepts a connection, TLS is terminated if the listener is
//! HTTPS, hyper serves HTTP/1.1 or HTTP/2 on it (chosen by ALPN, or by the first bytes on a
//! plain port), and each request goes to the server's route table (`routes`), which calls the
//! matched [`Handler`] (or a hosted tower service, such as an `axum::Router`: [`Host::service`]).
//! Request and response bodies are both [`Body`], streamed in both directions. One watchdog task per worker (`serve::watchdog`) enforces every
//! connection's deadlines, so the request path arms no timer.
//!
//! ## How a restart flows
//! `apphost run` starts the supervisor (`supervisor`), a small process whose PID never changes.
//! It opens the listening sockets once and starts a worker (`worker`, a *generation*) from the
//! executable, handing it the sockets. A restart starts generation N+1 with the same sockets;
//! once it reports ready over its channel, generation N stops accepting and drains. If N+1
//! fails, N keeps serving and the asker is told why. See `supervisor::machine` for the state
//! machine.
//!
//! Whatever asks for a restart, a shutdown or the status — a signal, a server's admin routes,
//! the `apphost status|restart|shutdown` commands over the supervisor's control socket, or a
//! handler calling [`ops`] — goes through that one state machine and gets the same answer.
//!
//! ## Module map
//! Imports point down the layers (a module uses its own layer or lower ones), and no module
//! imports one that imports it back (`python3 ../shared/tools/modcycles.py src` checks).
//!
//! | layer | modules | one job each |
//! | --- | --- | --- |
//! | front | `host` ([`Host`]), `cli` (the command line), `cli::client` (the control client), `cli::rollout` (`apphost rollout`: many hosts by admin URL or control socket) | start the program, parse the command line, print answers |
//! | processes | `supervisor` (restart machine, driver, `control` server, `exe` checks, `systemd`, `sockets` it holds, watchers, re-exec and its `handover`), `worker`, `plan` (config → what a generation serves; `check` prints it), `recycle` (when a worker is replaced: its limits and jitter) | who runs, who restarts |
//! | product | `admin` (admin routes), `observe` (access log, request ids, the `metrics` handler and the supervisor's host-wide totals), [`ops`] (operations; a worker's link to its supervisor) | what operators see and do |
//! | serving | `serve` (listeners: TCP and Unix; the PROXY protocol; TLS, connections, watchdog; `serve::exchange`: the one point where a finished request is recorded) | bytes in, bytes out |
//! | app | `routes` (route table), `handlers` (built-ins), `service` (tower services and axum routers as handlers) | which code answers |
//! | base | `config`, `handler` (trait, helpers, registry), `body`, `launch` (how a worker or a check is started: apphost's own command line, or the program's with apphost nested), `channel` (supervisor–worker protocol: `Msg`, `Op*`, `Status`, `ENV_*`), `drain` ([`draining`]: the drain as handlers see it), `tally` (request counters: per-route atomics, and the snapshots that travel), `control` (where the control socket is), `clock`, `fnv`, `logging`, `watch`, `sys` | shared vocabulary |
//!
//! The public API is what an application needs: [`Host`], [`Handler`] and its helpers,
//! [`Body`], [`Request`]/[`Response`], [`Params`], [`ConfigError`], [`ClientAddr`],
//! [`RouteMatch`], [`draining`], and [`ops`]. Everything else is crate-private.

// The library's own items only: the integration tests' and examples' helpers are `pub` in
// their own binaries, which this lint would flag.
#![warn(unreachable_pub)]

mod admin;
mod body;
mod channel;
mod cli;
mod clock;
mod config;
mod control;
mod drain;
mod fnv;
mod handler;
mod handlers;
mod host;
mod launch;
mod logging;
mod observe;
pub mod ops;
mod plan;
mod recycle;
mod routes;
mod serve;
mod service;
mod supervisor;
mod sys;
mod tally;
mod watch;
mod worker;

pub use body::{Body, BodyError, BodySender, BoxError};
pub use config::{ConfigError, ParamType, Params, Pos};
pub use drain::draining;
pub use handler::{
    BoxFuture, ClientAddr, FnHandler, Handler, Request, Response, RouteMatch, Wants, text,
};
pub use host::Host;
