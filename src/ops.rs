//! The operations every trigger shares — restart, shutdown, status — and their results.
//!
//! Whatever asks (a signal, the admin page, the control CLI, a file watcher, the library calls
//! [`restart`], [`shutdown`], [`status`]), the request goes to the supervisor's one state machine,
//! and the answer comes back as an [`OpResult`]: so the admin page, the CLI and a handler all
//! report the same outcome in the same words.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a successful operation returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpReply {
    /// A restart finished: a new generation serves.
    Restarted(RestartOutcome),
    /// Shutdown has begun.
    ShuttingDown,
    /// The supervisor's state.
    Status(Status),
}

/// A finished restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestartOutcome {
    /// The new generation's number.
    pub generation: u64,
    /// The new worker's pid.
    pub pid: u32,
    /// The worker it replaced.
    pub old_pid: Option<u32>,
    /// The executable the new worker runs.
    pub exe: String,
    /// From the request to the new worker's ready report, in milliseconds.
    pub handoff_ms: f64,
    /// `graceful` (new ready before old drains) or `full` (old drained first).
    pub mode: String,
}

/// Why an operation failed. The old generation keeps serving in every case.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
#[serde(tag = "error", content = "reason", rename_all = "snake_case")]
pub enum OpError {
    /// Another restart is under way (requests are refused, not queued).
    #[error("a restart is already under way: {0}")]
    Busy(String),
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// The executable asked for cannot be used.
    #[error("unusable executable: {0}")]
    BadExecutable(String),
    /// The new generation failed (its exit status and the end of its stderr).
    #[error("the new process failed: {0}")]
    Failed(String),
    /// The new generation was not ready within `graceful_timeout`.
    #[error("the new process was not ready in time: {0}")]
    Timeout(String),
    /// Not allowed (admin restrictions).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Not running under a supervisor, or it could not be reached.
    #[error("no supervisor: {0}")]
    Unavailable(String),
}

/// The result of an operation.
pub type OpResult = Result<OpReply, OpError>;

/// The supervisor's state, for `status`, the admin page and the CLI.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Status {
    /// The supervisor's pid (stable for the host's life).
    pub supervisor_pid: u32,
    /// The serving worker's pid.
    pub worker_pid: Option<u32>,
    /// The serving generation's number.
    pub generation: u64,
    /// The executable recorded at start (restarts use it unless told otherwise).
    pub exe: String,
    /// The config file, or `<embedded default>`.
    pub config: String,
    /// Seconds since the supervisor started.
    pub uptime_s: f64,
    /// Seconds since the serving generation became ready.
    pub generation_uptime_s: f64,
    /// `graceful` from the serving generation's config.
    pub graceful: bool,
    /// Listener keys held by the supervisor.
    pub listeners: Vec<String>,
    /// What is under way: `serving`, `restarting`, `shutting_down`, `recovering`.
    pub phase: String,
    /// Number of restarts done since start.
    pub restarts: u64,
    /// The last restart's outcome.
    pub last_restart: Option<LastRestart>,
}

/// How the last restart ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastRestart {
    /// Unix time (seconds) it ended.
    pub at_unix: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// What asked for it (`signal`, `admin`, `cli`, `watch`, `library`).
    pub trigger: String,
    /// The outcome or the reason it failed.
    pub detail: String,
}

/// Restart the host (graceful or full, as configured), optionally with another executable.
/// Callable from a handler or anywhere in a worker process; waits for the outcome.
pub async fn restart(new_exe: Option<&Path>) -> OpResult {
    let exe = new_exe.map(|p| p.to_string_lossy().into_owned());
    crate::worker::request(crate::channel::Op::Restart {
        exe,
        via: Some("library".into()),
    })
    .await
}

/// Shut the host down: every generation drains, then the supervisor exits 0.
pub async fn shutdown() -> OpResult {
    crate::worker::request(crate::channel::Op::Shutdown).await
}

/// The supervisor's state.
pub async fn status() -> OpResult {
    crate::worker::request(crate::channel::Op::Status).await
}
