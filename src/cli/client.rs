//! The CLI's control client: `apphost status|restart|shutdown` send one operation over the
//! running host's control socket (see [`crate::control`]) and print the answer.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::channel::{Op, OpError, OpReply, OpResult, Status};
use crate::control::{ControlError, Probe, probe, socket_path};

/// Send `op` to the control socket at `path` and return the answer line as it came (JSON).
/// Blocks until the supervisor answers (a restart answers once the new worker serves or fails).
pub(crate) fn request_raw(path: &Path, op: &Op) -> Result<String, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        use std::io::ErrorKind::*;
        match source.kind() {
            NotFound | ConnectionRefused => ControlError::NotRunning {
                path: path.to_path_buf(),
                source,
            },
            _ => ControlError::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    })?;
    let mut line = serde_json::to_string(op).map_err(|e| io(std::io::Error::other(e)))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    if answer.trim().is_empty() {
        return Err(ControlError::BadAnswer {
            path: path.to_path_buf(),
            answer: "(nothing: the host closed the connection)".into(),
        });
    }
    Ok(answer.trim_end().to_string())
}

/// Send `op` to the control socket at `path` and wait for the result.
#[cfg(test)]
pub(crate) fn request(path: &Path, op: &Op) -> Result<OpResult, ControlError> {
    let answer = request_raw(path, op)?;
    serde_json::from_str(&answer).map_err(|_| ControlError::BadAnswer {
        path: path.to_path_buf(),
        answer,
    })
}

/// Which host a control command talks to, and how it prints (the shared options of
/// `apphost status|restart|shutdown`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// Config file of the host (same lookup as `run`); its control socket is used.
    #[arg(short, long, value_name = "FILE", conflicts_with = "socket")]
    pub config: Option<PathBuf>,
    /// The control socket itself (instead of deriving it from the config).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the answer as one JSON object (schema in the README; errors too, exit 1).
    #[arg(long)]
    pub json: bool,
}

/// A control command of the CLI.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    /// `apphost status`.
    Status,
    /// `apphost restart [--exe PATH]`.
    Restart {
        /// The executable for the new workers.
        exe: Option<PathBuf>,
    },
    /// `apphost shutdown [--wait]`.
    Shutdown {
        /// Wait until the host has exited.
        wait: bool,
    },
    /// `apphost reopen-logs`.
    ReopenLogs,
}

/// Run a control command: exit 0 when it succeeded, 1 when it failed or the host cannot be
/// reached (the reason on stderr, or with `--json` an error object on stdout), 2 when the config
/// cannot be read.
pub(crate) fn run_command(cmd: Command, target: &Target) -> ExitCode {
    let path = match &target.socket {
        Some(p) => p.clone(),
        None => match crate::config::Config::find(target.config.as_deref()) {
            Ok(c) => socket_path(&c),
            Err(e) => {
                eprintln!("apphost: {e}\n(use --socket PATH to name the control socket directly)");
                return ExitCode::from(2);
            }
        },
    };
    let op = match &cmd {
        Command::Status => Op::Status,
        Command::Shutdown { .. } => Op::Shutdown,
        Command::ReopenLogs => Op::ReopenLogs,
        Command::Restart { exe } => {
            // Relative to where the command runs, not to the supervisor's directory.
            let exe = match exe.as_deref().map(std::path::absolute).transpose() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("apphost: --exe: {e}");
                    return ExitCode::from(2);
                }
            };
            Op::Restart {
                exe: exe.map(|p| p.to_string_lossy().into_owned()),
                via: Some("cli".into()),
            }
        }
    };
    let result = match request_raw(&path, &op) {
        Ok(answer) => {
            serde_json::from_str::<OpResult>(&answer).map_err(|_| ControlError::BadAnswer {
                path: path.clone(),
                answer,
            })
        }
        Err(e) => Err(e),
    };
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            let hint = match (&e, &target.socket, &target.config) {
                (ControlError::NotRunning { .. }, None, _) => format!(
                    "\n(the socket is derived from the config file{}; from another directory, \
                     name the host's config with -c FILE, its socket with --socket PATH, or set \
                     `control: {{ socket: PATH }}` in the config so every command finds it)",
                    if target.config.is_some() {
                        " given"
                    } else {
                        " found here"
                    }
                ),
                _ => String::new(),
            };
            if target.json {
                println!("{}", json_error(&e));
            } else {
                eprintln!("apphost: {e}{hint}");
            }
            return ExitCode::from(1);
        }
    };
    if target.json {
        println!("{}", json_answer(&result));
    }
    let code = match &result {
        Ok(reply) => {
            if !target.json {
                println!("{}", describe_reply(reply));
                for f in reply.failures() {
                    eprintln!("apphost: {f}");
                }
            }
            if reply.failures().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            if !target.json {
                eprintln!("apphost: {}", describe_error(&cmd, e));
            }
            ExitCode::from(1)
        }
    };
    if let (Command::Shutdown { wait: true }, Ok(_)) = (&cmd, &result) {
        // The supervisor removes its socket when it exits.
        while !matches!(probe(&path), Ok(Probe::Absent | Probe::Stale)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !target.json {
            println!("stopped");
        }
    }
    code
}

/// apphost's version, in every `--json` answer.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `--json` form of an answer (the schema is in the README's "Control commands"):
/// a status is `{"version", "supervisor": Status}`, the same as the admin `/status` JSON (whose
/// `worker`, `servers` and `admin` only a worker knows); a restart or shutdown is
/// `{"version", "kind", …}`; a failure is `{"version", "error", "reason"}`.
pub(crate) fn json_answer(result: &OpResult) -> serde_json::Value {
    use serde_json::{Value, json};
    match result {
        Ok(OpReply::Status(s)) => json!({ "version": VERSION, "supervisor": s }),
        Ok(reply) => {
            let mut v = serde_json::to_value(reply).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("version".into(), VERSION.into());
            }
            v
        }
        Err(e) => {
            let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("version".into(), VERSION.into());
            }
            v
        }
    }
}

/// The `--json` form of a host that could not be asked: `{"version", "error", "reason"}`.
fn json_error(e: &ControlError) -> serde_json::Value {
    let error = match e {
        ControlError::NotRunning { .. } => "not_running",
        ControlError::BadAnswer { .. } => "bad_answer",
        _ => "unreachable",
    };
    serde_json::json!({ "version": VERSION, "error": error, "reason": e.to_string() })
}

/// How a failed operation reads: a restart refused because another is under way (or the host
/// is stopping) is a refusal, not a failure of this restart.
pub(crate) fn describe_error(cmd: &Command, e: &OpError) -> String {
    match e {
        OpError::Busy(_) | OpError::ShuttingDown => format!("refused: {e}"),
        _ => {
            let what = match cmd {
                Command::Status => "status",
                Command::Restart { .. } => "restart",
                Command::Shutdown { .. } => "shutdown",
                Command::ReopenLogs => "reopen-logs",
            };
            format!("{what} failed: {e}")
        }
    }
}

/// A human summary of an operation's success.
pub(crate) fn describe_reply(reply: &OpReply) -> String {
    match reply {
        OpReply::Restarted(o) => {
            let was = o.old_pid.map(|p| format!(" (was {p})")).unwrap_or_default();
            if o.mode == "full" {
                // The old generation drained and exited before the new one started: the time
                // is the whole restart, with nothing serving for part of it.
                format!(
                    "restarted: generation {}, pid {}{was}, serving {} after the request \
                     (full restart: the old worker drained first)",
                    o.generation,
                    o.pid,
                    human_ms(o.handoff_ms)
                )
            } else {
                format!(
                    "restarted: generation {}, pid {}{was}, handoff {} ({})",
                    o.generation,
                    o.pid,
                    human_ms(o.handoff_ms),
                    o.mode
                )
            }
        }
        OpReply::ShuttingDown => {
            "shutting down: every worker drains, then the supervisor exits".into()
        }
        OpReply::Status(s) => describe_status(s),
        OpReply::LogsReopened {
            workers,
            confirmed,
            files,
            failed,
        } => crate::ops::describe_reopen(*workers, *confirmed, *files, failed.len()),
    }
}

/// A human summary of the supervisor's state, several lines.
pub(crate) fn describe_status(s: &Status) -> String {
    use crate::clock::{human_duration, utc};
    let mut out = format!(
        "apphost: {}\n  supervisor pid {}, up {}\n",
        s.phase,
        s.supervisor_pid,
        human_duration(s.uptime_s)
    );
    match s.worker_pid {
        Some(p) => out.push_str(&format!(
            "  worker pid {p}, generation {} (serving for {})\n",
            s.generation,
            human_duration(s.generation_uptime_s)
        )),
        None => out.push_str("  no worker serving\n"),
    }
    out.push_str(&format!("  executable {}\n  config {}\n", s.exe, s.config));
    out.push_str(&format!(
        "  restart mode {}, {} since start\n  listeners {}\n",
        if s.graceful { "graceful" } else { "full" },
        crate::clock::plural(s.restarts, "restart"),
        if s.listeners.is_empty() {
            "none".to_string()
        } else {
            s.listeners.join(", ")
        }
    ));
    match &s.last_restart {
        None => out.push_str("  last restart: none"),
        Some(l) => out.push_str(&format!(
            "  last restart: {} (asked by {}, {}): {}",
            if l.ok { "ok" } else { "failed" },
            l.trigger,
            utc(l.at_unix),
            l.detail
        )),
    }
    out
}

/// Milliseconds as people read them: `35.2 ms` below a second, `3.70 s` above.
pub(crate) fn human_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::RestartOutcome;

    fn outcome(mode: &str, old_pid: Option<u32>, handoff_ms: f64) -> OpResult {
        Ok(OpReply::Restarted(RestartOutcome {
            generation: 2,
            pid: 200,
            old_pid,
            exe: "/bin/app".into(),
            handoff_ms,
            mode: mode.into(),
        }))
    }

    #[test]
    fn restarts_read_with_the_whole_time_and_the_old_pid() {
        let Ok(full) = outcome("full", Some(100), 3700.0) else {
            unreachable!()
        };
        assert_eq!(
            describe_reply(&full),
            "restarted: generation 2, pid 200 (was 100), serving 3.70 s after the request \
             (full restart: the old worker drained first)"
        );
        let Ok(graceful) = outcome("graceful", Some(100), 35.24) else {
            unreachable!()
        };
        assert_eq!(
            describe_reply(&graceful),
            "restarted: generation 2, pid 200 (was 100), handoff 35.2 ms (graceful)"
        );
        let Ok(after_crash) = outcome("full", None, 120.0) else {
            unreachable!()
        };
        assert!(!describe_reply(&after_crash).contains("was"));
    }

    #[test]
    fn a_busy_host_refuses_rather_than_fails() {
        let restart = Command::Restart { exe: None };
        assert_eq!(
            describe_error(&restart, &OpError::Busy("generation 2 is starting".into())),
            "refused: a restart is already under way: generation 2 is starting"
        );
        assert_eq!(
            describe_error(&restart, &OpError::Failed("exit status 3".into())),
            "restart failed: the new process failed: exit status 3"
        );
    }

    #[test]
    fn json_answers_have_one_schema_with_a_version() {
        let status = Status {
            worker_pid: Some(7),
            ..Status::default()
        };
        let v = json_answer(&Ok(OpReply::Status(status)));
        assert_eq!(v["version"], VERSION);
        assert_eq!(v["supervisor"]["worker_pid"], 7);
        assert!(v.get("Ok").is_none(), "{v}");
        let v = json_answer(&outcome("graceful", Some(1), 2.0));
        assert_eq!(
            (v["kind"].as_str(), v["pid"].as_u64()),
            (Some("restarted"), Some(200))
        );
        assert_eq!(v["version"], VERSION);
        let v = json_answer(&Err(OpError::Busy("generation 2 is starting".into())));
        assert_eq!(
            v,
            serde_json::json!({
                "version": VERSION,
                "error": "busy",
                "reason": "generation 2 is starting"
            })
        );
    }
}
