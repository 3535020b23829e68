//! # apphost: a zero-downtime application host
//!
//! apphost hosts HTTP/HTTPS servers described by a config file (`server.yaml` or `.toml`), with
//! routes mapped to handlers registered by name in the binary ([`Host`]). When a restart is asked
//! for, it moves to a new process without refusing a connection or cutting a request in flight.
//!
//! ## How a request flows
//! A listening socket ([`serve`]) accepts a connection, TLS is terminated if the listener is
//! HTTPS, hyper serves HTTP/1.1 or HTTP/2 on it (chosen by ALPN, or by the first bytes on a
//! plain port), and each request goes to the server's [`routes::RouteTable`], which calls the
//! matched [`Handler`]. One watchdog task per worker ([`serve::watchdog`]) enforces every
//! connection's deadlines, so the request path arms no timer.
//!
//! ## How a restart flows
//! `apphost run` starts the [`supervisor`], a small process whose PID never changes. It opens the
//! listening sockets once and starts a [`worker`] (a *generation*) from the executable, handing it
//! the sockets. A restart starts generation N+1 with the same sockets; once it reports ready over
//! its channel, generation N stops accepting and drains. If N+1 fails, N keeps serving and the
//! asker is told why. See the supervisor module for the state machine.
//!
//! Whatever asks for a restart, a shutdown or the status — a signal, a server's [`admin`] routes,
//! the `apphost status|restart|shutdown` commands over the supervisor's [`control`] socket, or a
//! handler calling [`ops`] — goes through that one state machine and gets the same answer.

pub mod admin;
pub mod body;
pub mod channel;
pub mod cli;
pub mod config;
pub mod control;
pub mod handler;
pub mod handlers;
pub mod host;
pub mod logging;
pub mod ops;
pub mod routes;
pub mod serve;
pub mod supervisor;
mod sys;
pub mod watch;
pub mod worker;

pub use body::{Body, BodySender};
pub use config::{Config, ConfigError, Params};
pub use handler::{ClientAddr, Handler, Request, Response, RouteMatch, Wants};
pub use host::Host;
