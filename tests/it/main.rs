//! Integration tests: each starts the real `apphost` binary on free ports with a temporary
//! config and talks to it over real sockets on 127.0.0.1.

mod support;

mod access_log;
mod admin;
mod axum;
mod docker;
mod drain;
mod fleet;
mod going_away;
mod grpc;
mod guards;
mod harness;
mod host;
mod hostile_ops;
mod http2;
mod kubernetes;
mod limits;
mod listeners;
mod metrics;
mod netns;
mod new_connections;
mod newcomer;
mod recorded_exe;
mod recovery;
mod reexec;
mod reopen_logs;
mod restart;
mod rollout;
mod slow_clients;
mod smoke;
mod standby;
mod systemd;
mod tunnel;
mod watch;
mod websocket;
