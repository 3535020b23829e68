//! What a supervisor hands to its re-executed image (see `super::reexec`): everything it holds,
//! as one JSON document ([`Handover`]) in a memory file whose descriptor crosses the `execve`,
//! with the descriptors it names (listening sockets, workers' channels and stderr pipes, the
//! control socket, an asker's connection) inherited under the same numbers.
//!
//! ## Versions
//!
//! `version` counts **incompatible** changes only. A field added later is optional
//! (`#[serde(default)]`) and keeps the version: an older reader ignores what it does not know
//! (serde skips unknown fields) and a newer reader fills in what an older writer left out. So a
//! counter that another part of the supervisor starts keeping is one more optional field here,
//! carried by every image that knows it. A reader refuses a version above its own
//! ([`HANDOVER_VERSION`]) with a clear error ([`HandoverError::TooNew`]), and the preflight
//! (`NEW check` with the handover) is how the old image learns that before it executes
//! anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::channel::{LastRestart, WorkerSettings};
use crate::watch::FileId;

/// The handover format this build writes and the newest it reads.
pub(crate) const HANDOVER_VERSION: u32 = 1;

/// Largest handover accepted (it names a few dozen descriptors and some strings).
pub(crate) const MAX_HANDOVER: usize = 4 * 1024 * 1024;

/// The environment variable naming the descriptor of the handover (a re-executed supervisor).
pub(crate) const ENV_STATE_FD: &str = "APPHOST_SUPERVISOR_STATE_FD";
/// The descriptor of the previous supervisor image, to go back to if the new one cannot take
/// over.
pub(crate) const ENV_FALLBACK_FD: &str = "APPHOST_SUPERVISOR_FALLBACK_FD";
/// Set by a new image that could not take over, when it executes the previous one again: why.
pub(crate) const ENV_TAKEOVER_FAILED: &str = "APPHOST_SUPERVISOR_TAKEOVER_FAILED";
/// For the preflight (`NEW check`): the descriptor of a handover to read and judge.
pub(crate) const ENV_CHECK_STATE_FD: &str = "APPHOST_CHECK_STATE_FD";
/// Every variable above: never passed to a worker or a check.
pub(crate) const ALL_ENV: [&str; 4] = [
    ENV_STATE_FD,
    ENV_FALLBACK_FD,
    ENV_TAKEOVER_FAILED,
    ENV_CHECK_STATE_FD,
];

/// The line a preflight prints when it can take over: `apphost-takeover: ok version=N image=DEV:INO`.
pub(crate) const TAKEOVER_OK: &str = "apphost-takeover: ok";

/// Why a handover cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum HandoverError {
    /// Written by a newer apphost whose format this one does not know.
    #[error(
        "the supervisor state is version {found}, newer than this build understands \
         (version {HANDOVER_VERSION} at most)"
    )]
    TooNew {
        /// The version found.
        found: u32,
    },
    /// Not a handover at all, or damaged.
    #[error("the supervisor state cannot be read: {0}")]
    Malformed(String),
}

/// Everything a supervisor holds, for its next image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Handover {
    /// The format's version ([`HANDOVER_VERSION`] when written by this build).
    pub version: u32,
    /// How workers are started: `None` for apphost's own command line, else the arguments a
    /// program that nests apphost was run with (as bytes).
    #[serde(default)]
    pub nested_args: Option<Vec<Vec<u8>>>,
    /// The config file (absent: the embedded default).
    #[serde(default)]
    pub config_path: Option<PathBuf>,
    /// What `status` shows as the config.
    pub config_source: String,
    /// `log.format` (`text` or `json`).
    pub log_format: String,
    /// `log.level`.
    pub log_level: String,
    /// How long the supervisor has run, in milliseconds (its uptime goes on).
    pub uptime_ms: u64,
    /// The control socket, if it has one.
    #[serde(default)]
    pub control: Option<ControlHandover>,
    /// Listening sockets by key: descriptor numbers.
    pub listeners: BTreeMap<String, i32>,
    /// `systemd:NAME` → the key of the listener systemd passed with that name.
    #[serde(default)]
    pub listener_names: BTreeMap<String, String>,
    /// The keys of the listeners systemd passed (their Unix socket files are systemd's).
    #[serde(default)]
    pub listeners_from_systemd: BTreeSet<String>,
    /// Worker processes (the supervisor's children), by worker id.
    pub workers: Vec<WorkerHandover>,
    /// The standby and the identity of the file it was started from.
    #[serde(default)]
    pub standby_file: Option<(u64, Option<FileId>)>,
    /// The restart machine.
    pub machine: MachineHandover,
    /// The file the handing-over image runs (what a restart is compared with).
    #[serde(default)]
    pub image_before: Option<FileId>,
    /// The file it executes (the new image's, once it has taken over).
    #[serde(default)]
    pub image_after: Option<FileId>,
    /// Device and inode the preflight reported for the program it ran: the new image checks that
    /// it is that program.
    #[serde(default)]
    pub checked_program: Option<(u64, u64)>,
    /// `CLOCK_MONOTONIC` when it was written, in nanoseconds (the same clock in the next image):
    /// the "… ago" durations above are as of then, so the time the exec took is counted.
    #[serde(default)]
    pub written_mono_ns: Option<u64>,
    /// The host's request counters (the metrics' totals), which go on in the next image.
    #[serde(default)]
    pub totals: crate::observe::host::HostTotals,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// The control socket: its listening descriptor and the file it is bound to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ControlHandover {
    /// The listening socket's descriptor.
    pub fd: i32,
    /// Its path.
    pub path: PathBuf,
    /// The socket file's device and inode (it is removed at exit only if still the same file).
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
}

/// One worker process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct WorkerHandover {
    /// Its id in the supervisor.
    pub id: u64,
    /// Its pid.
    pub pid: i32,
    /// The supervisor's end of its channel.
    pub channel_fd: i32,
    /// The read end of its stderr pipe.
    #[serde(default)]
    pub stderr_fd: Option<i32>,
    /// The last lines of its stderr.
    #[serde(default)]
    pub tail: Vec<String>,
    /// Reaped already but not yet judged: how it ended (`exit status 1`, …).
    #[serde(default)]
    pub exited: Option<String>,
    /// What it reported before failing.
    #[serde(default)]
    pub fail_reason: Option<String>,
}

/// The restart machine's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct MachineHandover {
    /// The serving worker.
    pub current: u64,
    /// The restart being performed (the upgrade that executes the new image).
    pub pending: PendingHandover,
    /// `graceful`.
    pub graceful: bool,
    /// `graceful_timeout` in milliseconds.
    pub graceful_timeout_ms: u64,
    /// `shutdown_timeout` in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// `shutdown_delay` in milliseconds.
    pub shutdown_delay_ms: u64,
    /// `warm_standby`.
    pub warm_standby: bool,
    /// The serving generation's reported settings.
    #[serde(default)]
    pub worker_settings: Option<WorkerSettings>,
    /// Every worker the machine knows.
    pub workers: Vec<MachineWorker>,
    /// The next worker id.
    pub next_worker: u64,
    /// The next generation number.
    pub next_generation: u64,
    /// The warm standby.
    #[serde(default)]
    pub standby: Option<u64>,
    /// The executable restarts run unless told otherwise.
    pub recorded_exe: PathBuf,
    /// The crash-recovery backoff in milliseconds.
    pub backoff_ms: u64,
    /// Restarts done since start.
    pub restarts: u64,
    /// How the last restart ended.
    #[serde(default)]
    pub last_restart: Option<LastRestart>,
    /// Restarts by trigger and outcome, worker starts, the last handoff (the metrics').
    #[serde(default)]
    pub stats: crate::tally::RestartStats,
    /// When the last recycle was started, in milliseconds ago (see `machine::recycle`).
    #[serde(default)]
    pub recycle_tried_ms_ago: Option<u64>,
    /// How long after it the next recycle may start, in milliseconds (zero unless recycles
    /// have failed), so a re-exec does not turn failing recycles into a loop.
    #[serde(default)]
    pub recycle_retry_ms: u64,
}

/// One worker as the machine knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct MachineWorker {
    /// Its id.
    pub id: u64,
    /// Its generation (`None`: a standby).
    #[serde(default)]
    pub generation: Option<u64>,
    /// Its pid, from its ready report.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Milliseconds since it reported ready.
    #[serde(default)]
    pub ready_ms_ago: Option<u64>,
    /// Milliseconds since it was told to drain (`None`: it serves).
    #[serde(default)]
    pub draining_ms_ago: Option<u64>,
}

/// The restart under way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct PendingHandover {
    /// Milliseconds since it was asked for.
    pub asked_ms_ago: u64,
    /// Who waits for its outcome.
    pub waiters: Vec<Waiter>,
    /// What asked (`signal`, `cli`, …).
    pub trigger: String,
    /// The executable it starts.
    pub exe: PathBuf,
    /// The pid of the generation it replaces.
    #[serde(default)]
    pub old_pid: Option<u32>,
}

/// Someone waiting for the outcome of a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Waiter {
    /// Nobody: the outcome is logged.
    Log,
    /// A client of the control socket, on this connection (the answer is one JSON line).
    Control {
        /// The connection's descriptor.
        fd: i32,
    },
    /// The file watch, after a change of `what`: the outcome is logged as the watch does.
    Watcher {
        /// `executable` or `config`.
        what: String,
    },
    /// A worker's request (the admin page, `ops::restart`): answered on its channel.
    Worker {
        /// The worker.
        worker: u64,
        /// Its request id.
        id: u64,
    },
}

impl Handover {
    /// Every descriptor it names, for the exec (close-on-exec cleared) and for a check that
    /// they all arrived.
    pub(crate) fn fds(&self) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        if let Some(c) = &self.control {
            out.push(("the control socket".to_string(), c.fd));
        }
        for (k, fd) in &self.listeners {
            out.push((format!("listener [{k}]"), *fd));
        }
        for w in &self.workers {
            out.push((format!("worker {}'s channel", w.pid), w.channel_fd));
            if let Some(fd) = w.stderr_fd {
                out.push((format!("worker {}'s stderr", w.pid), fd));
            }
        }
        for w in &self.machine.pending.waiters {
            if let Waiter::Control { fd } = w {
                out.push(("a control client's connection".to_string(), *fd));
            }
        }
        out
    }

    /// The JSON bytes.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, HandoverError> {
        serde_json::to_vec(self).map_err(|e| HandoverError::Malformed(e.to_string()))
    }

    /// Read a handover written by this build or an older one; one from a newer build whose
    /// format this one does not know is refused.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Handover, HandoverError> {
        #[derive(Deserialize)]
        struct Head {
            version: u32,
        }
        let head: Head = serde_json::from_slice(bytes)
            .map_err(|e| HandoverError::Malformed(format!("no version: {e}")))?;
        if head.version > HANDOVER_VERSION {
            return Err(HandoverError::TooNew {
                found: head.version,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| HandoverError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handover {
        Handover {
            version: HANDOVER_VERSION,
            nested_args: Some(vec![b"serve".to_vec(), b"run".to_vec()]),
            config_path: Some("/etc/app/server.yaml".into()),
            config_source: "/etc/app/server.yaml".into(),
            log_format: "text".into(),
            log_level: "info".into(),
            uptime_ms: 12_345,
            control: Some(ControlHandover {
                fd: 5,
                path: "/run/app/ctl.sock".into(),
                dev: 1,
                ino: 2,
            }),
            listeners: BTreeMap::from([("127.0.0.1:8080".to_string(), 7)]),
            listener_names: BTreeMap::from([(
                "systemd:web".to_string(),
                "127.0.0.1:8080".to_string(),
            )]),
            listeners_from_systemd: BTreeSet::from(["127.0.0.1:8080".to_string()]),
            workers: vec![WorkerHandover {
                id: 1,
                pid: 4242,
                channel_fd: 9,
                stderr_fd: Some(10),
                tail: vec!["started".into()],
                exited: None,
                fail_reason: None,
            }],
            standby_file: None,
            machine: MachineHandover {
                current: 1,
                pending: PendingHandover {
                    asked_ms_ago: 3,
                    waiters: vec![
                        Waiter::Control { fd: 11 },
                        Waiter::Worker { worker: 1, id: 7 },
                        Waiter::Log,
                    ],
                    trigger: "cli".into(),
                    exe: "/opt/app/v2".into(),
                    old_pid: Some(4242),
                },
                graceful: true,
                graceful_timeout_ms: 10_000,
                shutdown_timeout_ms: 60_000,
                shutdown_delay_ms: 0,
                warm_standby: true,
                worker_settings: None,
                workers: vec![MachineWorker {
                    id: 1,
                    generation: Some(1),
                    pid: Some(4242),
                    ready_ms_ago: Some(5000),
                    draining_ms_ago: None,
                }],
                next_worker: 2,
                next_generation: 2,
                standby: None,
                recorded_exe: "/opt/app/v1".into(),
                backoff_ms: 100,
                restarts: 0,
                last_restart: None,
                stats: {
                    let mut s = crate::tally::RestartStats::default();
                    s.restart("cli", "ok");
                    s.worker_started("start");
                    s.last_handoff_s = Some(0.002);
                    s
                },
                recycle_tried_ms_ago: Some(2500),
                recycle_retry_ms: 20_000,
            },
            image_before: None,
            image_after: None,
            checked_program: Some((3, 4)),
            written_mono_ns: Some(1_000_000),
            totals: {
                let mut c = crate::tally::Counts::default();
                c.requests
                    .insert(("web".into(), "/".into(), "GET".into(), 200), 41);
                let mut t = crate::observe::host::HostTotals::default();
                t.report(1, c.clone());
                t.report(2, c);
                t.retire(2);
                t
            },
        }
    }

    #[test]
    fn a_handover_reads_back_as_written() {
        let h = sample();
        let back = Handover::decode(&h.encode().unwrap()).unwrap();
        assert_eq!(back, h);
        let fds: Vec<i32> = h.fds().into_iter().map(|(_, fd)| fd).collect();
        assert_eq!(fds, [5, 7, 9, 10, 11]);
    }

    /// The oldest form this build must read: version 1 with only the fields that have no
    /// default (what a first-release writer that left every optional field out would write).
    /// Every field added later must keep this test passing.
    #[test]
    fn an_older_handover_without_the_optional_fields_is_read() {
        let v1 = r#"{
            "version": 1,
            "config_source": "<embedded default>",
            "log_format": "text",
            "log_level": "info",
            "uptime_ms": 10,
            "listeners": {":8199": 3},
            "workers": [{"id": 1, "pid": 99, "channel_fd": 4}],
            "machine": {
                "current": 1,
                "pending": {"asked_ms_ago": 0, "waiters": [{"kind": "log"}],
                            "trigger": "signal", "exe": "/bin/app"},
                "graceful": true, "graceful_timeout_ms": 10000, "shutdown_timeout_ms": 60000,
                "shutdown_delay_ms": 0, "warm_standby": false,
                "workers": [{"id": 1, "generation": 1}],
                "next_worker": 2, "next_generation": 2, "recorded_exe": "/bin/app",
                "backoff_ms": 100, "restarts": 0
            }
        }"#;
        let h = Handover::decode(v1.as_bytes()).unwrap();
        assert_eq!(h.listeners[":8199"], 3);
        assert_eq!(h.workers[0].stderr_fd, None);
        assert_eq!(h.machine.pending.waiters, [Waiter::Log]);
        assert!(h.control.is_none() && h.nested_args.is_none());
        assert_eq!(h.machine.recycle_tried_ms_ago, None);
        assert_eq!(h.machine.recycle_retry_ms, 0);
    }

    /// A newer writer's additions (fields this build does not know) are ignored, as long as
    /// the version says the format is one this build reads.
    #[test]
    fn unknown_fields_of_a_newer_writer_are_ignored() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().encode().unwrap()).unwrap();
        v["metrics"] = serde_json::json!({"requests_total": 12});
        v["machine"]["recycle_after"] = serde_json::json!(1000);
        let h = Handover::decode(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(h, sample());
    }

    #[test]
    fn a_version_from_the_future_is_refused_clearly() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().encode().unwrap()).unwrap();
        v["version"] = serde_json::json!(HANDOVER_VERSION + 1);
        let e = Handover::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(
            e,
            HandoverError::TooNew {
                found: HANDOVER_VERSION + 1
            }
        );
        assert!(e.to_string().contains("newer than this build understands"));
        for junk in [&b"not json"[..], b"{}", b"{\"version\": 1}"] {
            assert!(matches!(
                Handover::decode(junk),
                Err(HandoverError::Malformed(_))
            ));
        }
    }
}
